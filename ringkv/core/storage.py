"""The node's key -> (value, version, stamp) map, counted against a memory budget.

Memory is accounted on stored bytes: key and value lengths plus a fixed
per-entry overhead that approximates what CPython spends on the dict slot,
the tuple and the bytes headers. A write that would take the total past the
budget is refused and stores nothing; the node answers it with errCode 2.
"""

from __future__ import annotations

from collections.abc import Iterator

# dict slot + 3-tuple + two bytes headers, measured on CPython 3.11 (~190 B);
# a little under so that the 512 MB default is not consumed by bookkeeping.
ENTRY_OVERHEAD = 160

Entry = tuple[bytes, int, int]  # value, version, stamp


class Storage:
    __slots__ = ("_data", "budget", "used")

    def __init__(self, budget_bytes: int) -> None:
        self._data: dict[bytes, Entry] = {}
        self.budget = budget_bytes
        self.used = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: bytes) -> bool:
        return key in self._data

    def get(self, key: bytes) -> Entry | None:
        return self._data.get(key)

    def put(self, key: bytes, value: bytes, version: int, stamp: int = 0) -> bool:
        """Store the entry; False (and nothing stored) if it would exceed the budget."""
        old = self._data.get(key)
        delta = len(value) - (len(old[0]) if old else -(len(key) + ENTRY_OVERHEAD))
        if delta > 0 and self.used + delta > self.budget:
            return False
        self._data[key] = (value, version, stamp)
        self.used += delta
        return True

    def remove(self, key: bytes) -> bool:
        old = self._data.pop(key, None)
        if old is None:
            return False
        self.used -= len(key) + len(old[0]) + ENTRY_OVERHEAD
        return True

    def wipe(self) -> None:
        self._data.clear()
        self.used = 0

    def items(self) -> Iterator[tuple[bytes, Entry]]:
        return iter(list(self._data.items()))

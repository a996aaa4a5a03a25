"""The node's key -> (value, version, stamp) map, counted against a memory budget.

Every write carries a stamp, ordered per key across the whole cluster (see
replication). A copy of a key only ever moves forward: `apply` keeps the
higher stamp. A remove leaves a tombstone (value None) with its stamp, so an
older copy arriving later from a node that missed the remove cannot bring
the key back; tombstones are collected after `TOMBSTONE_TTL`.

Keys can be indexed by group (replication uses ring slots), so that the
keys of a few slots are found without a scan of the whole store; a one-node
deployment, which never transfers, keeps no index.

Memory is accounted on stored bytes: key and value lengths plus a fixed
per-entry overhead that approximates what CPython spends on the dict slot,
the tuple and the bytes headers. A write that would take the total past the
budget is refused and stores nothing; the node answers it with errCode 2.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

# dict slot + 3-tuple + two bytes headers, measured on CPython 3.11 (~190 B);
# a little under so that the 512 MB default is not consumed by bookkeeping.
ENTRY_OVERHEAD = 160
TOMBSTONE_TTL = 300.0  # seconds; a node paused longer than this drops its copies

Entry = tuple[bytes | None, int, int]  # value (None: removed), version, stamp


class Storage:
    __slots__ = ("_data", "_group", "_groups", "_tombstones", "budget", "live", "used")

    def __init__(self, budget_bytes: int, group: Callable[[bytes], int] | None = None) -> None:
        self._data: dict[bytes, Entry] = {}
        self._group = group  # key -> group (a ring slot), or None for no index
        self._groups: dict[int, set[bytes]] = {}
        self._tombstones: deque[tuple[float, bytes, int]] = deque()  # (when, key, stamp)
        self.budget = budget_bytes
        self.used = 0
        self.live = 0  # keys with a value (not tombstones)

    def __len__(self) -> int:
        return self.live

    def get(self, key: bytes) -> Entry | None:
        """The live entry of a key, None if absent or removed."""
        entry = self._data.get(key)
        return entry if entry is not None and entry[0] is not None else None

    def entry(self, key: bytes) -> Entry | None:
        """The raw entry, tombstones included."""
        return self._data.get(key)

    def stamp_of(self, key: bytes) -> int:
        entry = self._data.get(key)
        return entry[2] if entry is not None else 0

    def fits(self, key: bytes, value: bytes) -> bool:
        delta = self._delta(key, value)
        return delta <= 0 or self.used + delta <= self.budget

    def put(
        self, key: bytes, value: bytes, version: int, stamp: int = 0, group: int | None = None
    ) -> bool:
        """Store the entry; False (and nothing stored) if it would exceed the budget."""
        delta = self._delta(key, value)
        if delta > 0 and self.used + delta > self.budget:
            return False
        old = self._data.get(key)
        if old is None or old[0] is None:
            self.live += 1
        if old is None:
            self._index(key, group)
        self._data[key] = (value, version, stamp)
        self.used += delta
        return True

    def remove(
        self, key: bytes, stamp: int = 0, now: float = 0.0, group: int | None = None
    ) -> bool:
        """Remove a key; True if it had a value. A stamped remove leaves a tombstone."""
        old = self._data.get(key)
        existed = old is not None and old[0] is not None
        if old is not None:
            self.used -= self._size(key, old)
            del self._data[key]
        if existed:
            self.live -= 1
        if stamp:
            if old is None:
                self._index(key, group)
            self._data[key] = (None, 0, stamp)
            self.used += len(key) + ENTRY_OVERHEAD
            self._tombstones.append((now, key, stamp))
        elif old is not None:
            self._unindex(key)
        return existed

    def apply(
        self, key: bytes, value: bytes | None, version: int, stamp: int, now: float,
        group: int | None = None,
    ) -> bool:  # fmt: skip
        """Take a replicated or transferred copy if it is newer than ours.

        `group`, when the caller knows it, spares the index hashing the key again.
        """
        old = self._data.get(key)
        if old is not None and old[2] >= stamp:
            return False
        if value is None:
            self.remove(key, stamp, now, group)
            return True
        return self.put(key, value, version, stamp, group)

    def collect_tombstones(self, now: float, ttl: float = TOMBSTONE_TTL) -> None:
        queue = self._tombstones
        while queue and queue[0][0] + ttl <= now:
            _, key, stamp = queue.popleft()
            entry = self._data.get(key)
            if entry is not None and entry[0] is None and entry[2] == stamp:
                del self._data[key]
                self._unindex(key)
                self.used -= len(key) + ENTRY_OVERHEAD

    def wipe(self) -> None:
        self._data.clear()
        self._groups.clear()
        self._tombstones.clear()
        self.used = 0
        self.live = 0

    def items(self) -> Iterator[tuple[bytes, Entry]]:
        """A snapshot of every entry, tombstones included."""
        return iter(list(self._data.items()))

    def groups(self) -> set[int]:
        """The groups that hold at least one entry (tombstones included)."""
        if self._group is None:
            raise TypeError("this store keeps no group index")
        return set(self._groups)

    def entries_in(self, groups: Iterable[int]) -> list[tuple[bytes, Entry]]:
        """The entries (tombstones included) of keys in these groups."""
        if self._group is None:
            raise TypeError("this store keeps no group index")
        data, index = self._data, self._groups
        return [(key, data[key]) for group in groups for key in index.get(group, ())]

    def _index(self, key: bytes, group: int | None) -> None:
        if self._group is not None:
            if group is None:
                group = self._group(key)
            self._groups.setdefault(group, set()).add(key)

    def _unindex(self, key: bytes) -> None:
        if self._group is not None:
            group = self._group(key)
            keys = self._groups.get(group)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._groups[group]

    def _delta(self, key: bytes, value: bytes) -> int:
        old = self._data.get(key)
        if old is None:
            return len(key) + len(value) + ENTRY_OVERHEAD
        return len(value) - (len(old[0]) if old[0] is not None else 0)

    @staticmethod
    def _size(key: bytes, entry: Entry) -> int:
        return len(key) + (len(entry[0]) if entry[0] is not None else 0) + ENTRY_OVERHEAD

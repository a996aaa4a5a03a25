"""At-most-once: the outcome of each executed write, kept by message ID.

A repeat of a message ID is answered from here and not executed again. The
commands that need this (PUT, REMOVE, WIPEOUT) answer with an error code
only, so the error code is all that is kept: the reply is rebuilt on a hit.
Beside it, the ring slot of the write's key, so that a node taking over a
slot receives the slot's recent outcomes with its keys.

Expiry is bucketed by whole seconds: each second's IDs sit in one list and
go together, so an entry costs a dict slot and a list slot, nothing more.
The total is also capped: past `max_entries` the oldest bucket goes early,
which bounds memory under any load.
"""

from __future__ import annotations

import math
from collections import deque

DEFAULT_RETENTION = 10.0  # seconds; the protocol asks for at least 5
DEFAULT_MAX_ENTRIES = 1_000_000  # ~100 MB at worst; 100k writes/s for 10 s


class ReplyCache:
    __slots__ = ("_buckets", "_outcomes", "max_entries", "retention")

    def __init__(
        self, retention: float = DEFAULT_RETENTION, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        self._outcomes: dict[bytes, int] = {}
        # (second the bucket's entries expire, their IDs), oldest first
        self._buckets: deque[tuple[int, list[bytes]]] = deque()
        self.retention = retention
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._outcomes)

    def get(self, message_id: bytes) -> int | None:
        packed = self._outcomes.get(message_id)
        return None if packed is None else packed & 0xFF

    def put(self, message_id: bytes, err: int, now: float, slot: int = -1) -> None:
        outcomes = self._outcomes
        if message_id in outcomes:
            return
        outcomes[message_id] = err | (slot + 1) << 8  # one int: error code and slot
        expires = math.ceil(now + self.retention)
        buckets = self._buckets
        if buckets and buckets[-1][0] == expires:
            buckets[-1][1].append(message_id)
        else:
            buckets.append((expires, [message_id]))
        while len(outcomes) > self.max_entries and len(buckets) > 1:
            self._drop_oldest()

    def outcomes_in(self, slots: set[int]) -> list[tuple[bytes, int, int]]:
        """(message ID, error code, slot) of the kept outcomes of writes to these slots."""
        found = []
        for message_id, packed in self._outcomes.items():
            slot = (packed >> 8) - 1
            if slot in slots:
                found.append((message_id, packed & 0xFF, slot))
        return found

    def expire(self, now: float) -> None:
        buckets = self._buckets
        while buckets and buckets[0][0] <= now:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, ids = self._buckets.popleft()
        pop = self._outcomes.pop
        for message_id in ids:
            pop(message_id, None)

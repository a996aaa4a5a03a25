"""At-most-once: the outcome of each executed write, kept by message ID.

A repeat of a message ID is answered from here and not executed again. The
commands that need this (PUT, REMOVE, WIPEOUT) answer with an error code
only, so the error code is all that is kept: the reply is rebuilt on a hit.
Beside it, the ring slot of the write's key, so that a node taking over a
slot receives the slot's recent outcomes with its keys.

An entry costs the message ID and its dict slot, nothing more. Error code
and slot are packed into one int, and equal ints are shared (a fresh int
per entry would cost 32 B). Expiry is bucketed by whole seconds: a bucket
is only a count, because the dict keeps insertion order, so a bucket's IDs
are the first `count` keys of the dict when it is the oldest. The total is
also capped: past `max_entries` entries, or `max_bytes` of message IDs (a
client chooses their length), the oldest entries go early, which bounds
memory under any load.

Every reply to a client is made by `answer`, which counts it by errCode
(`answered`, for metrics) where the outcome is known, rather than reading
it back out of the bytes later.
"""

from __future__ import annotations

import math
from collections import deque
from itertools import islice
from typing import Any

from ringkv.wire.codec import encode_response

DEFAULT_RETENTION = 10.0  # seconds; the protocol asks for at least 5
DEFAULT_MAX_ENTRIES = 1_000_000  # ~100 MB at worst; 100k writes/s for 10 s
DEFAULT_MAX_BYTES = 128 << 20  # message IDs plus ENTRY_COST each
ENTRY_COST = 100  # an entry's dict slot and bytes object beyond the ID's own bytes
_SHARED_MAX = 4096  # distinct outcomes shared at once; a node writes to a few hundred slots


class ReplyCache:
    __slots__ = (
        "_buckets", "_outcomes", "_shared", "answered", "bytes", "hits", "max_bytes",
        "max_entries", "retention",
    )  # fmt: skip

    def __init__(
        self,
        retention: float = DEFAULT_RETENTION,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        # Values typed Any, not int: a compiled build (scripts/build-native) would
        # otherwise unbox each shared int and box a new one per entry.
        self._outcomes: dict[bytes, Any] = {}  # in the order of the buckets
        # [second the bucket's entries expire, how many], oldest first
        self._buckets: deque[list[int]] = deque()
        self._shared: dict[int, Any] = {}  # packed outcome -> the one int object for it
        self.retention = retention
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0  # the entries' message IDs plus ENTRY_COST each
        self.hits = 0  # repeats answered from here
        self.answered = [0] * 256  # replies made by answer(), by errCode

    def answer(self, message_id: bytes, err: int, **fields: Any) -> bytes:
        """A reply to a client (encode_response's fields), counted by errCode."""
        self.answered[err & 0xFF] += 1
        return encode_response(message_id, err, **fields)

    def __len__(self) -> int:
        return len(self._outcomes)

    def __contains__(self, message_id: bytes) -> bool:
        return message_id in self._outcomes

    def get(self, message_id: bytes) -> int | None:
        packed = self._outcomes.get(message_id)
        if packed is None:
            return None
        self.hits += 1
        return int(packed & 0xFF)

    def put(self, message_id: bytes, err: int, now: float, slot: int = -1) -> None:
        outcomes = self._outcomes
        if message_id in outcomes:
            return
        outcomes[message_id] = self._share(err | (slot + 1) << 8)  # error code and slot
        self.bytes += len(message_id) + ENTRY_COST
        expires = math.ceil(now + self.retention)
        buckets = self._buckets
        if buckets and buckets[-1][0] == expires:
            buckets[-1][1] += 1
        else:
            buckets.append([expires, 1])
        if len(outcomes) > self.max_entries or self.bytes > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        """Forget the oldest entries until the cache is within both of its caps."""
        outcomes, buckets = self._outcomes, self._buckets
        while outcomes and (len(outcomes) > self.max_entries or self.bytes > self.max_bytes):
            message_id = next(iter(outcomes))
            del outcomes[message_id]
            self.bytes -= len(message_id) + ENTRY_COST
            buckets[0][1] -= 1
            if not buckets[0][1]:
                buckets.popleft()

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
        _, count = self._buckets.popleft()
        outcomes = self._outcomes
        for message_id in list(islice(outcomes, count)):  # the oldest `count` IDs
            del outcomes[message_id]
            self.bytes -= len(message_id) + ENTRY_COST
        if not outcomes:
            self._outcomes = {}  # a dict does not shrink on deletes: let its table go

    def _share(self, packed: int) -> Any:
        shared = self._shared
        if len(shared) >= _SHARED_MAX:
            shared.clear()  # sharing starts over; kept entries keep their ints
        return shared.setdefault(packed, packed)

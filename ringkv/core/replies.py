"""At-most-once: replies kept by message ID for a retention window.

A repeat of a message ID is answered with the stored reply and not executed
again. Entries expire in insertion order (the retention is constant, so the
oldest entry always expires first) and the total size is capped: past the
cap the oldest entries go early, which bounds memory under any load.
"""

from __future__ import annotations

from collections import deque

DEFAULT_RETENTION = 10.0  # seconds; the protocol asks for at least 5
DEFAULT_MAX_BYTES = 64 << 20
_ENTRY_OVERHEAD = 200  # dict slot, deque slot, tuple, bytes headers


class ReplyCache:
    __slots__ = ("_order", "_replies", "max_bytes", "retention", "used")

    def __init__(
        self, retention: float = DEFAULT_RETENTION, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self._replies: dict[bytes, bytes] = {}
        self._order: deque[tuple[float, bytes]] = deque()
        self.retention = retention
        self.max_bytes = max_bytes
        self.used = 0

    def __len__(self) -> int:
        return len(self._replies)

    def get(self, message_id: bytes) -> bytes | None:
        return self._replies.get(message_id)

    def put(self, message_id: bytes, reply: bytes, now: float) -> None:
        if message_id in self._replies:
            return
        self._replies[message_id] = reply
        self._order.append((now + self.retention, message_id))
        self.used += len(message_id) + len(reply) + _ENTRY_OVERHEAD
        while self.used > self.max_bytes:
            self._evict_one()

    def expire(self, now: float) -> None:
        order = self._order
        while order and order[0][0] <= now:
            self._evict_one()

    def _evict_one(self) -> None:
        _, message_id = self._order.popleft()
        reply = self._replies.pop(message_id)
        self.used -= len(message_id) + len(reply) + _ENTRY_OVERHEAD

"""The chain write path: a head orders and stamps writes, members pass them down,
the tail answers the client and acknowledges up the path.

A write carries the path of nodes that applied it, and always moves on to
the first member of the *current* chain not on its path, so a chain that
changes while a write is in flight is still walked completely. It also
carries every node some member on its path meant it for (its targets), so a
member with a different view cannot end it early; and for `linger` seconds
after a node returns, the live node it pushed out of a chain (which may
still think itself the tail) gets every write as well. Members keep writes
not yet acknowledged and resend them every `resend_after`.

Stamps order writes per key across the cluster: a hybrid logical clock
(wall-clock microseconds, never behind the key's last stamp) in the high
bits and the head's index in the low 12 bits. A head that takes over after
a failure stamps later than anything its predecessor could have stamped, as
long as hosts' clocks agree to better than the failure-detection time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ringkv.core.replication.config import ReplicationConfig
from ringkv.core.replication.stats import ReplicationStats
from ringkv.core.replication.view import ChainView
from ringkv.core.replies import ReplyCache
from ringkv.core.storage import Storage
from ringkv.wire import Addr, Send, peer
from ringkv.wire.codec import Command, Err, KVRequest
from ringkv.wire.peer import Ack, Write

STAMP_NODE_BITS = 12
STAMP_NODE_MASK = (1 << STAMP_NODE_BITS) - 1


@dataclass
class _Pending:
    """A write passed on and not yet acknowledged: as received, with the path that
    has applied it and every node it is meant for, as sent."""

    write: Write
    path: tuple[int, ...]
    targets: tuple[int, ...]
    sent_at: float
    since: float


class ChainWrites:
    """Writes this node leads or passes on, until the tail has them."""

    def __init__(
        self, view: ChainView, servers: tuple[Addr, ...], storage: Storage, replies: ReplyCache,
        config: ReplicationConfig, stats: ReplicationStats, clock_offset: float,
    ) -> None:  # fmt: skip
        self.view = view
        self.servers = servers
        self.storage = storage
        self.replies = replies
        self.config = config
        self.stats = stats
        self.clock_offset = clock_offset
        self._pending: dict[bytes, _Pending] = {}
        self._last_stamp = 0
        # Views replaced when nodes joined, kept `linger` seconds: (until when, old view).
        self._former_views: list[tuple[float, frozenset[int]]] = []
        # Writes handed to a neighbour while unsynced: message ID -> (node, until when).
        # The neighbour holds their outcome; this node's pull does not bring it.
        self.handed_on: dict[bytes, tuple[int, float]] = {}
        # As the tail: writes to acknowledge, by member of their path. They leave
        # together, with the next datagram to that member or the next tick.
        self._acks: dict[int, list[bytes]] = {}

    # -- leading ------------------------------------------------------------------

    def lead(
        self, message_id: bytes, request: KVRequest, client: Addr, slot: int, now: float,
        may_remove: bool,
    ) -> list[Send]:  # fmt: skip
        """Order a client's write as head (or answer a retry of one).

        `may_remove`: whether this node knows if the key exists (it has the
        slot whole); a REMOVE it cannot decide gets no answer, and the client's
        retry comes after the pull.
        """
        pending = self._pending.get(message_id)
        if pending is not None:  # a retry of a write still on its way down
            return self._resend(pending, now)
        done = self.replies.get(message_id)
        if done is not None:
            return [(self.replies.answer(message_id, done), client)]
        key = request.key
        if request.command == Command.PUT:
            if not self.storage.fits(key, request.value):
                self.replies.put(message_id, Err.NO_SPACE, now, slot)
                return [(self.replies.answer(message_id, Err.NO_SPACE), client)]
            value: bytes | None = request.value
        else:
            if not may_remove:
                return []
            value = None
        # A remove of an absent key goes down the chain too: the tail must not
        # answer until earlier writes to the key, still on their way, are there.
        err = Err.OK if value is not None or self.storage.get(key) is not None else Err.NO_KEY
        stamp = self._next_stamp(key, now)
        self.storage.apply(key, value, request.version, stamp, now, slot)
        self.replies.put(message_id, err, now, slot)
        self.stats.writes_led += 1
        path = (self.view.index,)
        write = Write(message_id, client, err, key, value, request.version, stamp, path)
        return self._send(write, path, (), self._write_chain(slot, now), now)

    def stamp_at(self, when: float) -> int:
        """The lowest stamp a head could give a write at `when`."""
        return max(0, int((when + self.clock_offset) * 1_000_000)) << STAMP_NODE_BITS

    def _next_stamp(self, key: bytes, now: float) -> int:
        wall = int((now + self.clock_offset) * 1_000_000)
        floor = max(self._last_stamp, self.storage.stamp_of(key)) >> STAMP_NODE_BITS
        stamp = (max(wall, floor + 1) << STAMP_NODE_BITS) | self.view.index
        self._last_stamp = stamp
        return stamp

    # -- down the chain and back ------------------------------------------------

    def stamp_limit(self, now: float) -> int:
        """The latest stamp a correct head could have given by `now` (clock skew included)."""
        return self.stamp_at(now + self.config.max_clock_skew) | STAMP_NODE_MASK

    def on_replicate(self, write: Write, src: Addr, now: float) -> list[Send]:
        if write.stamp > self.stamp_limit(now):
            self.stats.refused_stamps += 1
            return []
        slot = self.view.slot_of(write.key)
        if not self.storage.apply(write.key, write.value, write.version, write.stamp, now, slot):
            if self.storage.stamp_of(write.key) < write.stamp:
                self.stats.refused_copies += 1  # over budget here: the chain goes on
        self.replies.put(write.message_id, write.err, now, slot)
        self.stats.replicated += 1
        index, path = self.view.index, write.path
        if index not in path:
            path = (*path, index)
        return self._send(write, path, write.targets, self._write_chain(slot, now), now)

    def _resend(self, pending: _Pending, now: float) -> list[Send]:
        """Pass an unacknowledged write down the chain as it is now."""
        chain = self._write_chain(self.view.slot_of(pending.write.key), now)
        return self._send(pending.write, pending.path, pending.targets, chain, now)

    def _send(
        self, write: Write, path: tuple[int, ...], targets: tuple[int, ...],
        chain: tuple[int, ...], now: float,
    ) -> list[Send]:  # fmt: skip
        """Send the write, applied by `path`, to the next member of `chain` not on it."""
        # Members earlier on the path may know of nodes this view does not rank in the
        # chain yet (or any longer): those not dead here get the write as well, even
        # a suspect, which may still think itself a member and serve reads.
        if targets and targets != chain:
            not_dead = self.view.not_dead
            chain += tuple(m for m in targets if m not in chain and m in not_dead)
        successor = next((m for m in chain if m not in path), None)
        message_id = write.message_id
        if successor is None:
            return self._finish(write, path)
        previous = self._pending.get(message_id)
        since = previous.since if previous else now
        self._pending[message_id] = _Pending(write, path, chain, now, since)
        return [(peer.encode_replicate(write, path, chain), self.servers[successor])]

    def _finish(self, write: Write, path: tuple[int, ...]) -> list[Send]:
        """The tail: the write is on every member; answer the client, and tell the
        path (soon: see take_acks)."""
        message_id = write.message_id
        self._pending.pop(message_id, None)
        index, acks = self.view.index, self._acks
        for member in path:
            if member != index:
                waiting = acks.get(member)
                if waiting is None:
                    acks[member] = [message_id]
                else:
                    waiting.append(message_id)
        return [(self.replies.answer(message_id, write.err), write.client)]

    def take_acks(self, members: Iterable[int] | None = None) -> list[Send]:
        """The ACKs waiting for these members (None: all of them), one message each
        where they fit. A member's predecessors resend a write only after
        `resend_after`, so an ACK may wait for a datagram going that way anyway,
        or for the next tick."""
        acks = self._acks
        if not acks:
            return []
        sends: list[Send] = []
        for member in list(acks) if members is None else [m for m in members if m in acks]:
            dest = self.servers[member]
            sends.extend((ack, dest) for ack in peer.encode_acks(acks.pop(member)))
        return sends

    def _write_chain(self, slot: int, now: float) -> tuple[int, ...]:
        """The chain, then live nodes that a node's return pushed out of it lately.

        A node pushed out of a chain may not know it yet and still serve reads
        as the tail; until every view has caught up it gets every write, and
        the last of them answers the client.
        """
        view = self.view
        chain = view.chain(slot)
        if not self._former_views:
            return chain
        if self._former_views[0][0] <= now:
            self._former_views = [(t, v) for t, v in self._former_views if t > now]
        extra: list[int] = []
        for _, former in self._former_views:
            for member in view.chain_in(slot, former):
                if member in view.alive and member not in chain and member not in extra:
                    extra.append(member)
        return (*chain, *extra) if extra else chain

    def on_ack(self, ack: Ack, src: Addr, now: float) -> list[Send]:
        pending = self._pending
        for message_id in ack.message_ids:
            pending.pop(message_id, None)
        return []

    def knows(self, message_id: bytes) -> bool:
        """Whether a write of this ID is on its way down from here, or was handed
        on to another node to lead: a retry of it must take the normal path."""
        return message_id in self._pending or message_id in self.handed_on

    def pending_count(self) -> int:
        """Writes this node sent on that are not yet acknowledged."""
        return len(self._pending)

    def in_flight(self, key: bytes) -> bool:
        """Is a write of the key on its way down from here, not yet acknowledged?"""
        return bool(self._pending) and any(p.write.key == key for p in self._pending.values())

    # -- views and time -----------------------------------------------------------

    def note_view(self, old_alive: frozenset[int], now: float) -> None:
        """Nodes joined: members of the old view's chains get writes for `linger`."""
        if self.view.alive - old_alive:
            self._former_views.append((now + self.config.linger, old_alive))

    def has_timers(self) -> bool:
        return bool(self._pending or self.handed_on or self._acks)

    def on_tick(self, now: float) -> list[Send]:
        if self.handed_on:
            for message_id, (_, until) in list(self.handed_on.items()):
                if until <= now:
                    del self.handed_on[message_id]
        sends = self.take_acks()
        config = self.config
        for message_id, pending in list(self._pending.items()):
            if now - pending.since > config.give_up_after:
                del self._pending[message_id]
            elif now - pending.sent_at >= config.resend_after:
                sends.extend(self._resend(pending, now))
        return sends

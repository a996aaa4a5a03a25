"""Chain replication over the ring, and key transfer when membership changes.

Roles come from each node's own view of the ring: for a key's chain
(head … tail), the head orders writes, every member applies them in turn,
and the tail answers the client and acknowledges to every node that applied
the write. A write carries the path of nodes that applied it, and always
moves on to the first member of the *current* chain not on its path, so a
chain that changes while a write is in flight is still walked completely.
Members keep writes not yet acknowledged and resend them on every tick.

Views differ for a moment after every change, and a node that has not yet
seen a change acts on the old chain. These rules keep such a node from
serving a stale read. A write carries every node some member on its path
meant it for (its targets), so a member with a different view cannot end it
early; for LINGER seconds after a node returns, the live node it pushed out
of a chain (which may still think itself the tail) gets every write as well;
the tail never leads a write (it would expose it before the others have
it), only a member of the key's chain serves a read (and one that is not the
tail in its view none of a key with a write still on its way down), and a
node whose ticks ran late serves none as the tail until a member has sent it
the current view (`in_doubt`: the others may have suspected it and routed
writes around it).

Stamps order writes per key across the cluster: a hybrid logical clock
(wall-clock microseconds, never behind the key's last stamp) in the high
bits and the head's index in the low 12 bits. A head that takes over after
a failure stamps later than anything its predecessor could have stamped, as
long as hosts' clocks agree to better than the failure-detection time.

Key transfer is by ring slot. A node that becomes a member of a slot's
chain (a node died and it is next on the ring, or it came back) pulls the
slot from every other member and, until all have answered, does not serve
the slot: reads go to its predecessor and writes to its successor, which act
for it. A member that does not yet count the puller in the chain (its view
is older, so it may still send writes around the puller) says so, and the
slot is pulled from it again later. A node that held its slots all along
and only may have missed writes (it was paused or suspected) asks just for
what was stamped since, and asks the node that stood in for it as well (its
whole chain may have been away with it, as stale as it is); until then it
answers no read that would end on it. An unsynced node leads no REMOVE:
whether the key exists is known only once the slot is pulled. The head of a
changed chain asks its new members to pull at once (a HANDOFF hint): a member
still waiting to pull the slot then pulls it from every member without
waiting out JOIN_DELAY. Pulls that may restore a missing copy go before
settling pulls in the queue. After every view change, once views have had
time to agree, each node pulls the slots whose chain changed once
more, so a write that went around a node because of a late view still
reaches it; and a node holding keys of slots it is no longer a member of
asks the members to pull them (HANDOFF) and drops them only when every
member has confirmed.

A source says which of the requested slots it is not sure of: it is still
pulling them, holds them, or is no member of them. A node whose pull got
no answer from a source sure of the slot (every copy of it was away at
once, say three suspended together) *holds* the slot: it serves what was
written since it took the slot over, and neither reads nor removes older
keys, which get no answer, so the client times out rather than reading a
key as absent or old. It records the members that left the chain while it
was unsure of the slot, and vouches for them when they return: their copy
from when they left and its own are whole together -- if theirs was. So a
node that leaves (paused, suspected) notes from which stamp on it had every
write of each slot, and a vouch makes the slot whole from there on only; its
copies have a gap from then on, so its holds and vouches end, and each slot
is held or not again by what its pull on return finds. A held slot is pulled
in full every ORPHAN_RETRY; it is released by the answer of a member sure of
it, or, once every node has been back for LINGER, by the answers of all
members.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ringkv.core.membership import (
    DoubtChanged,
    MembershipEvent,
    Paused,
    Suspected,
    ViewChanged,
)
from ringkv.core.replies import ReplyCache
from ringkv.core.ring import Ring, key_position
from ringkv.core.storage import TOMBSTONE_TTL, Storage
from ringkv.wire import Addr, Send, peer
from ringkv.wire.codec import Command, Err, KVRequest, encode_response
from ringkv.wire.peer import (
    Ack,
    Handoff,
    SyncConfirm,
    SyncData,
    SyncDone,
    SyncRequest,
    Write,
)

MAX_HOPS = 2  # a request forwarded this many times is executed where it lands
RESEND_AFTER = 0.3  # seconds without an ACK before a write is sent down again
GIVE_UP_AFTER = 30.0  # a write nobody acknowledges for this long is dropped
SYNC_RETRY = 1.0  # a transfer without a batch for this long is asked for again
SYNC_CHUNK = 128  # slots per transfer request (~1.5 MB at 40,000 keys of 500 B on 40 nodes)
MAX_TRANSFERS = 2  # requests in flight per node; the rest wait their turn, so a
# cluster-wide re-pull cannot flood receive buffers into a retry storm
# Seconds after the last view change before the settling pull: longer than
# the 2 s between batches of failures, so that it runs once they are over
# rather than beside the repair of each.
SETTLE = 3.0
JOIN_DELAY = 0.5  # seconds from joining a chain to pulling it: views agree by then
HANDOFF_RETRY = 2.0  # seconds between hints to members that have not confirmed
LINGER = 10.0  # seconds a live node pushed out of a chain still gets its writes
# A node that held a slot all along and may only have missed writes (it was
# paused, or suspected) pulls just the entries stamped since it may have missed
# them, less this margin: longer than a write can stay in flight (GIVE_UP_AFTER)
# plus failure detection, and hosts' clocks must agree to better than it.
LOOKBACK = 60.0
ORPHAN_RETRY = 1.0  # seconds between asks of the chain for a held slot
NO_FLOOR = (1 << 64) - 1  # a floor stamp: not even the latest write is sure to be here
_STAMP_NODE_BITS = 12


@dataclass
class _Pending:
    write: Write
    sent_at: float
    since: float


@dataclass
class _Transfer:
    source: int
    slots: list[int]
    gating: bool  # the slots are not served until it completes
    sent_at: float  # when requested, or when the last batch came in
    confirm: bool = False  # tell the source when done (a handoff)
    since: int = 0  # only entries stamped since (0: all)
    received: set[int] = field(default_factory=set)
    expected: int | None = None
    strangers: tuple[int, ...] = ()  # slots the source leaves us out of
    # Slots the source may lack writes of -> the stamp from which on it has every write.
    unsure: dict[int, int] = field(default_factory=dict)
    vouched: frozenset[int] = frozenset()  # of those, the source vouches for us
    asked_at: float = 0.0  # when requested


@dataclass
class ReplicationStats:
    writes_led: int = 0
    replicated: int = 0
    refused_copies: int = 0
    transfers_done: int = 0
    transfers_retried: int = 0  # no batch for SYNC_RETRY: lost datagrams or a slow source
    keys_received: int = 0


class Replication:
    def __init__(
        self,
        index: int,
        servers: tuple[Addr, ...],
        ring: Ring,
        replicas: int,
        storage: Storage,
        replies: ReplyCache,
        clock_offset: float = 0.0,
        alive: frozenset[int] | None = None,
    ) -> None:
        self.index = index
        self.servers = servers
        self.ring = ring
        self.replicas = replicas
        self.storage = storage
        self.replies = replies
        self.clock_offset = clock_offset
        self.stats = ReplicationStats()
        # Healthy nodes (alive, not suspected): chains are made of these.
        self.alive = frozenset(range(len(servers))) if alive is None else alive
        self.not_dead: frozenset[int] = self.alive  # alive or suspect: may still serve
        self._my_slots = self._slots_of_mine(self.alive)
        self._pending: dict[bytes, _Pending] = {}
        self._last_stamp = 0
        self._request_ids = itertools.count(1)
        self._transfers: dict[int, _Transfer] = {}  # in flight, by request id
        # Slots waiting for a free place, by (source, gating, confirm, since): a slot asked
        # for again while it waits is not asked for twice.
        self._queue: dict[tuple[int, bool, bool, int], set[int]] = {}
        self._unsynced: dict[int, set[int]] = {}  # slot -> sources still to answer
        # Unsynced slots this node held before it was paused or suspected, or gained
        # within LINGER of its return (its view was old: the slot may have looked
        # like another's): their gating pull asks the stand-in that took its place.
        self._returning: set[int] = set()
        self._returned_until = -math.inf
        self._marked_at: dict[int, float] = {}  # unsynced slot -> when it was marked
        # Unsynced slots marked on start (a fresh process: nothing was written before
        # the cluster had it), and the lowest floor a source gave for each unsynced
        # slot (0: a source sure of it answered).
        self._fresh: set[int] = set()
        self._best_floor: dict[int, int] = {}
        # Held slots: no source was sure of them (every copy was away at once). A key
        # stamped before the floor is neither read nor removed here until a member
        # that is sure of the slot answers a full pull: slot -> floor stamp.
        self._orphaned: dict[int, int] = {}
        self._orphan_check_at: float | None = None
        # Unsure slots -> the members that left their chain meanwhile: the last to
        # have the slot, whole if they were sure of it. We vouch for them.
        self._holders: dict[int, set[int]] = {}
        self._held_until: dict[int, float] = {}  # slots held when they stopped being ours
        # Since when every node has been alive in our view (None: not now), and the
        # members that answered a full pull of a held slot asked LINGER after that.
        self._whole_since: float | None = None
        self._release: dict[int, set[int]] = {}
        self._left_sure: dict[int, float] = {}  # slots we were sure of until pushed out
        # When we last left (paused, suspected): our slots -> the stamp from which on
        # we had every write of each, up to then. A vouch counts on it.
        self._left_floors: dict[int, int] = {}
        self._delegated: set[int] = set()  # unsynced slots whose writes went to a neighbour
        # Writes handed to a neighbour while unsynced: message ID -> (node, until when).
        # The neighbour holds their outcome; this node's pull does not bring it.
        self._handed_on: dict[bytes, tuple[int, float]] = {}
        self._settle_at: float | None = None
        self._settle_slots: set[int] = set()
        self._deferred: dict[int, float] = {}  # unsynced slot -> when to pull it
        self._since: dict[int, int] = {}  # unsynced slot -> oldest stamp it may lack
        self._settle_since = 0
        self._handoff: dict[int, set[int]] = {}  # foreign slot -> members yet to confirm
        self._handoff_at: float | None = None
        self._roles: tuple[float, dict[str, int]] = (0.0, {})  # (recount after, counts)
        # Views replaced when nodes joined, kept LINGER seconds: (until when, old view).
        self._former_views: list[tuple[float, frozenset[int]]] = []
        # This node ran late and has not heard the others' view since: it may have
        # been suspected and routed around, so it serves no read as the tail.
        self.in_doubt = False

    # -- client requests ------------------------------------------------------

    def on_key_request(
        self, message_id: bytes, request: KVRequest, data: bytes, client: Addr, hops: int,
        now: float,
    ) -> list[Send]:  # fmt: skip
        key = request.key
        slot = self.ring.slot_of(key_position(key))
        chain = self.ring.chain_at(slot, self.alive, self.replicas)
        is_read = request.command == Command.GET
        forward_to = self._route(slot, chain, is_read, hops)
        if not is_read and hops < MAX_HOPS + self.replicas:
            # A retry of a write this node handed on goes where its outcome is.
            forward_to = self._handed_on.get(message_id, (forward_to,))[0]
            if forward_to is not None and slot in self._unsynced and forward_to != chain[0]:
                self._handed_on[message_id] = (forward_to, now + self.replies.retention)
        if forward_to is not None:
            return [(peer.encode_forward(client, data, hops + 1), self.servers[forward_to])]
        if not self._may_execute(chain, is_read):
            # Views disagree: hand it to the member that may (the tail for a read, the
            # tail's predecessor for a write) while a few hops are left, else drop it.
            fallback = chain[-1] if is_read else chain[-2]
            if hops >= MAX_HOPS + self.replicas + 2 or fallback == self.index:
                return []
            return [(peer.encode_forward(client, data, hops + 1), self.servers[fallback])]
        if is_read:
            if self._may_be_old(slot, key) or self._uncommitted(chain, key):
                return []  # no answer: the client's retry comes after the pull
            return [(self._read(message_id, key), client)]
        return self._lead_write(message_id, request, client, slot, chain, now)

    def _route(self, slot: int, chain: tuple[int, ...], is_read: bool, hops: int) -> int | None:
        """Where to send a request on, or None to execute it here.

        First to the chain's tail (reads) or head (writes) as this node sees
        the chain; views can differ for a moment, so after MAX_HOPS a member
        executes what reaches it. A node still pulling the slot hands reads to
        its predecessor and writes to its successor, unless that is the tail.
        The hop limit ends any loop that differing views could make.
        """
        if hops >= MAX_HOPS + self.replicas:
            return None
        target = chain[-1] if is_read else chain[0]
        member = self.index in chain
        if target != self.index and (hops < MAX_HOPS or not member):
            return target
        if slot in self._unsynced or (is_read and self.in_doubt):
            neighbour = _neighbour(chain, self.index, before=is_read)
            if not is_read and neighbour is not None:
                if neighbour == chain[-1]:
                    return None  # the tail must not lead: act for the chain here
                self._delegated.add(slot)
            return neighbour
        return None

    def _may_execute(self, chain: tuple[int, ...], is_read: bool) -> bool:
        """Whatever the hops: reads only on a member, writes never led by the tail.

        The tail exposes what it applies, so a write it led would be readable
        before the rest of the chain has it; a non-member may lack writes.
        """
        if is_read:
            return self.index in chain
        return len(chain) < 2 or chain[-1] != self.index

    def _uncommitted(self, chain: tuple[int, ...], key: bytes) -> bool:
        """Would a read here, not at the tail (views differ), expose a write that the
        tail has not acknowledged? A later read at the tail could then go back."""
        if chain[-1] == self.index or not self._pending:
            return False
        return any(p.write.key == key for p in self._pending.values())

    def _read(self, message_id: bytes, key: bytes) -> bytes:
        entry = self.storage.get(key)
        if entry is None:
            return encode_response(message_id, Err.NO_KEY)
        return encode_response(message_id, Err.OK, value=entry[0], version=entry[1])

    def _lead_write(
        self, message_id: bytes, request: KVRequest, client: Addr, slot: int,
        chain: tuple[int, ...], now: float,
    ) -> list[Send]:  # fmt: skip
        pending = self._pending.get(message_id)
        if pending is not None:  # a retry of a write still on its way down
            return self._send_down(pending.write, now)
        done = self.replies.get(message_id)
        if done is not None:
            return [(encode_response(message_id, done), client)]
        key = request.key
        if request.command == Command.PUT:
            if not self.storage.fits(key, request.value):
                self.replies.put(message_id, Err.NO_SPACE, now, slot)
                return [(encode_response(message_id, Err.NO_SPACE), client)]
            value: bytes | None = request.value
        else:
            if slot in self._unsynced or self._holds(slot, key):
                return []  # whether the key exists is known once the slot is pulled
            value = None
        # A remove of an absent key goes down the chain too: the tail must not
        # answer until earlier writes to the key, still on their way, are there.
        err = Err.OK if value is not None or self.storage.get(key) is not None else Err.NO_KEY
        stamp = self._next_stamp(key, now)
        self.storage.apply(key, value, request.version, stamp, now, slot)
        self.replies.put(message_id, err, now, slot)
        self.stats.writes_led += 1
        write = Write(message_id, client, err, key, value, request.version, stamp, (self.index,))
        return self._send_down(write, now)

    def _stamp_at(self, when: float) -> int:
        """The lowest stamp a head could give a write at `when`."""
        return max(0, int((when + self.clock_offset) * 1_000_000)) << _STAMP_NODE_BITS

    def _next_stamp(self, key: bytes, now: float) -> int:
        wall = int((now + self.clock_offset) * 1_000_000)
        floor = max(self._last_stamp, self.storage.stamp_of(key)) >> _STAMP_NODE_BITS
        stamp = (max(wall, floor + 1) << _STAMP_NODE_BITS) | self.index
        self._last_stamp = stamp
        return stamp

    # -- down the chain and back ------------------------------------------------

    def on_replicate(self, write: Write, src: Addr, now: float) -> list[Send]:
        slot = self.ring.slot_of(key_position(write.key))
        if not self.storage.apply(write.key, write.value, write.version, write.stamp, now, slot):
            if self.storage.stamp_of(write.key) < write.stamp:
                self.stats.refused_copies += 1  # over budget here: the chain goes on
        self.replies.put(write.message_id, write.err, now, slot)
        self.stats.replicated += 1
        if self.index not in write.path:
            write = write.routed((*write.path, self.index), write.targets)
        return self._send_down(write, now)

    def _send_down(self, write: Write, now: float) -> list[Send]:
        """Pass a write to the next member that has not applied it, or finish it here."""
        slot = self.ring.slot_of(key_position(write.key))
        chain = self._write_chain(slot, now)
        # Members earlier on the path may know of nodes this view does not rank in the
        # chain yet (or any longer): those not dead here get the write as well, even
        # a suspect, which may still think itself a member and serve reads.
        not_dead = self.not_dead
        chain += tuple(m for m in write.targets if m not in chain and m in not_dead)
        write = write.routed(write.path, chain)
        successor = next((m for m in chain if m not in write.path), None)
        if successor is None:
            return self._finish(write)
        previous = self._pending.get(write.message_id)
        since = previous.since if previous else now
        self._pending[write.message_id] = _Pending(write, now, since)
        return [(peer.encode_replicate(write), self.servers[successor])]

    def _finish(self, write: Write) -> list[Send]:
        """The tail: the write is on every member; answer the client, tell the path."""
        self._pending.pop(write.message_id, None)
        sends: list[Send] = [(encode_response(write.message_id, write.err), write.client)]
        ack = peer.encode_ack(write.message_id)
        sends.extend((ack, self.servers[m]) for m in write.path if m != self.index)
        return sends

    def _write_chain(self, slot: int, now: float) -> tuple[int, ...]:
        """The chain, then live nodes that a node's return pushed out of it lately.

        A node pushed out of a chain may not know it yet and still serve reads
        as the tail; until every view has caught up it gets every write, and
        the last of them answers the client.
        """
        chain = self.ring.chain_at(slot, self.alive, self.replicas)
        if not self._former_views:
            return chain
        if self._former_views[0][0] <= now:
            self._former_views = [(t, v) for t, v in self._former_views if t > now]
        extra: list[int] = []
        for _, view in self._former_views:
            for member in self.ring.chain_at(slot, view, self.replicas):
                if member in self.alive and member not in chain and member not in extra:
                    extra.append(member)
        return (*chain, *extra) if extra else chain

    def on_ack(self, ack: Ack, src: Addr, now: float) -> list[Send]:
        self._pending.pop(ack.message_id, None)
        return []

    # -- membership changes -----------------------------------------------------

    def on_membership(self, events: Sequence[MembershipEvent], now: float) -> list[Send]:
        """What membership learnt in one call, taken in the order that keeps reads safe.

        A pause or a suspicion first: every slot is pulled again, and a pause
        adopts the view it wakes up to without counting it as a change. Then
        doubt and who is not dead; then the view, if it changed.
        """
        view: ViewChanged | None = None
        for event in events:
            if isinstance(event, ViewChanged):
                view = event
            elif isinstance(event, DoubtChanged):
                self.in_doubt = event.in_doubt
        pause = next((e for e in reversed(events) if isinstance(e, Paused)), None)
        if pause is not None:
            if view is not None:
                self.alive = view.healthy
            self.on_pause(pause.gap, now)
        if any(isinstance(event, Suspected) for event in events):
            self.on_suspected(now)
        if view is None:
            return []
        self.not_dead = view.alive
        return self.on_view(view.healthy, now) if view.healthy != self.alive else []

    def on_view(self, alive: frozenset[int], now: float) -> list[Send]:
        """The set of live nodes changed: pull newly owned slots, plan the settling pull."""
        old_alive, self.alive = self.alive, alive
        if alive - old_alive:
            self._former_views.append((now + LINGER, old_alive))
        old_slots, self._my_slots = self._my_slots, self._slots_of_mine(alive)
        gained = self._my_slots - old_slots
        self._note_left_sure(old_slots - self._my_slots, now)
        ring, r = self.ring, self.replicas
        changed = {
            s
            for s in self._my_slots
            if ring.chain_at(s, alive, r) != ring.chain_at(s, old_alive, r)
        }
        self._plan_settle(changed, now - LOOKBACK, now)
        for slot in list(self._unsynced):
            if slot not in self._my_slots:
                self._synced(slot)
        self._mark_unsynced(gained, now)
        if now < self._returned_until:
            self._returning |= gained
        self._note_holders(old_alive, now)
        self._whole_since = now if len(alive) == len(self.servers) else None
        sends = self._hint_new_members(changed, old_alive)
        return sends + self._drop_transfers_from_departed(now)

    def _note_left_sure(self, lost: set[int], now: float) -> None:
        """Slots we were sure of and are pushed out of: still sure for LINGER."""
        left = self._left_sure
        for slot in [s for s, until in left.items() if until <= now or s in self._my_slots]:
            del left[slot]
        for slot in lost:
            if slot not in self._unsynced and slot not in self._orphaned:
                left[slot] = now + LINGER

    def _drop_transfers_from_departed(self, now: float) -> list[Send]:
        """Free the places of transfers from nodes that left the view.

        Their batches will not come; waiting SYNC_RETRY for them would hold up
        the pulls queued behind, while the next failure may strike.
        """
        departed = [rid for rid, t in self._transfers.items() if t.source not in self.alive]
        if not departed:
            return []
        for request_id in departed:
            transfer = self._transfers.pop(request_id)
            if transfer.gating:
                self._give_up_on(transfer, now)
        return self._pump(now)

    def _hint_new_members(self, changed: set[int], old_alive: frozenset[int]) -> list[Send]:
        """As head of a changed chain, ask its new members to pull from us at once.

        A new member pulls on its own once it learns of the change, but which
        node learns first is chance; while the copies are too few, the next
        failure can take the last of them. A hint is a HANDOFF: the receiver
        pulls the slots from us without waiting.
        """
        ring, alive, r, me = self.ring, self.alive, self.replicas, self.index
        hints: dict[int, list[int]] = {}
        for slot in changed:
            chain = ring.chain_at(slot, alive, r)
            if chain[0] != me or slot in self._unsynced:
                continue  # one hint per chain, and only from a member that has the slot
            before = ring.chain_at(slot, old_alive, r)
            for member in chain:
                if member not in before:
                    hints.setdefault(member, []).append(slot)
        return [
            (peer.encode_slots(Handoff(me, tuple(sorted(slots)))), self.servers[member])
            for member, slots in hints.items()
        ]

    def _plan_settle(self, slots: set[int], missed_since: float, now: float) -> None:
        """Pull these slots again SETTLE after the last change, what is stamped since then."""
        since = self._stamp_at(missed_since)
        self._settle_since = since if self._settle_at is None else min(self._settle_since, since)
        self._settle_slots |= slots
        self._settle_at = now + SETTLE

    def on_start(self, now: float) -> None:
        """A new process may replace one that crashed: pull every slot before serving it."""
        self._mark_unsynced(self._my_slots, now)
        self._fresh |= set(self._unsynced)

    def on_pause(self, gap: float, now: float) -> None:
        """This node was stopped: nothing it holds can be trusted until pulled again."""
        missed_since = now - gap - LOOKBACK
        wiped = gap > TOMBSTONE_TTL
        self._note_departure(now, wiped)
        if wiped:
            self.storage.wipe()  # its tombstones may be gone elsewhere: old copies must go
            missed_since = -self.clock_offset  # wiped: everything is missing (stamp 0 on)
        self._plan_settle(self._my_slots, missed_since, now)
        self._mark_unsynced(self._my_slots, now, self._stamp_at(missed_since))
        self._returned(now)

    def on_suspected(self, now: float) -> None:
        """Others suspected this node and may have routed writes around it: re-pull."""
        self._note_departure(now)
        self._mark_unsynced(self._my_slots, now, self._stamp_at(now - LOOKBACK))
        self._returned(now)

    def _note_departure(self, now: float, wiped: bool = False) -> None:
        """Others count this node as gone: note how whole its copy of each slot was.

        A node may be vouched for on its return (see _holders): the vouch makes
        a slot whole only from the floor of the node's own copy on -- 0 for a
        slot it had whole when it left, the floor of a hold or of a pull under
        way, none for a slot it did not have (the others counted it a member
        before it knew) or a wiped store. Its copies have a gap from when it
        left: its holds say nothing of now, and it vouches for nobody.
        """
        mine: set[int] = set() if wiped else self._my_slots
        self._left_floors = {slot: self._floor_for(slot, now) for slot in mine}
        for slot in self._unsynced:
            self._marked_at[slot] = now  # every write comes here again from now on only
        self._orphaned.clear()
        self._holders.clear()
        self._release.clear()
        self._left_sure.clear()

    def _returned(self, now: float) -> None:
        """Back from a pause or a suspicion: pull from stand-ins too, for LINGER."""
        self._returning |= set(self._unsynced)
        self._returned_until = now + LINGER

    def _note_holders(self, old_alive: frozenset[int], now: float) -> None:
        """Record who left the chains of slots we are not sure of; let go of holds
        on slots no longer ours after LINGER (returning holders may ask us)."""
        ring, alive, r = self.ring, self.alive, self.replicas
        unsure = {s for s in self._unsynced if s not in self._fresh} | set(self._orphaned)
        # Just back, our view is old: who it loses now left long ago.
        stale_view = now < self._returned_until
        for slot in unsure:
            if slot not in self._my_slots:
                self._held_until.setdefault(slot, now + LINGER)
                continue
            self._held_until.pop(slot, None)
            if stale_view:
                continue
            gone = {m for m in ring.chain_at(slot, old_alive, r) if m not in alive}
            if gone:
                self._holders.setdefault(slot, set()).update(gone)
        self._expire_holds(now)

    def _expire_holds(self, now: float) -> None:
        for slot, until in list(self._held_until.items()):
            if until <= now:
                del self._held_until[slot]
                if slot not in self._my_slots:
                    self._end_hold(slot)

    def _mark_unsynced(self, slots: set[int], now: float, since: int = 0) -> None:
        """Stop serving these slots now; pull them once views have had time to agree.

        Pulling at once could miss writes that nodes with an older view still
        send around this node; JOIN_DELAY later most views agree, and the
        settling pull after the last change catches what still went around.
        """
        if len(self.alive) < 2:
            return  # nobody to pull from: nothing to wait for
        due = now + JOIN_DELAY
        unsynced, since_of = self._unsynced, self._since
        for slot in slots:
            if slot in unsynced:
                since_of[slot] = min(since_of.get(slot, 0), since)
            else:
                unsynced[slot] = set()
                since_of[slot] = since
                self._marked_at[slot] = now
                if slot not in self._orphaned:
                    self._holders.pop(slot, None)  # from an earlier spell of doubt
            self._deferred.setdefault(slot, due)

    def _pull_deferred(self, now: float) -> list[Send]:
        due = [slot for slot, when in self._deferred.items() if when <= now]
        for slot in due:
            del self._deferred[slot]
        return self._pull(set(due) & self._my_slots, now, gating=True) if due else []

    def _slots_of_mine(self, alive: frozenset[int]) -> set[int]:
        return self.ring.slots_with(self.index, alive, self.replicas)

    def _pull(self, slots: set[int], now: float, gating: bool, since: int = 0) -> list[Send]:
        if gating and slots:
            since = min(self._since.get(slot, 0) for slot in slots)
        by_source: dict[int, list[int]] = {}
        for slot in sorted(slots):
            sources = [
                m for m in self.ring.chain_at(slot, self.alive, self.replicas) if m != self.index
            ]
            if gating:
                if slot in self._returning:
                    sources += self._stand_ins(slot, sources)
                if sources:
                    self._unsynced[slot] = set(sources)
                else:
                    self._synced(slot)
            for source in sources:
                by_source.setdefault(source, []).append(slot)
        for source, source_slots in by_source.items():
            self._enqueue(source, source_slots, gating, since=since)
        return self._pump(now)

    def _stand_ins(self, slot: int, sources: list[int]) -> list[int]:
        """Who may have kept the slot in this node's place while it was away.

        Its whole chain may have been away with it and be as stale as it is:
        the next R live nodes after the chain stood in for up to R members.
        """
        me, r = self.index, self.replicas
        away = self.ring.chain_at(slot, self.alive, 2 * r)
        return [m for m in away if m not in sources and m != me]

    def _synced(self, slot: int) -> None:
        self._unsynced.pop(slot, None)
        self._returning.discard(slot)
        self._fresh.discard(slot)
        self._marked_at.pop(slot, None)
        self._best_floor.pop(slot, None)

    def _pulled(self, slot: int, now: float) -> None:
        """Every source answered or left: serve the slot, held if none was sure of it.

        Every copy of it was away at once (suspended, say): the keys this node
        lacks may be on nodes that come back. Reading them as absent would be
        a lie, so until a member sure of the slot answers, keys stamped before
        the slot came here get no answer (the client times out) and only what
        was written since is served.
        """
        best = self._best_floor.get(slot, NO_FLOOR)
        orphan = slot not in self._fresh and best != 0
        # We have every write since we joined the chain, and all a source had. What
        # we held before we left is whole only up to then: a vouch counted it in.
        floor = min(self._stamp_at(self._marked_at.get(slot, now)), best)
        self._synced(slot)
        if orphan:
            self._orphaned[slot] = floor
            if self._orphan_check_at is None:
                self._orphan_check_at = now + ORPHAN_RETRY
        else:
            self._end_hold(slot)

    def _holds(self, slot: int, key: bytes) -> bool:
        floor = self._orphaned.get(slot)
        return floor is not None and self.storage.stamp_of(key) < floor

    def _may_be_old(self, slot: int, key: bytes) -> bool:
        """May our copy of the key be older than a write some client was told of?

        Asked of a read about to be served here. While unsynced, a read ends
        here only if nobody before us in the chain can take it: every member
        is pulling the slot. That is safe on a fresh start (nothing was written
        before), not on a return from a pause or a suspicion, nor on a slot
        gained because its members left; nor is a held slot's older key.
        """
        unsure = slot in self._unsynced and slot not in self._fresh
        return unsure or self._holds(slot, key)

    def _enqueue(
        self, source: int, slots: list[int], gating: bool, confirm: bool = False, since: int = 0
    ) -> None:
        self._queue.setdefault((source, gating, confirm, since), set()).update(slots)

    def _pump(self, now: float) -> list[Send]:
        """Send queued transfer requests while fewer than MAX_TRANSFERS are in flight."""
        sends: list[Send] = []
        while self._queue and len(self._transfers) < MAX_TRANSFERS:
            key, waiting = self._next_queued()
            source, gating, confirm, since = key
            chunk = sorted(waiting)[:SYNC_CHUNK]
            waiting.difference_update(chunk)
            if not waiting:
                del self._queue[key]
            transfer = _Transfer(source, chunk, gating, 0.0, confirm, since)
            if transfer.source not in self.alive:
                if transfer.gating:
                    self._give_up_on(transfer, now)
                continue
            request_id = next(self._request_ids)
            transfer.sent_at = transfer.asked_at = now
            self._transfers[request_id] = transfer
            request = peer.encode_sync_request(
                SyncRequest(request_id, self.index, since, tuple(transfer.slots))
            )
            sends.append((request, self.servers[transfer.source]))
        return sends

    def _next_queued(self) -> tuple[tuple[int, bool, bool, int], set[int]]:
        """The oldest queued pull that may restore a missing copy, else the oldest settling pull.

        Pulls of slots not yet served and pulls asked for by a head's hint or a
        handoff may bring copies the chain lacks; a settling pull only
        double-checks copies already in place, and must not delay a repair
        racing the next failure.
        """
        for item in self._queue.items():
            _, gating, confirm, _ = item[0]
            if gating or confirm:
                return item
        return next(iter(self._queue.items()))

    # -- transfer: serving and receiving ------------------------------------------

    def on_sync_request(self, request: SyncRequest, src: Addr, now: float) -> list[Send]:
        request_id, requester, since, slots = request
        wanted = set(slots)
        entries = [
            (key, value, version, stamp)
            for key, (value, version, stamp) in self.storage.entries_in(wanted)
            if stamp >= since
        ]
        outcomes = self.replies.outcomes_in(wanted)
        chain_at, alive, r = self.ring.chain_at, self.alive, self.replicas
        strangers = [s for s in slots if requester not in chain_at(s, alive, r)]
        unsure = {s: f for s in slots if (f := self._floor_for(s, now))}
        # It left the chain while we were unsure: its copy until then, ours since.
        vouched = {s for s in unsure if requester in self._holders.get(s, ())}
        batches = peer.encode_sync_batches(
            request_id, entries, outcomes, strangers, unsure, vouched
        )
        return [(batch, src) for batch in batches]

    def _floor_for(self, slot: int, now: float) -> int:
        """The stamp from which on our copy of the slot has every write: 0 if
        it is whole.

        Not whole if we are still pulling it (every write since we joined its
        chain came to us) or hold it. Nor if we are no member of it, unless we
        were one, sure of it, until less than LINGER ago (writes still come to
        us that long).
        """
        if slot in self._unsynced:
            return self._stamp_at(self._marked_at.get(slot, now)) or 1
        if slot in self._orphaned:
            return self._orphaned[slot]
        if slot in self._my_slots or self._left_sure.get(slot, -math.inf) > now:
            return 0
        return NO_FLOOR

    def on_sync_data(self, batch: SyncData, src: Addr, now: float) -> list[Send]:
        request_id, number = batch.request_id, batch.number
        transfer = self._transfers.get(request_id)
        if transfer is None or number in transfer.received:
            return []
        transfer.sent_at = now  # progress: a large transfer is not asked for again
        for key, value, version, stamp in batch.entries:
            if self.storage.apply(key, value, version, stamp, now):
                self.stats.keys_received += 1
        for message_id, err, slot in batch.outcomes:
            self.replies.put(message_id, err, now, slot)
        transfer.received.add(number)
        return self._maybe_complete(request_id, transfer, now)

    def on_sync_done(self, done: SyncDone, src: Addr, now: float) -> list[Send]:
        transfer = self._transfers.get(done.request_id)
        if transfer is None:
            return []
        transfer.expected = done.batches
        transfer.strangers, transfer.unsure, transfer.vouched = (
            done.strangers, done.unsure, done.vouched
        )  # fmt: skip
        return self._maybe_complete(done.request_id, transfer, now)

    def _maybe_complete(self, request_id: int, transfer: _Transfer, now: float) -> list[Send]:
        if transfer.expected is None or len(transfer.received) < transfer.expected:
            return []
        del self._transfers[request_id]
        self.stats.transfers_done += 1
        sends = self._finish_transfer(transfer, now)
        return sends + self._pump(now)

    def _finish_transfer(self, transfer: _Transfer, now: float) -> list[Send]:
        if transfer.confirm:
            confirm = peer.encode_slots(SyncConfirm(self.index, tuple(transfer.slots)))
            return [(confirm, self.servers[transfer.source])]
        if not transfer.gating:
            if transfer.since == 0 and self._orphaned:
                self._end_holds(transfer)
            return []
        strangers = set(transfer.strangers)
        for slot in transfer.slots:
            waiting = self._unsynced.get(slot)
            if waiting is None:
                continue
            if slot in strangers:
                # The source may still route writes around us: ask again later.
                self._deferred.setdefault(slot, now + JOIN_DELAY)
                continue
            if transfer.source not in waiting:
                continue  # a pull from before the slot was marked again: not this round's
            waiting.discard(transfer.source)
            floor = self._floor_with(transfer, slot)
            self._best_floor[slot] = min(self._best_floor.get(slot, NO_FLOOR), floor)
            if waiting:
                continue
            if slot in self._delegated:
                # Writes went to the successor meanwhile, and it may be the only one to
                # have them yet: pull once more from every member, the successor too.
                self._delegated.discard(slot)
                self._deferred.setdefault(slot, now)
            else:
                self._pulled(slot, now)
        return []

    def _floor_with(self, transfer: _Transfer, slot: int) -> int:
        """The stamp from which on the source's copy of the slot and ours together
        have every write (0: the source is sure of it).

        If it vouches for us, we had the slot until we left, from the floor of
        the hold we kept (0: we were sure of it; none: we did not have it), and
        it has had it since.
        """
        floor = transfer.unsure.get(slot, 0)
        if slot in transfer.vouched:
            floor = min(floor, self._left_floors.get(slot, NO_FLOOR))
        return floor

    def _end_holds(self, transfer: _Transfer) -> None:
        """A full pull answered by a member sure of the slot, or one that vouches
        for our copy (sure when we left): our copy is whole now.

        Or every node is back and has been for LINGER (pulls of returning nodes
        and handoffs of stand-ins done): once every other member has answered a
        full pull asked since, the copies of the whole chain are in ours.
        """
        strangers = set(transfer.strangers)
        whole = self._whole_since is not None and transfer.asked_at >= self._whole_since + LINGER
        for slot in transfer.slots:
            if slot not in self._orphaned:
                continue
            if slot not in strangers:
                # Everything the source has is ours now, and it has all from its floor.
                floor = self._floor_with(transfer, slot)
                if floor == 0:
                    self._end_hold(slot)
                    continue
                self._orphaned[slot] = min(self._orphaned[slot], floor)
            if whole:
                answered = self._release.setdefault(slot, set())
                answered.add(transfer.source)
                members = self.ring.chain_at(slot, self.alive, self.replicas)
                if all(m in answered for m in members if m != self.index):
                    self._end_hold(slot)

    def _end_hold(self, slot: int) -> None:
        self._orphaned.pop(slot, None)
        self._holders.pop(slot, None)
        self._release.pop(slot, None)

    # -- time -------------------------------------------------------------------

    def on_tick(self, now: float) -> list[Send]:
        if self._handed_on:
            self._forget_handed_on(now)
        sends = self._resend_pending(now)
        sends.extend(self._pull_deferred(now))
        sends.extend(self._retry_transfers(now))
        if self._settle_at is not None and now >= self._settle_at:
            sends.extend(self._settle(now))
        sends.extend(self._hint_handoffs(now))
        if self._orphan_check_at is not None and now >= self._orphan_check_at:
            sends.extend(self._ask_about_holds(now))
        return sends

    def _ask_about_holds(self, now: float) -> list[Send]:
        """Pull held slots in full again: a member sure of one ends its hold."""
        self._expire_holds(now)
        held = set(self._orphaned) & self._my_slots
        self._orphan_check_at = now + ORPHAN_RETRY if self._orphaned else None
        return self._pull(held, now, gating=False, since=0) if held else []

    def next_due(self, now: float) -> float:
        """When on_tick next has work: `now` while anything waits on a timer, else never.

        In step with on_tick: a timer added there must be counted here.
        """
        if (
            self._pending or self._transfers or self._queue or self._deferred
            or self._handed_on or self._settle_at is not None or self._handoff_at is not None
            or self._orphan_check_at is not None
        ):  # fmt: skip
            return now
        return math.inf

    def _forget_handed_on(self, now: float) -> None:
        for message_id, (_, until) in list(self._handed_on.items()):
            if until <= now:
                del self._handed_on[message_id]

    def _resend_pending(self, now: float) -> list[Send]:
        sends: list[Send] = []
        for message_id, pending in list(self._pending.items()):
            if now - pending.since > GIVE_UP_AFTER:
                del self._pending[message_id]
            elif now - pending.sent_at >= RESEND_AFTER:
                sends.extend(self._send_down(pending.write, now))
        return sends

    def _retry_transfers(self, now: float) -> list[Send]:
        for request_id, transfer in list(self._transfers.items()):
            if now - transfer.sent_at < SYNC_RETRY:
                continue
            del self._transfers[request_id]
            self.stats.transfers_retried += 1
            if transfer.source in self.alive:
                self._enqueue(
                    transfer.source, transfer.slots, transfer.gating, transfer.confirm,
                    transfer.since,
                )  # fmt: skip
            elif transfer.gating:
                self._give_up_on(transfer, now)
        return self._pump(now)

    def _give_up_on(self, transfer: _Transfer, now: float) -> None:
        """The source died: the slot is as complete as the remaining members make it.

        Only a pull of the current round counts: a slot marked unsynced again
        since (an empty waiting set: not pulled yet) stays unsynced.
        """
        for slot in transfer.slots:
            waiting = self._unsynced.get(slot)
            if waiting is not None and transfer.source in waiting:
                waiting.discard(transfer.source)
                if not waiting:
                    self._pulled(slot, now)

    def _settle(self, now: float) -> list[Send]:
        """Views have had time to agree: pull changed slots again, hand off what is not ours."""
        self._settle_at = None
        slots, self._settle_slots = self._settle_slots & self._my_slots, set()
        sends = self._pull(slots, now, gating=False, since=self._settle_since)
        self._handoff = self._foreign_slots()
        self._handoff_at = now
        return sends + self._hint_handoffs(now)

    def _foreign_slots(self) -> dict[int, set[int]]:
        """Slots this node holds keys of without being a member: who must take them."""
        mine = self._my_slots
        held = self.storage.groups()
        return {
            slot: set(self.ring.chain_at(slot, self.alive, self.replicas)) for slot in held - mine
        }

    def _hint_handoffs(self, now: float) -> list[Send]:
        if self._handoff_at is None or now < self._handoff_at:
            return []
        self._handoff_at = now + HANDOFF_RETRY if self._handoff else None
        by_member: dict[int, list[int]] = {}
        for slot, members in self._handoff.items():
            for member in members:
                by_member.setdefault(member, []).append(slot)
        return [
            (peer.encode_slots(Handoff(self.index, tuple(slots))), self.servers[member])
            for member, slots in by_member.items()
        ]

    def on_handoff(self, hint: Handoff, src: Addr, now: float) -> list[Send]:
        """A node holds keys of slots we are a member of: pull them, then confirm.

        From a member of the chain (a head's hint), slots we are still waiting
        to pull are pulled from every member at once, without waiting out
        JOIN_DELAY: the head counts us already, and a copy is missing.
        """
        source, slots = hint
        if source == self.index:
            return []
        chain_at, alive, r = self.ring.chain_at, self.alive, self.replicas
        now_due = {s for s in slots if s in self._deferred and source in chain_at(s, alive, r)}
        for slot in now_due:
            self._deferred[slot] = now
        rest = [s for s in slots if s not in now_due]
        if rest:
            self._enqueue(source, rest, False, confirm=True)
        return self._pull_deferred(now) if now_due else self._pump(now)

    def on_sync_confirm(self, confirm: SyncConfirm, src: Addr, now: float) -> list[Send]:
        """A member has our keys of these slots: once all members do, drop them."""
        member, slots = confirm
        done: set[int] = set()
        for slot in slots:
            waiting = self._handoff.get(slot)
            if waiting is None:
                continue
            waiting.discard(member)
            if not waiting:
                del self._handoff[slot]
                if slot not in self._my_slots:
                    done.add(slot)
        for key, _ in self.storage.entries_in(done):
            self.storage.remove(key)  # no tombstone: the members have it
        return []

    # -- status -----------------------------------------------------------------

    def roles(self, now: float) -> dict[str, int]:
        """Live keys held as head, middle and tail; O(keys), so recounted every 5 s at most."""
        if now < self._roles[0]:
            return self._roles[1]
        counts = {"head": 0, "middle": 0, "tail": 0}
        ring, alive, r, me = self.ring, self.alive, self.replicas, self.index
        for key, (value, _, _) in self.storage.items():
            if value is None:
                continue
            chain = ring.chain(key, alive, r)
            if chain and chain[0] == me:
                counts["head"] += 1
            elif chain and chain[-1] == me:
                counts["tail"] += 1
            elif me in chain:
                counts["middle"] += 1
        self._roles = (now + 5.0, counts)
        return counts

    def transfers_in_progress(self) -> int:
        """Transfer requests in flight plus those the queued slots will need."""
        queued = sum(-(-len(slots) // SYNC_CHUNK) for slots in self._queue.values())
        return len(self._transfers) + queued

    def unsynced_slots(self) -> int:
        return len(self._unsynced)

    def held_slots(self) -> int:
        """Slots of ours whose older keys get no answer (see `_pulled`)."""
        return len(self._my_slots.intersection(self._orphaned))


def _neighbour(chain: tuple[int, ...], me: int, before: bool) -> int | None:
    if me not in chain:
        return None
    i = chain.index(me) + (-1 if before else 1)
    return chain[i] if 0 <= i < len(chain) else None

"""The node: parses client requests, validates, routes, executes, answers.

Pure protocol logic: every entry point takes `now` and returns what to send.
The runtime (real sockets) and the simulator (virtual network) drive it.
"""

from __future__ import annotations

import ipaddress
import random
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ringkv.core.membership import (
    DoubtChanged,
    Membership,
    MembershipConfig,
    MembershipEvent,
    Paused,
    Suspected,
    ViewChanged,
)
from ringkv.core.replication import Replication, ReplicationConfig
from ringkv.core.replies import DEFAULT_RETENTION, ReplyCache
from ringkv.core.ring import Ring, key_position
from ringkv.core.storage import Storage
from ringkv.servers import gossip_addr, peer_addr
from ringkv.wire import Addr, Send, peer, seal
from ringkv.wire.codec import (
    MAX_KEY,
    MAX_VALUE,
    Command,
    Err,
    KVRequest,
    WireError,
    decode_msg,
    decode_request,
)
from ringkv.wire.peer import Forward, PeerDecodeError, PeerLimits, StatusRequest
from ringkv.wire.seal import OPERATOR, Channel, Keyring, Refused, Sealer

_PUT, _GET, _REMOVE = Command.PUT, Command.GET, Command.REMOVE
_KEY_COMMANDS = frozenset((_PUT, _GET, _REMOVE))
_RESTRICTED = frozenset((Command.WIPEOUT, Command.SHUTDOWN))  # see NodeConfig.admin_from
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The reference client gives up after 0.7 s (100 + 200 + 400 ms).
STALE_REQUEST_AGE = 1.0
# A client request that waited this long in the kernel's queue finds the node
# overloaded (its client has already sent it again): it is answered from the
# reply cache, or with OVERLOAD, without being executed, so that the queue
# drains at the cost of a reply rather than of a request. The signal is the
# time spent queued, as in CoDel, not the queue's length: it needs no tuning
# to the node's speed.
SHED_AGE = 0.25
# OVERLOAD asks the client to wait about as long as its request waited, within these.
MIN_OVERLOAD_WAIT_MS = 50
MAX_OVERLOAD_WAIT_MS = 1000
MAX_SHED_IDS = 100_000  # message IDs remembered as shed (each for STALE_REQUEST_AGE)
# Upper bounds (seconds) of the buckets counting how long client requests waited
# in the kernel's queue; the last bucket is everything above. That wait is the
# part of a request's latency that grows with load, and the only part one node
# can see: the reply to a forwarded request leaves from another node.
QUEUE_WAIT_BOUNDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
# Seconds between the ticks a driver (runtime or simulator) gives a node; it may
# skip those before next_due(). Membership times acks to about this.
TICK_INTERVAL = 0.1


@dataclass(frozen=True)
class NodeConfig:
    servers: tuple[Addr, ...]
    self_index: int = 0
    pid: int = 0
    memory_budget: int = 512 << 20
    replicas: int = 3
    reply_retention: float = DEFAULT_RETENTION
    membership: MembershipConfig | None = None
    replication: ReplicationConfig | None = None
    clock_offset: float = 0.0  # wall clock minus `now`, for write stamps
    seed: int | None = None  # for this node's random choices; None: its index
    ring: Ring | None = None  # share one ring among many nodes in one process (simulator)
    # The cluster key: node-to-node datagrams are sealed and opened with it (see
    # wire.seal); None runs without authentication (one node, or --insecure).
    keyring: Keyring | None = None
    boot: int = 0  # this process's start, larger than any earlier life's (replay windows)
    # Clients allowed WIPEOUT and SHUTDOWN (None: every client, as the protocol has it).
    admin_from: tuple[IPNetwork, ...] | None = None


@dataclass(frozen=True)
class Notice:
    """Something an operator wants in the log: a membership change, what this
    node holds after it, a pause. The runtime logs them; nothing per request."""

    event: str
    fields: dict[str, Any]

    def text(self) -> str:
        return self.event + ": " + ", ".join(f"{k} {v}" for k, v in self.fields.items())


MAX_NOTICES = (
    256  # kept for the runtime to log; a driver that never asks (simulator) loses the oldest
)


@dataclass
class Outbox:
    """What a tick sends: on the data port and on the gossip port."""

    data: list[Send] = field(default_factory=list)
    gossip: list[Send] = field(default_factory=list)


@dataclass
class NodeStats:
    requests: int = 0
    forwarded: int = 0
    dropped: int = 0
    stale: int = 0
    shed: int = 0  # aged client requests answered from the reply cache or with OVERLOAD
    gossip_sent: int = 0
    unauthenticated: int = 0  # peer or gossip datagrams refused: not sealed, forged, replayed
    refused_admin: int = 0  # WIPEOUT or SHUTDOWN from a client outside admin_from
    datagrams_in: int = 0  # client requests and peer datagrams (not gossip)
    datagrams_out: int = 0  # client replies and peer datagrams (not gossip)
    replies: int = 0  # datagrams to clients (and tools)
    # Peer messages sent, by kind byte (wire.peer): several may share a datagram.
    peer_sent: list[int] = field(default_factory=lambda: [0] * 256)
    commands: list[int] = field(default_factory=lambda: [0] * 256)  # client requests by command
    # Client requests by time queued (QUEUE_WAIT_BOUNDS), and those times summed.
    queue_wait: list[int] = field(default_factory=lambda: [0] * (len(QUEUE_WAIT_BOUNDS) + 1))
    queue_wait_sum: float = 0.0

    def peer_sent_by_kind(self) -> dict[str, int]:
        return {peer.KIND_NAMES.get(k, str(k)): n for k, n in enumerate(self.peer_sent) if n}

    def commands_by_name(self) -> dict[str, int]:
        names = {int(c): c.name for c in Command}
        return {names.get(c, str(c)): n for c, n in enumerate(self.commands) if n}


class Node:
    def __init__(self, config: NodeConfig, now: float = 0.0) -> None:
        self.config = config
        self.index = config.self_index
        n_nodes = len(config.servers)
        self.ring = ring = config.ring or Ring(n_nodes)
        # Transfers find a slot's keys through the store's index; one node never transfers.
        by_slot = (lambda key: ring.slot_of(key_position(key))) if n_nodes > 1 else None
        self.storage = Storage(config.memory_budget, by_slot)
        self.replies = ReplyCache(config.reply_retention)
        self.stats = NodeStats()
        self.exit_requested = False
        # Data-port sends caused by gossip go out with the next tick.
        self._pending_data: list[Send] = []
        # What the datagrams taken since the last flush() send, unpacked and unsealed.
        self._outbox: list[Send] = []
        # Message IDs answered OVERLOAD, and when: every try of one that arrived
        # before then is answered the same, so no try of it is executed meanwhile.
        self._shed_at: dict[bytes, float] = {}
        self._notices: deque[Notice] = deque(maxlen=MAX_NOTICES)
        seed = self.index if config.seed is None else config.seed
        # A one-node cluster has nobody to gossip with.
        self.membership = (
            Membership(self.index, n_nodes, config.membership, random.Random(seed), now)
            if n_nodes > 1
            else None
        )
        self._gossip_addrs = [gossip_addr(addr) for addr in config.servers]
        # Peer datagrams travel between peer ports; inside, a member is named by
        # its server-list address, as replication knows it.
        self._peer_addrs = [peer_addr(addr) for addr in config.servers]
        self._member_at = dict(zip(self._peer_addrs, config.servers, strict=True))
        self._index_of = {addr: i for i, addr in enumerate(config.servers)}
        self._sealer = (
            None if config.keyring is None else Sealer(config.keyring, self.index, config.boot)
        )
        alive = frozenset((self.index,)) if self.membership is None else self.membership.healthy()
        self.replication = Replication(
            self.index, config.servers, self.ring, config.replicas, self.storage, self.replies,
            config.clock_offset, alive, config.replication,
        )  # fmt: skip
        cluster = frozenset((*config.servers, *self._gossip_addrs, *self._peer_addrs))
        self._limits = PeerLimits(n_nodes, ring.slots, cluster)
        self._peer_handlers = self._handlers_by_type()
        self.replication.on_start(now)

    # -- entry points -------------------------------------------------------

    def on_datagram(self, data: bytes, src: Addr, now: float, age: float = 0.0) -> list[Send]:
        """One datagram on the data port, and what it sends (take, then flush)."""
        self.take(data, src, now, age)
        return self.flush()

    def on_peer_datagram(self, data: bytes, src: Addr, now: float, age: float = 0.0) -> list[Send]:
        """One datagram on the peer port, and what it sends (take_peer, then flush)."""
        self.take_peer(data, src, now, age)
        return self.flush()

    def take(self, data: bytes, src: Addr, now: float, age: float = 0.0) -> None:
        """A datagram on the data port: a client's request, or a tool asking for
        this node's status. What it sends waits for flush(), so that a driver
        reading many datagrams at one wake-up sends each peer one datagram for
        all of them.

        `age` is how long it waited in the kernel before being read. A client
        request that waited longer than any client retries (it was queued while
        this process was stopped) is dropped: executing it now could overwrite
        writes acknowledged since, or run again once its reply was forgotten.
        One that waited past SHED_AGE is answered without being executed.
        """
        self.stats.datagrams_in += 1
        if peer.is_peer(data) or seal.is_sealed(data):
            sends = self._on_tool(data, src, now)
        else:
            sends = self._on_client(data, src, now, age)
        if sends:
            self._outbox.extend(sends)

    def take_peer(self, data: bytes, src: Addr, now: float, age: float = 0.0) -> None:
        """A datagram on the peer port: messages from another node of the server
        list, sealed with the cluster key (unless the cluster runs without one)
        and sent from that node's own peer port. Nothing else is believed."""
        self.stats.datagrams_in += 1
        member = self._member_at.get(src)
        if self.membership is None or member is None:
            self.stats.unauthenticated += 1  # not from a peer port of the server list
            return
        if self._sealer is not None:
            opened = self._open(data, src, Channel.DATA)
            if opened is None:
                return
            data = opened[1]
        elif not peer.is_peer(data):
            self.stats.dropped += 1
            return
        sends = self._on_peer(data, member, now, age)
        if sends:
            self._outbox.extend(sends)

    def flush(self) -> list[Send]:
        """What the datagrams taken since the last flush send, packed and sealed."""
        sends = self._outbox
        if not sends:
            return sends
        self._outbox = []
        return self._pack(sends)

    def _on_client(self, data: bytes, src: Addr, now: float, age: float) -> list[Send]:
        if age > STALE_REQUEST_AGE:
            self.stats.stale += 1
            return []
        stats = self.stats
        try:
            message_id, payload = decode_msg(data)
            stats.queue_wait[bisect_left(QUEUE_WAIT_BOUNDS, age)] += 1
            stats.queue_wait_sum += age
            stats.requests += 1
            # Aged, or the node shed a little while ago: its checksum is all there is to check.
            if (age > SHED_AGE or self._shed_at) and self._sheds(message_id, now, age):
                return self._overload(message_id, src, age)
            request = decode_request(payload)
        except WireError:
            stats.dropped += 1
            return []
        command = request.command
        stats.commands[command if command < 256 else 255] += 1
        return self._on_request(message_id, request, data, src, now)

    def _sheds(self, message_id: bytes, now: float, age: float) -> bool:
        """Whether a client request (or a forward of one) is answered OVERLOAD.

        One that waited past SHED_AGE is, unless this node has had a try of it
        already (its outcome is cached, it is on its way down the chain, or it
        was handed on): then the normal path answers it as it answers any
        retry. Once shed, every try of it that arrived before is shed too, so
        that no try of a message this node answered OVERLOAD is executed
        until the client sends it again.
        """
        shed_at = self._shed_at
        if shed_at:
            when = shed_at.get(message_id)
            if when is not None and now - age <= when:
                return True
        if age <= SHED_AGE or message_id in self.replies:
            return False
        if self.replication.writes.knows(message_id):
            return False
        self._remember_shed(message_id, now)
        return True

    def _remember_shed(self, message_id: bytes, now: float) -> None:
        shed_at = self._shed_at
        shed_at.pop(message_id, None)
        shed_at[message_id] = now  # insertion order is time order
        # Tries older than STALE_REQUEST_AGE are dropped anyway: forget those shed before.
        while len(shed_at) > MAX_SHED_IDS or next(iter(shed_at.values())) < now - STALE_REQUEST_AGE:
            del shed_at[next(iter(shed_at))]

    def _overload(self, message_id: bytes, client: Addr, age: float) -> list[Send]:
        """OVERLOAD, with a wait of about as long as the request waited."""
        self.stats.shed += 1
        wait = min(max(int(age * 1000), MIN_OVERLOAD_WAIT_MS), MAX_OVERLOAD_WAIT_MS)
        return [(self.replies.answer(message_id, Err.OVERLOAD, overload_wait_ms=wait), client)]

    def on_gossip(self, data: bytes, src: Addr, now: float) -> list[Send]:
        """A datagram on the gossip port (membership)."""
        if self.membership is None:
            return []
        sender = None
        if self._sealer is not None:
            opened = self._open(data, src, Channel.GOSSIP)
            if opened is None:
                return []
            sender, data = opened
        sends = self._to_gossip(self.membership.on_message(data, now, sender))
        self._pending_data.extend(self._follow_membership(now))
        return sends

    def on_tick(self, now: float) -> Outbox:
        self.replies.expire(now)
        self.storage.collect_tombstones(now)
        outbox = Outbox()
        if self.membership is not None:
            outbox.gossip = self._to_gossip(self.membership.on_tick(now))
            outbox.data = self._follow_membership(now)
        # Idle replication has nothing on a timer: the call would find nothing to do.
        if self.replication.next_due(now) <= now:
            outbox.data.extend(self.replication.on_tick(now))
        if self._pending_data:
            outbox.data.extend(self._pending_data)
            self._pending_data = []
        outbox.data = self._pack(outbox.data)
        return outbox

    def next_due(self, now: float) -> float:
        """The `now` at which on_tick next has work; a driver may skip the ticks before it."""
        if self._pending_data:
            return now
        due = self.replication.next_due(now)
        if self.membership is not None and due > now:
            due = min(due, self.membership.next_due())
        return due

    def skip_ticks_until(self, when: float) -> None:
        """The driver makes no tick before `when` (<= next_due()): see Membership.skip_until."""
        if self.membership is not None:
            self.membership.skip_until(when)

    def _follow_membership(self, now: float) -> list[Send]:
        """Pass what membership learnt (a pause, a suspicion, a new view) to replication."""
        assert self.membership is not None
        events = self.membership.take_events()
        # Called after every datagram; almost always nothing to follow.
        if not events:
            return []
        held = self._slots_held()
        sends = self.replication.on_membership(events, now)
        self._note(events, held)
        return sends

    # -- durability (the runtime's data dir) ----------------------------------------

    def restore(self, entries: Iterable[tuple[bytes, bytes]], now: float) -> None:
        """Put back the store a data dir kept, and journal every change from now on.

        Called once, before the first datagram. A memory-only process that
        starts empty may serve a slot while it pulls it: nothing was written
        before the cluster had it. A durable node may hold copies older than the
        cluster's, and the others may be durable nodes that restarted with it
        (a power loss), their stores not yet pulled: even an empty data dir is
        no proof that the cluster is new. So it pulls every slot before serving
        it, as a node back from a pause does (Replication.on_restored). Copies
        only move forward: what it missed arrives, and nothing older wins."""
        self.storage.restore(entries, now)
        self.storage.record_changes()
        self.replication.on_restored(now)

    def take_changes(self) -> tuple[bool, dict[bytes, bytes | None]]:
        """What the store changed since the last call (Storage.take_changes): the
        runtime commits it before it sends anything those changes made possible."""
        return self.storage.take_changes()

    def take_notices(self) -> list[Notice]:
        """What happened since the last call that an operator should read, oldest first."""
        notices = list(self._notices)
        self._notices.clear()
        return notices

    def _slots_held(self) -> dict[str, int]:
        """Ring slots this node is in the chain of, and heads and tails of."""
        view, me = self.replication.view, self.index
        chains = [view.chain(slot) for slot in view.mine]
        return {
            "slots": len(chains),
            "head": sum(1 for chain in chains if chain[0] == me),
            "tail": sum(1 for chain in chains if chain[-1] == me),
        }

    def _note(self, events: list[MembershipEvent], held: dict[str, int]) -> None:
        for event in events:
            if isinstance(event, Paused):
                self._notices.append(Notice("paused", {"seconds": round(event.gap, 3)}))
            elif isinstance(event, Suspected):
                self._notices.append(Notice("suspected", {"refuted": True}))
            elif isinstance(event, DoubtChanged):
                self._notices.append(Notice("doubt", {"in_doubt": event.in_doubt}))
            elif isinstance(event, ViewChanged):
                everyone = range(len(self.config.servers))
                fields = {
                    "healthy": len(event.healthy),
                    "alive": len(event.alive),
                    "not_healthy": [i for i in everyone if i not in event.healthy][:20],
                    **self._slots_held(),
                    "was": held,
                }
                self._notices.append(Notice("view", fields))

    def _to_gossip(self, sends: list[tuple[bytes, int]]) -> list[Send]:
        self.stats.gossip_sent += len(sends)
        addrs = self._gossip_addrs
        if self._sealer is not None:
            close, gossip = self._sealer.seal, Channel.GOSSIP
            return [(close(data, index, gossip), addrs[index]) for data, index in sends]
        return [(data, addrs[index]) for data, index in sends]

    # -- the cluster key --------------------------------------------------------

    def set_keyring(self, keyring: Keyring) -> None:
        """Seal with a new keyring's first key and open with any of its keys (rotation)."""
        if self._sealer is None:
            raise ValueError("a node started without a cluster key cannot take one")
        self._sealer.set_keyring(keyring)

    def _open(self, data: bytes, src: Addr, channel: Channel) -> tuple[int, bytes] | None:
        """(sender, payload) of a sealed datagram from the node it names, else None."""
        assert self._sealer is not None
        opened = self._sealer.open(data, channel)
        if isinstance(opened, Refused):
            self.stats.unauthenticated += 1
            return None
        sender = opened[0]
        own = self._gossip_addrs if channel == Channel.GOSSIP else self._peer_addrs
        if sender >= len(own) or own[sender] != src:
            self.stats.unauthenticated += 1  # the key's holder, but not from its address
            return None
        return opened

    def _on_tool(self, data: bytes, src: Addr, now: float) -> list[Send]:
        """A peer-format datagram on the data port: only a tool's STATUS request is
        taken there, sealed by OPERATOR if the cluster has a key. Nodes talk to
        each other's peer ports."""
        sealer = self._sealer
        if sealer is not None:
            if not seal.is_sealed(data):
                self.stats.unauthenticated += 1
                return []
            opened = sealer.open(data, Channel.DATA)
            if isinstance(opened, Refused) or opened[0] != OPERATOR:
                self.stats.unauthenticated += 1
                return []
            data = opened[1]
        try:
            message = peer.decode(data, self._limits)
        except PeerDecodeError:
            self.stats.dropped += 1
            return []
        if type(message) is not StatusRequest:
            self.stats.unauthenticated += 1
            return []
        reply = self._status_reply(message, now)
        if sealer is not None:
            reply = sealer.seal(reply, OPERATOR, Channel.REPLY)
        return [(reply, src)]

    def _pack(self, sends: list[Send]) -> list[Send]:
        """Peer messages to each member as few datagrams (BATCHes), sealed with the
        cluster key; replies to clients (and tools) go as they are, first."""
        if not sends:
            return sends
        stats, index_of, magic = self.stats, self._index_of, peer.MAGIC
        counts = stats.peer_sent
        out: list[Send] = []
        by_member: dict[int, list[bytes]] = {}
        for payload, dest in sends:
            index = index_of.get(dest)
            if index is None or payload[:2] != magic:
                out.append((payload, dest))
                continue
            counts[payload[2]] += 1
            messages = by_member.get(index)
            if messages is None:
                by_member[index] = [payload]
            else:
                messages.append(payload)
        if by_member:  # waiting ACKs ride along to members that get a datagram anyway
            for ack, dest in self.replication.writes.take_acks(by_member):
                counts[ack[2]] += 1
                by_member[index_of[dest]].append(ack)
        stats.replies += len(out)
        addrs, sealer = self._peer_addrs, self._sealer
        for index, messages in by_member.items():
            dest = addrs[index]
            for datagram in peer.pack(messages):
                if sealer is not None:
                    datagram = sealer.seal(datagram, index, Channel.DATA)
                out.append((datagram, dest))
        stats.datagrams_out += len(out)
        return out

    def check_invariants(self) -> None:
        """Raise if replication's slot states break a rule (the simulator asks after
        every step)."""
        self.replication.check_invariants()

    def membership_count(self) -> int:
        return 1 if self.membership is None else self.membership.alive_count()

    def _view_states(self) -> str:
        """One letter per node of the server list: Alive, Suspect or Dead."""
        if self.membership is None:
            return "A"
        state_of = self.membership.state_of
        return "".join(state_of(i)[0].upper() for i in range(len(self.config.servers)))

    def status(self, now: float) -> dict[str, object]:
        """A small summary for `ringkv cluster status`."""
        return {
            "index": self.index,
            "pid": self.config.pid,
            "count": self.membership_count(),
            "states": self._view_states(),
            "pauses": 0 if self.membership is None else self.membership.pauses,
            "deaths": 0 if self.membership is None else self.membership.deaths,
            "suspicions": 0 if self.membership is None else self.membership.suspicions,
            "health": 0 if self.membership is None else self.membership.local_health,
            "keys": len(self.storage),
            "roles": self.replication.roles(now),
            "transfers": self.replication.transfers_in_progress(),
            "unsynced_slots": self.replication.unsynced_slots(),
            "held_slots": self.replication.held_slots(),
            "transfers_done": self.replication.stats.transfers_done,
            "transfers_retried": self.replication.stats.transfers_retried,
            "keys_pulled": self.replication.stats.keys_pulled,
            "keys_pulled_newer": self.replication.stats.keys_received,
            "stored_bytes": self.storage.used,
            "budget": self.storage.budget,
            "requests": self.stats.requests,
            "forwarded": self.stats.forwarded,
            "dropped": self.stats.dropped,
            "stale": self.stats.stale,
            "shed": self.stats.shed,
            "gossip_sent": self.stats.gossip_sent,
            "unauthenticated": self.stats.unauthenticated,
            "refused_admin": self.stats.refused_admin,
            "datagrams_in": self.stats.datagrams_in,
            "datagrams_out": self.stats.datagrams_out,
            "replies": self.stats.replies,
            "peer_sent": self.stats.peer_sent_by_kind(),
            "commands": self.stats.commands_by_name(),
            "reply_errs": {str(e): n for e, n in enumerate(self.replies.answered) if n},
            "queue_wait": {
                "bounds": QUEUE_WAIT_BOUNDS,
                "counts": self.stats.queue_wait,
                "sum": self.stats.queue_wait_sum,
            },
            "reply_cache": {"entries": len(self.replies), "hits": self.replies.hits},
            "pending_writes": self.replication.writes.pending_count(),
            "refused_stamps": self.replication.stats.refused_stamps,
            "refused_senders": self.replication.stats.refused_senders,
            "incarnation": 0 if self.membership is None else self.membership.incarnation,
        }

    # -- requests -----------------------------------------------------------

    def _on_request(
        self, message_id: bytes, request: KVRequest, data: bytes, src: Addr, now: float
    ) -> list[Send]:
        command = request.command
        if command in _KEY_COMMANDS:
            err = _validate(request)
            if err:
                return [(self.replies.answer(message_id, err), src)]
            return self.replication.on_key_request(message_id, request, data, src, 0, now)
        return self._admin(message_id, command, src, now)

    def _on_peer(self, data: bytes, src: Addr, now: float, age: float) -> list[Send]:
        """A peer datagram: one message, or a BATCH of them from one sender."""
        if not peer.is_batch(data):
            return self._on_peer_message(data, src, now, age)
        try:
            messages = peer.unpack(data)
        except PeerDecodeError:
            self.stats.dropped += 1
            return []
        sends: list[Send] = []
        for message in messages:
            sends.extend(self._on_peer_message(message, src, now, age))
        return sends

    def _on_peer_message(self, data: bytes, src: Addr, now: float, age: float) -> list[Send]:
        """A peer message, decoded once here and handed on by its type."""
        try:
            message = peer.decode(data, self._limits)
        except PeerDecodeError:
            self.stats.dropped += 1
            return []
        handler = self._peer_handlers.get(type(message))
        if handler is None:
            self.stats.dropped += 1  # a tool's message, or an answer to one
            return []
        if type(message) is Forward:  # a client request all the same
            if age > STALE_REQUEST_AGE:
                self.stats.stale += 1
                return []
            if self._sheds(message.message_id, now, age):
                return self._overload(message.message_id, message.client, age)
        return handler(message, src, now)

    def _handlers_by_type(self) -> dict[type, Callable[[Any, Addr, float], list[Send]]]:
        """Every peer message type and who takes it."""
        return {
            Forward: self._on_forward,
            **self.replication.peer_handlers(),
        }

    def _on_forward(self, forward: Forward, src: Addr, now: float) -> list[Send]:
        self.stats.forwarded += 1
        return self.replication.on_key_request(
            forward.message_id, forward.request, forward.datagram, forward.client, forward.hops,
            now,
        )  # fmt: skip

    def _status_reply(self, request: StatusRequest, now: float) -> bytes:
        return peer.encode_status_reply(request.token, self.status(now))

    def _admin(self, message_id: bytes, command: int, src: Addr, now: float) -> list[Send]:
        """Commands answered by the node that received them."""
        answer = self.replies.answer
        done = self.replies.get(message_id)
        if done is not None:
            return [(answer(message_id, done), src)]
        if command == Command.IS_ALIVE:
            reply = answer(message_id, Err.OK)
        elif command == Command.GET_PID:
            reply = answer(message_id, Err.OK, pid=self.config.pid)
        elif command == Command.GET_MEMBERSHIP_COUNT:
            reply = answer(message_id, Err.OK, membership_count=self.membership_count())
        elif command in _RESTRICTED and not self._admin_allowed(src):
            self.stats.refused_admin += 1
            reply = answer(message_id, Err.BAD_COMMAND)  # not offered to this client
        elif command == Command.WIPEOUT:
            self.storage.wipe()
            reply = answer(message_id, Err.OK)
            self.replies.put(message_id, Err.OK, now)
        elif command == Command.SHUTDOWN:
            self.exit_requested = True
            reply = answer(message_id, Err.OK)
        else:
            reply = answer(message_id, Err.BAD_COMMAND)
        return [(reply, src)]

    def _admin_allowed(self, src: Addr) -> bool:
        allowed = self.config.admin_from
        if allowed is None:
            return True
        try:
            host = ipaddress.ip_address(src[0])
        except ValueError:
            return False
        return any(host in network for network in allowed)


def _validate(request: KVRequest) -> int:
    """Validation order of the protocol: command (done), key, then value."""
    key_len = len(request.key)
    if key_len == 0 or key_len > MAX_KEY:
        return Err.BAD_KEY
    if request.command == _PUT and len(request.value) > MAX_VALUE:
        return Err.BAD_VALUE
    return Err.OK

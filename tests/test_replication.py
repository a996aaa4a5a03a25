"""Chain replication and key transfer, driven through the simulator (issue 5's core tests).

Whole clusters of core nodes on a virtual clock and an in-memory network
without random loss. Each fault is aimed at a chosen peer message (kinds of
ringkv/wire/peer.py) by the simulator's interceptors, so that it lands in the
middle of a write's propagation or of a transfer, the same way every run.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from ringkv.core.membership import DoubtChanged
from ringkv.core.node import Node
from ringkv.core.replication import NO_FLOOR, Phase, Replication, ReplicationConfig
from ringkv.core.replies import ReplyCache
from ringkv.core.ring import Ring, key_position
from ringkv.core.storage import TOMBSTONE_TTL, Storage
from ringkv.servers import gossip_addr, peer_addr
from ringkv.sim.checker import check
from ringkv.sim.clients import Batch, ClientGroup, Request, RetryPolicy, Values, run_batch
from ringkv.sim.cluster import (
    CLIENT_NET,
    PAUSED,
    UP,
    SimConfig,
    Simulator,
    client_addr,
    node_addr,
    node_index,
)
from ringkv.sim.history import GET, PUT, REMOVE, Op
from ringkv.sim.scenarios import Model
from ringkv.wire import Addr, peer, seal
from ringkv.wire.codec import (
    Command,
    Err,
    KVRequest,
    decode_msg,
    decode_response,
    encode_request,
)
from ringkv.wire.peer import Ack, Handoff, SyncConfirm, SyncData, SyncDone, SyncRequest, Write

# Patient enough to outlast failure detection (~4 s) and a chain repair:
# 0.25 s doubling, 7 tries, about 32 s in all.
PATIENT = RetryPolicy(timeout=0.25, tries=7)


# ------------------------------------------------------------------ helpers


def cluster(
    nodes: int, seed: int, start_down: tuple[int, ...] = (), sealed: bool = True
) -> Simulator:
    """A settled cluster; `sealed=False` lets a test forge what a member would send."""
    sim = Simulator(SimConfig(nodes, seed=seed, start_down=start_down, sealed=sealed))
    settle(sim)
    return sim


def full_node(sim: Simulator, index: int) -> Node:
    node = sim.node(index)
    assert isinstance(node, Node)
    return node


def settle(sim: Simulator, limit: float = 40.0) -> None:
    """Run until views are exact and no running node is pulling or handing off."""

    def quiet() -> bool:
        if not sim.views_exact():
            return False
        for i in sim.nodes_in(UP):
            replication = full_node(sim, i).replication
            if replication.unsynced_slots() or replication.transfers_in_progress():
                return False
            if replication.settle_planned():
                return False  # the settling pull after the last change is still to come
        return True

    assert sim.run_until(quiet, limit), f"not settled within {limit} s at {sim.now:.2f}"
    sim.run_for(3.0)  # the handoffs that the settling pull began


def run_ops(
    sim: Simulator,
    requests: Sequence[Request],
    front_ends: Sequence[int],
    clients: int = 1,
    retry: RetryPolicy = PATIENT,
) -> list[Op]:
    """Closed-loop clients, client i always at front_ends[i % len]; the ops in order."""
    batch = Batch(requests)
    group = ClientGroup(sim, batch, clients, front_ends, False, retry, halt=False).start()
    assert sim.run_until(lambda: group.done, 300.0), "clients did not finish"
    return batch.ops


def read_everywhere(sim: Simulator, key: bytes) -> list[Op]:
    """One GET of the key through every running node as front end."""
    up = sim.nodes_in(UP)
    return run_ops(sim, [Request(GET, key)] * len(up), up, clients=len(up))


def chain_of(sim: Simulator, key: bytes) -> tuple[int, ...]:
    node = full_node(sim, sim.nodes_in(UP)[0])
    view = node.replication.view
    return view.chain(view.slot_of(key))


def outsider(sim: Simulator, chain: Sequence[int]) -> int:
    return next(i for i in sim.nodes_in(UP) if i not in chain)


def fail(sim: Simulator, index: int, fault: str) -> None:
    (sim.pause if fault == "pause" else sim.crash)(index)


def recover(sim: Simulator, index: int) -> None:
    (sim.resume if sim.state_of(index) == PAUSED else sim.restart)(index)


def unsealed(data: bytes) -> bytes:
    """What a sealed datagram carries (an observer's view: the tag is not checked)."""
    return data[seal.HEAD_BYTES : -seal.TAG_BYTES] if seal.is_sealed(data) else data


def is_peer(data: bytes, kind: int) -> bool:
    """Does this peer datagram carry a message of this kind (alone or in a BATCH)?
    (Interceptors look at bytes in flight.)"""
    data = unsealed(data)
    if not peer.is_peer(data):
        return False
    parts = peer.unpack(data) if peer.is_batch(data) else [data]
    return any(part[2] == kind for part in parts)


def decoded(data: bytes, nodes: int = 64) -> peer.PeerMessage | None:
    """A peer datagram's message (None for any other datagram)."""
    data = unsealed(data)
    if not peer.is_peer(data):
        return None
    return peer.decode(data, peer.PeerLimits(nodes, 1 << 32))


class FailOnEmit:
    """Fail a node the moment it first passes on a write of `key`, losing what it sent.

    "Passing on" is a REPLICATE of the key (head, middle) or any datagram to
    a client (the tail's answer). From then until the fault takes effect,
    every datagram the node sends is lost, as if it stopped mid-call.
    """

    def __init__(self, sim: Simulator, node: int, key: bytes, fault: str) -> None:
        self.sim, self.node, self.key, self.fault = sim, node, key, fault
        addr = node_addr(node)
        self.addrs = {addr, gossip_addr(addr), peer_addr(addr)}
        self.fired = False
        self.dropped: list[bytes] = []
        sim.interceptors.append(self)

    def __call__(self, data: bytes, src: Addr, dst: Addr) -> bool:
        if src not in self.addrs:
            return False
        if not self.fired:
            if not self._passes_on(data, dst):
                return False
            self.fired = True
            self.sim.after(0.0, self._fail)
        self.dropped.append(data)
        return True

    def _passes_on(self, data: bytes, dst: Addr) -> bool:
        message = decoded(data)
        if isinstance(message, Write):
            return message.key == self.key
        return dst[0].startswith(CLIENT_NET)

    def _fail(self) -> None:
        self.sim.interceptors.remove(self)
        fail(self.sim, self.node, self.fault)


class Probe:
    """A client that picks its own message IDs and keeps every reply it gets."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.addr: Addr = client_addr(sim.new_client_id())
        self.replies: dict[bytes, list[tuple[int, bytes]]] = {}
        sim.attach(self.addr, self._on_reply)

    def _on_reply(self, data: bytes, src: Addr) -> None:
        message_id, payload = decode_msg(data)
        response = decode_response(payload)
        self.replies.setdefault(message_id, []).append((response.errCode, response.value))

    def send(
        self, node: int, message_id: bytes, command: int, key: bytes, value: bytes = b""
    ) -> None:
        datagram = encode_request(message_id, command, key, value)
        self.sim.send(datagram, self.addr, node_addr(node))

    def call(
        self, node: int, message_id: bytes, command: int, key: bytes, value: bytes = b""
    ) -> tuple[int, bytes]:
        """Send, then resend the same datagram every 0.5 s for 30 s until answered."""
        seen = len(self.replies.get(message_id, []))

        def answered() -> bool:
            return len(self.replies.get(message_id, [])) > seen

        for _ in range(60):
            self.send(node, message_id, command, key, value)
            if self.sim.run_until(answered, 0.5, poll=0.005):
                return self.replies[message_id][seen]
        raise AssertionError(f"no reply to {message_id!r} from node {node}")


# --------------------------------------------- a write survives a link's failure


@pytest.mark.parametrize("fault", ["pause", "crash"])
@pytest.mark.parametrize("link", [0, 1, 2], ids=["head", "middle", "tail"])
def test_write_survives_failure_of_a_link_during_propagation(link: int, fault: str) -> None:
    sim = cluster(6, seed=7)
    key = b"survivor"
    chain = chain_of(sim, key)
    front = outsider(sim, chain)
    values = Values(16)
    assert run_ops(sim, [values.put(key)], [front])[0].err == Err.OK
    cut = FailOnEmit(sim, chain[link], key, fault)
    write = run_ops(sim, [values.put(key)], [front])[0]
    assert cut.fired and sim.state_of(chain[link]) != UP
    assert write.err == Err.OK, "the client never got its write acknowledged"
    settle(sim)
    _assert_reads(read_everywhere(sim, key), write)
    recover(sim, chain[link])
    settle(sim)
    _assert_reads(read_everywhere(sim, key), write)
    for member in chain_of(sim, key):
        entry = full_node(sim, member).storage.get(key)
        assert entry is not None and entry[0] == write.value, f"node {member} lacks the write"
    result = check(sim.history)
    assert result.ok, str(result)


def _assert_reads(reads: list[Op], write: Op) -> None:
    wrong = [op for op in reads if (op.err, op.value) != (Err.OK, write.value)]
    assert not wrong, f"expected {write.value!r} everywhere, got {wrong}"


# --------------------------------------------- at most once across a head failure


@pytest.mark.parametrize("fault", ["pause", "crash"])
@pytest.mark.parametrize("dies", ["before forwarding", "after the tail applied"])
def test_retried_write_after_head_failure_does_not_execute_twice(dies: str, fault: str) -> None:
    sim = cluster(6, seed=11)
    key = b"once"
    head, middle, _ = chain_of(sim, key)
    probe = Probe(sim)
    id_a, id_b = b"A" * 16, b"B" * 16

    def head_forwards(data: bytes, src: Addr, dst: Addr) -> bool:
        return src == peer_addr(node_addr(head)) and is_peer(data, peer.REPLICATE)

    def tail_answers(data: bytes, src: Addr, dst: Addr) -> bool:
        return dst == probe.addr

    lost = head_forwards if dies == "before forwarding" else tail_answers
    sim.interceptors.append(_drop_first(lost))
    probe.send(head, id_a, Command.PUT, key, b"value A")
    sim.run_for(0.05)
    assert not probe.replies, "the first try of A must go unanswered"
    fail(sim, head, fault)
    settle(sim)
    assert chain_of(sim, key)[0] == middle
    assert probe.call(middle, id_a, Command.PUT, key, b"value A")[0] == Err.OK
    executed = sim.now  # the protocol keeps replies at least 5 s from here
    assert probe.call(middle, id_b, Command.PUT, key, b"value B")[0] == Err.OK
    assert probe.call(middle, id_a, Command.PUT, key, b"value A")[0] == Err.OK
    recover(sim, head)  # it heads the chain again once it has pulled the key
    sim.run_for(2.5)
    assert probe.call(head, id_a, Command.PUT, key, b"value A")[0] == Err.OK
    assert sim.now < executed + 5.0, "the last retry came after the reply retention"
    settle(sim)
    assert chain_of(sim, key)[0] == head
    _assert_value(sim, probe, key, b"value B")


def _drop_first(match: Callable[[bytes, Addr, Addr], bool]) -> Callable[..., bool]:
    """An interceptor that loses the first datagram matching, and nothing else."""
    done: list[bool] = []

    def take(data: bytes, src: Addr, dst: Addr) -> bool:
        if done or not match(data, src, dst):
            return False
        done.append(True)
        return True

    return take


def _assert_value(sim: Simulator, probe: Probe, key: bytes, value: bytes) -> None:
    for n, front in enumerate(sim.nodes_in(UP)):
        got = probe.call(front, b"G%03d" % n + b"%012d" % int(sim.now * 1000), Command.GET, key)
        assert got == (Err.OK, value), f"GET via node {front} gave {got}"


# --------------------------------------------- an interrupted transfer resumes


class LoseSomeSyncData:
    """Lose every other SYNC_DATA to a node, and its first SYNC_DONEs, up to a budget."""

    def __init__(self, to: int, budget: int = 12) -> None:
        self.dst = peer_addr(node_addr(to))
        self.budget = budget
        self.seen = 0
        self.lost = 0

    def __call__(self, data: bytes, src: Addr, dst: Addr) -> bool:
        if dst != self.dst or self.lost >= self.budget:
            return False
        if is_peer(data, peer.SYNC_DATA):
            self.seen += 1
            if self.seen % 2 == 0:
                self.lost += 1
                return True
        elif is_peer(data, peer.SYNC_DONE) and self.lost < 4:
            self.lost += 1
            return True
        return False


class PauseSourceMidTransfer:
    """Let one SYNC_DATA to a node through, then pause its source and lose the rest it sent.

    Sources send a transfer's batches in one burst; losing the rest of the
    burst is what a source stopped after its first batch would have sent.
    """

    def __init__(self, sim: Simulator, to: int, pause_for: float) -> None:
        self.sim = sim
        self.dst = peer_addr(node_addr(to))
        self.pause_for = pause_for
        self.source: Addr | None = None
        self.at = -1.0
        self.lost = 0

    def __call__(self, data: bytes, src: Addr, dst: Addr) -> bool:
        if dst != self.dst or not (is_peer(data, peer.SYNC_DATA) or is_peer(data, peer.SYNC_DONE)):
            return False
        if self.source is None:
            self.source, self.at = src, self.sim.now
            self.sim.after(0.0, self._pause, node_index(src))
            return False
        if src == self.source and self.sim.now == self.at:
            self.lost += 1
            return True
        return False

    def _pause(self, index: int) -> None:
        self.sim.pause(index)
        self.sim.after(self.pause_for, self.sim.resume, index)


@pytest.mark.parametrize("interruption", ["lost batches", "source paused 1 s", "source paused 6 s"])
def test_interrupted_transfer_resumes_and_completes(interruption: str) -> None:
    joiner = 5
    sim = cluster(6, seed=3, start_down=(joiner,))
    keys = [b"t-%05d" % i for i in range(1500)]
    values = Values(400)
    writes = run_ops(sim, [values.put(k) for k in keys], sim.nodes_in(UP), clients=10)
    assert all(op.err == Err.OK for op in writes)
    cut: Any
    if interruption == "lost batches":
        cut = LoseSomeSyncData(joiner)
    else:
        cut = PauseSourceMidTransfer(sim, joiner, 1.0 if "1 s" in interruption else 6.0)
    sim.interceptors.append(cut)
    sim.restart(joiner)
    settle(sim, limit=60.0)
    sim.interceptors.remove(cut)
    assert cut.lost > 0, "the interruption never happened"
    node = full_node(sim, joiner)
    assert node.replication.unsynced_slots() == 0
    mine = [op for op in writes if joiner in chain_of(sim, op.key)]
    missing = [
        op.key for op in mine if (node.storage.get(op.key) or ())[:2] != (op.value, op.version)
    ]
    assert mine and not missing, f"joiner lacks {len(missing)} of {len(mine)} keys"
    reads = run_ops(sim, [Request(GET, k) for k in keys], sim.nodes_in(UP), clients=10)
    assert all(op.err == Err.OK for op in reads)
    assert check(sim.history).ok


# --------------------------------------------- an older stamp never wins


def _stamp(sim: Simulator, key: bytes) -> int:
    entry = full_node(sim, chain_of(sim, key)[-1]).storage.entry(key)
    assert entry is not None
    return entry[2]


def _kept_and_removed(sim: Simulator) -> tuple[bytes, bytes, bytes]:
    """Write a key twice and another once then remove it: (kept, its value, removed)."""
    live, gone = b"kept", b"removed"
    values = Values(16)
    put = values.put(live)
    ops = run_ops(sim, [values.put(live), put, values.put(gone), Request(REMOVE, gone)], [0])
    assert [op.err for op in ops] == [Err.OK] * 4
    assert put.value is not None
    return live, put.value, gone


def test_older_replicate_never_overwrites_a_newer_copy() -> None:
    sim = cluster(5, seed=5, sealed=False)  # the test plays a member sending late
    live, kept_value, gone = _kept_and_removed(sim)
    for key, value in ((live, None), (gone, b"back from the dead")):
        older = _stamp(sim, key) - (1 << 12)  # one microsecond earlier, same head
        chain = chain_of(sim, key)
        write = Write(b"O" * 16, ("10.9.0.2", 1), Err.OK, key, value, 1, older, (chain[0],))
        for member in chain[1:]:
            sim.inject(
                peer.encode_replicate(write), peer_addr(node_addr(chain[0])),
                peer_addr(node_addr(member)),
            )  # fmt: skip
    sim.run_for(2.0)
    _assert_state(sim, live, kept_value)
    _assert_state(sim, gone, None)


class Rewind:
    """Rewrite the entries of `keys` in every SYNC_DATA to older stamps and stale values."""

    def __init__(self, sim: Simulator, stamps: dict[bytes, int]) -> None:
        self.sim = sim
        self.stamps = stamps
        self.rewritten = 0

    def __call__(self, data: bytes, src: Addr, dst: Addr) -> bool:
        if not peer.is_peer(data):
            return False
        parts = peer.unpack(data) if peer.is_batch(data) else [data]
        rewound = [self._rewind(part) for part in parts]
        if rewound == parts:
            return False
        (datagram,) = peer.pack(rewound, limit=1 << 16)
        self.sim.inject(datagram, src, dst, 0.001)
        self.rewritten += 1
        return True

    def _rewind(self, data: bytes) -> bytes:
        batch = decoded(data)
        if not isinstance(batch, SyncData):
            return data
        entries = batch.entries
        if not any(key in self.stamps for key, *_ in entries):
            return data
        stale = [
            (key, b"stale", 1, self.stamps[key] - (1 << 12)) if key in self.stamps else entry
            for entry in entries
            for key in (entry[0],)
        ]
        body = peer.encode_sync_batches(batch.request_id, stale)[0]
        head = len(peer.encode_sync_batches(batch.request_id, [])[-1])  # SYNC_DONE: a bare head
        return data[:head] + body[head:]


def test_older_transferred_copy_never_overwrites_a_newer_one() -> None:
    sim = cluster(5, seed=9, sealed=False)  # the test rewrites a member's transfer
    live, kept_value, gone = _kept_and_removed(sim)
    rewind = Rewind(sim, {live: _stamp(sim, live), gone: _stamp(sim, gone)})
    sim.interceptors.append(rewind)
    member = chain_of(sim, live)[1]
    sim.pause(member)  # long enough to be declared dead: the chains repair, then take it back
    sim.run_for(8.0)
    sim.resume(member)
    settle(sim)
    sim.interceptors.remove(rewind)
    assert rewind.rewritten > 0, "no transfer carried the keys"
    _assert_state(sim, live, kept_value)
    _assert_state(sim, gone, None)


def _assert_state(sim: Simulator, key: bytes, value: bytes | None) -> None:
    for i in sim.nodes_in(UP):
        entry = full_node(sim, i).storage.get(key)
        assert entry is None or entry[0] == value, f"node {i} holds {entry} for {key!r}"
    reads = read_everywhere(sim, key)
    expected = (Err.OK, value) if value is not None else (Err.NO_KEY, None)
    assert all((op.err, op.value) == expected for op in reads), reads


def _indexed_store(ring: Ring) -> Storage:
    return Storage(1 << 20, lambda key: ring.slot_of(key_position(key)))


def test_head_of_a_changed_chain_hints_its_new_members_to_pull() -> None:
    """When a member leaves, the head asks the chain's new member to pull from it at once."""
    ring = Ring(8, vnodes=16)
    servers = tuple(node_addr(i) for i in range(8))
    everyone = frozenset(range(8))
    me, gone = 0, 3
    replication = Replication(me, servers, ring, 3, _indexed_store(ring), ReplyCache())
    replication.on_view(everyone, 0.0)
    sends = replication.on_view(everyone - {gone}, 1.0)

    expected: dict[int, set[int]] = {}
    for slot in range(ring.slots):
        before, after = ring.chain_at(slot, everyone, 3), ring.chain_at(slot, everyone - {gone}, 3)
        if after[0] == me and before != after:
            for member in set(after) - set(before):
                expected.setdefault(member, set()).add(slot)
    assert expected, "the draw gave node 0 no chain that lost node 3"
    hinted = {}
    for data, addr in sends:
        hint = decoded(data)
        assert isinstance(hint, Handoff)
        sender, slots = hint
        assert sender == me
        hinted[servers.index(addr)] = set(slots)
    assert hinted == expected


def sync_request(data: bytes) -> SyncRequest:
    request = decoded(data)
    assert isinstance(request, SyncRequest)
    return request


def sync_data(data: bytes) -> SyncData:
    batch = decoded(data)
    assert isinstance(batch, SyncData)
    return batch


CONFIG = ReplicationConfig()


def _lone_replication(index: int = 0, nodes: int = 4) -> Replication:
    """A node's replication with every node alive, every slot whole, nothing pending."""
    servers = tuple(node_addr(i) for i in range(nodes))
    ring = Ring(nodes, vnodes=8)
    return Replication(index, servers, ring, 3, _indexed_store(ring), ReplyCache())


def _settled_replication(nodes: int = 6) -> Replication:
    return _lone_replication(0, nodes)


def _pull_requests(sends: list[tuple[bytes, Addr]]) -> list[tuple[SyncRequest, Addr]]:
    """The pulls among `sends`, each with the source it asks."""
    return [(m, to) for data, to in sends if isinstance(m := decoded(data), SyncRequest)]


def _answer(
    node: Replication, requests: list[tuple[SyncRequest, Addr]], now: float, floor: int = 0
) -> None:
    """Every source answers with no keys, sure of the slots (floor 0) or not; so do
    the sources of the pulls that the answers let through."""
    while requests:
        request, source = requests.pop(0)
        unsure = dict.fromkeys(request.slots, floor) if floor else {}
        done = SyncDone(request.request_id, 0, (), unsure, frozenset())
        requests += _pull_requests(node.on_sync_done(done, source, now))


def _hold(node: Replication, slot: int, at: float, floor: int = NO_FLOOR) -> None:
    """Drive the slot to HELD through its transitions: marked and pulled at `at`, and
    no source sure of it (each has every write only from `floor` on)."""
    node.slots.mark({slot}, at, due=at)
    _answer(node, _pull_requests(node.on_tick(at)), at, floor)
    assert node.slots.phase(slot) is Phase.HELD


def test_a_paused_node_pulls_only_what_was_stamped_since_it_could_have_missed_it() -> None:
    requester = _lone_replication(0)
    requester.on_pause(gap=20.0, now=100.0)
    requests = requester.on_tick(100.0 + 1.0)  # join_delay later
    assert requests
    missed_since = requester.writes.stamp_at(100.0 - 20.0 - CONFIG.lookback)
    for data, _ in requests:
        _, who, since, _ = sync_request(data)
        assert (who, since) == (0, missed_since)

    # The source sends what is stamped at or after `since`, and nothing older.
    source = _lone_replication(1)
    old, new = missed_since - (1 << 12), missed_since + (1 << 12)
    keys = {b"old-%d" % i: old for i in range(20)} | {b"new-%d" % i: new for i in range(20)}
    for key, stamp in keys.items():
        source.storage.apply(key, b"v", 1, stamp, 0.0)
    everything = tuple(range(source.view.ring.slots))
    request = SyncRequest(9, 0, missed_since, everything)
    answer = source.on_sync_request(request, source.servers[0], 100.0)
    sent = [entry for data, _ in answer[:-1] for entry in sync_data(data).entries]
    assert sorted(key for key, *_ in sent) == sorted(k for k, st in keys.items() if st == new)


def test_a_node_paused_past_the_tombstone_lifetime_pulls_everything() -> None:
    """It dropped its copies on resume, so an incremental pull would leave them missing."""
    node = _lone_replication(0)
    node.on_pause(gap=TOMBSTONE_TTL + 1.0, now=1000.0)
    requests = node.on_tick(1001.0)
    assert requests
    assert all(sync_request(data).since == 0 for data, _ in requests)


def test_a_transfer_still_receiving_batches_is_not_asked_for_again() -> None:
    node = _lone_replication(0)
    node.on_start(0.0)
    first = node.on_tick(1.0)
    data, source = first[0]
    request_id = sync_request(data).request_id
    batch = sync_data(peer.encode_sync_batches(request_id, [(b"k", b"v", 1, 5)])[0])
    node.on_sync_data(batch, source, 1.9)  # progress just before sync_retry runs out
    retried = _requested(node.on_tick(2.5), node.servers)
    assert retried  # the other pull, silent since 1.0, is asked for again ...
    assert node.servers.index(source) not in retried  # ... this one waits for the rest


def _requested(sends: list[tuple[bytes, Addr]], servers: Sequence[Addr]) -> dict[int, set[int]]:
    """Slots asked for in SYNC_REQUESTs, by source index."""
    asked: dict[int, set[int]] = {}
    for data, addr in sends:
        if isinstance(request := decoded(data), SyncRequest):
            asked.setdefault(servers.index(addr), set()).update(request.slots)
    return asked


def test_a_heads_hint_pulls_a_joined_slot_from_every_member_at_once() -> None:
    """The hint skips join_delay: the head counts us already and a copy is missing."""
    node = _settled_replication()
    everyone = frozenset(range(6))
    alive = everyone - {5}
    view = node.view
    before = set(view.mine)
    node.on_view(alive, 1.0)  # node 5 left: node 0 joins chains, pulls them join_delay later
    slot, chain = next((s, c) for s in sorted(view.mine - before) if (c := view.chain(s))[0] != 0)
    assert node.slots.pull_waits(slot)
    head = chain[0]
    sends = node.on_handoff(Handoff(head, (slot,)), node.servers[head], 1.01)
    asked = _requested(sends, node.servers)
    assert {m for m, slots in asked.items() if slot in slots} == set(chain) - {0}
    assert node.slots.phase(slot) is Phase.PULLING and not node.slots.pull_waits(slot)


def test_a_hint_from_a_non_member_is_pulled_and_confirmed_as_before() -> None:
    node = _settled_replication()
    slot = min(node.view.mine)
    outsider = next(i for i in range(6) if i not in node.view.chain(slot))
    sends = node.on_handoff(Handoff(outsider, (slot,)), node.servers[outsider], 1.0)
    [(request, source)] = _pull_requests(sends)
    assert _requested(sends, node.servers) == {outsider: {slot}}
    # Once its keys are here, the outsider is told so.
    done = SyncDone(request.request_id, 0, (), {}, frozenset())
    (confirm,) = node.on_sync_done(done, source, 1.1)
    assert decoded(confirm[0]) == SyncConfirm(0, (slot,))
    assert confirm[1] == node.servers[outsider]


def test_transfers_from_a_node_that_left_the_view_free_their_place_at_once() -> None:
    node = _settled_replication()
    everyone = frozenset(range(6))
    slots = sorted(node.view.mine)
    gone = next(m for m in node.view.chain(slots[0]) if m != 0)
    others = [i for i in range(1, 6) if i != gone]
    node.transfers.enqueue(gone, slots[:1], True)
    node.transfers.enqueue(others[0], slots[:1], True)
    node.transfers.enqueue(others[1], slots[:1], True)  # waits: max_transfers in flight
    node.transfers.pump(0.0)
    assert {t.source for t in node.transfers.in_flight()} == {gone, others[0]}
    sends = node.on_view(everyone - {gone}, 0.2)  # well before sync_retry
    assert others[1] in _requested(sends, node.servers)
    assert gone not in {t.source for t in node.transfers.in_flight()}


def test_a_pull_restoring_a_copy_goes_before_queued_settling_pulls() -> None:
    node = _settled_replication()
    slot = min(node.view.mine)
    for source in (1, 2):
        node.transfers.enqueue(source, [slot], False, since=5)  # settling pulls, queued first
    node.transfers.enqueue(3, [slot], False, confirm=True)  # a hint or a handoff
    node.transfers.enqueue(4, [slot], True)  # a gating pull
    sends, _ = node.transfers.pump(1.0)
    assert set(_requested(sends, node.servers)) == {3, 4}


@pytest.mark.parametrize("end", ["source died", "batches all came"])
def test_a_slot_marked_again_stays_unsynced_when_an_older_pull_ends(end: str) -> None:
    """Seed 1396: a slot left and rejoined counted as pulled when the old round's pull ended."""
    node = _lone_replication(0, nodes=6)
    slot = min(node.view.mine)
    node.slots.mark({slot}, 0.0, due=0.0)
    old_pulls = _pull_requests(node.on_tick(0.0))
    assert len(old_pulls) == 2  # from both other members
    node.slots.synced(slot)  # it left the chain ...
    node.slots.mark({slot}, 0.5, due=5.0)  # ... and rejoined: not pulled yet this round
    if end == "source died":
        source = next(m for m in node.view.chain(slot) if m != 0)
        node.on_view(frozenset(range(6)) - {source}, 1.0)
    else:
        _answer(node, old_pulls, 1.0)
    assert node.slots.phase(slot) is Phase.PULLING


def test_a_tail_in_doubt_hands_reads_to_its_predecessor() -> None:
    node = _lone_replication(0, nodes=6)
    view = node.view
    slot = next(s for s in sorted(view.mine) if view.chain(s)[-1] == 0)
    chain = view.chain(slot)
    key = next(k for k in (b"k%d" % i for i in range(100_000)) if view.slot_of(k) == slot)

    def get(message_id: bytes) -> list[Any]:
        data = encode_request(message_id, Command.GET, key, b"")
        kv = KVRequest(command=Command.GET, key=key)
        return node.on_key_request(message_id, kv, data, ("10.2.200.1", 1), CONFIG.max_hops, 1.0)

    assert [to for _, to in get(b"a")] == [("10.2.200.1", 1)]  # the tail serves it
    node.on_membership([DoubtChanged(True)], 1.0)
    assert [to for _, to in get(b"b")] == [node.servers[chain[-2]]]  # handed to its predecessor


# --------------------------------------------- a chain suspended and resumed whole


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_chain_resumed_whole_serves_what_its_stand_ins_took_meanwhile(seed: int) -> None:
    """Its members are all stale: they must pull from the nodes that stood in for them.

    Before the fix the three pulled only from each other and served the old
    value until the stand-ins' handoff came, seconds later.
    """
    sim = cluster(8, seed)
    probe = Probe(sim)
    key = b"whole-chain"
    chain = chain_of(sim, key)
    front = outsider(sim, chain)
    assert probe.call(front, b"put-old", Command.PUT, key, b"old")[0] == Err.OK
    for member in chain:
        sim.pause(member)
    sim.run_for(8.0)  # suspected, declared dead, routed around
    assert probe.call(front, b"put-new", Command.PUT, key, b"new")[0] == Err.OK
    for member in chain:
        sim.resume(member)
    reads: list[bytes] = []
    for step in range(80):  # through every node, every 50 ms, for 4 s after the resume
        for node in sim.nodes_in(UP):
            message_id = b"get-%03d-%d" % (step, node)
            reads.append(message_id)
            probe.send(node, message_id, Command.GET, key)
        sim.run_for(0.05)
    sim.run_for(1.0)
    answers = [answer for message_id in reads for answer in probe.replies.get(message_id, [])]
    assert len(answers) > len(reads) // 2
    assert set(answers) == {(Err.OK, b"new")}


def test_an_unsynced_member_next_to_the_tail_leads_a_put_but_no_remove() -> None:
    """Its store may lack the key: a REMOVE led here could answer "not found" wrongly."""
    node = _settled_replication(6)
    view = node.view
    slot = next(s for s in sorted(view.mine) if view.chain(s)[1] == 0)
    key = next(k for k in (b"k%d" % i for i in range(100_000)) if view.slot_of(k) == slot)
    node.slots.mark(
        {slot}, 1.0, due=5.0
    )  # pulling it: writes would go to the tail, which must not lead
    client = ("10.2.200.1", 1)

    def request(message_id: bytes, command: int, value: bytes = b"") -> list[Any]:
        kv = KVRequest(command=command, key=key, value=value)
        data = encode_request(message_id, command, key, value)
        return node.on_key_request(message_id, kv, data, client, CONFIG.max_hops, 1.0)

    assert request(b"remove", Command.REMOVE) == []  # the client's retry comes after the pull
    led = request(b"put", Command.PUT, b"v")
    assert [type(decoded(data)) for data, _ in led] == [Write]


def test_a_slot_regained_soon_after_a_pause_is_pulled_from_its_stand_in_too() -> None:
    """A resumed node's view is old: a node it still counts alive may hide a slot
    of its own for a moment. Regained soon after, that slot is as stale as the
    others and must be pulled from the node that stood in for this one."""
    node = _settled_replication(8)
    everyone = frozenset(range(8))
    ring = node.view.ring
    # A slot whose chain has node 0 third, so that one more node alive before it
    # (q, down now) pushes 0 out of the chain.
    slot, q = next(
        (s, ring.chain_at(s, everyone, 3)[2])
        for s in range(ring.slots)
        if ring.chain_at(s, everyone - {ring.chain_at(s, everyone, 3)[2]}, 3)[2] == 0
        and ring.chain_at(s, everyone, 3)[2] != 0
    )
    without_q = everyone - {q}
    node.on_view(without_q, 0.0)
    _answer(node, _pull_requests(node.on_tick(0.6)), 0.6)  # the slots gained are pulled
    assert node.unsynced_slots() == 0
    node.on_pause(gap=20.0, now=100.0)
    node.on_view(everyone, 100.01)  # the old view: q looks alive, the slot not ours
    assert node.slots.phase(slot) is not Phase.PULLING
    node.on_view(without_q, 100.2)  # q's death heard: the slot is ours again
    node.on_tick(100.2 + 1.0)  # join_delay later: the gating pull
    stand_in = ring.chain_at(slot, without_q - {0}, 3)[2]
    assert stand_in not in ring.chain_at(slot, without_q, 3)
    state = node.slots.get(slot)
    assert state is not None and state.pull is not None
    assert stand_in in state.pull.waiting  # the slot waits for its answer too


# --------------------------------------------- every copy of a chain away at once


@pytest.mark.parametrize("seed", [1, 2])
def test_a_chain_suspended_whole_is_held_not_read_as_absent(seed: int) -> None:
    """Its stand-ins have no source: they must not answer "not found" for its keys.

    They serve what was written since they stood in, hold back the rest (the
    client times out) and let go once the chain is back.
    """
    sim = cluster(8, seed)
    probe = Probe(sim)
    old_key = b"old-key"
    chain = chain_of(sim, old_key)
    node = full_node(sim, chain[0])
    slot = node.ring.slot_of(key_position(old_key))
    new_key = next(
        k for k in (b"new-%d" % i for i in range(100_000))
        if node.ring.slot_of(key_position(k)) == slot
    )  # fmt: skip
    front = outsider(sim, chain)
    assert probe.call(front, b"put-old", Command.PUT, old_key, b"old")[0] == Err.OK
    for member in chain:
        sim.pause(member)
    sim.run_for(8.0)  # declared dead: three stand-ins, none of which has the slot
    stand_ins = chain_of(sim, old_key)
    assert not set(stand_ins) & set(chain)
    assert all(full_node(sim, i).replication.held_slots() for i in stand_ins)
    assert probe.call(front, b"put-new", Command.PUT, new_key, b"new")[0] == Err.OK
    assert probe.call(front, b"get-new", Command.GET, new_key) == (Err.OK, b"new")
    for n, index in enumerate(sim.nodes_in(UP)):
        probe.send(index, b"get-old-%d" % n, Command.GET, old_key)
    sim.run_for(2.0)
    answers = [
        a for n in range(len(sim.nodes_in(UP))) for a in probe.replies.get(b"get-old-%d" % n, [])
    ]
    assert answers == [], "a stand-in answered for a key it never had"
    for member in chain:
        sim.resume(member)
    settle(sim)
    sim.run_for(12.0)  # every node back for LINGER: the holds end
    assert probe.call(front, b"get-old-after", Command.GET, old_key) == (Err.OK, b"old")
    assert probe.call(front, b"get-new-after", Command.GET, new_key) == (Err.OK, b"new")
    assert not any(full_node(sim, i).replication.held_slots() for i in sim.nodes_in(UP))


def _sync_done(node: Replication, requester: int, slot: int, now: float) -> Any:
    """(strangers, unsure, vouched) of the SYNC_DONE answering a pull of `slot`."""
    request = SyncRequest(1, requester, 0, (slot,))
    done = decoded(node.on_sync_request(request, node.servers[requester], now)[-1][0])
    assert isinstance(done, SyncDone)
    return list(done.strangers), done.unsure, set(done.vouched)


def test_a_held_slot_vouches_only_for_the_members_that_left_it() -> None:
    """A holder's own copy (from when it left) and ours (since) are whole together,
    if the holder's was: we give it our floor and vouch for it.

    To anyone else we give the stamp from which on we have every write.
    """
    node = _settled_replication(6)
    everyone = frozenset(range(6))
    view, stamp_at = node.view, node.writes.stamp_at
    slot = min(view.mine)
    holder, other = view.others(slot)
    assert _sync_done(node, holder, slot, 0.0) == ([], {}, set())  # a member sure of its slot
    _hold(node, slot, at=10.0)
    floor = stamp_at(10.0)
    node.on_view(everyone - {holder}, 11.0)  # the holder leaves while we hold the slot ...
    node.on_view(everyone, 12.0)  # ... and comes back
    assert _sync_done(node, holder, slot, 12.0) == ([], {slot: floor}, {slot})
    assert _sync_done(node, other, slot, 12.0) == ([], {slot: floor}, set())
    node.slots.mark({slot}, 20.0, due=25.0)  # pulling it since t = 20: every write since came here
    assert node.slots.phase(slot) is Phase.PULLING
    assert _sync_done(node, holder, slot, 30.0) == ([], {slot: stamp_at(20.0)}, {slot})
    assert _sync_done(node, other, slot, 30.0) == ([], {slot: stamp_at(20.0)}, set())
    foreign = next(s for s in range(view.ring.slots) if s not in view.mine)
    assert node.slots.floor(foreign, False, 0.0) == NO_FLOOR  # only what came while it stood in


def test_a_vouch_lowers_a_returning_holders_own_hold_to_its_floor() -> None:
    """Vouched for, a node sure of the slot when it left is whole again; one that
    held it then has every write only from its own hold's floor on, and one
    that did not have it (the others counted it a member first) only from the
    voucher's."""
    node = _settled_replication(6)
    slots, stamp_at = node.slots, node.writes.stamp_at
    slot, held = sorted(node.view.mine)[:2]
    theirs, ours = stamp_at(30.0), stamp_at(10.0)
    vouched = frozenset({slot, held})
    assert slots.floor_with(slot, {slot: theirs}, vouched) == theirs  # it never left with it
    _hold(node, held, at=10.0)
    node.on_suspected(11.0)
    assert slots.floor_with(slot, {slot: theirs}, vouched) == 0  # it had the slot whole
    assert slots.floor_with(held, {held: theirs}, vouched) == ours  # it held it from `ours` on
    assert slots.floor_with(slot, {slot: theirs}, frozenset()) == theirs  # no vouch


def test_a_node_notes_how_whole_its_slots_were_when_it_left() -> None:
    """Paused while it still pulled one slot and held another: a vouch makes them
    whole only from where its own copies began; its holds say nothing of now."""
    node = _settled_replication(6)
    slots, stamp_at = node.slots, node.writes.stamp_at
    pulled, held, whole = sorted(node.view.mine)[:3]
    _hold(node, held, at=3.0)
    slots.mark({pulled}, 5.0, due=6.0)
    node.on_pause(2.0, 20.0)
    every = frozenset({pulled, held, whole})
    unsure = dict.fromkeys(every, NO_FLOOR)  # a voucher with nothing of its own
    assert slots.floor_with(pulled, unsure, every) == stamp_at(5.0)
    assert slots.floor_with(held, unsure, every) == stamp_at(3.0)
    assert slots.floor_with(whole, unsure, every) == 0
    assert not slots.any_held()
    assert slots.floor(held, True, 20.0) == stamp_at(20.0)  # pulled again from now


def test_a_member_pushed_out_of_a_chain_stays_sure_of_it_for_linger() -> None:
    """Writes still reach it that long: a returning member may count on its copy."""
    node = _settled_replication(6)
    everyone = frozenset(range(6))
    node.on_view(everyone - {5}, 1.0)
    _answer(node, _pull_requests(node.on_tick(1.6)), 1.6)  # the slots gained, from sure members
    assert node.unsynced_slots() == 0
    node.on_view(everyone, 2.0)  # 5 is back and pushes node 0 out of some chains
    ring = node.view.ring
    slot = next(
        s for s in range(ring.slots)
        if 0 in ring.chain_at(s, everyone - {5}, 3) and 0 not in ring.chain_at(s, everyone, 3)
    )  # fmt: skip
    linger = CONFIG.linger
    assert node.slots.floor(slot, False, 2.0 + linger - 0.1) == 0
    assert node.slots.floor(slot, False, 2.0 + linger + 0.1) == NO_FLOOR


def test_a_member_reading_for_the_tail_exposes_no_write_the_tail_lacks() -> None:
    """Views differ and a read lands on the head after MAX_HOPS: it must not answer
    with a write still on its way down, or a later read at the tail goes back."""
    node = _settled_replication(6)
    view = node.view
    slot = next(s for s in sorted(view.mine) if view.chain(s)[0] == 0)
    key = next(k for k in (b"k%d" % i for i in range(100_000)) if view.slot_of(k) == slot)
    client = ("10.2.200.1", 1)

    def read(message_id: bytes) -> list[Any]:
        data = encode_request(message_id, Command.GET, key, b"")
        kv = KVRequest(command=Command.GET, key=key)
        return node.on_key_request(message_id, kv, data, client, CONFIG.max_hops, 1.0)

    assert len(read(b"before")) == 1  # nothing in flight: the head may answer
    put = KVRequest(command=Command.PUT, key=key, value=b"new")
    node.on_key_request(
        b"put", put, encode_request(b"put", Command.PUT, key, b"new"), client, 0, 1.0
    )
    assert read(b"during") == []  # the write is on its way down: no answer
    node.writes.on_ack(Ack((b"put",)), ("x", 1), 1.0)
    assert len(read(b"after")) == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_holder_that_left_unsure_is_not_vouched_whole_on_its_return(seed: int) -> None:
    """A stand-in that held the slot when it was suspended comes back: the others'
    copy since it left and its own do not make the slot whole, so the key that
    none of them has must still get no answer, not "not found"."""
    sim = cluster(10, seed)
    probe = Probe(sim)
    old_key = b"old-key"
    chain = chain_of(sim, old_key)
    front = next(i for i in sim.nodes_in(UP) if i not in chain)
    assert probe.call(front, b"put-old", Command.PUT, old_key, b"old")[0] == Err.OK
    for member in chain:
        sim.pause(member)
    sim.run_for(8.0)  # three stand-ins, none sure of the slot: they hold it
    stand_ins = chain_of(sim, old_key)
    holder = stand_ins[0]
    assert full_node(sim, holder).replication.held_slots()
    sim.pause(holder)
    sim.run_for(8.0)  # the other two record it as having left their chain
    sim.resume(holder)
    sim.run_for(15.0)  # back in the chain, pulled, and past LINGER
    assert holder in chain_of(sim, old_key)
    front = next(i for i in sim.nodes_in(UP) if i not in chain_of(sim, old_key))
    for n in range(4):
        probe.send(front, b"get-old-%d" % n, Command.GET, old_key)
        sim.run_for(1.0)
    answers = [a for n in range(4) for a in probe.replies.get(b"get-old-%d" % n, [])]
    assert answers == [], f"seed {seed}: the key was read as {answers}"
    for member in chain:
        sim.resume(member)
    settle(sim)
    assert probe.call(front, b"get-old-after", Command.GET, old_key) == (Err.OK, b"old")


# Seeds whose schedule read keys as absent or old before the fixes: a stand-in
# vouched for as whole though it held the slot (2, 19), or though it was
# suspended before it knew it had joined the chain (9, 11). RINGKV_RESUME_SEEDS=N
# adds seeds 1..N (a sweep: about 20 s each).
RESUME_SEEDS = sorted(
    {2, 9, 11, 19, *range(1, 1 + int(os.environ.get("RINGKV_RESUME_SEEDS", "0")))}
)


@pytest.mark.parametrize("seed", RESUME_SEEDS)
def test_nodes_suspended_three_at_a_time_and_resumed_at_random_serve_nothing_old(
    seed: int,
) -> None:
    """Seq-consistency-3's shape on 16 nodes: each round overwrites half the keys,
    suspends (rounds 1-4) or resumes (5-8) three nodes, and reads every key at
    once and 8 s later. Whole chains go down with their stand-ins: a read may
    time out, but none may be old or "not found"."""
    sim = Simulator(SimConfig(16, seed=seed))
    sim.run(3.0)
    rng = random.Random(seed)
    keys = [b"k%05d" % i for i in range(2000)]
    model = Model()
    model.record(run_batch(sim, [Request(PUT, k, b"r0") for k in keys], 32, sim.nodes_in(UP)))
    down = rng.sample(range(16), 12)
    back = rng.sample(down, 12)
    rounds = [(sim.pause, down[i : i + 3]) for i in range(0, 12, 3)]
    rounds += [(sim.resume, back[i : i + 3]) for i in range(0, 12, 3)]
    wrong: list[str] = []
    for number, (change, nodes) in enumerate(rounds):
        value = b"w%d" % number
        overwrite = [Request(PUT, k, value) for k in rng.sample(keys, 1000)]
        model.record(run_batch(sim, overwrite, 32, sim.nodes_in(UP)))
        for node in nodes:
            change(node)
        for _ in range(2):
            for op in run_batch(sim, [Request(GET, k) for k in keys], 32, sim.nodes_in(UP)):
                if model.judge(op) in ("stale", "missing"):
                    wrong.append(f"{op.key!r} read {op.value!r} at {op.response:.2f}")
            sim.run_for(8.0)
    assert not wrong, f"seed {seed}: {len(wrong)} reads old or absent: {wrong[:5]}"


# -- hostile input that a member's address or a lost key could send -------------------
# (rows of the trust review; the cluster runs without a key so the test can forge)


def test_a_replicate_stamped_beyond_any_clock_is_refused_and_the_key_stays_writable() -> None:
    sim = cluster(5, seed=3, sealed=False)
    key = b"pinned"
    chain = chain_of(sim, key)
    forged = Write(b"F" * 16, client_addr(99), Err.OK, key, b"forged", 1, (1 << 64) - 1, (0,))
    for member in chain[1:]:
        sim.inject(
            peer.encode_replicate(forged), peer_addr(node_addr(chain[0])),
            peer_addr(node_addr(member)),
        )  # fmt: skip
    sim.run_for(1.0)
    assert sum(full_node(sim, m).replication.stats.refused_stamps for m in chain[1:]) == 2
    values = Values(16)
    put = values.put(key)
    assert run_ops(sim, [put], [chain[0]])[0].err == Err.OK
    _assert_state(sim, key, put.value)


def test_a_message_id_longer_than_255_bytes_travels_down_the_chain_and_in_transfers() -> None:
    sim = cluster(5, seed=4)
    probe = Probe(sim)
    key = b"long-id"
    chain = chain_of(sim, key)
    long_id = b"L" * 300
    assert probe.call(outsider(sim, chain), long_id, Command.PUT, key, b"v")[0] == Err.OK
    assert probe.call(chain[0], b"I" * 400, Command.GET, key) == (Err.OK, b"v")
    sim.crash(chain[1])  # its replacement pulls the slot: the outcome of long_id goes too
    settle(sim)
    assert probe.call(chain[0], long_id, Command.PUT, key, b"v")[0] == Err.OK


def test_a_sync_done_from_another_node_than_the_pulls_source_is_ignored() -> None:
    node = _lone_replication(0)
    node.on_start(0.0)
    [(request, source), *_] = _pull_requests(node.on_tick(1.0))
    impostor = next(a for a in node.servers if a not in (source, node.servers[0]))
    done = SyncDone(request.request_id, 0, (), {}, frozenset())
    waiting = node.transfers_in_progress()
    node.on_sync_done(done, impostor, 1.1)  # "no keys, all done": it would end the pull
    assert node.transfers_in_progress() == waiting
    node.on_sync_done(done, source, 1.2)
    assert node.transfers_in_progress() < waiting


def test_a_sync_confirm_or_handoff_from_another_address_than_its_senders_is_ignored() -> None:
    node = _settled_replication()
    slot = min(node.view.mine)
    outsider = next(i for i in range(6) if i not in node.view.chain(slot))
    wrong = node.servers[next(i for i in range(1, 6) if i != outsider)]
    assert node.on_handoff(Handoff(outsider, (slot,)), wrong, 1.0) == []
    assert node.on_sync_request(SyncRequest(1, outsider, 0, (slot,)), wrong, 1.0) == []
    assert node.stats.refused_senders == 2

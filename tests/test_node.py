"""The node core on its own: commands, error codes, validation order, at-most-once."""

from __future__ import annotations

import ipaddress
import itertools
import math

import pytest
from native import pure_python_only

from ringkv.core.node import Node, NodeConfig
from ringkv.core.replies import ReplyCache
from ringkv.servers import peer_addr
from ringkv.wire import peer
from ringkv.wire.codec import (
    Command,
    Err,
    KVResponse,
    decode_msg,
    decode_response,
    encode_request,
)
from ringkv.wire.kv_pb2 import KVRequest
from ringkv.wire.seal import Channel, Keyring, Refused, Sealer

CLIENT = ("127.0.0.1", 5555)
_ids = itertools.count()


def new_node(**kwargs: object) -> Node:
    return Node(NodeConfig(servers=(("127.0.0.1", 43100),), pid=4242, **kwargs))  # type: ignore[arg-type]


def call(
    node: Node,
    command: int,
    key: bytes = b"",
    value: bytes = b"",
    version: int = 0,
    message_id: bytes | None = None,
    now: float = 0.0,
) -> KVResponse:
    message_id = message_id or next(_ids).to_bytes(16, "big")
    sends = node.on_datagram(encode_request(message_id, command, key, value, version), CLIENT, now)
    assert len(sends) == 1
    data, dest = sends[0]
    assert dest == CLIENT
    got_id, payload = decode_msg(data)
    assert got_id == message_id
    return decode_response(payload)


def test_put_get_with_version() -> None:
    node = new_node()
    for size in (8, 32, 2048, 10_000):
        value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        assert call(node, Command.PUT, b"key", value, size).errCode == Err.OK
        reply = call(node, Command.GET, b"key")
        assert (reply.errCode, reply.value, reply.version) == (Err.OK, value, size)


def test_remove_then_get_and_double_remove() -> None:
    node = new_node()
    call(node, Command.PUT, b"k", b"v")
    assert call(node, Command.REMOVE, b"k").errCode == Err.OK
    assert call(node, Command.GET, b"k").errCode == Err.NO_KEY
    assert call(node, Command.REMOVE, b"k").errCode == Err.NO_KEY


def test_admin_commands() -> None:
    node = new_node()
    assert call(node, Command.IS_ALIVE).errCode == Err.OK
    assert call(node, Command.GET_PID).pid == 4242
    assert call(node, Command.GET_MEMBERSHIP_COUNT).membershipCount == 1
    call(node, Command.PUT, b"k", b"v")
    assert call(node, Command.WIPEOUT).errCode == Err.OK
    assert call(node, Command.GET, b"k").errCode == Err.NO_KEY
    assert not node.exit_requested
    call(node, Command.SHUTDOWN)
    assert node.exit_requested


@pytest.mark.parametrize(
    ("command", "key", "value", "err"),
    [
        (0x09, b"", b"", Err.BAD_COMMAND),
        (0x09, b"k" * 40, b"v" * 20_000, Err.BAD_COMMAND),  # command checked first
        (Command.PUT, b"", b"v", Err.BAD_KEY),
        (Command.GET, b"k" * 33, b"", Err.BAD_KEY),
        (Command.PUT, b"k" * 33, b"v" * 10_001, Err.BAD_KEY),  # key before value
        (Command.PUT, b"k" * 32, b"v" * 10_001, Err.BAD_VALUE),
        (Command.REMOVE, b"", b"", Err.BAD_KEY),
    ],
)
def test_invalid_requests(command: int, key: bytes, value: bytes, err: int) -> None:
    assert call(new_node(), command, key, value).errCode == err


def test_value_limits_accepted() -> None:
    node = new_node()
    assert call(node, Command.PUT, b"k" * 32, b"").errCode == Err.OK
    assert call(node, Command.PUT, b"k", b"v" * 10_000).errCode == Err.OK


def test_retried_put_is_not_executed_again() -> None:
    node = new_node()
    first, second = b"A" * 16, b"B" * 16
    call(node, Command.PUT, b"k", b"one", message_id=first)
    call(node, Command.PUT, b"k", b"two", message_id=second)
    assert call(node, Command.PUT, b"k", b"one", message_id=first).errCode == Err.OK
    assert call(node, Command.GET, b"k").value == b"two"


def test_retried_remove_gets_the_first_answer() -> None:
    node = new_node()
    call(node, Command.PUT, b"k", b"v")
    rem = b"R" * 16
    assert call(node, Command.REMOVE, b"k", message_id=rem).errCode == Err.OK
    call(node, Command.PUT, b"k", b"again")
    assert call(node, Command.REMOVE, b"k", message_id=rem).errCode == Err.OK
    assert call(node, Command.GET, b"k").value == b"again"  # the retry did not remove


def test_reply_forgotten_after_retention() -> None:
    node = new_node(reply_retention=5.0)
    put = b"P" * 16
    call(node, Command.PUT, b"k", b"v", message_id=put, now=0.0)
    call(node, Command.REMOVE, b"k", now=1.0)
    node.on_tick(now=6.0)
    call(node, Command.PUT, b"k", b"v", message_id=put, now=6.0)
    assert call(node, Command.GET, b"k", now=6.0).errCode == Err.OK  # executed anew


def test_out_of_space_refused_and_node_keeps_serving() -> None:
    node = new_node(memory_budget=64 << 10)
    errs = [call(node, Command.PUT, str(i).encode(), b"x" * 1000).errCode for i in range(100)]
    assert Err.NO_SPACE in errs
    first_refused = errs.index(Err.NO_SPACE)
    assert all(e == Err.OK for e in errs[:first_refused])
    assert call(node, Command.GET, b"0").value == b"x" * 1000
    assert call(node, Command.GET, str(first_refused).encode()).errCode == Err.NO_KEY


def test_malformed_datagrams_dropped_without_reply() -> None:
    node = new_node()
    good = encode_request(b"i" * 16, Command.GET, b"k")
    bad_crc = good[:-1] + bytes([good[-1] ^ 1])
    for data in (b"", b"\xff" * 50, bad_crc, b"RK\x01garbage", good[:10]):
        assert node.on_datagram(data, CLIENT, 0.0) == []
    assert node.on_datagram(good, CLIENT, 0.0)  # sanity: the intact one is answered
    assert node.stats.dropped == 5


def test_peer_messages_naming_what_cannot_be_are_dropped_at_the_edge() -> None:
    """A FORWARD past every hop limit with a 40-byte key and a 20,000-byte value, a
    HANDOFF of slots the ring lacks, a REPLICATE from a node the cluster lacks:
    each is refused when decoded, before any handler sees it."""
    node = _two_nodes()
    slots = node.ring.slots
    datagram = encode_request(b"f" * 16, Command.PUT, b"k" * 40, b"v" * 20_000)
    forged = [
        peer.encode_forward(CLIENT, datagram, hops=200),
        peer.encode_slots(peer.Handoff(1, tuple(range(slots, slots + 300)))),
        peer.encode_replicate(peer.Write(b"w", CLIENT, 0, b"k", b"v", 0, 1, (7,))),
    ]
    for data in forged:
        assert node.on_peer_datagram(data, ("127.0.0.1", 45101), 0.0) == []
    assert node.stats.dropped == len(forged)
    assert len(node.storage) == 0


def test_unknown_fields_in_request_ignored() -> None:
    node = new_node()
    payload = KVRequest(command=Command.IS_ALIVE).SerializeToString() + b"\x50\x01"  # field 10
    from ringkv.wire.codec import encode_msg

    sends = node.on_datagram(encode_msg(b"u" * 16, payload), CLIENT, 0.0)
    assert decode_response(decode_msg(sends[0][0])[1]).errCode == Err.OK


def test_request_that_waited_past_every_retry_is_dropped() -> None:
    node = new_node()
    data = encode_request(b"s" * 16, Command.PUT, b"k", b"v")
    assert node.on_datagram(data, CLIENT, 100.0, age=5.0) == []
    assert node.stats.stale == 1
    assert call(node, Command.GET, b"k").errCode == Err.NO_KEY  # the stale PUT never ran
    assert node.on_datagram(data, CLIENT, 100.0, age=0.1)  # a fresh one is served


def _reply(sends: list[tuple[bytes, tuple[str, int]]]) -> KVResponse:
    assert len(sends) == 1 and sends[0][1] == CLIENT
    return decode_response(decode_msg(sends[0][0])[1])


def test_request_that_waited_past_shed_age_is_answered_overload_and_not_executed() -> None:
    node = new_node()
    data = encode_request(b"o" * 16, Command.PUT, b"k", b"v")
    reply = _reply(node.on_datagram(data, CLIENT, 0.0, age=0.4))
    assert (reply.errCode, reply.overloadWaitTime) == (Err.OVERLOAD, 400)
    assert node.stats.shed == 1 and node.status(0.0)["shed"] == 1
    assert call(node, Command.GET, b"k").errCode == Err.NO_KEY  # never executed
    # The wait follows the time queued, within bounds.
    assert _reply(node.on_datagram(data, CLIENT, 0.0, age=0.26)).overloadWaitTime == 260
    late = _reply(node.on_datagram(data, CLIENT, 0.0, age=0.99))
    assert late.overloadWaitTime == 990
    # Not cached: the client's retry after the wait is executed.
    assert _reply(node.on_datagram(data, CLIENT, 1.0)).errCode == Err.OK
    assert call(node, Command.GET, b"k").value == b"v"


def test_aged_retry_of_an_executed_write_gets_its_outcome_not_overload() -> None:
    node = new_node()
    data = encode_request(b"r" * 16, Command.REMOVE, b"absent")
    assert _reply(node.on_datagram(data, CLIENT, 0.0)).errCode == Err.NO_KEY
    assert _reply(node.on_datagram(data, CLIENT, 0.0, age=0.5)).errCode == Err.NO_KEY
    assert node.stats.shed == 0  # answered as any retry is, not shed


def test_once_shed_every_earlier_try_is_shed_and_a_later_one_executed() -> None:
    node = new_node()
    data = encode_request(b"t" * 16, Command.PUT, b"k", b"v")
    assert _reply(node.on_datagram(data, CLIENT, 10.0, age=0.5)).errCode == Err.OVERLOAD
    # A second try, queued behind the first: it must not be executed now that
    # the client was told OVERLOAD (it would be an outcome the client never sees).
    assert _reply(node.on_datagram(data, CLIENT, 10.0, age=0.1)).errCode == Err.OVERLOAD
    assert call(node, Command.GET, b"k", now=10.0).errCode == Err.NO_KEY
    # The client's retry after the wait is executed.
    assert _reply(node.on_datagram(data, CLIENT, 10.5)).errCode == Err.OK
    assert node.stats.shed == 2


def _synced_node(servers: tuple[tuple[str, int], ...]) -> Node:
    """Node 0 of `servers`, its start-up pulls answered (empty) so that it serves."""
    node = Node(NodeConfig(servers=servers, self_index=0))
    limits = peer.PeerLimits(len(servers), node.ring.slots)
    sent = node.on_tick(0.6).data
    while sent:
        answers = []
        for data, dest in sent:
            for part in peer.unpack(data) if peer.is_batch(data) else [data]:
                if part[2] == peer.SYNC_REQUEST:
                    done = peer.encode_sync_batches(peer.decode(part, limits).request_id, [])[-1]
                    answers += node.on_peer_datagram(done, dest, 0.7)
        sent = answers
    assert node.replication.unsynced_slots() == 0
    return node


def test_an_aged_retry_of_a_write_still_on_its_way_down_is_not_acknowledged_early() -> None:
    servers = tuple(("127.0.0.1", 43100 + i) for i in range(3))
    head = _synced_node(servers)
    key = next(
        k for k in (b"key-%d" % i for i in range(300)) if head.replication.view.locate(k)[1][0] == 0
    )
    data = encode_request(b"w" * 16, Command.PUT, key, b"v")
    first = head.on_datagram(data, CLIENT, 1.0)
    assert head.replication.writes.pending_count() == 1  # led, on its way down
    assert first and all(dest != CLIENT for _, dest in first)
    retry = head.on_datagram(data, CLIENT, 1.5, age=0.4)
    assert all(dest != CLIENT for _, dest in retry)  # the tail answers, once it has it
    assert head.stats.shed == 0


def test_aged_forward_is_answered_overload_to_its_client() -> None:
    servers = (("127.0.0.1", 43100), ("127.0.0.1", 43101))
    node = Node(NodeConfig(servers=servers, pid=4242))
    datagram = encode_request(b"f" * 16, Command.PUT, b"k", b"v")
    forward = peer.encode_forward(CLIENT, datagram, hops=1)
    reply = _reply(node.on_peer_datagram(forward, peer_addr(servers[1]), 0.0, age=0.3))
    assert reply.errCode == Err.OVERLOAD and node.stats.shed == 1
    assert node.on_peer_datagram(forward, peer_addr(servers[1]), 0.0, age=1.5) == []
    assert node.stats.stale == 1 and len(node.storage) == 0


def _two_nodes() -> Node:
    servers = (("127.0.0.1", 43100), ("127.0.0.1", 43101))
    return Node(NodeConfig(servers=servers, pid=4242))


@pure_python_only
def test_idle_replication_is_not_ticked_and_ticks_wait_for_membership() -> None:
    node = _two_nodes()
    node.replication.next_due = lambda now: math.inf  # type: ignore[method-assign]
    ticked: list[float] = []
    node.replication.on_tick = lambda now: ticked.append(now) or []  # type: ignore[method-assign]
    node.on_tick(1.0)
    assert ticked == []
    assert node.membership is not None
    assert node.next_due(1.0) == node.membership.next_due() > 1.0
    node.replication.next_due = lambda now: now  # type: ignore[method-assign]
    node.on_tick(1.1)
    assert ticked == [1.1] and node.next_due(1.1) == 1.1


def test_replication_is_due_only_while_something_waits_on_a_timer() -> None:
    node = _two_nodes()
    replication = node.replication
    assert replication.next_due(0.0) == 0.0  # the start-up pull is deferred
    limits = peer.PeerLimits(2, node.ring.slots)
    sent = replication.on_tick(0.6)  # join_delay later, the pull goes out ...
    for data, _ in sent:
        request = peer.decode(data, limits)
        assert isinstance(request, peer.SyncRequest)
        done = peer.SyncDone(request.request_id, 0, (), {}, frozenset())
        replication.on_sync_done(done, ("127.0.0.1", 43101), 0.7)  # ... and is answered
    assert replication.next_due(1.0) == math.inf
    replication.on_view(frozenset({0}), 2.0)  # the other node left: a settling pull is planned
    assert replication.next_due(2.1) == 2.1


def test_admin_from_restricts_wipeout_and_shutdown_to_its_networks() -> None:
    node = new_node(admin_from=(ipaddress.ip_network("10.0.0.0/8"),))
    call(node, Command.PUT, b"k", b"v")
    assert call(node, Command.WIPEOUT).errCode == Err.BAD_COMMAND  # CLIENT is 127.0.0.1
    assert call(node, Command.SHUTDOWN).errCode == Err.BAD_COMMAND
    assert not node.exit_requested and call(node, Command.GET, b"k").value == b"v"
    assert call(node, Command.IS_ALIVE).errCode == Err.OK  # the others stay open
    admin = ("10.1.2.3", 999)
    request = encode_request(b"w" * 16, Command.WIPEOUT, b"", b"", 0)
    [(reply, _)] = node.on_datagram(request, admin, 0.0)
    assert decode_response(decode_msg(reply)[1]).errCode == Err.OK
    assert call(node, Command.GET, b"k").errCode == Err.NO_KEY
    assert node.stats.refused_admin == 2


def test_the_reply_cache_is_bounded_in_bytes_whatever_the_message_ids_length() -> None:
    cache = ReplyCache(max_bytes=1 << 20)
    for n in range(1000):
        cache.put(n.to_bytes(4, "big") * 2500, Err.OK, 0.0)  # 10 kB message IDs
    assert cache.bytes <= 1 << 20 and 0 < len(cache) < 1000
    assert cache.get((999).to_bytes(4, "big") * 2500) == Err.OK  # the newest stay
    assert cache.get((0).to_bytes(4, "big") * 2500) is None
    cache.expire(100.0)
    assert len(cache) == 0 and cache.bytes == 0


def test_what_a_wake_up_sends_one_member_leaves_as_one_sealed_datagram() -> None:
    servers = tuple(("127.0.0.1", 43100 + i) for i in range(3))
    keyring = Keyring.generate()
    node = Node(NodeConfig(servers=servers, replicas=1, keyring=keyring, boot=1))
    elsewhere = [
        k for k in (b"key-%d" % i for i in range(200)) if node.replication.view.locate(k)[1] == (1,)
    ][:3]
    for key in elsewhere:  # GETs for keys that node 1 alone keeps: each is forwarded
        node.take(encode_request(next(_ids).to_bytes(16, "big"), Command.GET, key), CLIENT, 1.0)
    sends = node.flush()
    assert [dest for _, dest in sends] == [peer_addr(servers[1])]
    opened = Sealer(keyring, 1, 1).open(sends[0][0], Channel.DATA)
    assert not isinstance(opened, Refused) and opened[0] == 0
    forwards = peer.unpack(opened[1])
    assert [peer.decode(f, peer.PeerLimits(3, node.ring.slots)).request.key for f in forwards] == (
        elsewhere
    )
    status = node.status(1.0)
    assert status["datagrams_in"] == 3 and status["datagrams_out"] == 1
    assert status["peer_sent"] == {"forward": 3} and status["replies"] == 0
    assert node.flush() == []  # nothing left behind


def test_the_tail_acknowledges_writes_together_on_a_datagram_going_that_way_or_the_tick() -> None:
    servers = tuple(("127.0.0.1", 43100 + i) for i in range(3))
    peers = [peer_addr(addr) for addr in servers]
    tail = Node(NodeConfig(servers=servers, self_index=2))
    limits = peer.PeerLimits(3, tail.ring.slots)
    keys = [
        k
        for k in (b"key-%d" % i for i in range(300))
        if tail.replication.view.locate(k)[1][-1] == 2
    ]
    head, middle = tail.replication.view.locate(keys[0])[1][:2]
    writes = [
        peer.Write(
            b"w%d" % i, CLIENT, 0, key, b"v", 0, (1_000_000 + i) << 12 | head, (head, middle), ()
        )
        for i, key in enumerate(keys[:3])
    ]
    replies = []
    for write in writes[:2]:
        sends = tail.on_peer_datagram(peer.encode_replicate(write), peers[middle], 1.0)
        assert [dest for _, dest in sends] == [CLIENT]  # the client's answer; no ACK yet
        replies.append(sends[0])
    outbox = tail.on_tick(1.1)  # with the start-up pull's requests
    acks = {
        dest: message
        for data, dest in outbox.data
        for part in (peer.unpack(data) if peer.is_batch(data) else [data])
        if isinstance(message := peer.decode(part, limits), peer.Ack)
    }
    assert acks == {peers[m]: peer.Ack((b"w0", b"w1")) for m in (head, middle)}
    # A datagram going to the head anyway carries the next ACK with it.
    tail.take_peer(peer.encode_replicate(writes[2]), peers[middle], 1.2)
    elsewhere = next(k for k in keys if tail.replication.view.locate(k)[1][0] == head)
    tail.take(encode_request(b"put-elsewhere", Command.PUT, elsewhere, b"v"), CLIENT, 1.2)
    to_head = [data for data, dest in tail.flush() if dest == peers[head]]
    assert len(to_head) == 1 and peer.is_batch(to_head[0])
    kinds = [peer.decode(m, limits) for m in peer.unpack(to_head[0])]
    assert isinstance(kinds[0], peer.Forward) and kinds[1] == peer.Ack((b"w2",))

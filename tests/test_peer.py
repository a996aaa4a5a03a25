"""Node-to-node messages: what one node encodes, the next decodes unchanged, and
what no node would send is refused at the edge."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.wire import peer
from ringkv.wire.codec import Command, encode_request
from ringkv.wire.peer import (
    Ack,
    Forward,
    Handoff,
    PeerDecodeError,
    PeerLimits,
    StatusRequest,
    SyncConfirm,
    SyncData,
    SyncDone,
    SyncRequest,
    Write,
)

LIMITS = PeerLimits(nodes=40, slots=4096)
nodes = st.integers(0, LIMITS.nodes - 1)
slots = st.integers(0, LIMITS.slots - 1)
keys = st.binary(min_size=1, max_size=32)
stamps = st.integers(0, (1 << 64) - 1)
int32 = st.integers(-(1 << 31), (1 << 31) - 1)


def read(data: bytes) -> peer.PeerMessage:
    return peer.decode(data, LIMITS)


@given(
    message_id=st.binary(min_size=1, max_size=2000),  # the protocol sets no limit
    key=keys,
    value=st.none() | st.binary(max_size=10_000),
    err=st.integers(0, 7),
    version=int32,
    stamp=stamps,
    path=st.lists(nodes, min_size=1, max_size=5).map(tuple),
    targets=st.lists(nodes, max_size=5).map(tuple),
)
def test_replicate_round_trips(
    message_id: bytes, key: bytes, value: bytes | None, err: int, version: int, stamp: int,
    path: tuple[int, ...], targets: tuple[int, ...],
) -> None:  # fmt: skip
    write = Write(message_id, ("10.0.0.7", 4321), err, key, value, version, stamp, path, targets)
    assert read(peer.encode_replicate(write)) == write


def test_a_write_passed_on_is_sent_with_its_new_path_and_targets() -> None:
    write = Write(b"M" * 16, ("10.9.0.1", 1), 0, b"key", b"v", 7, 99, (3,), (3, 9))
    back = read(peer.encode_replicate(write, (3, 9), (3, 9, 12)))
    assert back == Write(b"M" * 16, ("10.9.0.1", 1), 0, b"key", b"v", 7, 99, (3, 9), (3, 9, 12))


def test_short_replicate_is_a_decode_error() -> None:
    data = peer.encode_replicate(
        Write(b"R" * 16, ("10.9.0.1", 1), 0, b"k", b"v", 0, 5, (0, 1), (0, 1))
    )
    with pytest.raises(PeerDecodeError):
        read(data[:30])


@pytest.mark.parametrize(
    "write",
    [
        Write(b"R", ("10.9.0.1", 1), 0, b"k", b"v", 0, 5, (40,)),  # a node the cluster lacks
        Write(b"R", ("10.9.0.1", 1), 0, b"k", b"v", 0, 5, (0,), (1, 999)),
        Write(b"R", ("10.9.0.1", 1), 0, b"k", b"v", 0, 5, ()),  # applied by nobody
        Write(b"R", ("10.9.0.1", 1), 0, b"k" * 33, b"v", 0, 5, (0,)),  # key over 32 bytes
        Write(b"R", ("10.9.0.1", 1), 0, b"", b"v", 0, 5, (0,)),
        Write(b"R", ("10.9.0.1", 1), 0, b"k", b"v" * 10_001, 0, 5, (0,)),
    ],
)
def test_a_replicate_no_node_would_send_is_refused(write: Write) -> None:
    with pytest.raises(PeerDecodeError):
        read(peer.encode_replicate(write))


def test_forward_carries_the_client_request_decoded() -> None:
    datagram = encode_request(b"I" * 16, Command.PUT, b"key", b"value", 3)
    message = read(peer.encode_forward(("10.1.2.3", 5555), datagram, hops=2))
    assert isinstance(message, Forward)
    assert (message.client, message.message_id, message.datagram, message.hops) == (
        ("10.1.2.3", 5555), b"I" * 16, datagram, 2,
    )  # fmt: skip
    assert (message.request.command, message.request.key, message.request.value) == (
        Command.PUT, b"key", b"value",
    )  # fmt: skip


@pytest.mark.parametrize(
    "datagram",
    [
        encode_request(b"I", Command.SHUTDOWN),  # only key commands are forwarded
        encode_request(b"I", Command.GET, b"k" * 33),
        encode_request(b"I", Command.PUT, b"k", b"v" * 10_001),
        encode_request(b"I", Command.GET, b"k")[:-1],  # checksum broken
    ],
)
def test_a_forward_no_node_would_send_is_refused(datagram: bytes) -> None:
    with pytest.raises(PeerDecodeError):
        read(peer.encode_forward(("10.1.2.3", 5555), datagram))


OWN = ("10.0.0.1", 43100)  # a node of the cluster


@pytest.mark.parametrize(
    "client",
    [
        ("example.com", 5555),  # a name: looking it up would block the node's loop
        ("10.1.2.3\x00", 5555),
        ("10.1.2.3", 0),
        OWN,  # the node would take its own reply for a request
    ],
)
def test_a_client_that_is_no_address_or_a_cluster_node_is_refused(client: tuple[str, int]) -> None:
    limits = LIMITS._replace(cluster=frozenset((OWN,)))
    datagram = encode_request(b"I" * 16, Command.GET, b"k")
    write = Write(b"I" * 16, client, 0, b"k", b"v", 0, 5, (0,))
    for data in (peer.encode_forward(client, datagram), peer.encode_replicate(write)):
        with pytest.raises(PeerDecodeError, match="client"):
            peer.decode(data, limits)


@given(st.integers(0, (1 << 32) - 1), nodes, stamps, st.lists(slots, max_size=300).map(tuple))
def test_sync_request_round_trips(
    request_id: int, requester: int, since: int, wanted: tuple[int, ...]
) -> None:
    request = SyncRequest(request_id, requester, since, wanted)
    assert read(peer.encode_sync_request(request)) == request


@given(nodes, st.lists(slots, max_size=300).map(tuple), st.booleans())
def test_handoff_and_confirm_round_trip(sender: int, wanted: tuple[int, ...], hint: bool) -> None:
    message = Handoff(sender, wanted) if hint else SyncConfirm(sender, wanted)
    back = read(peer.encode_slots(message))
    assert type(back) is type(message) and back == message


@pytest.mark.parametrize(
    "data",
    [
        peer.encode_slots(Handoff(40, (1,))),
        peer.encode_slots(SyncConfirm(1, (4096,))),
        peer.encode_sync_request(SyncRequest(1, 40, 0, (1,))),
        peer.encode_sync_request(SyncRequest(1, 1, 0, (1, 4096))),
    ],
)
def test_slot_lists_naming_unknown_nodes_or_slots_are_refused(data: bytes) -> None:
    with pytest.raises(PeerDecodeError):
        read(data)


entries = st.lists(st.tuples(keys, st.none() | st.binary(max_size=10_000), int32, stamps))
outcomes = st.lists(st.tuples(st.binary(min_size=1, max_size=2000), st.integers(0, 7), slots))


@given(entries, outcomes)
def test_sync_batches_carry_every_entry_and_outcome_in_order(
    sent: list[peer.TransferEntry], results: list[peer.Outcome]
) -> None:
    batches = [read(b) for b in peer.encode_sync_batches(7, sent, results)]
    *data, done = batches
    assert all(isinstance(b, SyncData) and b.request_id == 7 for b in data)
    assert [b.number for b in data if isinstance(b, SyncData)] == list(range(len(data)))
    assert isinstance(done, SyncDone) and done.batches == len(data)
    assert [e for b in data if isinstance(b, SyncData) for e in b.entries] == sent
    assert [o for b in data if isinstance(b, SyncData) for o in b.outcomes] == results


def test_sync_done_lists_the_slots_that_leave_the_requester_out_and_those_unsure() -> None:
    entries = [(b"a", b"1", 1, 10), (b"b", None, 0, 11)]
    unsure = {8: 1 << 60, 0: 0, 4095: 7}  # slot -> the stamp from which on all is there
    vouched = {0, 4095}  # of those, the ones the requester left while the source was unsure
    batches = peer.encode_sync_batches(9, entries, [], [3, 8], unsure, vouched)
    done = read(batches[-1])
    assert done == SyncDone(9, len(batches) - 1, (3, 8), unsure, frozenset(vouched))
    assert read(peer.encode_sync_batches(9, [])[-1]) == SyncDone(9, 0, (), {}, frozenset())


def test_sync_done_with_a_torn_slot_list_is_a_decode_error() -> None:
    for done in (
        peer.encode_sync_batches(9, [], [], strangers=[3])[-1],
        peer.encode_sync_batches(9, [], [], unsure={3: 5})[-1],
    ):
        with pytest.raises(PeerDecodeError):
            read(done[:-1])


def test_ack_and_status_request_carry_their_bytes() -> None:
    assert read(peer.encode_ack(b"id-1")) == Ack((b"id-1",))
    assert read(peer.encode_status_request(b"tok")) == StatusRequest(b"tok")


@given(st.binary(max_size=200))
def test_garbage_is_a_message_or_a_decode_error_never_a_crash(tail: bytes) -> None:
    for kind in range(12):
        try:
            read(peer.MAGIC + bytes((kind,)) + tail)
        except PeerDecodeError:
            pass


# -- BATCH: several messages to one node in one datagram ---------------------------------


@given(sizes=st.lists(st.integers(3, 3000), min_size=1, max_size=40))
def test_pack_keeps_every_message_in_order_within_the_limit(sizes: list[int]) -> None:
    messages = [peer.MAGIC + bytes((peer.ACK,)) + bytes(size - 3) for size in sizes]
    datagrams = peer.pack(messages, limit=4096)
    unpacked = [m for d in datagrams for m in (peer.unpack(d) if peer.is_batch(d) else [d])]
    assert unpacked == messages
    # Over the limit only where one message alone is.
    assert all(len(d) <= 4096 or not peer.is_batch(d) for d in datagrams)


def test_a_single_message_travels_as_it_is() -> None:
    ack = peer.encode_ack(b"m" * 16)
    assert peer.pack([ack]) == [ack]


@pytest.mark.parametrize(
    "cut",
    [
        lambda d: d[:-1],  # truncated
        lambda d: d + b"\0",  # longer than its parts
        lambda d: d[:3] + b"\x00\x03" + d[5:],  # counts more parts than it has
        lambda d: d[:5] + b"\x00\x02zz" + d[5:],  # a part that is not a peer message
        lambda d: d[:3] + b"\x00\x01" + len(d).to_bytes(2, "big") + d,  # a BATCH inside it
    ],
)
def test_malformed_batches_are_refused(cut: object) -> None:
    batch = peer.pack([peer.encode_ack(b"a" * 16), peer.encode_ack(b"b" * 16)])[0]
    assert peer.is_batch(batch) and len(peer.unpack(batch)) == 2
    with pytest.raises(PeerDecodeError):
        peer.unpack(cut(batch))  # type: ignore[operator]


def test_a_batch_is_not_itself_a_message() -> None:
    batch = peer.pack([peer.encode_ack(b"a" * 16), peer.encode_ack(b"b" * 16)])[0]
    with pytest.raises(PeerDecodeError):
        read(batch)


@given(ids=st.lists(st.binary(min_size=1, max_size=600), min_size=1, max_size=60))
def test_acks_carry_every_message_id_in_messages_within_the_limit(ids: list[bytes]) -> None:
    messages = peer.encode_acks(ids, limit=2048)
    decoded = [read(m) for m in messages]
    assert [i for ack in decoded for i in ack.message_ids] == ids  # type: ignore[union-attr]
    assert all(len(m) <= 2048 for m in messages if len(read(m).message_ids) > 1)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [
        peer.MAGIC + bytes((peer.ACK,)),  # of no write
        peer.MAGIC + bytes((peer.ACK,)) + b"\x00",  # a cut length
        peer.MAGIC + bytes((peer.ACK,)) + b"\x00\x05abc",  # an ID shorter than it says
        peer.MAGIC + bytes((peer.ACK,)) + b"\x00\x00",  # an empty ID
    ],
)
def test_malformed_acks_are_refused(data: bytes) -> None:
    with pytest.raises(PeerDecodeError):
        read(data)

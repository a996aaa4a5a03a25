"""ringkv's node-to-node messages on the data port.

Client datagrams are protobuf `Msg`s; a peer datagram starts with MAGIC,
which no client `Msg` does in practice (it would need field 10 first).
A FORWARD carries a client's datagram untouched plus the client's address,
so the node that executes it can answer the client directly. STATUS asks a
node for a small JSON summary of itself (for `ringkv cluster status`).
REPLICATE / ACK carry a write down a chain and its acknowledgement back up;
SYNC_REQUEST / SYNC_DATA / SYNC_DONE transfer the keys of ring slots;
HANDOFF asks a slot's members to pull it from a node that holds keys of it
without being a member, and SYNC_CONFIRM tells that node they have them.
A BATCH carries several of these to one node in one datagram (see `pack`):
each datagram costs both processes far more than its bytes do.

`decode` is the one way in: it turns a datagram into one of the immutable
message types below, with every field checked against `PeerLimits` (node
indices, slot numbers, key and value sizes), or raises PeerDecodeError.
The core never sees a peer datagram's bytes. The types are NamedTuples:
immutable and four times cheaper to build than frozen dataclasses, which
counts on the write path (a PUT makes five of them).
"""

from __future__ import annotations

import ipaddress
import json
import struct
from collections.abc import Callable, Collection, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from ringkv.wire import Addr
from ringkv.wire.codec import (
    MAX_KEY,
    MAX_VALUE,
    Command,
    KVRequest,
    WireError,
    decode_msg,
    decode_request,
)

MAGIC = b"RK"
FORWARD = 1
STATUS_REQUEST = 2
STATUS_REPLY = 3
REPLICATE = 4
ACK = 5
SYNC_REQUEST = 6
SYNC_DATA = 7
SYNC_DONE = 8
HANDOFF = 9
SYNC_CONFIRM = 10
BATCH = 11
KIND_NAMES = {
    FORWARD: "forward", STATUS_REQUEST: "status_request", STATUS_REPLY: "status_reply",
    REPLICATE: "replicate", ACK: "ack", SYNC_REQUEST: "sync_request", SYNC_DATA: "sync_data",
    SYNC_DONE: "sync_done", HANDOFF: "handoff", SYNC_CONFIRM: "sync_confirm", BATCH: "batch",
}  # fmt: skip

# Values up to 10,000 bytes: a SYNC_DATA batch stays well inside one datagram.
SYNC_BATCH_BYTES = 30_000

# A batch is no larger than this unless one message alone is: about one
# Ethernet jumbo frame, few fragments where hosts are apart.
BATCH_BYTES = 8_192
_BATCH_HEAD = struct.Struct("!2sBH")  # magic, kind, message count
_PART_LENGTH = struct.Struct("!H")
_ACK_HEAD = MAGIC + bytes((ACK,))
_FORWARD_HEAD = struct.Struct("!2sBBHB")  # magic, kind, hops, client port, host length
_KEY_COMMANDS = frozenset((Command.PUT, Command.GET, Command.REMOVE))


class PeerDecodeError(ValueError):
    """A peer datagram that does not parse, or names what cannot be."""


class PeerLimits(NamedTuple):
    """What a well-formed peer message may name in this cluster."""

    nodes: int  # node indices are below this
    slots: int  # ring slot numbers are below this
    # The cluster's own addresses (data and gossip ports): never a client's, or
    # a node would take its own replies for requests.
    cluster: frozenset[Addr] = frozenset()


@lru_cache(maxsize=4096)
def is_ip_literal(host: str) -> bool:
    """A client's host must be an address, never a name: a name would make the
    node look it up (blocking its loop) before each reply."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _client(host: bytes, port: int, limits: PeerLimits) -> Addr:
    try:
        addr = (host.decode("ascii"), port)
    except UnicodeDecodeError:
        raise PeerDecodeError("a client host that is not an address") from None
    if not is_ip_literal(addr[0]) or port == 0:
        raise PeerDecodeError("a client host that is not an address")
    if addr in limits.cluster:
        raise PeerDecodeError("a cluster node named as a client")
    return addr


def is_peer(data: bytes) -> bool:
    return data[:2] == MAGIC


# -- the messages ----------------------------------------------------------------


class Forward(NamedTuple):
    """A client's request passed on, decoded; `datagram` is passed on untouched."""

    client: Addr
    message_id: bytes
    request: KVRequest
    datagram: bytes
    hops: int


class StatusRequest(NamedTuple):
    token: bytes


class Ack(NamedTuple):
    """The tail has these writes: their senders may forget them."""

    message_ids: tuple[bytes, ...]


class SyncRequest(NamedTuple):
    """Send me your keys of these slots stamped `since` or later (0: all)."""

    request_id: int
    requester: int
    since: int
    slots: tuple[int, ...]


class SyncData(NamedTuple):
    """One numbered batch of a transfer's entries and reply outcomes."""

    request_id: int
    number: int
    entries: list[TransferEntry]
    outcomes: list[Outcome]


class SyncDone(NamedTuple):
    """A transfer's end: how many batches it had, and what the source is unsure of.

    `strangers`: requested slots whose chain, as the source sees it, leaves the
    requester out. `unsure`: slots the source may lack writes of -> the stamp
    from which on it has every write; `vouched`: of those, the slots it vouches
    for the requester's own copy of (see _VOUCHED).
    """

    request_id: int
    batches: int
    strangers: tuple[int, ...]
    unsure: dict[int, int]
    vouched: frozenset[int]


class Handoff(NamedTuple):
    """The sender holds keys of these slots: pull them from it, then confirm."""

    sender: int
    slots: tuple[int, ...]


class SyncConfirm(NamedTuple):
    """The sender has pulled these slots from a HANDOFF."""

    sender: int
    slots: tuple[int, ...]


def pack(messages: list[bytes], limit: int = BATCH_BYTES) -> list[bytes]:
    """Peer messages for one node as few datagrams: BATCHes of up to `limit` bytes
    (one message alone goes as it is)."""
    if len(messages) == 1:
        return messages
    return [
        group[0] if len(group) == 1 else _framed(_BATCH_HEAD.pack(MAGIC, BATCH, len(group)), group)
        for group in _groups(messages, _BATCH_HEAD.size, limit)
    ]


def is_batch(data: bytes) -> bool:
    return len(data) > 2 and data[2] == BATCH and data[:2] == MAGIC


def unpack(data: bytes) -> list[bytes]:
    """The messages of a BATCH, each a peer message but never a BATCH itself;
    or PeerDecodeError. Each is decoded (and checked) on its own."""
    try:
        _, _, count = _BATCH_HEAD.unpack_from(data)
    except struct.error as exc:
        raise PeerDecodeError("truncated BATCH") from exc
    messages = _parts(data, _BATCH_HEAD.size, "BATCH")
    if len(messages) != count:
        raise PeerDecodeError("a BATCH with other than the parts it counts")
    for message in messages:
        if len(message) < 3 or message[:2] != MAGIC:
            raise PeerDecodeError("a BATCH part that is not a peer message")
        if message[2] == BATCH:
            raise PeerDecodeError("a BATCH inside a BATCH")
    return messages


# -- length-prefixed parts (BATCH, ACK) --------------------------------------------


def _groups(items: Sequence[bytes], head: int, limit: int) -> list[list[bytes]]:
    """Items in order, in groups that framed after a `head`-byte header fit in
    `limit` bytes (an item too large for that alone makes a group of one)."""
    groups: list[list[bytes]] = []
    group: list[bytes] = []
    size = head
    for item in items:
        cost = _PART_LENGTH.size + len(item)
        if group and size + cost > limit:
            groups.append(group)
            group, size = [], head
        group.append(item)
        size += cost
    groups.append(group)
    return groups


def _framed(head: bytes, items: list[bytes]) -> bytes:
    parts = [head]
    for item in items:
        parts.append(_PART_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def _parts(data: bytes, pos: int, what: str) -> list[bytes]:
    """The length-prefixed parts from `pos` to the end of `data`; or PeerDecodeError."""
    parts: list[bytes] = []
    end = len(data)
    while pos < end:
        if pos + _PART_LENGTH.size > end:
            raise PeerDecodeError(f"truncated {what}")
        (length,) = _PART_LENGTH.unpack_from(data, pos)
        pos += _PART_LENGTH.size
        part = data[pos : pos + length]
        if len(part) != length:
            raise PeerDecodeError(f"truncated {what}")
        parts.append(part)
        pos += length
    return parts


def encode_forward(client: Addr, datagram: bytes, hops: int = 1) -> bytes:
    host = client[0].encode()
    return _FORWARD_HEAD.pack(MAGIC, FORWARD, hops, client[1], len(host)) + host + datagram


def _decode_forward(data: bytes, limits: PeerLimits) -> Forward:
    try:
        _, _, hops, port, host_len = _FORWARD_HEAD.unpack_from(data)
    except struct.error as exc:
        raise PeerDecodeError("short FORWARD") from exc
    start = _FORWARD_HEAD.size
    if len(data) < start + host_len:
        raise PeerDecodeError("short FORWARD")
    client = _client(data[start : start + host_len], port, limits)
    datagram = data[start + host_len :]
    try:
        message_id, payload = decode_msg(datagram)
        request = decode_request(payload)
    except WireError as exc:
        raise PeerDecodeError("FORWARD of a bad client datagram") from exc
    # Only key commands are forwarded, once the first node has validated them.
    if request.command not in _KEY_COMMANDS or not 0 < len(request.key) <= MAX_KEY:
        raise PeerDecodeError("FORWARD of a request no node forwards")
    if len(request.value) > MAX_VALUE:
        raise PeerDecodeError("FORWARD of a value over the limit")
    return Forward(client, message_id, request, datagram, hops)


def encode_status_request(token: bytes) -> bytes:
    return MAGIC + bytes((STATUS_REQUEST,)) + token


def _decode_status_request(data: bytes, limits: PeerLimits) -> StatusRequest:
    return StatusRequest(data[3:])


def encode_status_reply(token: bytes, status: dict[str, Any]) -> bytes:
    body = json.dumps(status, separators=(",", ":")).encode()
    return MAGIC + bytes((STATUS_REPLY, len(token))) + token + body


def decode_status_reply(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """Return (token, status) of a STATUS reply (read by `ringkv cluster status`)."""
    if len(data) < 4 or data[:2] != MAGIC or data[2] != STATUS_REPLY:
        raise PeerDecodeError("not a STATUS reply")
    end = 4 + data[3]
    try:
        status = json.loads(data[end:])
    except ValueError as exc:
        raise PeerDecodeError("bad STATUS body") from exc
    if not isinstance(status, dict):
        raise PeerDecodeError("bad STATUS body")
    return data[4:end], status


# -- chain replication ---------------------------------------------------------

# magic, kind, removed, err, stamp, version, client port, host, id, key, path, targets lengths
# (a message ID may be as long as the client's datagram allows)
_REPLICATE_HEAD = struct.Struct("!2sBBBQiHBHBBB")


class Write(NamedTuple):
    """A write travelling down a chain (REPLICATE), with what the tail needs to
    answer the client."""

    message_id: bytes
    client: Addr
    err: int
    key: bytes
    value: bytes | None  # None: a remove
    version: int
    stamp: int
    path: tuple[int, ...]  # nodes that applied it, head first
    targets: tuple[int, ...] = ()  # every node some member of the path meant it for


def encode_replicate(
    write: Write, path: tuple[int, ...] | None = None, targets: tuple[int, ...] | None = None
) -> bytes:
    """REPLICATE of the write; as it moves on, with the path and targets given."""
    path = write.path if path is None else path
    targets = write.targets if targets is None else targets
    host = write.client[0].encode()
    removed = write.value is None
    head = _REPLICATE_HEAD.pack(
        MAGIC, REPLICATE, removed, write.err, write.stamp, write.version, write.client[1],
        len(host), len(write.message_id), len(write.key), len(path), len(targets),
    )  # fmt: skip
    nodes = (*path, *targets)
    indices = struct.pack(f"!{len(nodes)}H", *nodes)
    value = b"" if write.value is None else write.value
    return b"".join((head, host, write.message_id, write.key, indices, value))


def _decode_replicate(data: bytes, limits: PeerLimits) -> Write:
    try:
        (_, _, removed, err, stamp, version, port, host_len, id_len, key_len, path_len,
         targets_len) = _REPLICATE_HEAD.unpack_from(data)  # fmt: skip
        pos = _REPLICATE_HEAD.size
        host = data[pos : pos + host_len]
        pos += host_len
        message_id = data[pos : pos + id_len]
        pos += id_len
        key = data[pos : pos + key_len]
        pos += key_len
        nodes = struct.unpack_from(f"!{path_len + targets_len}H", data, pos)
        pos += 2 * len(nodes)
    except struct.error as exc:
        raise PeerDecodeError("short REPLICATE") from exc
    value = None if removed else data[pos:]
    if not 0 < len(key) <= MAX_KEY or len(key) != key_len or len(message_id) != id_len:
        raise PeerDecodeError("REPLICATE with a bad key or message ID")
    if value is not None and len(value) > MAX_VALUE:
        raise PeerDecodeError("REPLICATE of a value over the limit")
    if path_len == 0 or not _indices_ok(nodes, limits.nodes):
        raise PeerDecodeError("REPLICATE naming no node or an unknown one")
    path, targets = nodes[:path_len], nodes[path_len:]
    client = _client(host, port, limits)
    return Write(message_id, client, err, key, value, version, stamp, path, targets)


def encode_ack(message_id: bytes) -> bytes:
    return encode_acks([message_id])[0]


def encode_acks(message_ids: Sequence[bytes], limit: int = BATCH_BYTES) -> list[bytes]:
    """ACKs of these writes, as few messages as `limit` bytes allow."""
    return [_framed(_ACK_HEAD, group) for group in _groups(message_ids, len(_ACK_HEAD), limit)]


def _decode_ack(data: bytes, limits: PeerLimits) -> Ack:
    message_ids = _parts(data, len(_ACK_HEAD), "ACK")
    if not message_ids or not all(message_ids):
        raise PeerDecodeError("an ACK of no write")
    return Ack(tuple(message_ids))


# -- key transfer ----------------------------------------------------------------

_SYNC_HEAD = struct.Struct("!2sBIH")  # magic, kind, request id, count / batch number
# key (or message ID) length, kind, stamp, version, value length
_ENTRY_HEAD = struct.Struct("!HBQiH")
_UNSURE = 1 << 31  # a SYNC_DONE slot with this bit set: the source is unsure of it
_FLOOR = struct.Struct("!Q")  # ... and the stamp from which on it has every write
# ... and, with this bit too, the requester left the slot's chain while the source
# was unsure of it: the requester's own copy from then and the source's are whole
# together, if the requester's was whole when it left.
_VOUCHED = 1 << 30

TransferEntry = tuple[bytes, bytes | None, int, int]  # key, value (None: removed), version, stamp
Outcome = tuple[bytes, int, int]  # message ID, error code, slot: at-most-once travels too
_VALUE, _TOMBSTONE, _OUTCOME = 0, 1, 2  # entry kinds


def encode_sync_request(request: SyncRequest) -> bytes:
    """SYNC_REQUEST: the requester's index and the oldest stamp wanted, then the slots."""
    since = request.since
    numbers = [request.requester, since >> 32, since & 0xFFFFFFFF, *request.slots]
    return _encode_numbers(SYNC_REQUEST, request.request_id, numbers)


def _decode_sync_request(data: bytes, limits: PeerLimits) -> SyncRequest:
    request_id, numbers = _decode_numbers(data)
    if len(numbers) < 3:
        raise PeerDecodeError("SYNC_REQUEST without its requester")
    requester, slots = numbers[0], numbers[3:]
    if requester >= limits.nodes or not _indices_ok(slots, limits.slots):
        raise PeerDecodeError("SYNC_REQUEST naming an unknown node or slot")
    return SyncRequest(request_id, requester, numbers[1] << 32 | numbers[2], slots)


def encode_slots(message: Handoff | SyncConfirm) -> bytes:
    """HANDOFF or SYNC_CONFIRM: the sender, then the slots."""
    kind = HANDOFF if isinstance(message, Handoff) else SYNC_CONFIRM
    return _encode_numbers(kind, message.sender, message.slots)


def _decode_slots(data: bytes, limits: PeerLimits) -> Handoff | SyncConfirm:
    sender, slots = _decode_numbers(data)
    if sender >= limits.nodes or not _indices_ok(slots, limits.slots):
        raise PeerDecodeError("slot list naming an unknown node or slot")
    return (Handoff if data[2] == HANDOFF else SyncConfirm)(sender, slots)


def _encode_numbers(kind: int, number: int, numbers: Sequence[int]) -> bytes:
    head = _SYNC_HEAD.pack(MAGIC, kind, number, len(numbers))
    return head + struct.pack(f"!{len(numbers)}I", *numbers)


def _decode_numbers(data: bytes) -> tuple[int, tuple[int, ...]]:
    try:
        _, _, number, count = _SYNC_HEAD.unpack_from(data)
        return number, struct.unpack_from(f"!{count}I", data, _SYNC_HEAD.size)
    except struct.error as exc:
        raise PeerDecodeError("short slot list") from exc


def _indices_ok(numbers: Sequence[int], limit: int) -> bool:
    return not numbers or max(numbers) < limit


def encode_sync_batches(
    request_id: int,
    entries: list[TransferEntry],
    outcomes: Sequence[Outcome] = (),
    strangers: Sequence[int] = (),
    unsure: dict[int, int] | None = None,
    vouched: Collection[int] = (),
) -> list[bytes]:
    """SYNC_DATA datagrams numbered 0.. followed by SYNC_DONE with their count.

    SYNC_DONE also lists the requested slots whose chain, as the source sees
    it, does not have the requester in it (yet): the source may still send
    writes of those around the requester; and, flagged by the top bit, the
    slots the source may lack writes of itself (it is still pulling them, or
    nobody it could pull them from had them), each with the stamp from which
    on it has every write, and which of those it vouches for (see _VOUCHED).
    """
    batches: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    # An outcome is an entry of its own kind: message ID as key, slot as stamp.
    rows = [(k, v, ver, st, _TOMBSTONE if v is None else _VALUE) for k, v, ver, st in entries]
    rows += [(mid, None, err, slot, _OUTCOME) for mid, err, slot in outcomes]
    for key, value, version, stamp, kind in rows:
        body = b"" if value is None else value
        parts.append(_ENTRY_HEAD.pack(len(key), kind, stamp, version, len(body)))
        parts.append(key)
        parts.append(body)
        size += _ENTRY_HEAD.size + len(key) + len(body)
        if size >= SYNC_BATCH_BYTES:
            batches.append(_batch(request_id, len(batches), parts))
            parts, size = [], 0
    if parts:
        batches.append(_batch(request_id, len(batches), parts))
    done = _SYNC_HEAD.pack(MAGIC, SYNC_DONE, request_id, len(batches))
    parts = [struct.pack(f"!{len(strangers)}I", *strangers)]
    for slot, floor in (unsure or {}).items():
        flags = _UNSURE | (_VOUCHED if slot in vouched else 0)
        parts.append(struct.pack("!I", slot | flags) + _FLOOR.pack(floor))
    batches.append(done + b"".join(parts))
    return batches


def _batch(request_id: int, number: int, parts: list[bytes]) -> bytes:
    return _SYNC_HEAD.pack(MAGIC, SYNC_DATA, request_id, number) + b"".join(parts)


def _sync_head(data: bytes) -> tuple[int, int]:
    """(request id, batch number or, for SYNC_DONE, the number of batches)."""
    try:
        _, _, request_id, number = _SYNC_HEAD.unpack_from(data)
    except struct.error as exc:
        raise PeerDecodeError("short SYNC message") from exc
    return request_id, number


def _decode_sync_done(data: bytes, limits: PeerLimits) -> SyncDone:
    request_id, batches = _sync_head(data)
    strangers: list[int] = []
    unsure: dict[int, int] = {}
    vouched: set[int] = set()
    pos = _SYNC_HEAD.size
    try:
        while pos < len(data):
            (slot,) = struct.unpack_from("!I", data, pos)
            pos += 4
            if slot & _UNSURE:
                number = slot & ~(_UNSURE | _VOUCHED)
                unsure[number] = _FLOOR.unpack_from(data, pos)[0]
                pos += _FLOOR.size
                if slot & _VOUCHED:
                    vouched.add(number)
            else:
                strangers.append(slot)
    except struct.error as exc:
        raise PeerDecodeError("bad SYNC_DONE") from exc
    if not _indices_ok(strangers, limits.slots) or not _indices_ok(list(unsure), limits.slots):
        raise PeerDecodeError("SYNC_DONE naming an unknown slot")
    return SyncDone(request_id, batches, tuple(strangers), unsure, frozenset(vouched))


def _decode_sync_data(data: bytes, limits: PeerLimits) -> SyncData:
    request_id, number = _sync_head(data)
    entries: list[TransferEntry] = []
    outcomes: list[Outcome] = []
    pos = _SYNC_HEAD.size
    try:
        while pos < len(data):
            key_len, kind, stamp, version, value_len = _ENTRY_HEAD.unpack_from(data, pos)
            pos += _ENTRY_HEAD.size
            key = data[pos : pos + key_len]
            pos += key_len
            if kind == _OUTCOME:
                if stamp >= limits.slots:
                    raise PeerDecodeError("SYNC_DATA outcome of an unknown slot")
                outcomes.append((key, version, stamp))
            elif not 0 < key_len <= MAX_KEY or value_len > MAX_VALUE or len(key) != key_len:
                raise PeerDecodeError("SYNC_DATA entry over the limits")
            else:
                value = None if kind == _TOMBSTONE else data[pos : pos + value_len]
                entries.append((key, value, version, stamp))
            pos += value_len
    except struct.error as exc:
        raise PeerDecodeError("truncated SYNC_DATA") from exc
    if pos != len(data):
        raise PeerDecodeError("truncated SYNC_DATA")
    return SyncData(request_id, number, entries, outcomes)


# -- the one way in ----------------------------------------------------------------

PeerMessage = (
    Forward
    | StatusRequest
    | Write
    | Ack
    | SyncRequest
    | SyncData
    | SyncDone
    | Handoff
    | SyncConfirm
)

_DECODERS: dict[int, Callable[[bytes, PeerLimits], PeerMessage]] = {
    FORWARD: _decode_forward,
    STATUS_REQUEST: _decode_status_request,
    REPLICATE: _decode_replicate,
    ACK: _decode_ack,
    SYNC_REQUEST: _decode_sync_request,
    SYNC_DATA: _decode_sync_data,
    SYNC_DONE: _decode_sync_done,
    HANDOFF: _decode_slots,
    SYNC_CONFIRM: _decode_slots,
}


def decode(data: bytes, limits: PeerLimits) -> PeerMessage:
    """A peer datagram as its message, checked against `limits`; or PeerDecodeError."""
    if len(data) < 3 or data[:2] != MAGIC:
        raise PeerDecodeError("not a peer datagram")
    decoder = _DECODERS.get(data[2])
    if decoder is None:
        raise PeerDecodeError(f"no node takes peer messages of kind {data[2]}")
    return decoder(data, limits)

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
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection
from typing import Any

from ringkv.wire import Addr

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

# Values up to 10,000 bytes: a SYNC_DATA batch stays well inside one datagram.
SYNC_BATCH_BYTES = 30_000

_FORWARD_HEAD = struct.Struct("!2sBBHB")  # magic, kind, hops, client port, host length


class PeerDecodeError(ValueError):
    """A peer datagram that does not parse."""


def encode_forward(client: Addr, datagram: bytes, hops: int = 1) -> bytes:
    host = client[0].encode()
    return _FORWARD_HEAD.pack(MAGIC, FORWARD, hops, client[1], len(host)) + host + datagram


def decode_forward(data: bytes) -> tuple[Addr, bytes, int]:
    """Return (client address, client datagram, hops so far) of a FORWARD."""
    try:
        magic, kind, hops, port, host_len = _FORWARD_HEAD.unpack_from(data)
    except struct.error as exc:
        raise PeerDecodeError("short peer datagram") from exc
    start = _FORWARD_HEAD.size
    if magic != MAGIC or kind != FORWARD or len(data) < start + host_len:
        raise PeerDecodeError("not a FORWARD")
    host = data[start : start + host_len].decode(errors="replace")
    return (host, port), data[start + host_len :], hops


def kind_of(data: bytes) -> int:
    return data[2] if len(data) > 2 else 0


def encode_status_request(token: bytes) -> bytes:
    return MAGIC + bytes((STATUS_REQUEST,)) + token


def status_token(data: bytes) -> bytes:
    return data[3:]


def encode_status_reply(token: bytes, status: dict[str, Any]) -> bytes:
    body = json.dumps(status, separators=(",", ":")).encode()
    return MAGIC + bytes((STATUS_REPLY, len(token))) + token + body


def decode_status_reply(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """Return (token, status) of a STATUS reply."""
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
_REPLICATE_HEAD = struct.Struct("!2sBBBQiHBBBBB")


class Write:
    """A write travelling down a chain, with what the tail needs to answer the client."""

    __slots__ = (
        "client", "err", "key", "message_id", "path", "stamp", "targets", "value", "version",
    )  # fmt: skip

    def __init__(
        self,
        message_id: bytes,
        client: Addr,
        err: int,
        key: bytes,
        value: bytes | None,
        version: int,
        stamp: int,
        path: tuple[int, ...],
        targets: tuple[int, ...] = (),
    ) -> None:
        self.message_id = message_id
        self.client = client
        self.err = err
        self.key = key
        self.value = value  # None: a remove
        self.version = version
        self.stamp = stamp
        self.path = path  # nodes that applied it, head first
        self.targets = targets  # every node some member of the path meant it for


def encode_replicate(write: Write) -> bytes:
    host = write.client[0].encode()
    removed = write.value is None
    head = _REPLICATE_HEAD.pack(
        MAGIC, REPLICATE, removed, write.err, write.stamp, write.version, write.client[1],
        len(host), len(write.message_id), len(write.key), len(write.path), len(write.targets),
    )  # fmt: skip
    nodes = (*write.path, *write.targets)
    path = struct.pack(f"!{len(nodes)}H", *nodes)
    value = b"" if write.value is None else write.value
    return b"".join((head, host, write.message_id, write.key, path, value))


def decode_replicate(data: bytes) -> Write:
    try:
        (_, _, removed, err, stamp, version, port, host_len, id_len, key_len, path_len,
         targets_len) = _REPLICATE_HEAD.unpack_from(data)  # fmt: skip
        pos = _REPLICATE_HEAD.size
        host = data[pos : pos + host_len].decode(errors="replace")
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
    path, targets = nodes[:path_len], nodes[path_len:]
    return Write(message_id, (host, port), err, key, value, version, stamp, path, targets)


def encode_ack(message_id: bytes) -> bytes:
    return MAGIC + bytes((ACK,)) + message_id


def decode_ack(data: bytes) -> bytes:
    return data[3:]


# -- key transfer ----------------------------------------------------------------

_SYNC_HEAD = struct.Struct("!2sBIH")  # magic, kind, request id, count / batch number
_ENTRY_HEAD = struct.Struct("!BBQiH")  # key length, kind, stamp, version, value length
_UNSURE = 1 << 31  # a SYNC_DONE slot with this bit set: the source is unsure of it
_FLOOR = struct.Struct("!Q")  # ... and the stamp from which on it has every write
# ... and, with this bit too, the requester left the slot's chain while the source
# was unsure of it: the requester's own copy from then and the source's are whole
# together, if the requester's was whole when it left.
_VOUCHED = 1 << 30

TransferEntry = tuple[bytes, bytes | None, int, int]  # key, value (None: removed), version, stamp
Outcome = tuple[bytes, int, int]  # message ID, error code, slot: at-most-once travels too
_VALUE, _TOMBSTONE, _OUTCOME = 0, 1, 2  # entry kinds


def encode_sync_request(request_id: int, requester: int, since: int, slots: list[int]) -> bytes:
    """SYNC_REQUEST: the requester's index and the oldest stamp wanted, then the slots."""
    return encode_slots(
        SYNC_REQUEST, request_id, [requester, since >> 32, since & 0xFFFFFFFF, *slots]
    )


def decode_sync_request(data: bytes) -> tuple[int, int, int, list[int]]:
    """(request id, requester, since: entries stamped earlier are not wanted, slots)."""
    request_id, numbers = decode_slots(data)
    if len(numbers) < 3:
        raise PeerDecodeError("SYNC_REQUEST without its requester")
    return request_id, numbers[0], numbers[1] << 32 | numbers[2], numbers[3:]


def encode_slots(kind: int, number: int, slots: list[int]) -> bytes:
    """HANDOFF and SYNC_CONFIRM (number: sender); the body of SYNC_REQUEST."""
    head = _SYNC_HEAD.pack(MAGIC, kind, number, len(slots))
    return head + struct.pack(f"!{len(slots)}I", *slots)


def decode_slots(data: bytes) -> tuple[int, list[int]]:
    try:
        _, _, number, count = _SYNC_HEAD.unpack_from(data)
        return number, list(struct.unpack_from(f"!{count}I", data, _SYNC_HEAD.size))
    except struct.error as exc:
        raise PeerDecodeError("short slot list") from exc


def encode_sync_batches(
    request_id: int,
    entries: list[TransferEntry],
    outcomes: list[Outcome] = (),  # type: ignore[assignment]
    strangers: list[int] = (),  # type: ignore[assignment]
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


def decode_sync_head(data: bytes) -> tuple[int, int]:
    """(request id, batch number or, for SYNC_DONE, the number of batches)."""
    try:
        _, _, request_id, number = _SYNC_HEAD.unpack_from(data)
    except struct.error as exc:
        raise PeerDecodeError("short SYNC message") from exc
    return request_id, number


def decode_sync_done(data: bytes) -> tuple[list[int], dict[int, int], set[int]]:
    """A SYNC_DONE's slots: (those whose chain at the source leaves the requester
    out, those the source is unsure of -> the stamp from which on it has all,
    those of these it vouches for)."""
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
    return strangers, unsure, vouched


def decode_sync_entries(data: bytes) -> tuple[list[TransferEntry], list[Outcome]]:
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
                outcomes.append((key, version, stamp))
            else:
                value = None if kind == _TOMBSTONE else data[pos : pos + value_len]
                entries.append((key, value, version, stamp))
            pos += value_len
    except struct.error as exc:
        raise PeerDecodeError("truncated SYNC_DATA") from exc
    if pos != len(data):
        raise PeerDecodeError("truncated SYNC_DATA")
    return entries, outcomes

"""ringkv's node-to-node messages on the data port.

Client datagrams are protobuf `Msg`s; a peer datagram starts with MAGIC,
which no client `Msg` does in practice (it would need field 10 first).
A FORWARD carries a client's datagram untouched plus the client's address,
so the node that executes it can answer the client directly. STATUS asks a
node for a small JSON summary of itself (for `ringkv cluster status`).
"""

from __future__ import annotations

import json
import struct
from typing import Any

MAGIC = b"RK"
FORWARD = 1
STATUS_REQUEST = 2
STATUS_REPLY = 3

_FORWARD_HEAD = struct.Struct("!2sBHB")  # magic, kind, client port, host length


class PeerDecodeError(ValueError):
    """A peer datagram that does not parse."""


def encode_forward(client: tuple[str, int], datagram: bytes) -> bytes:
    host = client[0].encode()
    return _FORWARD_HEAD.pack(MAGIC, FORWARD, client[1], len(host)) + host + datagram


def decode_forward(data: bytes) -> tuple[tuple[str, int], bytes]:
    """Return (client address, client datagram) of a FORWARD."""
    try:
        magic, kind, port, host_len = _FORWARD_HEAD.unpack_from(data)
    except struct.error as exc:
        raise PeerDecodeError("short peer datagram") from exc
    start = _FORWARD_HEAD.size
    if magic != MAGIC or kind != FORWARD or len(data) < start + host_len:
        raise PeerDecodeError("not a FORWARD")
    host = data[start : start + host_len].decode(errors="replace")
    return (host, port), data[start + host_len :]


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

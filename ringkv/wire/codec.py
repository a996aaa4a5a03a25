"""Client protocol codec: framing, checksums, message IDs, error codes.

`Msg` wraps every datagram: messageID, a serialized KVRequest or KVResponse,
and CRC-32 over messageID followed by payload. Replies always carry errCode
and checkSum, also when zero, because proto2 clients declare them required.
"""

from __future__ import annotations

import os
import socket
import struct
import time
import zlib
from enum import IntEnum

from google.protobuf.message import DecodeError

from ringkv.wire.kv_pb2 import KVRequest, KVResponse, Msg

__all__ = [
    "MAX_KEY",
    "MAX_VALUE",
    "Command",
    "Err",
    "KVRequest",
    "KVResponse",
    "Msg",
    "WireError",
    "checksum",
    "decode_msg",
    "decode_request",
    "decode_response",
    "encode_msg",
    "encode_request",
    "encode_response",
    "new_message_id",
    "varint",
]

MAX_KEY = 32
MAX_VALUE = 10_000


class Command(IntEnum):
    PUT = 0x01
    GET = 0x02
    REMOVE = 0x03
    SHUTDOWN = 0x04
    WIPEOUT = 0x05
    IS_ALIVE = 0x06
    GET_PID = 0x07
    GET_MEMBERSHIP_COUNT = 0x08


class Err(IntEnum):
    OK = 0x00
    NO_KEY = 0x01
    NO_SPACE = 0x02
    OVERLOAD = 0x03
    INTERNAL = 0x04
    BAD_COMMAND = 0x05
    BAD_KEY = 0x06
    BAD_VALUE = 0x07


class WireError(ValueError):
    """A datagram that does not parse or whose checksum does not match."""


def checksum(message_id: bytes, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(message_id))


def varint(n: int) -> bytes:
    """A protobuf base-128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Lengths up to a typical datagram, pre-encoded: framing is on every reply's path.
_LENGTHS = [varint(n) for n in range(1 << 14)]


def _length(n: int) -> bytes:
    return _LENGTHS[n] if n < 1 << 14 else varint(n)


_CRC = struct.Struct("<Q")


def encode_msg(message_id: bytes, payload: bytes) -> bytes:
    """Serialize a Msg by hand: the same bytes protobuf writes, without building objects.

    Field 3 (checkSum, fixed64) is always written, also when zero.
    """
    crc = zlib.crc32(payload, zlib.crc32(message_id))
    return b"".join(
        (
            b"\x0a" + _length(len(message_id)) if message_id else b"",
            message_id,
            b"\x12" + _length(len(payload)) if payload else b"",
            payload,
            b"\x19",
            _CRC.pack(crc),
        )
    )


def decode_msg(data: bytes) -> tuple[bytes, bytes]:
    """Return (messageID, payload) of a datagram, or raise WireError."""
    msg = Msg()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise WireError("malformed Msg") from exc
    message_id = msg.messageID
    payload = msg.payload
    if not message_id:
        raise WireError("no message ID: a reply could not be matched")
    if msg.checkSum != checksum(message_id, payload):
        raise WireError("checksum mismatch")
    return message_id, payload


def encode_request(
    message_id: bytes, command: int, key: bytes = b"", value: bytes = b"", version: int = 0
) -> bytes:
    request = KVRequest(command=command, key=key, value=value, version=version)
    return encode_msg(message_id, request.SerializeToString())


def decode_request(payload: bytes) -> KVRequest:
    request = KVRequest()
    try:
        request.ParseFromString(payload)
    except DecodeError as exc:
        raise WireError("malformed KVRequest") from exc
    return request


def encode_response(
    message_id: bytes,
    err: int,
    *,
    value: bytes = b"",
    version: int = 0,
    pid: int = 0,
    membership_count: int = 0,
    overload_wait_ms: int = 0,
) -> bytes:
    """A reply datagram; the KVResponse is written by hand (errCode always present)."""
    parts = [_ERR_FIELDS[err] if err < len(_ERR_FIELDS) else b"\x08" + varint(err)]
    if value:
        parts.append(b"\x12" + _length(len(value)))
        parts.append(value)
    if pid:
        parts.append(b"\x18" + _int32(pid))
    if version:
        parts.append(b"\x20" + _int32(version))
    if overload_wait_ms:
        parts.append(b"\x28" + _int32(overload_wait_ms))
    if membership_count:
        parts.append(b"\x30" + _int32(membership_count))
    return encode_msg(message_id, b"".join(parts))


_ERR_FIELDS = [b"\x08" + bytes((code,)) for code in range(128)]


def _int32(n: int) -> bytes:
    # protobuf writes a negative int32 as its 64-bit two's complement varint.
    return varint(n & 0xFFFF_FFFF_FFFF_FFFF) if n < 0 else varint(n)


def decode_response(payload: bytes) -> KVResponse:
    response = KVResponse()
    try:
        response.ParseFromString(payload)
    except DecodeError as exc:
        raise WireError("malformed KVResponse") from exc
    return response


_RANDOM_BITS = struct.Struct("!4sHHQ")


def new_message_id(host: str = "127.0.0.1", port: int = 0) -> bytes:
    """16 bytes by the protocol's convention: IPv4, port, 2 random bytes, ns clock."""
    try:
        packed_ip = socket.inet_aton(host)
    except OSError:
        packed_ip = b"\0\0\0\0"
    rand = int.from_bytes(os.urandom(2), "big")
    return _RANDOM_BITS.pack(packed_ip, port & 0xFFFF, rand, time.time_ns() & 0xFFFF_FFFF_FFFF_FFFF)

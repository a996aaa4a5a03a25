"""Membership datagrams on the gossip port: fixed struct-packed binary.

Layout (network byte order):

    header  magic u8 | version u8 | kind u8 | sender u16 | incarnation u32
            | seq u32 | target u16 | entry count u16            (17 bytes)
    entry   node u16 | state u8 | incarnation u32 | origin u16   (9 bytes each)

`sender`/`incarnation` say who sent it and at which incarnation (direct
evidence that the sender is alive). `seq` matches ACK/NACK to PING/PING_REQ;
`target` is the node a PING_REQ asks the receiver to probe. Entries are the
piggy-backed membership updates; `origin` is the node that raised a
suspicion (Lifeguard counts independent confirmations) and is otherwise the
node itself. SYNC and SYNC_ACK carry one entry per node: the full view.
RUMOR carries fresh state changes only and expects no reply.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

MAGIC = 0xC9
VERSION = 1

PING, ACK, PING_REQ, NACK, SYNC, SYNC_ACK, RUMOR = range(1, 8)
KINDS = frozenset((PING, ACK, PING_REQ, NACK, SYNC, SYNC_ACK, RUMOR))

ALIVE, SUSPECT, DEAD = 0, 1, 2  # ordered by precedence at equal incarnation
STATE_NAMES = ("alive", "suspect", "dead")

_HEADER = struct.Struct("!BBBHIIHH")
_ENTRY = struct.Struct("!HBIH")
# Most datagrams (PING, ACK) carry one entry, the receiver's own: one pack or
# unpack for the whole datagram, since idle CPU is mostly per-datagram overhead.
_SINGLE = struct.Struct(_HEADER.format + _ENTRY.format[1:])
MAX_ENTRIES = (65507 - _HEADER.size) // _ENTRY.size  # a full view in one UDP datagram
MAX_INCARNATION = 0xFFFFFFFF


class GossipDecodeError(ValueError):
    """A datagram on the gossip port that is not a valid gossip message."""


class Entry(NamedTuple):
    node: int
    state: int
    incarnation: int
    origin: int


class GossipMsg(NamedTuple):
    kind: int
    sender: int
    incarnation: int
    seq: int = 0
    target: int = 0
    entries: tuple[Entry, ...] = ()


def encode(msg: GossipMsg) -> bytes:
    return pack(*msg)


def pack(
    kind: int, sender: int, incarnation: int, seq: int, target: int, entries: tuple[Entry, ...]
) -> bytes:
    """encode() without building a GossipMsg first."""
    if len(entries) == 1:
        return _SINGLE.pack(MAGIC, VERSION, kind, sender, incarnation, seq, target, 1, *entries[0])
    head = _HEADER.pack(MAGIC, VERSION, kind, sender, incarnation, seq, target, len(entries))
    return head + b"".join([_ENTRY.pack(*e) for e in entries])


def decode(data: bytes) -> GossipMsg:
    """Parse a datagram; anything malformed raises GossipDecodeError only."""
    if len(data) == _SINGLE.size:
        magic, version, kind, sender, inc, seq, target, count, *fields = _SINGLE.unpack(data)
        entries: tuple[Entry, ...] = (Entry(*fields),)
    elif len(data) < _HEADER.size:
        raise GossipDecodeError("short gossip datagram")
    else:
        magic, version, kind, sender, inc, seq, target, count = _HEADER.unpack_from(data)
        if len(data) != _HEADER.size + count * _ENTRY.size:
            raise GossipDecodeError("gossip datagram length does not match its entry count")
        entries = tuple(map(Entry._make, _ENTRY.iter_unpack(memoryview(data)[_HEADER.size :])))
    if magic != MAGIC or version != VERSION:
        raise GossipDecodeError("not a gossip datagram of this version")
    if kind not in KINDS:
        raise GossipDecodeError(f"unknown gossip kind {kind}")
    if count != len(entries):
        raise GossipDecodeError("gossip datagram length does not match its entry count")
    for entry in entries:
        if entry[1] > DEAD:
            raise GossipDecodeError("unknown member state")
    return GossipMsg(kind, sender, inc, seq, target, entries)

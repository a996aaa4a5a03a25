"""Authenticated cluster datagrams: every node-to-node datagram is sealed.

A sealed datagram is

    magic "RS" | key id u32 | sender u16 | receiver u16 | channel u8
               | boot u64 | counter u64 | payload | tag (16 bytes)

with `tag` a BLAKE2b-128 MAC, keyed with the cluster key that `key id`
names, over everything before it. The receiver opens it before parsing a
byte of the payload, and drops it unless

- the key id names a key of its keyring and the tag matches;
- `receiver` is the receiver itself and `channel` the port it arrived on
  (a datagram sealed for one node or port is worthless at another);
- `boot`, the sender's start time, is not older than the newest boot seen
  from that sender, and `counter` is new within a sliding window of the
  sender's counter for this (receiver, channel): a replayed datagram, or
  one from a previous life of the sender, is dropped.

Whether the source address is the sender's own is the node's check: it
knows the server list. OPERATOR is the sender index of the command-line
tools, which are not in the server list; nodes take only STATUS requests
from it.

Keys come from a keyring: the first key seals, every key opens, so a
cluster rotates keys without downtime (add a key everywhere, then make it
the first, then retire the old one).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

MAGIC = b"RS"
KEY_BYTES = 32
TAG_BYTES = 16
OPERATOR = 0xFFFF  # the sender index of command-line tools
# Out-of-order arrival tolerated per (sender, receiver, channel): 1024 datagrams.
WINDOW = 1024
_WINDOW_MASK = (1 << WINDOW) - 1
_HEAD = struct.Struct("!2sIHHBQQ")
HEAD_BYTES = _HEAD.size
OVERHEAD = HEAD_BYTES + TAG_BYTES


class Channel(IntEnum):
    """Which port (or direction) a sealed datagram is meant for."""

    DATA = 0
    GOSSIP = 1
    REPLY = 2  # a node's answer to an operator tool


class KeyringError(ValueError):
    """A key file that cannot be read or does not parse; the message names the problem."""


def key_id(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=4, person=b"ringkv-id").digest())


@dataclass(frozen=True)
class Keyring:
    """The cluster's keys: `keys[0]` seals, all of them open."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyringError("a keyring needs at least one key")
        for key in self.keys:
            if len(key) != KEY_BYTES:
                raise KeyringError(f"a cluster key is {KEY_BYTES} bytes, not {len(key)}")
        if len({key_id(k) for k in self.keys}) != len(self.keys):
            raise KeyringError("the keyring lists a key twice")

    @property
    def primary(self) -> bytes:
        return self.keys[0]

    @staticmethod
    def generate() -> Keyring:
        return Keyring((secrets.token_bytes(KEY_BYTES),))

    def with_new_key(self) -> Keyring:
        """A fresh key, accepted but not yet sealing (rotation, step 1)."""
        return Keyring((*self.keys, secrets.token_bytes(KEY_BYTES)))

    def newest_first(self) -> Keyring:
        """The last key added seals from now on; the others still open (step 2)."""
        return Keyring((self.keys[-1], *self.keys[:-1]))

    def primary_only(self) -> Keyring:
        """Only the sealing key is left: the others are retired (step 3)."""
        return Keyring(self.keys[:1])

    def to_text(self) -> str:
        lines = ["# ringkv cluster keyring: the first key seals, every key opens. Keep it secret."]
        return "\n".join([*lines, *(key.hex() for key in self.keys)]) + "\n"

    @staticmethod
    def from_text(text: str) -> Keyring:
        keys: list[bytes] = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                keys.append(bytes.fromhex(line))
            except ValueError:
                raise KeyringError(f"line {number}: not a hexadecimal key") from None
        if not keys:
            raise KeyringError("no key in the keyring")
        return Keyring(tuple(keys))


def load_keyring(path: str | Path) -> Keyring:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise KeyringError(f"cannot read cluster key {path}: {exc.strerror}") from None
    try:
        return Keyring.from_text(text)
    except KeyringError as exc:
        raise KeyringError(f"{path}: {exc}") from None


def save_keyring(path: str | Path, keyring: Keyring, *, replace: bool = True) -> None:
    """Write the key file readable by its owner only, replacing it atomically."""
    path = Path(path)
    if not replace and path.exists():
        raise KeyringError(f"{path} exists: not overwriting a cluster key")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(keyring.to_text())
    os.replace(tmp, path)


class Refused(IntEnum):
    """Why a sealed datagram was dropped (counted by the node)."""

    MALFORMED = 0
    UNKNOWN_KEY = 1
    BAD_TAG = 2
    MISADDRESSED = 3  # meant for another node or port
    REPLAYED = 4  # an old boot of the sender, or a counter already seen or too old


class _Window:
    """What one sender's life (boot) sent on one (receiver, channel) has been seen:
    the newest counter and a sliding bitmap below it."""

    __slots__ = ("boot", "seen", "top")

    def __init__(self, boot: int) -> None:
        self.boot = boot
        self.top = -1
        self.seen = 0  # bit i: counter top - i was seen

    def accept(self, boot: int, counter: int) -> bool:
        if boot != self.boot:
            if boot < self.boot:
                return False  # an earlier life of the sender
            self.boot, self.top, self.seen = boot, -1, 0
        top = self.top
        if counter > top:
            shift = counter - top
            self.seen = ((self.seen << shift) | 1) & _WINDOW_MASK if shift < WINDOW else 1
            self.top = counter
            return True
        bit = 1 << (top - counter)
        if top - counter >= WINDOW or self.seen & bit:
            return False
        self.seen |= bit
        return True


def _keyed(key: bytes) -> Any:
    """A BLAKE2b state keyed with `key`: copied per datagram, it skips the key setup."""
    return hashlib.blake2b(key=key, digest_size=TAG_BYTES)


class Sealer:
    """One node's (or tool's) sealing and opening of cluster datagrams.

    Pure: it keeps counters and replay windows, never clocks or sockets;
    `boot` is given (the runtime uses its start time in microseconds, so a
    restarted node's boot is larger than any of its previous lives').
    """

    def __init__(self, keyring: Keyring, me: int, boot: int) -> None:
        self.me = me
        self.boot = boot
        self._counters: dict[int, int] = {}  # by receiver * 4 + channel
        self._windows: dict[int, _Window] = {}  # by sender * 4 + channel
        self.refused = [0] * len(Refused)
        self.set_keyring(keyring)

    def set_keyring(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._macs = {key_id(key): _keyed(key) for key in keyring.keys}
        self._seal_id = key_id(keyring.primary)
        self._seal_mac = self._macs[self._seal_id]

    def seal(self, payload: bytes, receiver: int, channel: Channel) -> bytes:
        slot = receiver << 2 | channel
        counters = self._counters
        counter = counters.get(slot, 0)
        counters[slot] = counter + 1
        head = _HEAD.pack(MAGIC, self._seal_id, self.me, receiver, channel, self.boot, counter)
        mac = self._seal_mac.copy()
        mac.update(head)
        mac.update(payload)
        return b"".join((head, payload, mac.digest()))

    def open(self, data: bytes, channel: Channel) -> tuple[int, bytes] | Refused:
        """(sender, payload) of an authentic, fresh datagram for this node and
        channel; or why it is refused. Nothing is parsed before the tag matches."""
        if len(data) < OVERHEAD or data[:2] != MAGIC:
            return self._refuse(Refused.MALFORMED)
        _, kid, sender, receiver, chan, boot, counter = _HEAD.unpack_from(data)
        mac = self._macs.get(kid)
        if mac is None:
            return self._refuse(Refused.UNKNOWN_KEY)
        mac = mac.copy()
        mac.update(memoryview(data)[:-TAG_BYTES])
        if not hmac.compare_digest(mac.digest(), data[-TAG_BYTES:]):
            return self._refuse(Refused.BAD_TAG)
        if receiver != self.me or chan != channel:
            return self._refuse(Refused.MISADDRESSED)
        slot = sender << 2 | chan
        window = self._windows.get(slot)
        if window is None:
            window = self._windows[slot] = _Window(boot)
        if not window.accept(boot, counter):
            return self._refuse(Refused.REPLAYED)
        return sender, data[HEAD_BYTES:-TAG_BYTES]

    def open_reply(self, data: bytes) -> bytes | None:
        """The payload of a node's answer to this tool, if it is authentic.

        A tool matches answers to its questions by a random token, so a replayed
        answer is harmless: no window is kept.
        """
        if len(data) < OVERHEAD or data[:2] != MAGIC:
            return None
        _, kid, _, receiver, chan, _, _ = _HEAD.unpack_from(data)
        mac = self._macs.get(kid)
        if mac is None or receiver != self.me or chan != Channel.REPLY:
            return None
        mac = mac.copy()
        mac.update(memoryview(data)[:-TAG_BYTES])
        if not hmac.compare_digest(mac.digest(), data[-TAG_BYTES:]):
            return None
        return data[HEAD_BYTES:-TAG_BYTES]

    def _refuse(self, why: Refused) -> Refused:
        self.refused[why] += 1
        return why


def is_sealed(data: bytes) -> bool:
    return data[:2] == MAGIC

"""A deliberately wrong one-node server of PROTOCOL.md, to show what `ringkv check` catches.

    python tests/faulty_server.py --listen 127.0.0.1:PORT [--fault NAME]... [--budget-bytes N]

Without faults it is a correct (if minimal) one-node server: a plain
blocking UDP loop on ringkv.wire.codec, sharing nothing with ringkv's node,
so the check is seen to judge the protocol and not ringkv's implementation.

Faults:
  forget-replies     no at-most-once reply cache: a retry runs again
  long-keys-ok       keys longer than 32 bytes are stored like any other (no errCode 6)
  omit-zero-errcode  proto3-style replies: errCode left out when it is 0
  stale-reads        every STALE_EVERY-th GET of an overwritten key returns its previous value
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import sys
import time
from dataclasses import dataclass, field

from ringkv.servers import parse_addr
from ringkv.wire.codec import (
    MAX_KEY,
    MAX_VALUE,
    Command,
    Err,
    KVResponse,
    WireError,
    decode_msg,
    decode_request,
    encode_msg,
    encode_response,
)

FAULTS = ("forget-replies", "long-keys-ok", "omit-zero-errcode", "stale-reads")
STALE_EVERY = 10
RETENTION = 10.0  # seconds a reply is kept for retries
OVERHEAD = 100  # bytes counted per stored entry on top of key and value


@dataclass
class Answer:
    err: int
    value: bytes = b""
    version: int = 0
    pid: int = 0
    membership_count: int = 0


@dataclass
class Server:
    faults: set[str]
    budget: int
    store: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)
    used: int = 0
    replies: dict[bytes, tuple[float, bytes]] = field(default_factory=dict)
    previous: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)  # for stale-reads
    gets: int = 0

    def handle(self, data: bytes) -> bytes | None:
        try:
            message_id, payload = decode_msg(data)
            request = decode_request(payload)
        except WireError:
            return None  # garbage is dropped silently
        cached = self.replies.get(message_id)
        if cached is not None and "forget-replies" not in self.faults:
            return cached[1]
        if request.command == Command.SHUTDOWN:
            os._exit(0)  # like a crash: no reply, nothing saved
        reply = self.encode(message_id, self.execute(request))
        self.remember(message_id, reply)
        return reply

    def remember(self, message_id: bytes, reply: bytes) -> None:
        now = time.monotonic()
        self.replies[message_id] = (now, reply)
        # Bounded memory: dicts keep insertion order, so the oldest replies come first;
        # dropping up to two per new one keeps up with any rate.
        oldest = itertools.islice(self.replies.items(), 2)
        for expired in [k for k, (at, _) in oldest if now - at >= RETENTION]:
            del self.replies[expired]

    def execute(self, request: object) -> Answer:
        command = getattr(request, "command", 0)
        key, value = getattr(request, "key", b""), getattr(request, "value", b"")
        if command in (Command.PUT, Command.GET, Command.REMOVE):
            bad = self.invalid(key, value if command == Command.PUT else b"")
            if bad is not None:
                return Answer(bad)
        if command == Command.PUT:
            return self.put(key, value, getattr(request, "version", 0))
        if command == Command.GET:
            return self.get(key)
        if command == Command.REMOVE:
            return self.remove(key)
        return self.admin(command)

    def invalid(self, key: bytes, value: bytes) -> int | None:
        too_long = len(key) > MAX_KEY and "long-keys-ok" not in self.faults
        if not key or too_long:
            return Err.BAD_KEY
        if len(value) > MAX_VALUE:
            return Err.BAD_VALUE
        return None

    def get(self, key: bytes) -> Answer:
        self.gets += 1
        found = self.store.get(key)
        if "stale-reads" in self.faults and self.gets % STALE_EVERY == 0:
            found = self.previous.get(key, found)
        return Answer(Err.OK, found[0], found[1]) if found else Answer(Err.NO_KEY)

    def put(self, key: bytes, value: bytes, version: int) -> Answer:
        old = self.store.get(key)
        if old is not None:
            self.previous[key] = old
        freed = len(key) + len(old[0]) + OVERHEAD if old else 0
        needed = len(key) + len(value) + OVERHEAD
        if self.used - freed + needed > self.budget:
            return Answer(Err.NO_SPACE)
        self.store[key] = (value, version)
        self.used += needed - freed
        return Answer(Err.OK)

    def remove(self, key: bytes) -> Answer:
        old = self.store.pop(key, None)
        if old is None:
            return Answer(Err.NO_KEY)
        self.used -= len(key) + len(old[0]) + OVERHEAD
        return Answer(Err.OK)

    def admin(self, command: int) -> Answer:
        if command == Command.WIPEOUT:
            self.store.clear()
            self.previous.clear()
            self.used = 0
            return Answer(Err.OK)
        if command == Command.IS_ALIVE:
            return Answer(Err.OK)
        if command == Command.GET_PID:
            return Answer(Err.OK, pid=os.getpid())
        if command == Command.GET_MEMBERSHIP_COUNT:
            return Answer(Err.OK, membership_count=1)
        return Answer(Err.BAD_COMMAND)

    def encode(self, message_id: bytes, a: Answer) -> bytes:
        if a.err == Err.OK and "omit-zero-errcode" in self.faults:
            # A plain proto3 encoder: zero fields, errCode included, are left out.
            response = KVResponse(
                value=a.value, version=a.version, pid=a.pid, membershipCount=a.membership_count
            )
            return encode_msg(message_id, response.SerializeToString())
        return encode_response(
            message_id,
            a.err,
            value=a.value,
            version=a.version,
            pid=a.pid,
            membership_count=a.membership_count,
        )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--fault", action="append", choices=FAULTS, default=[])
    parser.add_argument("--budget-bytes", type=int, default=64 << 20)
    args = parser.parse_args(argv)
    server = Server(set(args.fault), args.budget_bytes)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(parse_addr(args.listen))
        while True:
            data, source = sock.recvfrom(65535)
            reply = server.handle(data)
            if reply is not None:
                sock.sendto(reply, source)


if __name__ == "__main__":
    main(sys.argv[1:])

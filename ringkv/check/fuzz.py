"""`ringkv fuzz`: hostile datagrams at a running node, then a check that nothing gave.

The fuzzer is an outsider: it holds no cluster key. It sends, from a seeded
generator, a mix of

- random bytes, to the node's client port, its gossip port and its peer port;
- client requests mutated at the byte level (flips, cuts, splices), and
  well-formed requests with fields no client should send (unknown commands,
  keys and values over the limits, message IDs of any length);
- well-formed peer messages of every kind (FORWARD, REPLICATE, SYNC_*,
  HANDOFF, STATUS, ACKs of many writes, BATCHes of them, ...) with hostile
  fields: stamps near 2^64, unknown nodes and slots, the node's own address
  as the client, host names;
  plain, and wrapped in seals with made-up keys and tags, to the client port
  and to the peer port;
- well-formed gossip (the node's neighbours declared dead at the top
  incarnation, acknowledgements with guessed sequence numbers, SYNC_ACKs).

It never sends a well-formed WIPEOUT or SHUTDOWN, nor a well-formed PUT or
REMOVE of a sentinel key (a mutation now and then makes one: protobuf skips
unknown fields, so garbage in front of a valid Msg still parses): the
protocol lets any client do those, and that is not a fault.

Before, it stores sentinel keys through the node; peer messages aim at them
on purpose. After, it checks that the node still answers, that its PID is
the same (it did not restart), that a PUT/GET round trip works, that every
sentinel reads back unchanged, and that the membership count is what it
was (no forged verdict was believed). Loopback targets only: this is a
test tool, not a weapon.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from ringkv.client import Client, ClientError
from ringkv.servers import gossip_addr, peer_addr
from ringkv.wire import Addr, gossip, peer
from ringkv.wire.codec import Command, WireError, decode_msg, decode_request, encode_msg
from ringkv.wire.kv_pb2 import KVRequest
from ringkv.wire.peer import Handoff, SyncConfirm, SyncRequest, TransferEntry, Write

SENTINELS = 32
_RESTRICTED = (Command.WIPEOUT, Command.SHUTDOWN)
CHECK_EVERY = 2000  # datagrams between liveness checks
PACE = 200  # datagrams between short sleeps: a flood is another test (overload)


class FuzzTargetError(ValueError):
    """The target is not one the fuzzer may aim at."""


@dataclass
class FuzzReport:
    sent: Counter[str] = field(default_factory=Counter)
    skipped: int = 0  # made, but a client write of what the check compares: not sent
    liveness_checks: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, object]:
        return {
            "sent": sum(self.sent.values()),
            "by_kind": dict(sorted(self.sent.items())),
            "skipped_client_writes": self.skipped,
            "liveness_checks": self.liveness_checks,
            "failures": self.failures,
            "passed": self.passed,
        }


def require_loopback(addr: Addr) -> None:
    try:
        loopback = ipaddress.ip_address(addr[0]).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise FuzzTargetError(f"{addr[0]} is not a loopback address: the fuzzer aims at this host")


class Fuzzer:
    def __init__(self, target: Addr, seed: int = 1, nodes: int = 1) -> None:
        require_loopback(target)
        self.target = target
        self.gossip_target = gossip_addr(target)
        self.peer_target = peer_addr(target)
        self._targets = {"data": target, "gossip": self.gossip_target, "peer": self.peer_target}
        self.nodes = nodes  # the cluster's size, for plausible node indices
        self.rng = random.Random(seed)
        self.sentinels = {
            b"fuzz-sentinel-%02d" % i: self.rng.randbytes(self.rng.randint(1, 200))
            for i in range(SENTINELS)
        }
        # (what, to which port, how it is made)
        self._makers: list[tuple[str, str, Callable[[], bytes]]] = [
            ("random", "data", self._random_bytes),
            ("client-mutated", "data", self._mutated_request),
            ("client-hostile", "data", self._hostile_request),
            ("peer", "data", self._peer_message),
            ("peer-mutated", "data", lambda: self._mutate(self._peer_message())),
            ("sealed-forged", "data", lambda: self._forged_seal(self._peer_message())),
            ("peer-port-random", "peer", self._random_bytes),
            ("peer-port", "peer", self._peer_message),
            ("peer-port-sealed-forged", "peer", lambda: self._forged_seal(self._peer_message())),
            ("gossip-random", "gossip", self._random_bytes),
            ("gossip", "gossip", self._gossip_message),
            ("gossip-sealed-forged", "gossip", lambda: self._forged_seal(self._gossip_message())),
        ]

    # -- the run -------------------------------------------------------------

    def run(self, count: int) -> FuzzReport:
        report = FuzzReport()
        with Client(self.target, timeout=0.2, tries=5) as client:
            before = self._baseline(client, report)
            if before is None:
                return report
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for n in range(count):
                    kind, port, make = self.rng.choice(self._makers)
                    data = make()
                    if port == "data" and _is_client_write(data, self.sentinels):
                        report.skipped += 1
                        continue
                    sock.sendto(data, self._targets[port])
                    report.sent[kind] += 1
                    if n % PACE == PACE - 1:
                        time.sleep(0.002)
                    if n % CHECK_EVERY == CHECK_EVERY - 1:
                        self._check_alive(client, report)
            time.sleep(0.5)  # what was sent last is handled
            self._final_checks(client, before, report)
        return report

    def _baseline(self, client: Client, report: FuzzReport) -> tuple[int, int] | None:
        """(pid, membership count) before, with the sentinels stored; None if unreachable."""
        try:
            pid = client.pid().pid
            count = client.membership_count().membership_count
            for key, value in self.sentinels.items():
                if not client.put(key, value).ok:
                    report.failures.append(f"could not store sentinel {key!r}")
        except ClientError as exc:
            report.failures.append(f"the node does not answer before fuzzing: {exc}")
            return None
        return pid, count

    def _check_alive(self, client: Client, report: FuzzReport) -> None:
        report.liveness_checks += 1
        try:
            if not client.is_alive().ok:
                report.failures.append("IS_ALIVE answered with an error")
        except ClientError as exc:
            report.failures.append(f"IS_ALIVE unanswered mid-run: {exc}")

    def _final_checks(self, client: Client, before: tuple[int, int], report: FuzzReport) -> None:
        pid, count = before
        try:
            if (now_pid := client.pid().pid) != pid:
                report.failures.append(f"the PID changed from {pid} to {now_pid}: it restarted")
            if (now_count := client.membership_count().membership_count) != count:
                report.failures.append(f"membership count {count} -> {now_count}")
            probe = b"fuzz-probe-%d" % self.rng.getrandbits(32)
            if not client.put(probe, b"after").ok or client.get(probe).value != b"after":
                report.failures.append("a PUT/GET round trip failed after fuzzing")
            for key, value in self.sentinels.items():
                got = client.get(key)
                if not got.ok or got.value != value:
                    report.failures.append(f"sentinel {key!r} changed (errCode {got.err})")
        except ClientError as exc:
            report.failures.append(f"the node does not answer after fuzzing: {exc}")

    # -- datagram makers -----------------------------------------------------------

    def _random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.choice((0, 1, 2, 3, 17, 40, 200, 1400)))

    def _mutate(self, data: bytes) -> bytes:
        rng, out = self.rng, bytearray(data)
        for _ in range(rng.randint(1, 4)):
            what = rng.random()
            if what < 0.4 and out:
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
            elif what < 0.6:
                del out[rng.randrange(len(out) + 1) :]
            elif what < 0.8 and out:
                at = rng.randrange(len(out))
                out[at:at] = rng.randbytes(rng.randint(1, 64))
            elif out:
                out[rng.randrange(len(out))] = rng.choice((0, 0xFF, 0x7F, 0x80))
        return bytes(out)

    def _key(self) -> bytes:
        if self.rng.random() < 0.5:
            return self.rng.choice(list(self.sentinels))
        return self.rng.randbytes(self.rng.choice((0, 1, 16, 32, 33, 300)))

    def _message_id(self) -> bytes:
        return self.rng.randbytes(self.rng.choice((1, 16, 255, 256, 2000)))

    def _request(self) -> bytes:
        rng = self.rng
        command = rng.choice((Command.PUT, Command.GET, Command.REMOVE, Command.IS_ALIVE))
        key = rng.randbytes(rng.randint(1, 32))  # never a sentinel: a client may write these
        value = rng.randbytes(rng.choice((0, 10, 500)))
        request = KVRequest(command=command, key=key, value=value, version=rng.randint(0, 9))
        return encode_msg(self._message_id(), request.SerializeToString())

    def _mutated_request(self) -> bytes:
        return self._mutate(self._request())

    def _hostile_request(self) -> bytes:
        rng = self.rng
        command = rng.choice((0, 7, 8, 9, 0x20, 0x21, 0x22, 255, 1 << 20))
        request = KVRequest(
            command=command,
            key=rng.randbytes(rng.choice((33, 64, 1000))),
            value=rng.randbytes(rng.choice((0, 10_001, 20_000))),
            version=rng.randint(-(1 << 31), (1 << 31) - 1),
        )
        return encode_msg(self._message_id(), request.SerializeToString())

    def _node(self) -> int:
        return self.rng.choice((0, self.nodes - 1, self.nodes, 0xFFFF, self.rng.randrange(64)))

    def _client_addr(self) -> Addr:
        rng = self.rng
        host = rng.choice((self.target[0], "localhost", "10.9.8.7", "::1", "a" * 200))
        port = rng.choice(
            (self.target[1], self.gossip_target[1], self.peer_target[1], 0, 65535, 5555)
        )
        return host, port

    def _peer_message(self, depth: int = 0) -> bytes:
        rng = self.rng
        kind = rng.randrange(12 if depth == 0 else 10)  # BATCHes of BATCHes: one level
        if kind == 0:  # a write of a sentinel, passed on as if by a member
            put = KVRequest(command=Command.PUT, key=self._key(), value=b"forged")
            request = encode_msg(self._message_id(), put.SerializeToString())
            try:
                return peer.encode_forward(self._client_addr(), request, rng.randint(0, 255))
            except struct.error:
                return self._random_bytes()
        if kind == 1:
            return peer.encode_status_request(rng.randbytes(rng.randint(0, 64)))
        if kind <= 4:
            value = None if rng.random() < 0.3 else rng.randbytes(rng.choice((0, 10, 10_000)))
            stamp = rng.choice((0, 1, (1 << 64) - 1, rng.getrandbits(64)))
            path = tuple(self._node() for _ in range(rng.randint(1, 4)))
            write = Write(
                self._message_id(), self._client_addr(), rng.randrange(8), self._key(),
                value, rng.randint(0, 9), stamp, path,
            )  # fmt: skip
            try:
                return peer.encode_replicate(write)
            except (struct.error, UnicodeEncodeError):
                return self._random_bytes()
        if kind == 5:
            return peer.encode_ack(self._message_id())
        if kind == 10:  # ACKs of many writes at once
            ids = [self._message_id() for _ in range(rng.randint(1, 200))]
            return rng.choice(peer.encode_acks(ids))
        if kind == 11:  # a BATCH of messages, one of them perhaps a BATCH itself
            parts = [self._peer_message(depth + 1) for _ in range(rng.randint(1, 8))]
            if rng.random() < 0.1:
                parts.append(peer.pack([self._peer_message(depth + 1) for _ in range(2)])[0])
            return rng.choice(peer.pack(parts, rng.choice((64, 512, peer.BATCH_BYTES))))
        if kind == 6:
            slots = tuple(rng.randrange(1 << 16) for _ in range(rng.randint(0, 300)))
            pull = SyncRequest(rng.getrandbits(32), self._node(), rng.getrandbits(64), slots)
            return peer.encode_sync_request(pull)
        if kind == 7:
            entries: list[TransferEntry] = [
                (self._key(), rng.randbytes(rng.randint(0, 100)), 1, rng.getrandbits(64))
                for _ in range(rng.randint(1, 20))
            ]
            batches = peer.encode_sync_batches(rng.randrange(64), entries)
            return rng.choice(batches)
        slots = tuple(rng.randrange(1 << 12) for _ in range(rng.randint(0, 300)))
        message = (Handoff if kind == 8 else SyncConfirm)(self._node() & 0xFFFF, slots)
        return peer.encode_slots(message)

    def _gossip_message(self) -> bytes:
        rng = self.rng
        kind = rng.choice(sorted(gossip.KINDS))
        incarnations = (0, 1, gossip.MAX_INCARNATION, rng.getrandbits(32))
        entries = tuple(
            gossip.Entry(self._node() & 0xFFFF, rng.randrange(3), rng.choice(incarnations), 0)
            for _ in range(rng.randint(0, 8))
        )
        msg = gossip.GossipMsg(
            kind, self._node() & 0xFFFF, rng.getrandbits(32), rng.getrandbits(32),
            self._node() & 0xFFFF, entries,
        )  # fmt: skip
        return gossip.encode(msg)

    def _forged_seal(self, payload: bytes) -> bytes:
        rng = self.rng
        head = struct.pack(
            "!2sIHHBQQ", b"RS", rng.getrandbits(32), self._node() & 0xFFFF,
            self._node() & 0xFFFF, rng.randrange(3), rng.getrandbits(64), rng.getrandbits(64),
        )  # fmt: skip
        return head + payload + rng.randbytes(16)


def _is_client_write(data: bytes, sentinels: Collection[bytes]) -> bool:
    """Is this a client request that may change what the check compares?

    A well-formed WIPEOUT or SHUTDOWN, or a PUT or REMOVE of a sentinel key:
    any client may send those. Mutated or forged datagrams become one now and
    then (protobuf skips unknown fields, so garbage in front of a valid Msg
    still parses); they are not sent.
    """
    try:
        _, payload = decode_msg(data)
        request = decode_request(payload)
    except WireError:
        return False
    if request.command in _RESTRICTED:
        return True
    return request.command in (Command.PUT, Command.REMOVE) and request.key in sentinels

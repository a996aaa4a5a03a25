"""Power-loss checks: writers whose every value names its write, and the judge after.

Each writer is a closed-loop client that PUTs its own keys in turn, each
value made by `make_value` (key and write number). A write is *acknowledged*
when its PUT was answered OK and *open* when it got no answer (it may or may
not have been applied). After the nodes were killed and started again, a key
must hold its last acknowledged write or a later open one: an older value,
or none, is a lost write; a value never written is a phantom.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass, field

from ringkv.check.load import make_value, value_seq
from ringkv.client.client import AsyncClient, Client, ClientTimeout
from ringkv.wire import Addr
from ringkv.wire.codec import Err


@dataclass
class Register:
    acked: int = 0  # the last write acknowledged (0: none)
    open: set[int] = field(default_factory=set)  # later writes sent but never answered
    written: int = 0  # the last write number used


@dataclass
class Writers:
    """`clients` closed loops, each over its own `keys_each` keys, until `stop` is set."""

    servers: list[Addr]
    clients: int = 16
    keys_each: int = 8
    value_size: int = 200
    stop: threading.Event = field(default_factory=threading.Event)
    regs: dict[bytes, Register] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for c in range(self.clients):
            for k in range(self.keys_each):
                self.regs[b"crash-%d-%d" % (c, k)] = Register()

    def run(self) -> None:
        """Write until stopped (in a thread of its own: it runs its own event loop)."""
        asyncio.run(self._all())

    async def _all(self) -> None:
        await asyncio.gather(*(self._one(c) for c in range(self.clients)))

    async def _one(self, c: int) -> None:
        keys = [b"crash-%d-%d" % (c, k) for k in range(self.keys_each)]
        async with AsyncClient(self.servers, random_front_end=True) as client:
            while not self.stop.is_set():
                for key in keys:
                    reg = self.regs[key]
                    reg.written += 1
                    seq = reg.written
                    reg.open.add(seq)
                    try:
                        reply = await client.put(key, make_value(key, seq, self.value_size))
                    except ClientTimeout:
                        continue  # it may or may not have been applied
                    if reply.ok:
                        reg.acked = seq
                        reg.open = {s for s in reg.open if s > seq}

    @property
    def acknowledged(self) -> int:
        """Keys with at least one acknowledged write."""
        return sum(reg.acked > 0 for reg in self.regs.values())


def judge(regs: dict[bytes, Register], servers: list[Addr]) -> Counter[str]:
    """Read every key back: right, lost, phantom or unanswered."""
    verdicts: Counter[str] = Counter()
    with Client(servers, random_front_end=True) as client:
        for key, reg in regs.items():
            try:
                got = client.get(key)
            except ClientTimeout:
                verdicts["unanswered"] += 1
                continue
            seq = 0 if got.err == Err.NO_KEY else value_seq(key, got.value)
            verdicts[verdict_of(reg, seq)] += 1
    return verdicts


def verdict_of(reg: Register, seq: int | None) -> str:
    """What a key read back as write `seq` (0: not found; None: not ours) says."""
    if seq is None or seq > reg.written:
        return "phantom"
    if seq == reg.acked or seq in reg.open:
        return "right"
    return "lost" if seq < reg.acked else "phantom"  # an older write answered other than OK

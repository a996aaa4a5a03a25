"""Load for `ringkv check`: request pools with figures per batch, and bench runs.

Each simulated client is an AsyncClient with its own UDP socket and one
request in flight, like one client process of the evaluation. Front ends
are picked at random per request from the servers given (the live nodes).
Values are self-describing (`make_value`), so a read can be classified as
current, stale (an older write of the same key) or invented without
keeping every value written.

Throughput stages run the bench (`bench_runs`): closed-loop clients in
worker processes, as `ringkv bench` does.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ringkv.check.base import Context
from ringkv.check.bench import BenchConfig, BenchResult, run_bench
from ringkv.check.report import StepBar
from ringkv.client.client import AsyncClient, ClientError, ClientTimeout, Reply
from ringkv.report.timeline import percentile, record_request, record_samples
from ringkv.wire import Addr
from ringkv.wire.codec import Command, Err

T = TypeVar("T")
R = TypeVar("R")
Tick = Callable[[], None]


def run_async(coro: Coroutine[Any, Any, R]) -> R:
    """Run a coroutine on uvloop: its per-datagram cost is about half of asyncio's."""
    import uvloop

    return uvloop.run(coro)


# -- values ---------------------------------------------------------------------------


def make_value(key: bytes, seq: int, size: int) -> bytes:
    """`key|seq|` repeated to `size` bytes: the value names its key and its write."""
    head = b"%s|%d|" % (key, seq)
    return (head * (size // len(head) + 1))[:size]


def value_seq(key: bytes, value: bytes) -> int | None:
    """The write number a value made by make_value carries; None if it is not one of ours."""
    parts = value.split(b"|", 2)
    if len(parts) < 3 or parts[0] != key or not parts[1].isdigit():
        return None
    seq = int(parts[1])
    return seq if value == make_value(key, seq, len(value)) else None


# -- figures -----------------------------------------------------------------------


@dataclass
class Tally:
    """What a batch of requests got back, and how long each took (retries included)."""

    requests: int = 0
    ok: int = 0  # answered as the check expected
    timeouts: int = 0
    not_found: int = 0
    wrong: int = 0  # answered, with a value or code the check did not expect
    errors: Counter[int] = field(default_factory=Counter)  # every errCode answered
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def answered(self, reply: Reply, started: float) -> None:
        self.latencies.append(time.perf_counter() - started)
        self.errors[reply.err] += 1
        if reply.err == Err.NO_KEY:
            self.not_found += 1

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.ok += other.ok
        self.timeouts += other.timeouts
        self.not_found += other.not_found
        self.wrong += other.wrong
        self.errors.update(other.errors)
        self.latencies.extend(other.latencies)
        self.seconds += other.seconds

    @property
    def ok_pct(self) -> float:
        return 100.0 * self.ok / self.requests if self.requests else 0.0

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        return 1000 * percentile(sorted(self.latencies), q)

    def figures(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "ok_pct": round(self.ok_pct, 3),
            "timeouts": self.timeouts,
            "not_found": self.not_found,
            "wrong": self.wrong,
            "err_codes": {str(k): v for k, v in sorted(self.errors.items())},
            "throughput_rps": round(self.throughput, 1),
            "p50_ms": round(self.percentile_ms(0.5), 3),
            "p99_ms": round(self.percentile_ms(0.99), 3),
            "seconds": round(self.seconds, 2),
        }

    def line(self, ok_word: str = "ok") -> str:
        codes = " ".join(f"{k}:{v:,}" for k, v in sorted(self.errors.items())) or "-"
        return (
            f"{self.requests:,} requests: {self.ok:,} {ok_word} ({self.ok_pct:.2f} %), "
            f"{self.timeouts:,} time-outs, {self.not_found:,} not found, {self.wrong:,} wrong; "
            f"errCodes {codes}; {self.throughput:,.0f} req/s, "
            f"p50 {ms(self.percentile_ms(0.5))}, p99 {ms(self.percentile_ms(0.99))}"
        )


def ms(value: float) -> str:
    """Milliseconds with the digits that matter: 0.042 ms, 3.1 ms, 250 ms."""
    if value <= 0:
        return "-"  # nothing was answered
    if value < 1:
        return f"{value:.3f} ms"
    return f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


async def timed_request(
    client: AsyncClient,
    tally: Tally,
    command: int,
    key: bytes = b"",
    value: bytes = b"",
    version: int = 0,
    target: Addr | None = None,
) -> Reply | None:
    """One request with the reference retry policy; None (and a time-out counted) if
    unanswered. An OVERLOAD that outlasted the retries is None too (its errCode is
    counted): like a time-out it leaves the outcome open, since an earlier try may
    have been executed elsewhere."""
    tally.requests += 1
    started = time.perf_counter()
    try:
        reply = await client.request(command, key, value, version, target=target)
    except ClientTimeout:
        tally.timeouts += 1
        record_request(started, None)
        return None
    tally.answered(reply, started)
    record_request(started, reply.err)
    return None if reply.err == Err.OVERLOAD else reply


# -- pools -------------------------------------------------------------------------


async def pool(
    servers: Sequence[Addr],
    items: Iterable[T],
    clients: int,
    work: Callable[[AsyncClient, T], Awaitable[None]],
    tick: Tick | None = None,
) -> float:
    """Run `work` on every item with `clients` concurrent clients; returns the seconds taken.

    The clients share one iterator, so each item is done exactly once and a
    slow client does not hold back the others.
    """
    shared = iter(items)

    async def client_loop() -> None:
        async with AsyncClient(list(servers), random_front_end=True) as client:
            for item in shared:
                await work(client, item)
                if tick is not None:
                    tick()

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(max(1, clients))))
    return time.perf_counter() - started


def put_all(
    servers: Sequence[Addr],
    values: dict[bytes, bytes],
    clients: int,
    tick: Tick | None = None,
) -> tuple[Tally, set[bytes]]:
    """PUT every key; returns the figures and the keys whose PUT timed out (state unknown)."""
    tally = Tally()
    unknown: set[bytes] = set()

    async def put(client: AsyncClient, key: bytes) -> None:
        reply = await timed_request(client, tally, Command.PUT, key, values[key])
        if reply is None:
            unknown.add(key)
        elif reply.err == Err.OK:
            tally.ok += 1
        else:
            tally.wrong += 1

    tally.seconds = run_async(pool(servers, values, clients, put, tick))
    return tally, unknown


def get_all(
    servers: Sequence[Addr],
    values: dict[bytes, bytes],
    clients: int,
    tick: Tick | None = None,
) -> Tally:
    """GET every key: ok is the value expected, wrong any other value or errCode."""
    tally = Tally()

    async def get(client: AsyncClient, key: bytes) -> None:
        reply = await timed_request(client, tally, Command.GET, key)
        if reply is None or reply.err == Err.NO_KEY:
            return
        if reply.err == Err.OK and reply.value == values[key]:
            tally.ok += 1
        else:
            tally.wrong += 1

    tally.seconds = run_async(pool(servers, values, clients, get, tick))
    return tally


async def ask_each(
    servers: Sequence[Addr], command: int, timeout: float = 0.1, tries: int = 3
) -> dict[Addr, Reply | None]:
    """Send `command` to every node at once; None for a node that never answered."""
    async with AsyncClient(list(servers), timeout, tries) as client:
        answers = await client.request_each(command, servers)
    result: dict[Addr, Reply | None] = {}
    for addr, answer in zip(servers, answers, strict=True):
        if isinstance(answer, ClientTimeout):
            result[addr] = None
        elif isinstance(answer, ClientError):
            raise answer  # not a missing reply: worth seeing
        else:
            result[addr] = answer
    return result


def membership_counts(servers: Sequence[Addr]) -> dict[Addr, int | None]:
    """GET_MEMBERSHIP_COUNT of every node given; None where no valid answer came."""
    replies = run_async(ask_each(servers, Command.GET_MEMBERSHIP_COUNT))
    return {a: (r.membership_count if r is not None and r.ok else None) for a, r in replies.items()}


def alive_pids(servers: Sequence[Addr]) -> dict[Addr, int | None]:
    """GET_PID of every node given; None where no valid answer came."""
    replies = run_async(ask_each(servers, Command.GET_PID))
    return {a: (r.pid if r is not None and r.ok else None) for a, r in replies.items()}


# -- bench runs -------------------------------------------------------------------------


def bench_runs(
    ctx: Context,
    servers: list[Addr],
    counts: tuple[int, ...],
    seconds: float,
    random_front_end: bool,
) -> list[BenchResult]:
    """Closed-loop PUT→GET runs, one per client count, each with its own progress bar."""
    results = []
    for clients in counts:
        config = BenchConfig(
            servers=tuple(servers),
            clients=clients,
            duration=seconds,
            value_size=ctx.params.value_size,
            procs=min(ctx.procs, clients),
            random_front_end=random_front_end,
        )
        where = "random front ends" if random_front_end else "one front end"
        text = f"{clients} closed-loop clients PUT→GET, {where}, {config.duration:g} s"
        with ctx.report.step(text, total=config.duration) as bar:

            def progress(elapsed: float, done: int, bar: StepBar = bar) -> None:
                bar.to(elapsed, f"{done / elapsed:,.0f} req/s" if elapsed else "")

            result = run_bench(config, progress)
        record_samples(result.samples)
        results.append(result)
        label = f"{clients} client{'s' if clients > 1 else ''}"
        ctx.report.record(label, result.to_dict(), bench_line(result))
    return results


def bench_success_pct(result: BenchResult) -> float:
    """Share of requests answered 0 with the right value (a wrong GET value is a failure)."""
    good = result.errors.get("0", 0) - result.mismatches
    return 100.0 * max(0, good) / result.requests if result.requests else 0.0


def bench_line(r: BenchResult) -> str:
    codes = " ".join(f"{k}:{v:,}" for k, v in r.errors.items()) or "-"
    return (
        f"{r.throughput:,.0f} req/s, {bench_success_pct(r):.2f} % ok; {r.requests:,} requests, "
        f"{r.timeouts:,} t/o ({r.timeout_pct:g} %), errCodes {codes}, {r.mismatches:,} wrong; "
        f"latency mean {ms(r.mean_ms)}, p50 {ms(r.p50_ms)}, p99 {ms(r.p99_ms)}"
    )

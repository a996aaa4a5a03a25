"""`ringkv bench`: closed-loop PUT→GET load and the figures it reports.

Each client owns one key range and one UDP socket and has one request in
flight: PUT a fresh value, GET it back, repeat. Lost requests are re-sent
with the same messageID after 100, 200, 400 ms (the reference policy).
Clients run as callbacks on uvloop (no coroutine per request, datagrams
built from pre-encoded pieces) and `procs` processes share them, so that
the bench is not the bottleneck it measures.

Figures:

- requests: operations finished, answered or timed out; throughput counts
  the answered ones per second of the run.
- latency p50/p99/max/mean: from the first send of a request to its reply,
  retries included, over every answered request of every process (exact).
- time-outs: requests whose every try went unanswered, and their share.
- retries: datagrams re-sent after a time-out or an overload reply.
- error codes: the errCode of every answer (0 is success).
- mismatches: GETs that did not return the value and version the client
  had just PUT successfully (not-found counts too); always 0 for an echo.
- node/echo (with --compare-echo): the node's throughput divided by that
  of a bare UDP echo server benched the same way in the same run, i.e. the
  share of this machine's request-handling capacity that the node keeps.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import queue
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields
from typing import Any

from google.protobuf.message import DecodeError

from ringkv.client.client import client_socket, resolve, route_ip
from ringkv.client.local import stop
from ringkv.report.timeline import Samples, percentile
from ringkv.wire import Addr
from ringkv.wire.codec import Err, KVResponse, Msg, encode_msg, varint

INF = math.inf
_U64 = struct.Struct("!Q")
_VERSIONS = 16_383  # PUT versions cycle through 1..16383: one- or two-byte varints
SWEEP_INTERVAL = 0.005  # how often time-outs are checked; far below the 100 ms first wait


class BenchError(RuntimeError):
    """The bench could not run (a worker failed, the echo server did not start)."""


@dataclass(frozen=True)
class BenchConfig:
    servers: tuple[Addr, ...]
    clients: int = 16
    duration: float = 5.0
    value_size: int = 500
    procs: int = 1
    keys: int = 1  # keys per client, used round-robin
    random_front_end: bool = False
    echo: bool = False  # the target echoes datagrams: any reply with our datagram is success
    timeout: float = 0.1
    tries: int = 3


@dataclass
class WorkerResult:
    answered: int = 0
    timeouts: int = 0
    retries: int = 0
    mismatches: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    samples: Samples = field(default_factory=Samples)  # every request, when it finished
    elapsed: float = 0.0
    cpu: float = 0.0  # seconds of CPU the worker process spent meanwhile


@dataclass
class BenchResult:
    target: str
    echo: bool
    clients: int
    procs: int
    value_size: int
    keys: int
    random_front_end: bool
    duration_s: float
    requests: int
    answered: int
    throughput: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    timeouts: int
    timeout_pct: float
    retries: int
    errors: dict[str, int]
    mismatches: int
    # The busiest worker process's CPU over the run, in % of one core: near 100,
    # the bench's own client set the pace, and the figures are its ceiling.
    client_cpu_pct: float = 0.0
    # Every request as it finished, for a report over time; not part of the figures.
    samples: Samples = field(default_factory=Samples, repr=False, compare=False)

    @property
    def client_bound(self) -> bool:
        return self.client_cpu_pct >= CLIENT_BOUND_PCT

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "samples"}


# -- encoding pieces -----------------------------------------------------------


# Field 4 (version) of a KVRequest, pre-encoded for every version a PUT uses.
_VERSION_FIELDS = [b"\x20" + varint(v) for v in range(_VERSIONS + 1)]


def _put_head(key: bytes, value_size: int) -> bytes:
    """KVRequest up to the value bytes: command=PUT, key, value's tag and length."""
    return b"\x08\x01\x12" + varint(len(key)) + key + b"\x1a" + varint(value_size)


def _get_payload(key: bytes) -> bytes:
    return b"\x08\x02\x12" + varint(len(key)) + key


def _value_maker(value_size: int) -> Callable[[int], bytes]:
    """Values unique per sequence number: 8 bytes of it, then fixed random filler."""
    filler = os.urandom(max(0, value_size - 8))
    if value_size >= 8:
        return lambda seq: _U64.pack(seq) + filler
    return lambda seq: _U64.pack(seq)[8 - value_size :]


# -- one process of clients -------------------------------------------------------


class _Worker:
    """What a process's clients share: config, decoders, counters, the latency log."""

    def __init__(self, config: BenchConfig, targets: list[Addr]) -> None:
        self.config = config
        self.targets = targets
        self.echo = config.echo
        self.stopping = False
        self.msg = Msg()  # reused: parsing into a live object saves an allocation per reply
        self.response = KVResponse()
        self.samples = Samples()
        self.make_value = _value_maker(config.value_size)


class _Client(asyncio.DatagramProtocol):
    """One closed-loop client: a state machine driven by replies and by the sweeper."""

    def __init__(self, worker: _Worker, name: bytes, sock: socket.socket) -> None:
        cfg = worker.config
        self.w = worker
        self.sock = sock
        self.keys = [b"%s-%d" % (name, k) for k in range(cfg.keys)]
        self.put_heads = [_put_head(key, cfg.value_size) for key in self.keys]
        self.get_payloads = [_get_payload(key) for key in self.keys]
        ip = socket.inet_aton(route_ip(worker.targets[0]))
        port = sock.getsockname()[1]
        # messageID by the protocol's convention; a counter stands in for the clock's low bits.
        self.id_prefix = ip + struct.pack("!HH", port, random.getrandbits(16))
        self.seq = time.time_ns()
        self.op = 0
        self.is_put = True
        self.expected: tuple[bytes, int] | None = None
        self.pending: tuple[bytes, int] | None = None
        self.transport: Any = None
        self.target = worker.targets[0]
        self.datagram = b""
        self.message_id = b""
        self.sent_at = 0.0
        self.deadline = INF
        self.wait = cfg.timeout
        self.tries_left = 0
        self.answered = self.timeouts = self.retries = self.mismatches = 0
        self.errors: dict[int, int] = {}

    # asyncio protocol callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable: the time-out handles it

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.deadline == INF:
            return  # nothing in flight (stopped, or waiting out an overload)
        if self.w.echo:
            if data == self.datagram:
                self._answered(Err.OK, None)
            return
        msg = self.w.msg
        try:
            msg.ParseFromString(data)
        except DecodeError:
            return
        message_id = msg.messageID
        if message_id != self.message_id:
            return  # a late reply to an earlier request
        payload = msg.payload
        if msg.checkSum != zlib.crc32(payload, zlib.crc32(message_id)):
            return
        response = self.w.response
        try:
            response.ParseFromString(payload)
        except DecodeError:
            return
        self._answered(response.errCode, response)

    # the request cycle

    def send_next(self) -> None:
        w = self.w
        if w.stopping:
            self.deadline = INF
            return
        self.seq += 1
        seq = self.seq
        k = self.op % len(self.keys)
        if self.is_put:
            value = w.make_value(seq)
            version = 1 + seq % _VERSIONS
            payload = self.put_heads[k] + value + _VERSION_FIELDS[version]
            self.pending = (value, version)
        else:
            payload = self.get_payloads[k]
        if w.config.random_front_end:
            self.target = random.choice(w.targets)
        self.message_id = message_id = self.id_prefix + _U64.pack(seq)
        self.datagram = encode_msg(message_id, payload)
        self.wait = w.config.timeout
        self.tries_left = w.config.tries - 1
        self.sent_at = now = time.perf_counter()
        self.deadline = now + self.wait
        self.transport.sendto(self.datagram, self.target)

    def resend(self) -> None:
        if self.w.stopping:
            return
        self.deadline = time.perf_counter() + self.wait
        self.transport.sendto(self.datagram, self.target)

    def on_deadline(self, now: float) -> None:
        if self.tries_left > 0:
            self.tries_left -= 1
            self.retries += 1
            self.wait *= 2
            self.deadline = now + self.wait
            self.transport.sendto(self.datagram, self.target)
            return
        self.timeouts += 1
        self.w.samples.timed_out(now)
        self._advance(ok=False)

    def _answered(self, err: int, response: KVResponse | None) -> None:
        now = time.perf_counter()
        if err == Err.OVERLOAD and self.tries_left > 0 and response is not None:
            self.tries_left -= 1
            self.retries += 1
            self.wait *= 2
            self.deadline = INF
            delay = response.overloadWaitTime / 1000
            asyncio.get_running_loop().call_later(delay, self.resend)
            return
        self.w.samples.answered(now, now - self.sent_at, err)
        self.answered += 1
        self.errors[err] = self.errors.get(err, 0) + 1
        if not self.is_put and self.expected is not None and response is not None:
            if err != Err.OK or (response.value, response.version) != self.expected:
                self.mismatches += 1
        self._advance(ok=err == Err.OK)

    def _advance(self, ok: bool) -> None:
        if self.is_put:
            # Only a PUT known to have been applied sets what the GET must see.
            self.expected = self.pending if ok and not self.w.echo else None
            self.is_put = False
        else:
            self.is_put = True
            self.op += 1
        self.send_next()


def _itself(client: _Client) -> Callable[[], _Client]:
    """The protocol factory of a client's endpoint: each client is its own protocol."""
    return lambda: client


def _client_names(run_id: int, proc: int, count: int) -> list[bytes]:
    return [b"bench-%08x-%d-%d" % (run_id, proc, i) for i in range(count)]


async def _drive(worker: _Worker, clients: list[_Client], progress: Any, slot: int) -> WorkerResult:
    """Run the clients for the configured duration; in-flight requests at the end are dropped."""
    loop = asyncio.get_running_loop()
    for client in clients:
        await loop.create_datagram_endpoint(_itself(client), sock=client.sock)
    start = time.perf_counter()
    cpu_start = time.process_time()
    end = start + worker.config.duration
    for client in clients:
        client.send_next()
    while (now := time.perf_counter()) < end:
        for client in clients:
            if now >= client.deadline:
                client.on_deadline(now)
        if progress is not None:
            progress[slot] = sum(c.answered + c.timeouts for c in clients)
        await asyncio.sleep(min(SWEEP_INTERVAL, end - now))
    worker.stopping = True
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    for client in clients:
        client.transport.close()
    return _collect(worker, clients, elapsed, cpu)


def _collect(
    worker: _Worker, clients: list[_Client], elapsed: float, cpu: float = 0.0
) -> WorkerResult:
    result = WorkerResult(samples=worker.samples, elapsed=elapsed, cpu=cpu)
    for c in clients:
        result.answered += c.answered
        result.timeouts += c.timeouts
        result.retries += c.retries
        result.mismatches += c.mismatches
        for err, count in c.errors.items():
            result.errors[err] = result.errors.get(err, 0) + count
    return result


def run_worker(
    config: BenchConfig,
    proc: int,
    n_clients: int,
    run_id: int,
    start: Any = None,
    progress: Any = None,
) -> WorkerResult:
    """Run one process's share of the clients (in this process)."""
    import uvloop

    targets = [resolve(addr) for addr in config.servers]
    worker = _Worker(config, targets)
    clients = [
        _Client(worker, name, client_socket(targets[0]))
        for name in _client_names(run_id, proc, n_clients)
    ]
    if start is not None:
        start.wait()  # every process starts sending at the same moment
    return uvloop.run(_drive(worker, clients, progress, proc))


def _worker_main(
    config: BenchConfig, proc: int, n_clients: int, run_id: int, start: Any, progress: Any, out: Any
) -> None:
    try:
        out.put((proc, run_worker(config, proc, n_clients, run_id, start, progress)))
    except BaseException as exc:  # reported to the parent, which raises BenchError
        out.put((proc, f"{type(exc).__name__}: {exc}"))
        start.abort()  # a parent still waiting to start learns of it at once
        raise


# -- the parent: processes, merging, figures ----------------------------------------


def split_clients(clients: int, procs: int) -> list[int]:
    """Clients per process, as even as possible; no process without clients."""
    procs = max(1, min(procs, clients))
    return [clients // procs + (i < clients % procs) for i in range(procs)]


ProgressFn = Callable[[float, int], None]


def run_bench(config: BenchConfig, on_progress: ProgressFn | None = None) -> BenchResult:
    """Run the bench in `config.procs` worker processes and merge their figures."""
    shares = split_clients(config.clients, config.procs)
    ctx = mp.get_context("spawn")  # fresh interpreters: no inherited threads or event loops
    start = ctx.Barrier(len(shares) + 1)
    progress = ctx.Array("q", len(shares), lock=False)
    out = ctx.Queue()
    run_id = random.getrandbits(32)
    workers = [
        ctx.Process(
            target=_worker_main,
            args=(config, i, n, run_id, start, progress, out),
            daemon=True,
        )
        for i, n in enumerate(shares)
    ]
    for proc in workers:
        proc.start()
    try:
        _start_together(start, out)
        results = _gather(config, workers, out, progress, on_progress)
    except BaseException:
        for proc in workers:
            proc.kill()
        raise
    finally:
        for proc in workers:
            proc.join(timeout=5)
    return merge(config, results)


def _start_together(start: Any, out: Any) -> None:
    try:
        start.wait(timeout=60)
    except threading.BrokenBarrierError:
        try:
            proc, message = out.get(timeout=5)
        except queue.Empty:
            raise BenchError("a bench process did not start") from None
        raise BenchError(f"bench process {proc} failed: {message}") from None


def _gather(
    config: BenchConfig,
    workers: list[Any],
    out: Any,
    progress: Any,
    on_progress: ProgressFn | None,
) -> list[WorkerResult]:
    began = time.monotonic()
    results: dict[int, WorkerResult] = {}
    while len(results) < len(workers):
        if on_progress is not None:
            on_progress(min(time.monotonic() - began, config.duration), sum(progress))
        try:
            proc, result = out.get(timeout=0.1)
        except queue.Empty:
            _check_alive(config, workers, began)
            continue
        if isinstance(result, str):
            raise BenchError(f"bench process {proc} failed: {result}")
        results[proc] = result
    return [results[i] for i in sorted(results)]


def _check_alive(config: BenchConfig, workers: list[Any], began: float) -> None:
    if time.monotonic() - began > config.duration + 30:
        raise BenchError("bench processes did not report back")
    if any(p.exitcode not in (None, 0) for p in workers):
        raise BenchError("a bench process died")


def merge(config: BenchConfig, results: list[WorkerResult]) -> BenchResult:
    samples = Samples()
    for r in results:
        samples.extend(r.samples)
    latencies = sorted(samples.latencies())
    answered = sum(r.answered for r in results)
    timeouts = sum(r.timeouts for r in results)
    errors: dict[int, int] = {}
    for r in results:
        for err, count in r.errors.items():
            errors[err] = errors.get(err, 0) + count
    elapsed = max((r.elapsed for r in results), default=0.0) or config.duration
    requests = answered + timeouts
    return BenchResult(
        target=", ".join(f"{h}:{p}" for h, p in config.servers),
        echo=config.echo,
        clients=config.clients,
        procs=len(results),
        value_size=config.value_size,
        keys=config.keys,
        random_front_end=config.random_front_end,
        duration_s=round(elapsed, 3),
        requests=requests,
        answered=answered,
        throughput=round(answered / elapsed, 1),
        p50_ms=round(percentile(latencies, 0.50) * 1000, 3),
        p99_ms=round(percentile(latencies, 0.99) * 1000, 3),
        max_ms=round((latencies[-1] if latencies else 0.0) * 1000, 3),
        mean_ms=round(sum(latencies) / len(latencies) * 1000, 3) if latencies else 0.0,
        timeouts=timeouts,
        timeout_pct=round(100 * timeouts / requests, 3) if requests else 0.0,
        retries=sum(r.retries for r in results),
        errors={str(err): errors[err] for err in sorted(errors)},
        mismatches=sum(r.mismatches for r in results),
        client_cpu_pct=round(
            max((100 * r.cpu / r.elapsed for r in results if r.elapsed), default=0.0), 1
        ),
        samples=samples,
    )


# -- the echo server as a subprocess -------------------------------------------------


@contextmanager
def echo_server(port: int, host: str = "127.0.0.1", blocking: bool = False) -> Iterator[Addr]:
    """Run `ringkv.runtime.echo` on host:port for the duration of the block."""
    command = [sys.executable, "-m", "ringkv.runtime.echo", f"{host}:{port}"]
    proc = subprocess.Popen(command + (["--blocking"] if blocking else []))
    try:
        _wait_echoing((host, port), proc)
        yield host, port
    finally:
        stop(proc)


def _wait_echoing(addr: Addr, proc: subprocess.Popen[bytes], limit: float = 15.0) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.05)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"the echo server on {addr[0]}:{addr[1]} exited (port in use?)")
            probe.sendto(b"ping", addr)
            with suppress(OSError):
                if probe.recvfrom(16)[0] == b"ping":
                    return
    raise BenchError(f"the echo server on {addr[0]}:{addr[1]} did not answer")


# -- printing ---------------------------------------------------------------------------


def describe(result: BenchResult) -> str:
    """The figures of one run, one per line, for people."""
    kind = "echo server" if result.echo else "front end"
    if result.random_front_end:
        kind = "random front end"
    errors = "  ".join(f"{err}: {count:,}" for err, count in result.errors.items()) or "-"
    return "\n".join(
        [
            f"target       {result.target} ({kind})",
            f"load         {result.clients} closed-loop clients in {result.procs} process(es), "
            f"{result.value_size}-byte values, {result.keys} key(s) per client, "
            f"{result.duration_s:g} s",
            f"requests     {result.requests:,} ({result.answered:,} answered)",
            f"throughput   {result.throughput:,.0f} req/s",
            f"latency      p50 {result.p50_ms:.3f} ms   p99 {result.p99_ms:.3f} ms   "
            f"max {result.max_ms:.3f} ms   mean {result.mean_ms:.3f} ms",
            f"time-outs    {result.timeouts:,} ({result.timeout_pct:g} %), "
            f"{result.retries:,} retries",
            f"error codes  {errors}",
            f"mismatches   {result.mismatches:,}",
            f"client CPU   {result.client_cpu_pct:g} % of a core (busiest worker)"
            + (
                "  -- the bench's client set the pace: measure with kvload"
                if result.client_bound
                else ""
            ),
        ]
    )


# A worker this busy is the bottleneck: the target may have more to give.
CLIENT_BOUND_PCT = 90.0


def ratio(node: BenchResult, echo: BenchResult) -> float:
    return node.throughput / echo.throughput if echo.throughput else 0.0

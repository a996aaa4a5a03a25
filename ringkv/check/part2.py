"""Part 2 of the evaluation, up to "resume all": the deployment in the server list.

Requests only ever go to nodes this run has not suspended (`ctx.alive`),
as the evaluation's clients do: a stopped node answers nobody.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ringkv.check.base import Context, Stage, Verdict, counts_line, nodes
from ringkv.check.load import (
    Tally,
    alive_pids,
    bench_runs,
    bench_success_pct,
    get_all,
    make_value,
    membership_counts,
    pool,
    put_all,
    run_async,
    timed_request,
    value_seq,
)
from ringkv.check.nodes import is_local, process_gone
from ringkv.client.client import AsyncClient, Reply
from ringkv.wire import Addr
from ringkv.wire.codec import Command, Err

# -- membership ---------------------------------------------------------------------


def check_membership(ctx: Context, want: int, label: str = "membership") -> bool:
    counts = membership_counts(ctx.alive)
    ok, text = counts_line(counts, want)
    ctx.report.record(label, {f"{h}:{p}": c for (h, p), c in counts.items()}, text)
    return ok


def membership(ctx: Context) -> Verdict:
    """Every node must count every node; views get `converge_wait` seconds to agree."""
    want = len(ctx.servers)
    start = time.monotonic()
    limit = ctx.params.converge_wait
    with ctx.report.step(f"asking {want} nodes for their membership count", total=limit) as bar:
        while True:
            counts = membership_counts(ctx.servers)
            agreed, text = counts_line(counts, want)
            elapsed = time.monotonic() - start
            if agreed or elapsed > limit:
                break
            bar.to(elapsed, "not all agree yet")
            time.sleep(0.5)
    ctx.report.record("counts", {f"{h}:{p}": c for (h, p), c in counts.items()}, text)
    ctx.report.record("agreed after", round(elapsed, 1), f"{elapsed:.1f} s")
    return Verdict(agreed, text)


# -- basic through random front ends ---------------------------------------------------


@dataclass
class Ops:
    """One Tally per operation of a request sequence."""

    tallies: dict[str, Tally] = field(default_factory=dict)

    def judge(self, op: str, reply: Reply | None, right: bool) -> None:
        tally = self.tallies.setdefault(op, Tally())
        if reply is not None:
            tally.ok += right
            tally.wrong += not right

    def tally(self, op: str) -> Tally:
        return self.tallies.setdefault(op, Tally())


def basic2(ctx: Context) -> Verdict:
    """PUT→GET, PUT v2→GET, REM→GET→REM per key; every request to a random node."""
    p = ctx.params
    ops = Ops()
    items = [(size, i) for size in p.basic2_sizes for i in range(p.basic2_keys)]

    async def sequence(client: AsyncClient, item: tuple[int, int]) -> None:
        size, i = item
        key = ctx.key(f"b{size}-", i)
        for version in (1, 2):
            value = make_value(key, version, size)
            put = await timed_request(client, ops.tally("PUT"), Command.PUT, key, value, version)
            ops.judge("PUT", put, put is not None and put.ok)
            got = await timed_request(client, ops.tally("GET"), Command.GET, key)
            right = got is not None and got.ok and (got.value, got.version) == (value, version)
            ops.judge("GET", got, right)
        for op, want in (("REM", Err.OK), ("GET after REM", Err.NO_KEY), ("REM again", Err.NO_KEY)):
            command = Command.REMOVE if op.startswith("REM") else Command.GET
            reply = await timed_request(client, ops.tally(op), command, key)
            ops.judge(op, reply, reply is not None and reply.err == want)

    text = f"{len(items)} keys of {'/'.join(map(str, p.basic2_sizes))} B through random nodes"
    with ctx.report.step(text, total=len(items)) as bar:
        seconds = run_async(pool(ctx.alive, items, 8, sequence, bar.advance))
    for op, tally in ops.tallies.items():
        tally.seconds = seconds
        ctx.report.record(op, tally.figures(), tally.line("right"))
    bad = sum(t.requests - t.ok for t in ops.tallies.values())
    total = sum(t.requests for t in ops.tallies.values())
    return Verdict(bad == 0, f"{total - bad:,}/{total:,} requests answered right")


# -- crash mix ------------------------------------------------------------------------


@dataclass
class MixState:
    """What the writers wrote, so a read can be told apart from an invented value."""

    written: dict[bytes, int] = field(default_factory=dict)  # key -> highest seq sent
    puts: Tally = field(default_factory=Tally)
    gets: Tally = field(default_factory=Tally)
    removes: Tally = field(default_factory=Tally)
    wipes: Tally = field(default_factory=Tally)
    invented: int = 0
    stale: int = 0


def crash_mix(ctx: Context) -> Verdict:
    """Closed loops PUT→GET and REM→WIPEOUT at once; no node may crash or answer nonsense."""
    p = ctx.params
    before = alive_pids(ctx.alive)
    state = MixState()
    keys = [ctx.key("mix-", i) for i in range(p.crash_writers * 4)]
    text = f"{p.crash_writers} PUT→GET and {p.crash_wipers} REM→WIPEOUT loops"
    with ctx.report.step(f"{text}, {p.crash_seconds:g} s", total=p.crash_seconds) as bar:
        run_async(_mix(ctx, state, keys, bar.to))
    for tally in (state.puts, state.gets, state.removes, state.wipes):
        tally.seconds = p.crash_seconds
    crashed, silent = _crashed(before, alive_pids(ctx.alive))
    _record_mix(ctx, state, crashed, silent)
    logic = state.invented + _unexpected(state)
    passed = not crashed and not silent and logic == 0 and state.puts.ok > 0
    summary = (
        f"{len(crashed)} node(s) crashed or restarted, {len(silent)} not answering, "
        f"{logic:,} logic errors "
        f"({state.invented:,} invented values, {_unexpected(state):,} unexpected errCodes); "
        f"{state.puts.requests + state.gets.requests:,} PUT/GET"
    )
    return Verdict(passed, summary)


def _crashed(
    before: dict[Addr, int | None], after: dict[Addr, int | None]
) -> tuple[list[Addr], list[Addr]]:
    """Nodes whose process died or was replaced, and nodes that live on but do not answer.

    Only for a node on this host can silence be told apart from a crash.
    """
    crashed, silent = [], []
    for addr, pid in before.items():
        now = after.get(addr)
        if now is not None:
            if pid is not None and now != pid:
                crashed.append(addr)
        elif pid is not None and (not is_local(addr) or process_gone(pid)):
            crashed.append(addr)
        else:
            silent.append(addr)
    return crashed, silent


def _unexpected(state: MixState) -> int:
    allowed = {"PUT": {Err.OK}, "GET": {Err.OK, Err.NO_KEY}}
    allowed |= {"REM": {Err.OK, Err.NO_KEY}, "WIPEOUT": {Err.OK}}
    tallies = {"PUT": state.puts, "GET": state.gets, "REM": state.removes, "WIPEOUT": state.wipes}
    return sum(
        n for op, t in tallies.items() for code, n in t.errors.items() if code not in allowed[op]
    )


def _record_mix(ctx: Context, state: MixState, crashed: list[Addr], silent: list[Addr]) -> None:
    report = ctx.report
    report.record("PUT", state.puts.figures(), state.puts.line())
    report.record("GET", state.gets.figures(), state.gets.line("current"))
    report.record("REM", state.removes.figures(), state.removes.line())
    report.record("WIPEOUT", state.wipes.figures(), state.wipes.line())
    report.record("stale reads", state.stale, f"{state.stale:,} (allowed: WIPEOUT races)")
    report.record("invented values", state.invented)
    for label, group in (("crashed nodes", crashed), ("nodes not answering", silent)):
        names = ", ".join(f"{h}:{p}" for h, p in group) or "none"
        report.record(label, [f"{h}:{p}" for h, p in group], names)


async def _mix(
    ctx: Context, state: MixState, keys: list[bytes], progress: Callable[[float, str], None]
) -> None:
    p = ctx.params
    deadline = time.monotonic() + p.crash_seconds
    writers = [
        _writer(ctx, state, keys[i :: p.crash_writers], deadline) for i in range(p.crash_writers)
    ]
    wipers = [_wiper(ctx, state, keys, deadline) for _ in range(p.crash_wipers)]
    tasks = [asyncio.ensure_future(c) for c in (*writers, *wipers)]
    while not all(t.done() for t in tasks):
        left = deadline - time.monotonic()
        progress(p.crash_seconds - max(0.0, left), f"{state.puts.requests:,} PUTs")
        await asyncio.wait(tasks, timeout=0.2)
    for task in tasks:
        task.result()  # re-raise what went wrong inside a loop


async def _writer(ctx: Context, state: MixState, keys: list[bytes], deadline: float) -> None:
    size = ctx.params.value_size
    async with AsyncClient(ctx.alive, random_front_end=True) as client:
        while time.monotonic() < deadline:
            for key in keys:
                seq = state.written.get(key, 0) + 1
                state.written[key] = seq
                value = make_value(key, seq, size)
                put = await timed_request(client, state.puts, Command.PUT, key, value)
                if put is not None and put.ok:
                    state.puts.ok += 1
                got = await timed_request(client, state.gets, Command.GET, key)
                if got is not None and got.ok:
                    _judge_mix_read(ctx, state, key, got.value, seq)


def _judge_mix_read(ctx: Context, state: MixState, key: bytes, value: bytes, last: int) -> None:
    seq = value_seq(key, value)
    if seq is None or seq > state.written.get(key, 0):
        state.invented += 1
        ctx.timeline.violation(key, "invented")
    elif seq < last:
        state.stale += 1
    else:
        state.gets.ok += 1


async def _wiper(ctx: Context, state: MixState, keys: list[bytes], deadline: float) -> None:
    async with AsyncClient(ctx.alive, random_front_end=True) as client:
        while time.monotonic() < deadline:
            key = random.choice(keys)
            removed = await timed_request(client, state.removes, Command.REMOVE, key)
            state.removes.ok += removed is not None and removed.err in (Err.OK, Err.NO_KEY)
            wiped = await timed_request(client, state.wipes, Command.WIPEOUT)
            state.wipes.ok += wiped is not None and wiped.ok


# -- random front end throughput ------------------------------------------------------------


def _throughput_stage(ctx: Context, counts: tuple[int, ...]) -> Verdict:
    results = bench_runs(ctx, ctx.alive, counts, ctx.params.rfe_seconds, random_front_end=True)
    shares = [bench_success_pct(r) for r in results]
    parts = [
        f"{r.clients}: {r.throughput:,.0f} req/s {s:.2f} % ok {r.timeout_pct:g} % t/o"
        for r, s in zip(results, shares, strict=True)
    ]
    return Verdict(all(s >= 99.0 for s in shares), "; ".join(parts))


def random_front_end(ctx: Context) -> Verdict:
    return _throughput_stage(ctx, ctx.params.rfe_clients)


def stage2_perf(ctx: Context) -> Verdict:
    ctx.report.note(f"{len(ctx.alive)} of {len(ctx.servers)} nodes alive")
    return _throughput_stage(ctx, ctx.params.perf2_clients)


# -- stored keys, suspension and recovery ---------------------------------------------------


def store_keys(
    ctx: Context, tag: str, count: int, clients: int
) -> tuple[dict[bytes, bytes], Tally]:
    values: dict[bytes, bytes] = {}
    for i in range(count):
        key = ctx.key(tag, i)
        values[key] = make_value(key, 0, ctx.params.value_size)
    text = f"{clients} clients PUT {count:,} keys of {ctx.params.value_size} B"
    with ctx.report.step(text, total=count) as bar:
        puts, _ = put_all(ctx.alive, values, clients, bar.advance)
    ctx.report.record("PUT", puts.figures(), puts.line("stored"))
    return values, puts


def read_keys(
    ctx: Context,
    values: dict[bytes, bytes],
    what: str,
    clients: int,
    threshold: float,
    chance: float | None = None,
) -> float:
    """GET every key; returns the share read back right, in %."""
    with ctx.report.step(f"{clients} clients GET {len(values):,} {what}", total=len(values)) as bar:
        gets = get_all(ctx.alive, values, clients, bar.advance)
    ctx.report.record("GET", gets.figures(), gets.line("right"))
    share = gets.ok_pct
    line = f"{share:.2f} % of {len(values):,} keys"
    if chance is not None:
        line += f" (expected by chance: {chance:.2f} %)"
    figures = {"pct": round(share, 3), "chance_pct": chance, "threshold_pct": threshold}
    ctx.report.record("recovered", figures, line)
    return share


def store_load_0(ctx: Context) -> Verdict:
    p = ctx.params
    values, _ = store_keys(ctx, "s0-", p.stage0_keys, p.stage0_clients)
    ctx.state["stage0"] = values
    share = read_keys(ctx, values, "keys just stored", p.stage0_clients, 90.0)
    return Verdict(share >= 90.0, f"{share:.2f} % read back")


def _suspend(ctx: Context, count: int, batch: int, gap: float) -> list[Addr]:
    """Suspend `count` random live nodes, `batch` at a time, `gap` seconds apart."""
    ctx.control.check_reachable(ctx.servers)
    victims = ctx.rng.sample(ctx.alive, count)
    text = f"suspending {nodes(count)}, {batch} at a time, {gap:g} s apart"
    with ctx.report.step(text, total=count) as bar:
        for start in range(0, count, batch):
            if start:
                time.sleep(gap)
            for addr in victims[start : start + batch]:
                ctx.control.suspend(addr)
                bar.advance()
    ctx.report.record("suspended", [f"{h}:{p}" for h, p in victims], _names(victims))
    return victims


def _resume(ctx: Context, nodes: list[Addr]) -> None:
    for addr in nodes:
        ctx.control.resume(addr)
    ctx.report.record("resumed", [f"{h}:{p}" for h, p in nodes], _names(nodes))


def _names(nodes: list[Addr]) -> str:
    shown = ", ".join(f"{h}:{p}" for h, p in nodes[:8])
    return f"{len(nodes)}: {shown}" + (" …" if len(nodes) > 8 else "")


def _chance(ctx: Context) -> float:
    """The share of keys a store without replication keeps: that of the nodes alive."""
    return 100.0 * len(ctx.alive) / len(ctx.servers)


def suspend_1(ctx: Context) -> Verdict:
    p, s = ctx.params, ctx.scale
    _suspend(ctx, s.suspend, s.suspend_batch, p.suspend_gap)
    ctx.report.wait(p.suspend_wait, f"after suspending {nodes(s.suspend)}")
    return _stage0_recovery(ctx)


def _stage0_recovery(ctx: Context) -> Verdict:
    """Membership right, and at least half the share of stage 0's keys that chance keeps."""
    members = check_membership(ctx, len(ctx.alive))
    chance = _chance(ctx)
    stage0 = ctx.state["stage0"]
    share = read_keys(ctx, stage0, "keys of stage 0", ctx.params.stage0_clients, chance / 2, chance)
    counts = "membership right" if members else "membership WRONG"
    return Verdict(
        share >= chance / 2 and members,
        f"{share:.2f} % recovered (need ≥ {chance / 2:.2f} %), {counts}",
    )


def suspend_2a(ctx: Context) -> Verdict:
    p = ctx.params
    ctx.report.note(f"{len(ctx.alive)} of {len(ctx.servers)} nodes alive")
    values, _ = store_keys(ctx, "s2a-", p.stage2a_keys, p.stage0_clients)
    ctx.state["stage2a"] = values
    share = read_keys(ctx, values, "keys just stored", p.stage0_clients, 100.0)
    return Verdict(share >= 100.0, f"{share:.2f} % read back (need 100 %)")


def suspend_2b(ctx: Context) -> Verdict:
    p, s = ctx.params, ctx.scale
    back = ctx.rng.sample(
        list(ctx.control.suspended), min(s.resume_some, len(ctx.control.suspended))
    )
    _resume(ctx, back)
    ctx.report.wait(p.resume_wait, f"after resuming {nodes(len(back))}")
    return _stage0_recovery(ctx)


def suspend_2c(ctx: Context) -> Verdict:
    stage2a = ctx.state["stage2a"]
    share = read_keys(ctx, stage2a, "keys of stage 2a", ctx.params.stage0_clients, 50.0)
    return Verdict(share >= 50.0, f"{share:.2f} % recovered (need ≥ 50 %, 100 % expected)")


def resume_all(ctx: Context) -> Verdict:
    back = list(ctx.control.suspended)
    _resume(ctx, back)
    ctx.report.wait(ctx.params.resume_all_wait, f"after resuming {nodes(len(back))}")
    members = check_membership(ctx, len(ctx.servers))
    verdict = "right" if members else "WRONG"
    return Verdict(members, f"membership {verdict} after resuming {len(back)} node(s)")


STAGES = [
    Stage("2.membership", "GET_MEMBERSHIP_COUNT on every node (views get {converge_wait} s)",
          "the node count everywhere", membership),
    Stage("2.basic",
          "Part 1's basic tests ({basic2_sizes} B, {basic2_keys} keys each) via random front ends",
          "every answer right", basic2),
    Stage("2.crash-mix",
          "{crash_writers} closed loops PUT→GET, {crash_wipers} REM→WIPEOUT, {crash_seconds} s",
          "no crash, no logic error", crash_mix),
    Stage("2.random-front-end",
          "closed loop PUT→GET to random nodes, {rfe_seconds} s with {rfe_clients} clients",
          "≥ 99 % success for every client count", random_front_end),
    Stage("2.store-load-0", "{stage0_clients} clients PUT {stage0_keys} keys of {value_size} B, "
          "then GET them", "≥ 90 % read back", store_load_0),
    Stage("2.suspend-1",
          "suspend {n_suspend} of {n_nodes} nodes, {n_suspend_batch} at a time {suspend_gap} s "
          "apart; wait {suspend_wait} s; membership; GET the keys of stage 0",
          "membership = live nodes; ≥ half the share expected by chance", suspend_1,
          ("2.store-load-0",)),
    Stage("2.suspend-2a", "with the rest alive, PUT {stage2a_keys} new keys then GET them",
          "100 %", suspend_2a, ("2.suspend-1",)),
    Stage("2.suspend-2b",
          "resume {n_resume_some} nodes, wait {resume_wait} s; membership; GET the keys of stage 0",
          "membership = live nodes; ≥ half the share expected by chance", suspend_2b,
          ("2.suspend-1",)),
    Stage("2.suspend-2c", "GET the keys of stage 2a", "≥ 50 % (100 % expected)", suspend_2c,
          ("2.suspend-2a",)),
    Stage("2.stage-2-perf",
          "random front ends among the survivors, {rfe_seconds} s with {perf2_clients} clients",
          "≥ 99 % success for every client count", stage2_perf),
    Stage("2.resume-all", "resume every suspended node, wait {resume_all_wait} s; membership",
          "membership = all nodes", resume_all),
]  # fmt: skip

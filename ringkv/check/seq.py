"""Sequential-consistency stages 3 and 4: writes and reads while nodes go down and come back.

Every value names its key and its write (`make_value`), and the check keeps,
per key, the last write acknowledged and the writes since whose PUT timed
out (they may or may not have happened). A read is then:

- right:    the last acknowledged write, or one of the unknown ones after it
- stale:    an older write of the key
- missing:  not found although a write was acknowledged
- invented: a value this key never had written (or not ours at all)
- error:    any errCode other than 0 and 1

The violations are stale + missing + invented + error. Stage 4's values are
counters, incremented by read-modify-write: a stale read there shows up as
a final counter below the number of acknowledged increments (lost ones).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from ringkv.check.base import Context, Stage, Verdict, counts_line, nodes
from ringkv.check.load import (
    Tally,
    make_value,
    membership_counts,
    ms,
    pool,
    run_async,
    timed_request,
    value_seq,
)
from ringkv.client.client import AsyncClient, Reply
from ringkv.wire import Addr
from ringkv.wire.codec import Command, Err

VIOLATIONS = ("stale", "missing", "invented", "error")
ANSWERED_PCT = 99.0  # reads that must be answered: time-outs are not judged, so they are bounded


def schedule(rounds: int, step: int, max_down: int) -> list[int]:
    """Nodes to suspend (+) or resume (-) each round: down by `step` to `max_down`, then back."""
    plan, down = [], 0
    for r in range(rounds):
        if r < (rounds + 1) // 2 and down + step <= max_down:
            plan.append(step)
        elif down > 0:
            plan.append(-min(step, down))
        else:
            plan.append(0)
        down += plan[-1]
    return plan


def change_nodes(ctx: Context, change: int, mine: list[Addr]) -> str:
    """Suspend or resume nodes for one round; returns what was done, for the wait's label."""
    if change > 0:
        victims = ctx.rng.sample(ctx.alive, change)
        for addr in victims:
            ctx.control.suspend(addr)
        mine.extend(victims)
        verb = "suspending"
    elif change < 0:
        victims = ctx.rng.sample(mine, -change)
        for addr in victims:
            ctx.control.resume(addr)
            mine.remove(addr)
        verb = "resuming"
    else:
        return "no change"
    return f"{verb} {nodes(abs(change))} ({len(ctx.control.suspended)} down)"


def fresh_start(ctx: Context) -> None:
    """These stages begin with every node up, whatever earlier stages left suspended."""
    if ctx.control.suspended:
        count = len(ctx.control.resume_all())
        ctx.report.wait(ctx.params.resume_all_wait, f"after resuming {nodes(count)}")


def finish(ctx: Context, mine: list[Addr], wait: float) -> None:
    if mine:
        for addr in list(mine):
            ctx.control.resume(addr)
        ctx.report.wait(wait, f"after resuming the last {nodes(len(mine))}")
        mine.clear()


def membership_note(ctx: Context) -> str:
    _, text = counts_line(membership_counts(ctx.alive), len(ctx.alive))
    return text


# -- stage 3: overwrites ----------------------------------------------------------------


@dataclass
class Register:
    acked: int | None = None  # the last write acknowledged
    maybe: set[int] = field(default_factory=set)  # later writes whose PUT timed out


def classify(key: bytes, reg: Register, reply: Reply) -> str:
    if reply.err == Err.NO_KEY:
        return "right" if reg.acked is None else "missing"
    if reply.err != Err.OK:
        return "error"
    seq = value_seq(key, reply.value)
    if seq is None:
        return "invented"
    if seq == reg.acked or seq in reg.maybe:
        return "right"
    if reg.acked is not None and seq < reg.acked:
        return "stale"
    return "invented"


def write_round(ctx: Context, regs: dict[bytes, Register], keys: list[bytes], seq: int) -> Tally:
    size, tally = ctx.params.value_size, Tally()

    async def write(client: AsyncClient, key: bytes) -> None:
        reply = await timed_request(client, tally, Command.PUT, key, make_value(key, seq, size))
        reg = regs[key]
        if reply is None:
            reg.maybe.add(seq)
        elif reply.ok:
            reg.acked = seq
            reg.maybe.clear()
            tally.ok += 1
        else:
            tally.wrong += 1

    text = f"{ctx.params.seq_clients} clients PUT {len(keys):,} keys (write #{seq})"
    with ctx.report.step(text, total=len(keys)) as bar:
        tally.seconds = run_async(pool(ctx.alive, keys, ctx.params.seq_clients, write, bar.advance))
    return tally


def read_round(ctx: Context, regs: dict[bytes, Register], label: str) -> tuple[Tally, Counter[str]]:
    tally, verdicts = Tally(), Counter[str]()

    async def read(client: AsyncClient, key: bytes) -> None:
        reply = await timed_request(client, tally, Command.GET, key)
        if reply is not None:
            verdict = classify(key, regs[key], reply)
            verdicts[verdict] += 1
            if verdict in VIOLATIONS:
                ctx.timeline.violation(key, verdict)

    keys = list(regs)
    with ctx.report.step(f"{label}: GET {len(keys):,} keys", total=len(keys)) as bar:
        tally.seconds = run_async(pool(ctx.alive, keys, ctx.params.seq_clients, read, bar.advance))
    tally.ok = verdicts["right"]
    return tally, verdicts


def verdict_line(tally: Tally, verdicts: Counter[str]) -> str:
    bad = " ".join(f"{v} {verdicts[v]:,}" for v in VIOLATIONS)
    return (
        f"{tally.requests:,} reads: {verdicts['right']:,} right, {bad}, "
        f"{tally.timeouts:,} time-outs; p99 {ms(tally.percentile_ms(0.99))}"
    )


def _first_writes(ctx: Context, prefix: str, count: int, label: str) -> dict[bytes, Register]:
    """Every node up, then `count` fresh keys written once; their registers, by key."""
    fresh_start(ctx)
    keys = [ctx.key(prefix, i) for i in range(count)]
    regs = {k: Register() for k in keys}
    first = write_round(ctx, regs, keys, 0)
    ctx.report.record(label, first.figures(), first.line("stored"))
    return regs


def seq_consistency_3(ctx: Context) -> Verdict:
    p, s = ctx.params, ctx.scale
    regs = _first_writes(ctx, "c3-", p.seq3_keys, "PUT")
    keys = list(regs)
    reads, verdicts, mine = Tally(), Counter[str](), list[Addr]()
    plan = schedule(p.seq3_rounds, s.seq_step, s.seq_max_down)
    for r, change in enumerate(plan, 1):
        chosen = ctx.rng.sample(keys, min(p.seq3_overwrites, len(keys)))
        writes = write_round(ctx, regs, chosen, r)
        what = change_nodes(ctx, change, mine)
        ctx.report.wait(p.seq3_wait, f"after {what}")
        got, seen = read_round(ctx, regs, f"round {r}/{len(plan)}")
        reads.merge(got)
        verdicts.update(seen)
        _record_round(ctx, r, what, writes, got, seen)
    finish(ctx, mine, p.seq3_wait)
    return _seq_verdict(ctx, reads, verdicts)


def _record_round(
    ctx: Context, r: int, what: str, writes: Tally, reads: Tally, verdicts: Counter[str]
) -> None:
    figures = {
        "change": what,
        "writes": writes.figures(),
        "reads": reads.figures(),
        "verdicts": dict(verdicts),
        "membership": membership_note(ctx),
    }
    line = (
        f"{what}; {writes.ok:,}/{writes.requests:,} overwrites acked "
        f"({writes.timeouts:,} t/o); {verdict_line(reads, verdicts)}"
    )
    ctx.report.record(f"round {r}", figures, line)


def _seq_verdict(ctx: Context, reads: Tally, verdicts: Counter[str]) -> Verdict:
    violations = sum(verdicts[v] for v in VIOLATIONS)
    answered = 100.0 * (reads.requests - reads.timeouts) / reads.requests if reads.requests else 0
    totals = {v: verdicts[v] for v in ("right", *VIOLATIONS)}
    totals |= {"reads": reads.requests, "timeouts": reads.timeouts, "violations": violations}
    ctx.report.record("total", totals, verdict_line(reads, verdicts))
    passed = violations == 0 and answered >= ANSWERED_PCT
    summary = f"{violations:,} violations in {reads.requests:,} reads; {answered:.2f} % answered"
    return Verdict(passed, summary)


# -- stage 4: increments --------------------------------------------------------------------


@dataclass
class Count:
    """One counter key: acknowledged increments and those whose PUT timed out."""

    acked: int = 0
    unknown: int = 0
    last: int = 0  # the value of the last acknowledged write
    pending: set[int] = field(default_factory=set)  # values written since, timed out


@dataclass
class IncrementFigures:
    reads: Tally = field(default_factory=Tally)
    writes: Tally = field(default_factory=Tally)
    stale_reads: int = 0
    stale_absent: int = 0  # of those, answered NO_KEY (every copy of the key out of reach?)
    invented_reads: int = 0


def increment_round(ctx: Context, counts: dict[bytes, Count], label: str) -> IncrementFigures:
    """Every key once: GET its counter, PUT counter + 1 (a read-modify-write increment)."""
    size, fig = ctx.params.value_size, IncrementFigures()

    async def increment(client: AsyncClient, key: bytes) -> None:
        got = await timed_request(client, fig.reads, Command.GET, key)
        if got is None:
            return  # no read, no increment
        current = _counter(key, got)
        if current is None:
            fig.invented_reads += 1
            ctx.timeline.violation(key, "invented")
            return
        count = counts[key]
        if current < count.last and current not in count.pending:
            fig.stale_reads += 1  # shows up at the end as lost increments
            ctx.timeline.violation(key, "stale")
            fig.stale_absent += got.err == Err.NO_KEY
        new = current + 1
        put = await timed_request(client, fig.writes, Command.PUT, key, make_value(key, new, size))
        _account(count, put, new, fig)

    keys = list(counts)
    text = f"{label}: increment {len(keys):,} counters (GET then PUT)"
    with ctx.report.step(text, total=len(keys)) as bar:
        seconds = run_async(pool(ctx.alive, keys, ctx.params.seq_clients, increment, bar.advance))
    fig.reads.seconds = fig.writes.seconds = seconds
    return fig


def _counter(key: bytes, reply: Reply) -> int | None:
    if reply.err == Err.NO_KEY:
        return 0  # a lost key restarts at 0: the final check counts what was lost
    if reply.err != Err.OK:
        return None
    return value_seq(key, reply.value)


def _account(count: Count, put: Reply | None, new: int, fig: IncrementFigures) -> None:
    if put is None:
        count.unknown += 1
        count.pending.add(new)
    elif put.ok:
        count.acked += 1
        count.last = new
        count.pending.clear()
        fig.writes.ok += 1
    else:
        fig.writes.wrong += 1


def seq_consistency_4(ctx: Context) -> Verdict:
    p, s = ctx.params, ctx.scale
    keys = list(_first_writes(ctx, "c4-", p.seq4_keys, "PUT counters"))
    counts = {k: Count() for k in keys}  # a counter never stored reads as 0 all the same
    plan, mine = schedule(p.seq4_rounds, s.seq_step, s.seq_max_down), list[Addr]()
    for r, change in enumerate(plan, 1):
        started = time.monotonic()
        what = change_nodes(ctx, change, mine)
        fig = increment_round(ctx, counts, f"round {r}/{len(plan)}")
        rest = p.seq4_wait - (time.monotonic() - started)
        ctx.report.wait(round(rest, 1), f"(the rest of a {p.seq4_wait:g} s round) after {what}")
        _record_increments(ctx, r, what, fig)
    finish(ctx, mine, p.seq4_wait)
    return _final_counts(ctx, counts)


def _record_increments(ctx: Context, r: int, what: str, fig: IncrementFigures) -> None:
    figures = {
        "change": what,
        "reads": fig.reads.figures(),
        "writes": fig.writes.figures(),
        "stale_reads": fig.stale_reads,
        "stale_reads_no_key": fig.stale_absent,
        "invented_reads": fig.invented_reads,
    }
    line = (
        f"{what}; {fig.writes.ok:,} increments acked, {fig.writes.timeouts:,} PUT t/o, "
        f"{fig.reads.timeouts:,} GET t/o, {fig.stale_reads:,} stale reads "
        f"({fig.stale_absent:,} NO_KEY), {fig.invented_reads:,} invented"
    )
    ctx.report.record(f"round {r}", figures, line)


def _final_counts(ctx: Context, counts: dict[bytes, Count]) -> Verdict:
    """Each counter must equal its acknowledged increments (plus any that timed out)."""
    finals = _final_values(ctx, list(counts))
    verdicts, lost_increments = Counter[str](), 0
    for key, value in finals.items():
        count = counts[key]
        if value is None:
            verdicts["unanswered"] += 1
        elif value == -1 or value > count.acked + count.unknown:
            verdicts["invented"] += 1
            ctx.timeline.violation(key, "invented")
        elif value < count.acked:
            verdicts["lost"] += 1
            lost_increments += count.acked - value
            ctx.timeline.violation(key, "lost increments")
        else:
            verdicts["right"] += 1
    return _increment_verdict(ctx, counts, verdicts, lost_increments)


def _final_values(ctx: Context, keys: list[bytes]) -> dict[bytes, int | None]:
    """The counter of every key: None if unanswered, -1 if not a counter we wrote."""
    finals: dict[bytes, int | None] = {}
    tally = Tally()

    async def read(client: AsyncClient, key: bytes) -> None:
        reply = await timed_request(client, tally, Command.GET, key)
        if reply is None:
            finals[key] = None
            return
        counter = _counter(key, reply)
        finals[key] = -1 if counter is None else counter

    with ctx.report.step(f"final: GET {len(keys):,} counters", total=len(keys)) as bar:
        run_async(pool(ctx.alive, keys, ctx.params.seq_clients, read, bar.advance))
    return finals


def _increment_verdict(
    ctx: Context,
    counts: dict[bytes, Count],
    verdicts: Counter[str],
    lost_increments: int,
) -> Verdict:
    acked = sum(c.acked for c in counts.values())
    unknown = sum(c.unknown for c in counts.values())
    violations = verdicts["lost"] + verdicts["invented"]
    answered = 100.0 * (len(counts) - verdicts["unanswered"]) / len(counts) if counts else 0.0
    figures = {
        "keys": len(counts),
        "right": verdicts["right"],
        "lost": verdicts["lost"],
        "invented": verdicts["invented"],
        "unanswered": verdicts["unanswered"],
        "increments_acked": acked,
        "increments_unknown": unknown,
        "increments_lost": lost_increments,
        "violations": violations,
    }
    line = (
        f"{len(counts):,} counters: {verdicts['right']:,} right, {verdicts['lost']:,} lost "
        f"increments ({lost_increments:,} of {acked:,} acked), {verdicts['invented']:,} invented, "
        f"{verdicts['unanswered']:,} unanswered"
    )
    ctx.report.record("final", figures, line)
    passed = violations == 0 and answered >= ANSWERED_PCT
    return Verdict(passed, f"{violations:,} violations of {len(counts):,} keys")


STAGES = [
    Stage("2.seq-consistency-3",
          "{seq_clients} clients PUT {seq3_keys} keys; {seq3_rounds} rounds: overwrite "
          "{seq3_overwrites}, suspend or resume {n_seq_step} nodes (≤ {n_seq_max_down} down), "
          "wait {seq3_wait} s, GET all",
          "0 violations (stale, missing, invented); ≥ 99 % of reads answered",
          seq_consistency_3),
    Stage("2.seq-consistency-4",
          "{seq4_keys} counters; {seq4_rounds} rounds: suspend or resume {n_seq_step} nodes, "
          "increment every counter (GET, PUT +1), ≥ {seq4_wait} s a round; GET all",
          "every acknowledged increment in the final value, none invented; ≥ 99 % answered",
          seq_consistency_4),
]  # fmt: skip

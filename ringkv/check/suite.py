"""`ringkv check`: the stages of EVALUATION.md against a live deployment, as a suite.

It is a client of the protocol only (PROTOCOL.md): it works against any
implementation, and learns pids with GET_PID to suspend nodes.

Part 1 runs against one node (`--local`), Part 2 against the nodes of a
server list, stage by stage in the evaluation's order. A stage that fails
does not stop the run; a stage that could not run at all (an error, not a
failed threshold) skips the stages that need its state. Whatever happens,
every node this run suspended is resumed before it exits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ringkv.check import part1, part2, seq
from ringkv.check.base import Context, Stage
from ringkv.check.load import ask_each, run_async
from ringkv.check.report import StageResult
from ringkv.client.client import Client, ClientError
from ringkv.report.timeline import recording
from ringkv.wire.codec import Command

STAGES: list[Stage] = [*part1.STAGES, *part2.STAGES, *seq.STAGES]


class SelectionError(ValueError):
    """--stages named a stage that does not exist."""


def select(names: list[str], parts: set[int]) -> list[Stage]:
    """The stages to run, in the evaluation's order, with the stages they depend on."""
    pool = [s for s in STAGES if s.part in parts]
    if not names:
        return pool
    wanted: set[str] = set()
    for name in names:
        found = [s.id for s in pool if name in (s.id, s.name)]
        if not found:
            known = ", ".join(s.id for s in pool)
            raise SelectionError(f"no stage {name!r} (stages: {known})")
        wanted.update(found)
    return [s for s in STAGES if s.id in _with_needs(wanted)]


def _with_needs(wanted: set[str]) -> set[str]:
    by_id = {s.id: s for s in STAGES}
    todo, closed = list(wanted), set()
    while todo:
        stage_id = todo.pop()
        if stage_id not in closed:
            closed.add(stage_id)
            todo.extend(by_id[stage_id].needs)
    return closed


@dataclass
class Run:
    ctx: Context
    stages: list[Stage]
    results: list[StageResult] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    began_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def passed(self) -> bool:
        return all(r.passed or r.skipped for r in self.results) and bool(self.results)


def run_check(run: Run) -> None:
    """Run every stage; always resume what was suspended, also on Ctrl-C."""
    broken: set[str] = set()
    gates: dict[int, str | None] = {}
    try:
        with recording(run.ctx.timeline):
            for stage in run.stages:
                if stage.part not in gates:
                    gates[stage.part] = preflight(run.ctx, stage.part)
                result = _run_one(run, stage, gates[stage.part], broken)
                if result.error or result.skipped:
                    broken.add(stage.id)
    except KeyboardInterrupt:
        _not_run(run, "interrupted")
        raise
    finally:
        resumed = run.ctx.control.resume_all()
        if resumed:
            run.ctx.report.note(f"resumed the {len(resumed)} node(s) this run had suspended")


def _not_run(run: Run, why: str) -> None:
    """List the stages an interruption left out, so the summary shows the whole plan."""
    done = {r.id for r in run.results}
    for stage in run.stages:
        if stage.id not in done:
            skipped = StageResult(stage.id, stage.title, stage.threshold, passed=False)
            skipped.skipped, skipped.summary = True, f"not run ({why})"
            run.results.append(skipped)


def _run_one(run: Run, stage: Stage, gate: str | None, broken: set[str]) -> StageResult:
    ctx, report = run.ctx, run.ctx.report
    title = stage.describe(ctx.params, ctx.scale if ctx.servers else None)
    report.begin(stage.id, title, stage.threshold)
    result = StageResult(stage.id, title, stage.threshold, passed=False)
    run.results.append(result)  # before it runs: an interrupted stage is reported too
    missing = [n for n in stage.needs if n in broken]
    started = time.monotonic()
    if gate is not None:
        result.error = gate
    elif missing:
        result.skipped = True
        result.summary = f"not run: {', '.join(missing)} did not run"
    else:
        with ctx.timeline.span(stage.id, title) as span:
            try:
                _execute(ctx, stage, result)
            finally:
                result.figures = report.figures
                result.seconds = time.monotonic() - started
                span.passed = None if result.skipped else result.passed
                report.end(result)
    return result


def _execute(ctx: Context, stage: Stage, result: StageResult) -> None:
    try:
        verdict = stage.run(ctx)
    except KeyboardInterrupt:
        result.error = "interrupted"
        raise
    except Exception as exc:  # a stage that breaks must not lose the rest of the run
        ctx.report.err.print_exception(max_frames=4)
        result.error = f"could not run: {type(exc).__name__}: {exc}"
        return
    result.passed = verdict.passed
    result.summary = verdict.summary


def preflight(ctx: Context, part: int) -> str | None:
    """Why a part cannot run at all (nothing answers), or None."""
    if part == 1:
        try:
            with Client(ctx.local) as client:
                client.is_alive()
        except ClientError:
            host, port = ctx.local
            return f"no node answers at {host}:{port} (start one, or give --local)"
        return None
    if not ctx.servers:
        return "no server list (give --servers)"
    answers = run_async(ask_each(ctx.servers, Command.GET_PID))
    if not any(answers.values()):
        return f"none of the {len(ctx.servers)} nodes of the server list answers"
    ctx.control.learn({a: r.pid if r is not None and r.ok else None for a, r in answers.items()})
    return None


def to_json(run: Run, options: dict[str, Any]) -> dict[str, Any]:
    ctx = run.ctx
    return {
        "tool": "ringkv check",
        "started": run.began_at,
        "seconds": round(run.seconds, 1),
        "options": options,
        "run_id": ctx.run_id,
        "local": f"{ctx.local[0]}:{ctx.local[1]}",
        "nodes": len(ctx.servers),
        "scale": ctx.scale.__dict__ if ctx.servers else None,
        "params": ctx.params.to_dict(),
        "passed": run.passed,
        "stages": [r.to_dict() for r in run.results],
    }

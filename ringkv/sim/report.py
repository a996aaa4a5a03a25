"""`ringkv sim --report DIR`: a simulated run drawn like a real one, in virtual seconds.

Each operation of the history is a request that finished at its response
(latency: response - invoke); one that never got an answer is drawn as a
time-out at its invoke, the one moment it is known to have existed. The
outages are the simulator's own record (paused, crashed, cut off); the
violations are those of the linearizability checker and the lost writes of
the final read, each at the moment of the operation that shows it.
"""

from __future__ import annotations

from ringkv.report.text import StageRow
from ringkv.report.timeline import Span, Timeline, Violation
from ringkv.sim.checker import Violation as Unlinearizable
from ringkv.sim.history import Op, show_bytes
from ringkv.sim.scenarios import ScenarioResult

VERDICTS = {True: "PASS", False: "FAIL", None: "-"}


def timeline_of(result: ScenarioResult) -> Timeline:
    timeline = Timeline(origin=0.0)
    for op in result.history:
        if op.response is None or op.err is None:
            timeline.samples.timed_out(op.invoke)
        else:
            timeline.samples.answered(op.response, op.response - op.invoke, op.err)
    timeline.faults = list(result.outages)
    start = 0.0
    for stage in result.stages:
        timeline.spans.append(Span(stage.name, stage.expect, start, stage.at, stage.passed))
        start = stage.at
    found = [
        *(_unlinearizable(v, "not linearizable") for v in result.violations),
        *(_unlinearizable(v, "not linearizable (R copies down)")
          for v in result.excused_violations),
        *((_moment(w.write), w.key, "lost write") for w in result.lost),
        *((_moment(w.write), w.key, "lost write (R copies down)") for w in result.excused),
    ]  # fmt: skip
    timeline.violations = [
        Violation(at, show_bytes(key), kind, _stage_at(timeline.spans, at))
        for at, key, kind in sorted(found, key=lambda f: f[0])
    ]
    timeline.violation_count = len(found)
    return timeline


def _moment(op: Op) -> float:
    return op.response if op.response is not None else op.invoke


def _unlinearizable(v: Unlinearizable, kind: str) -> tuple[float, bytes, str]:
    return _moment(v.op), v.key, kind


def _stage_at(spans: list[Span], at: float) -> str:
    return next((s.name for s in spans if s.end is not None and s.start <= at <= s.end), "")


def stage_rows(result: ScenarioResult) -> list[StageRow]:
    return [
        StageRow(s.name, s.name, s.expect, VERDICTS[s.passed], s.line().strip(), s.figures)
        for s in result.stages
    ]


def title_of(result: ScenarioResult) -> str:
    verdict = "ok" if result.ok else "FAILED: " + "; ".join(result.failures)
    return f"{result.replay_command()} ({result.virtual_seconds:,.0f} virtual s): {verdict}"

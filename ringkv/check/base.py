"""The parameters of `ringkv check`, the state stages share, and the stage type.

`Params()` holds the evaluation's own figures (EVALUATION.md); `QUICK` the
same stages shrunk for CI. Part 2 figures that the evaluation gives for 40
nodes (24 suspended, 4 at a time, 3 resumed, up to 12 down) are scaled to
the deployment's size by `Scale`, so that a 40-node deployment gets exactly
the evaluation's numbers.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ringkv.check.nodes import NodeControl
from ringkv.check.report import Reporter
from ringkv.client.client import ClientTimeout, Reply, describe_err
from ringkv.report.timeline import Timeline
from ringkv.wire import Addr

REFERENCE_NODES = 40  # the deployment size the evaluation's Part 2 figures are given for


@dataclass(frozen=True)
class Params:
    value_size: int = 500  # bytes, wherever the evaluation does not name a size
    # Part 1
    basic_sizes: tuple[int, ...] = (8, 32, 2048, 10_000)
    perf_clients: tuple[int, ...] = (1, 16, 64)
    perf_seconds: float = 60.0
    capacity_keys: int = 146_800
    # Part 2
    converge_wait: float = 10.0  # membership stage: how long views may take to agree
    basic2_sizes: tuple[int, ...] = (512, 1024)
    basic2_keys: int = 50  # keys per size
    crash_seconds: float = 80.0
    crash_writers: int = 32  # closed loops PUT→GET
    crash_wipers: int = 4  # closed loops REMOVE→WIPEOUT
    rfe_clients: tuple[int, ...] = (1, 16, 256, 1024, 2048)
    rfe_seconds: float = 60.0
    stage0_keys: int = 40_000
    stage0_clients: int = 64
    suspend_share: float = 0.6  # 24 of 40
    suspend_batch: int = 4
    suspend_gap: float = 2.0
    suspend_wait: float = 10.0
    stage2a_keys: int = 20_000
    resume_some: int = 3
    resume_wait: float = 60.0
    perf2_clients: tuple[int, ...] = (1, 16, 256, 512)
    resume_all_wait: float = 10.0
    seq_clients: int = 128
    seq_step: int = 3  # nodes suspended or resumed per round
    seq_max_down: int = 12
    seq3_keys: int = 40_000
    seq3_overwrites: int = 20_000
    seq3_rounds: int = 8
    seq3_wait: float = 45.0
    seq4_keys: int = 5_000
    seq4_rounds: int = 8
    seq4_wait: float = 15.0

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


QUICK = replace(
    Params(),
    perf_seconds=1.5,
    capacity_keys=3_000,
    basic2_keys=10,
    crash_seconds=5.0,
    crash_writers=8,
    crash_wipers=2,
    rfe_clients=(1, 16, 64),
    rfe_seconds=2.0,
    stage0_keys=2_000,
    stage0_clients=16,
    suspend_gap=1.0,
    stage2a_keys=1_000,
    resume_wait=10.0,
    perf2_clients=(1, 16, 64),
    seq_clients=32,
    seq3_keys=2_000,
    seq3_overwrites=1_000,
    seq3_rounds=4,
    seq3_wait=6.0,
    seq4_keys=500,
    seq4_rounds=4,
    seq4_wait=5.0,
)


@dataclass(frozen=True)
class Scale:
    """Part 2's node counts for a deployment of `nodes` (the evaluation's own at 40)."""

    nodes: int
    suspend: int
    suspend_batch: int
    resume_some: int
    seq_step: int
    seq_max_down: int

    @classmethod
    def of(cls, nodes: int, p: Params) -> Scale:
        def scaled(n: int) -> int:
            return max(1, round(n * nodes / REFERENCE_NODES))

        suspend = min(nodes - 1, max(1, round(p.suspend_share * nodes)))
        step = scaled(p.seq_step)
        return cls(
            nodes=nodes,
            suspend=suspend,
            suspend_batch=scaled(p.suspend_batch),
            resume_some=min(suspend, scaled(p.resume_some)),
            seq_step=step,
            seq_max_down=min(nodes - 1, max(step, scaled(p.seq_max_down))),
        )


@dataclass
class Context:
    """What the stages of one run share."""

    params: Params
    report: Reporter
    local: Addr
    servers: list[Addr]
    procs: int
    control: NodeControl = field(default_factory=NodeControl)
    rng: random.Random = field(default_factory=random.Random)
    run_id: str = ""  # part of every key, so runs never read each other's data
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def alive(self) -> list[Addr]:
        """The nodes this run has not suspended: the only usable front ends."""
        return [s for s in self.servers if s not in self.control.suspended]

    @property
    def timeline(self) -> Timeline:
        """The run's requests, faults, stages and violations (kept by the node control)."""
        return self.control.timeline

    @property
    def scale(self) -> Scale:
        return Scale.of(len(self.servers), self.params)

    def key(self, tag: str, i: int) -> bytes:
        return f"{self.run_id}{tag}{i}".encode()


@dataclass(frozen=True)
class Verdict:
    passed: bool
    summary: str


@dataclass(frozen=True)
class Stage:
    id: str  # "1.basic", "2.suspend-1"
    title: str
    threshold: str
    run: Callable[[Context], Verdict]
    needs: tuple[str, ...] = ()  # stages whose state this one reads

    def describe(self, params: Params, scale: Scale | None) -> str:
        """The title with the run's figures filled in ({stage0_keys}, {n_suspend}, …)."""
        values = {k: _shown(v) for k, v in params.__dict__.items()}
        if scale is not None:
            values |= {f"n_{k}": _shown(v) for k, v in scale.__dict__.items()}
        return self.title.format(**values)

    @property
    def part(self) -> int:
        return int(self.id[0])

    @property
    def name(self) -> str:
        return self.id.split(".", 1)[1]


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return "/".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


Answer = Reply | None  # None: no reply after every try


def ask(request: Callable[[], Reply]) -> Answer:
    try:
        return request()
    except ClientTimeout:
        return None


def show(answer: Answer) -> str:
    if answer is None:
        return "no reply (time-out after 3 tries)"
    return f"errCode {answer.err}"


class Checklist:
    """Exact-answer checks of the small stages, each printed as it is made."""

    def __init__(self, report: Reporter) -> None:
        self.report = report
        self.results: list[tuple[str, bool]] = []

    def check(self, what: str, ok: bool, detail: str) -> bool:
        self.results.append((what, ok))
        mark = "ok  " if ok else "FAIL"
        self.report.record(what, {"ok": ok, "detail": detail}, f"{mark} {detail}")
        return ok

    def code(self, what: str, answer: Answer, want: int) -> bool:
        ok = answer is not None and answer.err == want
        got = show(answer)
        detail = got if ok else f"{got}, want {describe_err(want)}"
        return self.check(what, ok, detail)

    def verdict(self) -> Verdict:
        failed = [what for what, ok in self.results if not ok]
        passed = len(self.results) - len(failed)
        summary = f"{passed}/{len(self.results)} checks right"
        if failed:
            summary += "; wrong: " + ", ".join(failed)
        return Verdict(not failed, summary)


# -- wording shared by the stages ------------------------------------------------------


def nodes(n: int) -> str:
    """'1 node', '3 nodes'."""
    return f"{n} node{'s' if n != 1 else ''}"


def counts_line(counts: dict[Addr, int | None], want: int) -> tuple[bool, str]:
    """Whether every node reports `want`, and how many nodes reported each count."""
    seen = Counter("no answer" if c is None else str(c) for c in counts.values())
    text = ", ".join(f"{count}: {n} node(s)" for count, n in sorted(seen.items()))
    return all(c == want for c in counts.values()), f"{text} (want {want} on all)"

"""What happened when during a check or a bench: requests, faults, stages and violations.

Every request a check makes is kept as (when it finished, how long it took,
its errCode), so throughput and latency can be drawn over time afterwards;
time-outs are kept with their moment too. Times are `time.perf_counter()`
readings, which on Linux are CLOCK_MONOTONIC: the same clock in the bench's
worker processes, so their samples line up with the parent's.

Requests reach the timeline without being passed down every call: a run sets
`RECORDING` (a context variable, so tasks and event loops started inside the
run inherit it) and `record_request` looks there. Outside a run it is None and
recording costs one lookup.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

TIMED_OUT = -1  # the errCode kept for a request with no answer after every try
OVERLOAD = 3  # errCode 3: the node asked the client to wait
MAX_VIOLATIONS = 10_000  # kept with their keys; beyond, only counted


@dataclass
class Samples:
    """Finished requests, column by column: moment, latency (NaN for a time-out), errCode."""

    at: array[float] = field(default_factory=lambda: array("d"))
    latency: array[float] = field(default_factory=lambda: array("d"))
    err: array[int] = field(default_factory=lambda: array("b"))

    def answered(self, at: float, latency: float, err: int) -> None:
        self.at.append(at)
        self.latency.append(latency)
        self.err.append(err)

    def timed_out(self, at: float) -> None:
        self.answered(at, math.nan, TIMED_OUT)

    def extend(self, other: Samples) -> None:
        self.at.extend(other.at)
        self.latency.extend(other.latency)
        self.err.extend(other.err)

    def latencies(self) -> list[float]:
        """The latencies of the answered requests."""
        return [x for x, err in zip(self.latency, self.err, strict=True) if err != TIMED_OUT]

    def __len__(self) -> int:
        return len(self.at)


@dataclass
class Fault:
    """A node out of service from `start` to `end` (None: never brought back)."""

    node: str
    kind: str  # "suspended" (SIGSTOP), "shutdown", "crash" or "cut off" (simulator)
    start: float
    end: float | None = None


@dataclass(frozen=True)
class Violation:
    at: float
    key: str
    kind: str  # "stale", "missing", "invented", …
    stage: str


@dataclass
class Span:
    """One stage of a check, or one bench run."""

    name: str
    title: str
    start: float
    end: float | None = None
    passed: bool | None = None  # None: not judged (a bench run, a skipped stage)


@dataclass(frozen=True)
class Bucket:
    """The requests that finished in [start, start + width) seconds of the run."""

    start: float
    answered: int
    timeouts: int
    overloaded: int  # answered errCode 3
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class Timeline:
    origin: float = field(default_factory=time.perf_counter)
    samples: Samples = field(default_factory=Samples)
    faults: list[Fault] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    violation_count: int = 0

    # -- recording -----------------------------------------------------------

    def fault_begins(self, node: str, kind: str) -> None:
        self.faults.append(Fault(node, kind, time.perf_counter()))

    def fault_ends(self, node: str) -> None:
        """Close the node's open fault (a resume); nothing if it has none."""
        for fault in reversed(self.faults):
            if fault.node == node and fault.end is None:
                fault.end = time.perf_counter()
                return

    def violation(self, key: bytes, kind: str) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_VIOLATIONS:
            stage = self.spans[-1].name if self.spans else ""
            shown = key.decode("utf-8", "backslashreplace")
            self.violations.append(Violation(time.perf_counter(), shown, kind, stage))

    @contextmanager
    def span(self, name: str, title: str) -> Iterator[Span]:
        """A stage's time on the timeline; the caller sets `passed` when it is judged."""
        span = Span(name, title, time.perf_counter())
        self.spans.append(span)
        try:
            yield span
        finally:
            span.end = time.perf_counter()

    # -- reading ---------------------------------------------------------------

    def seconds(self, moment: float) -> float:
        """A perf_counter reading as seconds since the run began."""
        return moment - self.origin

    @property
    def duration(self) -> float:
        ends = [self.seconds(s.end) for s in self.spans if s.end is not None]
        last = self.seconds(max(self.samples.at)) if len(self.samples) else 0.0
        return max([last, *ends])

    def buckets(self, width: float) -> list[Bucket]:
        """Throughput and latency per `width` seconds, from the start to the last sample."""
        count = max(1, math.ceil(self.duration / width))
        latencies: list[list[float]] = [[] for _ in range(count)]
        timeouts, overloaded = [0] * count, [0] * count
        s = self.samples
        for at, latency, err in zip(s.at, s.latency, s.err, strict=True):
            i = min(count - 1, max(0, int(self.seconds(at) / width)))
            if err == TIMED_OUT:
                timeouts[i] += 1
                continue
            latencies[i].append(latency)
            overloaded[i] += err == OVERLOAD
        return [
            Bucket(
                start=round(i * width, 3),
                answered=len(lat),
                timeouts=timeouts[i],
                overloaded=overloaded[i],
                p50_ms=_percentile_ms(lat, 0.50),
                p99_ms=_percentile_ms(lat, 0.99),
            )
            for i, lat in enumerate(latencies)
        ]

    def nodes_down(self) -> list[tuple[float, int]]:
        """(seconds, nodes out of service from then on), one step per change."""
        steps = [(self.seconds(f.start), 1) for f in self.faults]
        steps += [(self.seconds(f.end), -1) for f in self.faults if f.end is not None]
        down, out = 0, [(0.0, 0)]
        for moment, change in sorted(steps):
            down += change
            out.append((round(moment, 3), down))
        return out

    def to_dict(self, width: float) -> dict[str, Any]:
        """Everything a report draws, in seconds since the start of the run."""
        return {
            "bucket_seconds": width,
            "duration_s": round(self.duration, 3),
            "requests": len(self.samples),
            "buckets": [b.__dict__ for b in self.buckets(width)],
            "nodes_down": self.nodes_down(),
            "faults": [
                {
                    "node": f.node,
                    "kind": f.kind,
                    "start": round(self.seconds(f.start), 3),
                    "end": None if f.end is None else round(self.seconds(f.end), 3),
                }
                for f in self.faults
            ],
            "spans": [
                {
                    "name": s.name,
                    "title": s.title,
                    "start": round(self.seconds(s.start), 3),
                    "end": round(self.seconds(s.end if s.end is not None else s.start), 3),
                    "passed": s.passed,
                }
                for s in self.spans
            ],
            "violation_count": self.violation_count,
            "violations": [
                {"at": round(self.seconds(v.at), 3), "key": v.key, "kind": v.kind, "stage": v.stage}
                for v in self.violations
            ],
        }


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted data, in the data's unit."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _percentile_ms(values: list[float], q: float) -> float | None:
    """A bucket's percentile in milliseconds; None for a bucket with no answers."""
    return round(1000 * percentile(sorted(values), q), 3) if values else None


RECORDING: ContextVar[Timeline | None] = ContextVar("ringkv_check_timeline", default=None)


def record_request(started: float, err: int | None) -> None:
    """Keep one request of the running check (err None: it timed out)."""
    timeline = RECORDING.get()
    if timeline is None:
        return
    now = time.perf_counter()
    if err is None:
        timeline.samples.timed_out(now)
    else:
        timeline.samples.answered(now, now - started, err)


def record_samples(samples: Samples) -> None:
    """Keep requests made elsewhere (a bench's worker processes) in the running check."""
    timeline = RECORDING.get()
    if timeline is not None:
        timeline.samples.extend(samples)


@contextmanager
def recording(timeline: Timeline) -> Iterator[Timeline]:
    token = RECORDING.set(timeline)
    try:
        yield timeline
    finally:
        RECORDING.reset(token)

"""Scenarios: whole-cluster runs with faults, judged by the checker.

Each scenario is a function (params, seed) -> ScenarioResult. The result
keeps the history (byte-identical for the same scenario, params and seed),
per-stage figures with pass/fail, linearizability violations, acknowledged
writes lost at a final quiescent read, membership convergence times and
per-node traffic. `ScenarioResult.failures` is empty when the run passed;
`replay_command()` is the one line that repeats it.

- eval-part2: EVALUATION.md Part 2 at 40 nodes, key counts scaled down;
- random-faults: random pauses, crashes, restarts, joins, partitions and
  loss with clients running throughout, then heal and read everything back;
- scale: membership only, convergence after a failure and steady-state load.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ringkv.report.timeline import Fault as Outage
from ringkv.sim.checker import CheckResult, LostWrite, State, Violation, check, lost_writes
from ringkv.sim.clients import ClientGroup, RandomMix, Request, Values, run_batch
from ringkv.sim.cluster import (
    PAUSED,
    UP,
    Convergence,
    MembershipOnly,
    SimConfig,
    SimulationError,
    Simulator,
    Traffic,
)
from ringkv.sim.history import (
    GET,
    PUT,
    History,
    Op,
)
from ringkv.sim.network import NetworkConfig
from ringkv.sim.replicas import ReplicaTracker
from ringkv.wire.codec import Err


class ParamError(ValueError):
    """Parameters a scenario cannot run with."""


CONVERGENCE_GOAL = 10.0  # DESIGN.md: membership converges well within 10 s
FAULT_KINDS = ("pause", "crash", "join", "partition", "loss", "power")
DEFAULT_FAULTS = ("pause", "crash", "join", "partition", "loss")  # power needs --durable
POWER_OFF = (1.0, 3.0)  # seconds every node stays down after a power loss
_NO_EFFECT = frozenset({Err.NO_SPACE, Err.BAD_COMMAND, Err.BAD_KEY, Err.BAD_VALUE})


# ---------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Params:
    """Knobs of a scenario; None means the scenario's default."""

    nodes: int = 40
    loss: float | None = None
    keys: int | None = None
    duration: float | None = None
    clients: int | None = None
    rounds: int | None = None
    faults: tuple[str, ...] | None = None
    full_nodes: bool = False
    check: bool = True  # run the linearizability checker (off: histories only, faster)
    durable: bool = False  # nodes keep data directories (SimConfig.durable)

    def cli_args(self) -> str:
        """The command-line options that give these params."""
        args = [f"--nodes {self.nodes}"]
        if not self.check:
            args.append("--no-check")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("nodes", "check") or value is None or value is False:
                continue
            flag = "--" + f.name.replace("_", "-")
            if value is True:
                args.append(flag)
            elif isinstance(value, tuple):
                args.append(f"{flag} {','.join(value)}")
            else:
                args.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
        return " ".join(args)


# ---------------------------------------------------------------- results


@dataclass
class Stage:
    name: str
    figures: dict[str, Any]
    passed: bool | None = None  # None: figures only, nothing to pass
    expect: str = ""  # the pass criterion, in words
    at: float = 0.0  # virtual seconds when the stage was judged (its end)

    def line(self) -> str:
        verdict = {True: "pass", False: "FAIL", None: "-"}[self.passed]
        shown = ", ".join(f"{k} {_show(v)}" for k, v in self.figures.items())
        expect = f"  [expect {self.expect}]" if self.expect and self.passed is not None else ""
        return f"  {self.name:<24} {verdict:<5} {shown}{expect}"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class ScenarioResult:
    scenario: str
    params: Params
    seed: int
    history: History = field(default_factory=History)
    stages: list[Stage] = field(default_factory=list)
    convergence: list[Convergence] = field(default_factory=list)
    traffic: dict[str, float] = field(default_factory=dict)
    check: CheckResult | None = None
    violations: list[Violation] = field(default_factory=list)  # not excused
    excused_violations: list[Violation] = field(default_factory=list)
    lost: list[LostWrite] = field(default_factory=list)  # not excused
    excused: list[LostWrite] = field(default_factory=list)  # R copies were down at once
    exposed_keys: int = 0  # keys whose R or more copies were all down at once
    thin_keys: int = 0  # keys whose last running copy went down with fewer than R copies
    final_reads: int = 0
    virtual_seconds: float = 0.0
    real_seconds: float = 0.0
    error: str | None = None
    outages: list[Outage] = field(default_factory=list)  # nodes out of service, virtual time

    @property
    def failures(self) -> list[str]:
        out: list[str] = []
        if self.error:
            out.append(f"the simulation stopped: {self.error}")
        if self.violations:
            out.append(f"{len(self.violations)} linearizability violations")
        if self.check is not None and self.check.undecided:
            out.append(f"{len(self.check.undecided)} keys undecided (checker budget)")
        if self.lost:
            keys = len({lw.key for lw in self.lost})
            out.append(f"{len(self.lost)} acknowledged writes lost on {keys} keys")
        out += [f"stage {s.name}: expected {s.expect}" for s in self.stages if s.passed is False]
        return out

    @property
    def ok(self) -> bool:
        return not self.failures

    def replay_command(self) -> str:
        return f"ringkv sim {self.scenario} {self.params.cli_args()} --seed {self.seed}"

    def summary(self) -> dict[str, Any]:
        """Everything but the history, JSON-ready."""
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "params": {f.name: getattr(self.params, f.name) for f in fields(self.params)},
            "ok": self.ok,
            "failures": self.failures,
            "ops": _op_counts(self.history),
            "violations": len(self.violations),
            "violations_excused": len(self.excused_violations),
            "undecided_keys": 0 if self.check is None else len(self.check.undecided),
            "keys_lost": len({lw.key for lw in self.lost}),
            "writes_lost": len(self.lost),
            "writes_lost_excused": len(self.excused),
            "keys_exposed": self.exposed_keys,
            "keys_thin": self.thin_keys,
            "final_reads": self.final_reads,
            "membership": _convergence_summary(self.convergence),
            "traffic": {k: round(v, 3) for k, v in self.traffic.items()},
            "stages": [
                {"name": s.name, "passed": s.passed, "expect": s.expect, **s.figures}
                for s in self.stages
            ],
            "virtual_seconds": round(self.virtual_seconds, 3),
            "real_seconds": round(self.real_seconds, 3),
            "real_seconds_per_virtual_minute": round(self._speed(), 3),
            "replay": self.replay_command(),
        }

    def _speed(self) -> float:
        return 60 * self.real_seconds / self.virtual_seconds if self.virtual_seconds else 0.0

    def text(self) -> str:
        head = "ok" if self.ok else "FAILED"
        lines = [
            f"{self.replay_command()}: {head}",
            f"  virtual {self.virtual_seconds:.1f} s in {self.real_seconds:.1f} s real "
            f"({self._speed():.2f} s per virtual minute)",
        ]
        if self.stages:
            lines.append("stages:")
            lines += [s.line() for s in self.stages]
        lines += self._outcome_lines()
        return "\n".join(lines)

    def _outcome_lines(self) -> list[str]:
        counts = _op_counts(self.history)
        ops = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "total")
        lines = [f"operations: {counts['total']} ({ops})"]
        if self.check is not None:
            lines.append(
                f"violations: {len(self.violations)} "
                f"({len(self.excused_violations)} more excused: R copies down at once)"
            )
            lines += [f"  {v}" for v in self.violations[:3]]
            if self.check.undecided:
                lines.append(f"undecided keys: {len(self.check.undecided)}")
        if self.final_reads:
            lines.append(
                f"keys lost: {len({lw.key for lw in self.lost})} of {self.final_reads} read back "
                f"({len(self.lost)} writes; {len(self.excused)} more excused: R copies down)"
            )
            lines += [f"  {lw}" for lw in self.lost[:3]]
        if self.exposed_keys or self.thin_keys:
            lines.append(
                f"replicas: {self.exposed_keys} keys had R copies down at once; "
                f"{self.thin_keys} lost their last running copy with fewer than R copies"
            )
        m = _convergence_summary(self.convergence)
        lines.append(
            f"membership: {m['changes']} changes, converged median {_show(m['median'])} s, "
            f"max {_show(m['max'])} s, never {m['never']}, flaps {m['flaps']}"
        )
        if self.traffic:
            t = self.traffic
            lines.append(
                f"traffic: {t['datagrams']:.2f} datagrams/node/s (gossip {t['gossip']:.2f}, "
                f"data {t['data']:.2f}), {t['bytes']:.0f} B/node/s"
            )
        for failure in self.failures:
            lines.append(f"failure: {failure}")
        return lines


def _op_counts(history: History) -> dict[str, int]:
    counts = {"total": len(history), "put": 0, "get": 0, "remove": 0, "timeouts": 0}
    for op in history:
        counts[op.kind] += 1
        if op.response is None:
            counts["timeouts"] += 1
    return counts


def _convergence_summary(changes: Sequence[Convergence]) -> dict[str, Any]:
    took = [c.took for c in changes if c.took is not None]
    return {
        "changes": len(changes),
        "median": statistics.median(took) if took else None,
        "max": max(took) if took else None,
        "never": sum(1 for c in changes if c.took is None and not c.interrupted),
        "flaps": sum(1 for c in changes if c.fault == "flap"),
        "times": [c.to_dict() for c in changes],
    }


# ---------------------------------------------------------------- the read model


class Model:
    """What a read may return, from the replies to the writes so far.

    A write without a definite reply may or may not have happened, so it
    widens the set of acceptable states instead of replacing it. Used for the
    evaluation's per-stage figures; the checker judges the whole history.
    """

    def __init__(self) -> None:
        self.states: dict[bytes, list[State]] = {}

    def record(self, ops: Sequence[Op]) -> None:
        for op in ops:
            if op.kind == GET or op.err in _NO_EFFECT:
                continue
            new: State = (op.value, op.version) if op.kind == PUT else None  # type: ignore[assignment]
            definite = op.err == Err.OK or (op.kind != PUT and op.err == Err.NO_KEY)
            if definite:
                self.states[op.key] = [new]
            else:
                self.states.setdefault(op.key, [None]).append(new)

    def judge(self, op: Op) -> str:
        """ok, stale, missing, timeout or error for a GET."""
        if op.response is None:
            return "timeout"
        if op.err not in (Err.OK, Err.NO_KEY):
            return "error"
        got = (op.value, op.version) if op.err == Err.OK else None
        if got in self.states.get(op.key, [None]):
            return "ok"
        return "missing" if got is None else "stale"


def read_figures(model: Model, ops: Sequence[Op]) -> dict[str, Any]:
    counts = {"ok": 0, "stale": 0, "missing": 0, "timeout": 0, "error": 0}
    for op in ops:
        counts[model.judge(op)] += 1
    total = len(ops)
    pct = 100.0 * counts["ok"] / total if total else 100.0
    del counts["ok"]
    return {"keys": total, "recovered_pct": pct, **counts}


# ---------------------------------------------------------------- shared steps


class Run:
    """A scenario in progress: the simulator, the result being filled, helpers."""

    def __init__(self, name: str, params: Params, seed: int, config: SimConfig) -> None:
        self.result = ScenarioResult(name, params, seed)
        self.sim = Simulator(config)
        self.result.history = self.sim.history
        self.model = Model()
        self.values = Values(32)
        self.rng = self.sim.rng("scenario")
        full = config.node_factory is not MembershipOnly
        self.tracker = ReplicaTracker(self.sim, config.replicas) if full else None
        self._real_start = time.perf_counter()

    def stage(self, name: str, figures: dict[str, Any], passed: bool | None, expect: str) -> None:
        self.result.stages.append(Stage(name, figures, passed, expect, self.sim.now))

    def up(self) -> list[int]:
        return self.sim.nodes_in(UP)

    def batch(self, requests: list[Request], clients: int) -> list[Op]:
        """Closed-loop clients with random front ends among the running nodes."""
        ops = run_batch(self.sim, requests, clients, self.up())
        self.model.record(ops)
        return ops

    def put_all(self, keys: Sequence[bytes], clients: int) -> list[Op]:
        return self.batch([self.values.put(k) for k in keys], clients)

    def get_all(self, keys: Sequence[bytes], clients: int) -> list[Op]:
        return self.batch([Request(GET, k) for k in keys], clients)

    def counts_stage(self, name: str, expected: int) -> None:
        counts = self.sim.membership_counts()
        wrong = {i: c for i, c in counts.items() if c != expected}
        figures: dict[str, Any] = {"nodes": len(counts), "expected": expected, "wrong": len(wrong)}
        if wrong:
            figures["seen"] = sorted(set(wrong.values()))
        self.stage(name, figures, not wrong, f"membership count {expected} on every live node")

    def converge(self, limit: float = 30.0) -> bool:
        monitor = self.sim.monitor
        return self.sim.run_until(lambda: not monitor.pending, limit)

    def final_read(self, keys: Sequence[bytes], clients: int) -> None:
        """Heal is done: converge, let transfers settle, then read every key back."""
        self.converge()
        self.sim.run_for(5.0)
        ops = self.get_all(keys, clients)
        finals: dict[bytes, State] = {}
        for op in ops:
            if op.err == Err.OK:
                finals[op.key] = (op.value, op.version)  # type: ignore[assignment]
            elif op.err == Err.NO_KEY:
                finals[op.key] = None
        self.result.final_reads = len(finals)
        self._judge_losses(lost_writes(self.sim.history, finals))

    def _judge_losses(self, lost: list[LostWrite]) -> None:
        """Losses are excused when R copies of the key were down at once after the write."""
        for lw in lost:
            excused = self._copies_lost(lw.key, after=lw.write.invoke)
            (self.result.excused if excused else self.result.lost).append(lw)

    def finish(self, traffic: dict[str, float] | None = None) -> ScenarioResult:
        result = self.result
        if result.params.check:
            result.check = check(self.sim.history)
            self._judge_violations(result.check)
        if self.tracker is not None:
            result.exposed_keys = len(self.tracker.well_replicated_keys())
            result.thin_keys = len(self.tracker.thin_keys())
        result.convergence = list(self.sim.monitor.results)
        if traffic is not None:
            result.traffic = traffic
        elif not result.traffic:
            result.traffic = self.sim.traffic().rates(Traffic(0.0), len(self.sim))
        return self.stop()

    def excused(self, op: Op) -> bool:
        """Had the op's key R copies down at once before the op ended?

        Such a key may fairly be unreadable or stale from then on.
        """
        end = op.response if op.response is not None else math.inf
        return self._copies_lost(op.key, before=end)

    def _copies_lost(self, key: bytes, after: float = -math.inf, before: float = math.inf) -> bool:
        """Were R copies of the key down at once in [after, before]? Durable nodes lose
        nothing by going down: then no loss is excused."""
        if self.sim.config.durable or self.tracker is None:
            return False
        return self.tracker.excused(key, after, before)

    def _judge_violations(self, checked: CheckResult) -> None:
        for v in checked.violations:
            excused = self.excused(v.op)
            (self.result.excused_violations if excused else self.result.violations).append(v)

    def stop(self) -> ScenarioResult:
        self.result.outages = list(self.sim.outages)
        self.result.virtual_seconds = self.sim.now
        self.result.real_seconds = time.perf_counter() - self._real_start
        return self.result


def _guarded(run: Run, body: Callable[[Run], ScenarioResult]) -> ScenarioResult:
    """A node raising is a finding, not a crash of the tool: report it with the seed."""
    try:
        return body(run)
    except SimulationError as exc:
        run.result.error = str(exc)
        run.result.convergence = list(run.sim.monitor.results)
        return run.stop()


# ---------------------------------------------------------------- eval-part2


@dataclass(frozen=True)
class _Part2:
    keys: int
    clients: int
    rounds: int
    round_wait: float
    suspend: int  # 24 of 40
    cap: int  # at most 12 of 40 down in the rounds


def eval_part2(params: Params, seed: int) -> ScenarioResult:
    """EVALUATION.md Part 2 with `keys` keys (40,000 there; 4,000 by default)."""
    n = params.nodes
    if n < 8:
        raise ParamError("eval-part2 needs at least 8 nodes")
    shape = _Part2(
        keys=params.keys or 4000,
        clients=params.clients or 16,
        rounds=8 if params.rounds is None else params.rounds,
        round_wait=params.duration or 45.0,
        suspend=round(0.6 * n),
        cap=round(0.3 * n),
    )
    network = NetworkConfig(loss=params.loss or 0.0)
    run = Run("eval-part2", params, seed, SimConfig(n, seed, network))
    return _guarded(run, lambda r: _part2_body(r, shape))


def _part2_body(run: Run, shape: _Part2) -> ScenarioResult:
    sim, n, c = run.sim, len(run.sim), shape.clients
    sim.run(2.0)
    run.counts_stage("membership", n)
    keys0 = [b"k0-%06d" % i for i in range(shape.keys)]
    keys1 = [b"k1-%06d" % i for i in range(shape.keys // 2)]
    run.put_all(keys0, c)
    _read_stage(run, "store/load 0", keys0, c, 90.0)
    _suspend_stage(run, shape)
    run.put_all(keys1, c)
    _read_stage(run, "suspend 2a", keys1, c, 100.0)
    paused = sim.nodes_in(PAUSED)
    for i in sorted(run.rng.sample(paused, 3)):
        sim.resume(i)
    sim.run_for(60.0)
    run.counts_stage("suspend 2b membership", n - shape.suspend + 3)
    _read_stage(run, "suspend 2b", keys0, c, 23.75)
    _read_stage(run, "suspend 2c", keys1, c, 50.0)
    for i in sim.nodes_in(PAUSED):
        sim.resume(i)
    sim.run_for(10.0)
    run.counts_stage("resume all", n)
    _sequential_rounds(run, shape, keys0)
    for i in sim.nodes_in(PAUSED):
        sim.resume(i)
    run.final_read(keys0 + keys1, c)
    return run.finish()


def _read_stage(run: Run, name: str, keys: list[bytes], clients: int, goal: float) -> None:
    figures = read_figures(run.model, run.get_all(keys, clients))
    run.stage(name, figures, figures["recovered_pct"] >= goal, f">= {goal:g} % recovered")


def _suspend_stage(run: Run, shape: _Part2) -> None:
    """Suspend in batches of 4 every 2 s, wait 10 s, check counts, read everything."""
    sim = run.sim
    victims = run.rng.sample(range(len(sim)), shape.suspend)
    first = len(sim.monitor.results)
    for start in range(0, len(victims), 4):
        for i in sorted(victims[start : start + 4]):
            sim.pause(i)
        sim.run_for(2.0)
    sim.run_for(10.0)
    pauses = [c for c in sim.monitor.results[first:] if c.fault.startswith("pause")]
    last = pauses[-1] if pauses else None
    run.counts_stage("suspend 1 membership", len(sim) - shape.suspend)
    # Batches overlap, so the time that matters is from the last batch on.
    run.result.stages[-1].figures["after_last_batch_s"] = last.took if last else None
    keys0 = [b"k0-%06d" % i for i in range(shape.keys)]
    _read_stage(run, "suspend 1", keys0, shape.clients, 20.0)


def _sequential_rounds(run: Run, shape: _Part2, keys: list[bytes]) -> None:
    """Overwrite half the keys, suspend or resume 3 nodes, wait, read all: no stale reads."""
    sim = run.sim
    totals = {"stale": 0, "missing": 0, "timeout": 0, "excused": 0}
    for _ in range(shape.rounds):
        chosen = sorted(run.rng.sample(range(len(keys)), len(keys) // 2))
        run.put_all([keys[i] for i in chosen], shape.clients)
        _toggle_three(run, shape.cap)
        sim.run_for(shape.round_wait)
        for op in run.get_all(keys, shape.clients):
            verdict = run.model.judge(op)
            if verdict in ("stale", "missing") and run.excused(op):
                verdict = "excused"  # R copies of it were down at once (in suspend 1)
            if verdict in totals:
                totals[verdict] += 1
    passed = totals["stale"] == 0 and totals["missing"] == 0
    figures: dict[str, Any] = {"rounds": shape.rounds, **totals}
    run.stage("sequential consistency", figures, passed, "no stale or missing reads")


def _toggle_three(run: Run, cap: int) -> None:
    sim = run.sim
    paused = sim.nodes_in(PAUSED)
    suspend = not paused or (len(paused) + 3 <= cap and run.rng.random() < 0.5)
    if suspend:
        for i in sorted(run.rng.sample(sim.nodes_in(UP), 3)):
            sim.pause(i)
    else:
        for i in sorted(run.rng.sample(paused, min(3, len(paused)))):
            sim.resume(i)


# ---------------------------------------------------------------- random-faults


@dataclass
class _Chaos:
    """The random fault schedule's state."""

    kinds: tuple[str, ...]
    max_loss: float
    max_down: int
    end: float
    mean_gap: float = 4.0
    actions: list[str] = field(default_factory=list)


def random_faults(params: Params, seed: int) -> ScenarioResult:
    """Random faults at 5-200 nodes with clients throughout, then heal and read back.

    At most R-1 nodes are down (paused, crashed or cut off) at once, so with
    R replicas every acknowledged write must survive.
    """
    n = params.nodes
    if n < 3:
        raise ParamError("random-faults needs at least 3 nodes")
    kinds = params.faults or DEFAULT_FAULTS
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise ParamError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    if "power" in kinds and not params.durable:
        raise ParamError("the power fault (every node killed at once) needs --durable")
    rng = _seeded(seed, "schedule")
    max_loss = 0.05 if params.loss is None else params.loss
    joiner = (rng.randrange(n),) if "join" in kinds and rng.random() < 0.5 else ()
    network = NetworkConfig(
        loss=rng.uniform(0, max_loss) if "loss" in kinds else max_loss, duplicate=0.005
    )
    config = SimConfig(
        n, seed, network, clock_skew=0.002, start_down=joiner, durable=params.durable
    )
    run = Run("random-faults", params, seed, config)
    chaos = _Chaos(kinds, max_loss, min(config.replicas - 1, n - 2), 2.0 + (params.duration or 60))
    return _guarded(run, lambda r: _chaos_body(r, chaos, params))


def _seeded(seed: int, purpose: str) -> random.Random:
    return random.Random(f"{seed}/{purpose}")


def _chaos_body(run: Run, chaos: _Chaos, params: Params) -> ScenarioResult:
    sim = run.sim
    keys = [b"key-%04d" % i for i in range(params.keys or 100)]
    mix = RandomMix(sim, keys, run.values, chaos.end, sim.rng("mix"))
    group = ClientGroup(sim, mix, params.clients or 8, range(len(sim)), halt=False).start()
    fault_rng = sim.rng("faults")
    sim.at(2.0 + fault_rng.expovariate(1 / chaos.mean_gap), _chaos_step, run, chaos, fault_rng)
    sim.run(chaos.end)
    sim.run_until(lambda: group.done, 5.0)
    _heal_all(run)
    healed = run.converge()
    run.stage(
        "membership after heal",
        {"faults": len(chaos.actions), "converged": healed},
        healed,
        "exact views within 30 s of healing",
    )
    _convergence_stage(run)
    run.final_read(keys, 4)
    return run.finish()


def _chaos_step(run: Run, chaos: _Chaos, rng: random.Random) -> None:
    sim = run.sim
    if sim.now >= chaos.end:
        return
    options = _fault_options(sim, chaos)
    if options:
        name, act = options[rng.randrange(len(options))]
        chaos.actions.append(f"{sim.now:.3f} {name}")
        act(rng)
    sim.after(max(0.5, rng.expovariate(1 / chaos.mean_gap)), _chaos_step, run, chaos, rng)


Fault = tuple[str, Callable[[random.Random], None]]  # (name, does it with the rng)


def _fault_options(sim: Simulator, chaos: _Chaos) -> list[Fault]:
    """The faults possible now, each with the function that does it."""
    up, paused = sim.nodes_in(UP), sim.nodes_in(PAUSED)
    crashed = [i for i in range(len(sim)) if sim.state_of(i) not in (UP, PAUSED)]
    cut = [i for i in sim.network.cut_off() if sim.state_of(i) == UP]
    room = chaos.max_down - len(paused) - len(crashed) - len(cut)
    kinds = chaos.kinds
    options: list[Fault] = []

    def pick(nodes: list[int], act: Callable[[int], None]) -> Callable[[random.Random], None]:
        return lambda rng: act(nodes[rng.randrange(len(nodes))])

    if room > 0 and up and "pause" in kinds:
        options.append(("pause", pick(up, sim.pause)))
    if room > 0 and up and "crash" in kinds:
        options.append(("crash", pick(up, sim.crash)))
    if paused:
        options.append(("resume", pick(paused, sim.resume)))
    if crashed:
        options.append(("restart", pick(crashed, sim.restart)))
    if "partition" in kinds:
        if sim.network.partitioned:
            options.append(("heal", lambda rng: sim.heal()))
        elif room > 0 and len(up) > 2:
            options.append(("partition", lambda rng: sim.partition(_minority(rng, up, room))))
    if "loss" in kinds and chaos.max_loss > 0:
        options.append(("loss", lambda rng: sim.set_loss(rng.uniform(0, chaos.max_loss))))
    if "power" in kinds and not sim.network.partitioned:
        options.append(("power", lambda rng: _power_loss(sim, rng)))
    return options


def _power_loss(sim: Simulator, rng: random.Random) -> None:
    """Every node killed at once (paused ones too); all started again a little later."""
    for i in range(len(sim)):
        if sim.state_of(i) in (UP, PAUSED):
            sim.crash(i)
    sim.after(rng.uniform(*POWER_OFF), _power_back, sim)


def _power_back(sim: Simulator) -> None:
    for i in range(len(sim)):
        if sim.state_of(i) not in (UP, PAUSED):
            sim.restart(i)


def _minority(rng: random.Random, up: list[int], room: int) -> list[int]:
    return sorted(rng.sample(up, rng.randint(1, min(room, len(up) // 2))))


def _heal_all(run: Run) -> None:
    sim = run.sim
    sim.heal()
    sim.set_loss(0.0)
    for i in range(len(sim)):
        if sim.state_of(i) == PAUSED:
            sim.resume(i)
        elif sim.state_of(i) != UP:
            sim.restart(i)


def _convergence_stage(run: Run) -> None:
    """Changes that converged together are judged by the latest of them."""
    groups: dict[float, float] = {}
    never = 0
    for change in run.sim.monitor.results:
        if change.interrupted:
            continue
        if change.took is None:
            never += 1
            continue
        done_at = round(change.at + change.took, 9)
        groups[done_at] = min(groups.get(done_at, math.inf), change.took)
    worst = max(groups.values(), default=0.0)
    passed = never == 0 and worst <= CONVERGENCE_GOAL
    run.stage(
        "membership convergence",
        {"settled": len(groups), "worst_s": worst, "never": never},
        passed,
        f"exact views within {CONVERGENCE_GOAL:g} s of the last change",
    )


# ---------------------------------------------------------------- scale


def scale(params: Params, seed: int) -> ScenarioResult:
    """Membership at n nodes: steady-state load, then convergence after a pause and resume.

    Membership only by default (no store, no replication: affordable at
    1,000 nodes); --full-nodes (implied by --clients) runs whole nodes.
    """
    n = params.nodes
    if n < 3:
        raise ParamError("scale needs at least 3 nodes")
    full = params.full_nodes or bool(params.clients)
    factory = None if full else MembershipOnly
    network = NetworkConfig(loss=params.loss or 0.0)
    config = SimConfig(n, seed, network)
    if factory is not None:
        config = SimConfig(n, seed, network, node_factory=factory)
    run = Run("scale", params, seed, config)
    return _guarded(run, lambda r: _scale_body(r, params))


def _scale_body(run: Run, params: Params) -> ScenarioResult:
    sim = run.sim
    steady = params.duration or 10.0
    keys = [b"key-%04d" % i for i in range(params.keys or 100)]
    mix = RandomMix(sim, keys, run.values, math.inf, sim.rng("mix"))
    group = None
    if params.clients:
        front_ends = list(range(min(4, len(sim))))  # few front ends keep 1,000 nodes cheap
        group = ClientGroup(sim, mix, params.clients, front_ends, halt=False).start()
    sim.run(2.0)
    before = sim.traffic()
    sim.run(2.0 + steady)
    rates = sim.traffic().rates(before, len(sim))
    flaps = sim.monitor.flaps
    run.stage("steady state", {**rates, "flaps": flaps}, flaps == 0, "no false suspicion")
    victim = run.rng.randrange(len(sim))
    for what, act in (("failure", sim.pause), ("recovery", sim.resume)):
        act(victim)
        start = sim.now
        done = run.converge(30.0)
        took = sim.now - start if done else None
        ok = took is not None and took <= CONVERGENCE_GOAL
        run.stage(what, {"node": victim, "converged_s": took}, ok, "exact views within 10 s")
    if group is not None:
        mix.until = sim.now  # the clients go home: the final read is quiescent
        sim.run_until(lambda: group.done, 5.0)
        run.final_read(keys, 4)
    return run.finish(traffic=rates)


# ---------------------------------------------------------------- registry

Scenario = Callable[[Params, int], ScenarioResult]

SCENARIOS: dict[str, Scenario] = {
    "eval-part2": eval_part2,
    "random-faults": random_faults,
    "scale": scale,
}


def run_scenario(name: str, params: Params, seed: int) -> ScenarioResult:
    try:
        scenario = SCENARIOS[name]
    except KeyError:
        raise ParamError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
    return scenario(params, seed)

"""Linearizability checking of key-value histories, one key at a time.

Each key is a register whose state is absent or (value, version). Since
linearizability is compositional (P-compositionality), keys are checked
separately.

Per key the search is Lowe's just-in-time variant of Wing & Gong, run
breadth-first over time: events are swept in time order keeping every
reachable configuration (which open ops are already linearized, state),
memoised in a set. At an op's return each configuration must have linearized
it; those that have not try every sequence of open writes that ends with it.
Any linearization can be moved to such "as late as possible" points, so the
search is complete. Reductions that keep it complete:

- reads (and removes answering "not found") never change the state, so an
  open read is linearized as soon as the state matches it;
- after the last reply that read a value, that value acts like any other
  such "dead" value, so dead values share one state;
- ops without a definite reply (time-outs, errCode 3/4) may take effect at
  any time after invoke, or never. Those with the same effect are
  interchangeable, so a configuration just counts them per resulting state,
  forgets them once nothing left could observe them, and a configuration
  with fewer of them left is dropped when an otherwise equal one has more.

Slots of retired ops are reused, so masks stay as wide as the concurrency. A
budget on search steps per key turns a blow-up into "undecided", never into
a pass. Checking assumes nothing about values being unique; unique values
just make values die early, which keeps configurations few.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ringkv.sim.history import (
    GET,
    PUT,
    REMOVE,
    History,
    Op,
    show_bytes,
    show_value,
)
from ringkv.wire.codec import Err

OK = "ok"
VIOLATION = "violation"
UNDECIDED = "undecided"

DEFAULT_BUDGET = 1_000_000  # search steps per key: about a second or two of CPU

State = tuple[bytes, int] | None  # what a key holds: None is absent

# Replies that prove the request changed nothing (validation, out of space).
_NO_EFFECT = frozenset({Err.NO_SPACE, Err.BAD_COMMAND, Err.BAD_KEY, Err.BAD_VALUE})

_ABSENT = 0  # state id of "no value"; values get ids from 1
_ANY = -1  # need: any state
_PRESENT = -2  # need: any value
_SAME = -1  # out: state unchanged (a read)

_DEAD = -3  # state id of any value that no later op reads: all such values act alike


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Violation:
    """The first op of a key that no linearization explains, with its context."""

    key: bytes
    op: Op
    involved: tuple[Op, ...]  # a minimal set of ops showing it, `op` included
    reason: str

    def __str__(self) -> str:
        ops = "; ".join(f"({n}) {op}" for n, op in enumerate(self.involved, 1))
        return (
            f"key {show_bytes(self.key)}: {self.op} cannot be linearized: {self.reason}. "
            f"Operations involved: {ops}."
        )


@dataclass(frozen=True, slots=True)
class KeyResult:
    key: bytes
    status: str  # OK | VIOLATION | UNDECIDED
    violation: Violation | None
    steps: int


@dataclass(frozen=True, slots=True)
class CheckResult:
    keys: int
    ops: int
    violations: tuple[Violation, ...]
    undecided: tuple[bytes, ...]  # keys whose search went over budget
    steps: int

    @property
    def ok(self) -> bool:
        """True only when every key was proven linearizable."""
        return not self.violations and not self.undecided

    def __str__(self) -> str:
        lines = [
            f"{self.ops} ops on {self.keys} keys: {len(self.violations)} violations, "
            f"{len(self.undecided)} undecided keys"
        ]
        lines += [str(v) for v in self.violations]
        if self.undecided:
            shown = ", ".join(show_bytes(k) for k in self.undecided[:10])
            lines.append(f"undecided (search budget exceeded): {shown}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class LostWrite:
    """An acknowledged write whose effect a final quiescent read does not show."""

    key: bytes
    write: Op
    final: State

    def __str__(self) -> str:
        final = show_value(*self.final) if self.final else "absent"
        return f"key {show_bytes(self.key)}: {self.write} was lost: the final read saw {final}"


# ---------------------------------------------------------------- public API


def check(
    history: History | Iterable[Op],
    *,
    initial: Mapping[bytes, tuple[bytes, int]] | None = None,
    budget: int = DEFAULT_BUDGET,
) -> CheckResult:
    """Check every key of `history`; keys start absent unless given in `initial`."""
    groups = (history if isinstance(history, History) else History(history)).by_key()
    initial = initial or {}
    violations: list[Violation] = []
    undecided: list[bytes] = []
    steps = 0
    for key, ops in groups.items():
        result = check_key(key, ops, initial=initial.get(key), budget=budget)
        steps += result.steps
        if result.violation is not None:
            violations.append(result.violation)
        elif result.status == UNDECIDED:
            undecided.append(key)
    violations.sort(key=lambda v: (v.op.response, v.key))
    ops_count = sum(len(ops) for ops in groups.values())
    return CheckResult(len(groups), ops_count, tuple(violations), tuple(undecided), steps)


def check_key(
    key: bytes,
    ops: Sequence[Op],
    *,
    initial: tuple[bytes, int] | None = None,
    budget: int = DEFAULT_BUDGET,
) -> KeyResult:
    """Decide whether the ops of one key are linearizable."""
    if any(op.key != key for op in ops):
        raise ValueError("check_key was given ops of another key")
    mops, init = _model(ops, initial, frozenset(), math.inf)
    outcome = _sweep(mops, init, budget)
    if outcome.failed is None:
        return KeyResult(key, outcome.status, None, outcome.steps)
    violation = _explain(key, ops, initial, outcome.failed, budget)
    return KeyResult(key, VIOLATION, violation, outcome.steps)


def lost_writes(
    history: History | Iterable[Op], final_reads: Mapping[bytes, State]
) -> list[LostWrite]:
    """Acknowledged writes that a final quiescent read shows no trace of.

    `final_reads` maps each key read at the end to what was read. A write is
    lost when none of the writes that could have produced the final state
    could have come after it (the write itself included).
    """
    groups = (history if isinstance(history, History) else History(history)).by_key()
    lost: list[LostWrite] = []
    for key in sorted(final_reads):
        final = final_reads[key]
        ops = groups.get(key, [])
        latest = max((_latest_time(op) for op in ops if _produces(op, final)), default=-math.inf)
        lost += [LostWrite(key, op, final) for op in ops if _acked_write(op) and latest < op.invoke]
    return lost


def _acked_write(op: Op) -> bool:
    return (op.kind == PUT and op.err == Err.OK) or (
        op.kind == REMOVE and op.err in (Err.OK, Err.NO_KEY)
    )


def _produces(op: Op, state: State) -> bool:
    """Could `op` have left the key in `state`?"""
    if op.err in _NO_EFFECT:
        return False
    if state is None:
        return op.kind == REMOVE
    return op.kind == PUT and (op.value, op.version) == state


def _latest_time(op: Op) -> float:
    """Latest time the op may have taken effect."""
    return math.inf if op.response is None else op.response


# ---------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class _MOp:
    """An op as the register model sees it."""

    index: int  # position in the key's op list
    need: int  # state required before: a state id, _ANY or _PRESENT
    out: int  # state after: a state id, or _SAME for reads
    invoke: float
    end: float  # reply time (inf for optional ops)
    optional: bool  # no definite reply: may take effect at any time after invoke, or never


class _StateIds:
    """Small integers for (value, version) pairs, so configurations hash fast."""

    def __init__(self) -> None:
        self._ids: dict[tuple[bytes, int], int] = {}

    def get(self, value: bytes | None, version: int) -> int:
        assert value is not None
        return self._ids.setdefault((value, version), len(self._ids) + 1)


def _is_definite(op: Op) -> bool:
    """Does the reply say exactly what the op did?"""
    if op.kind == PUT:
        return op.err == Err.OK
    return op.err in (Err.OK, Err.NO_KEY)


def _classify(op: Op, ids: _StateIds, weak: bool) -> tuple[int, int, bool] | None:
    """(need, out, definite) for an op; None when it can tell nothing.

    `weak` forgets the reply, as if it had never arrived.
    """
    definite = _is_definite(op) and not weak
    if op.kind == GET:
        if not definite:
            return None  # a read without a reply constrains nothing
        need = ids.get(op.value, op.version) if op.err == Err.OK else _ABSENT
        return need, _SAME, True
    if op.err in _NO_EFFECT:
        return None
    if op.kind == PUT:
        return _ANY, ids.get(op.value, op.version), definite
    if not definite:
        return _ANY, _ABSENT, False
    if op.err == Err.OK:
        return _PRESENT, _ABSENT, True
    return _ABSENT, _SAME, True


def _model(
    ops: Sequence[Op], initial: tuple[bytes, int] | None, weak: frozenset[int], horizon: float
) -> tuple[list[_MOp], int]:
    """Model ops for the ops invoked by `horizon`, and the initial state id."""
    ids = _StateIds()
    init = _ABSENT if initial is None else ids.get(*initial)
    mops: list[_MOp] = []
    for i, op in enumerate(ops):
        if op.invoke > horizon:
            continue
        kind = _classify(op, ids, i in weak)
        if kind is not None:
            need, out, definite = kind
            end = op.response if definite and op.response is not None else math.inf
            mops.append(_MOp(i, need, out, op.invoke, end, not definite))
    return mops, init


# ---------------------------------------------------------------- search

# _Event phases, in their order at equal times: overlap wins, then clean-ups.
_INVOKE, _RETURN, _DEATH, _RETIRE = 0, 1, 2, 3

_Event = tuple[float, int, int]  # (time, phase, op number or state id)


def _events(mops: list[_MOp], init: int) -> list[_Event]:
    """The sweep's events, in time order.

    Besides invokes and returns: a value *dies* after the last reply that
    read it (from then on all dead values act alike), and a class of optional
    writes is *retired* after the last reply its effect could help (a read
    of absence for removes, a remove answering ok for puts of dead values).
    """
    last_need: dict[int, float] = {}
    last_present = -math.inf
    for m in mops:
        if m.optional:
            continue
        if m.need >= 0:
            last_need[m.need] = max(last_need.get(m.need, -math.inf), m.end)
        elif m.need == _PRESENT:
            last_present = max(last_present, m.end)
    values = {init} | {m.out for m in mops if m.out > 0} | set(last_need)
    events = [(last_need.get(s, -math.inf), _DEATH, s) for s in sorted(values) if s > 0]
    events += [
        (last_need.get(_ABSENT, -math.inf), _RETIRE, _ABSENT),
        (last_present, _RETIRE, _DEAD),
    ]
    for n, m in enumerate(mops):
        useful = last_need.get(m.out, -math.inf)
        if m.out != _ABSENT:
            useful = max(useful, last_present)
        if m.optional and useful < m.invoke:
            continue  # nothing it could explain comes after it
        events.append((m.invoke, _INVOKE, n))
        if not m.optional:
            events.append((m.end, _RETURN, n))
    events.sort()
    return events


class _OverBudget(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: str
    failed: int | None  # index (in the key's ops) of the first op that cannot be linearized
    steps: int


def _sweep(mops: list[_MOp], init: int, budget: int) -> _Outcome:
    frontier = _Frontier(init, budget)
    try:
        for _, phase, x in _events(mops, init):
            if phase == _INVOKE:
                frontier.open(x, mops[x])
            elif phase == _RETURN:
                if not frontier.require(x):
                    return _Outcome(VIOLATION, mops[x].index, frontier.steps)
                frontier.close(x)
            elif phase == _DEATH:
                frontier.kill(x)
            else:
                frontier.retire(x)
    except _OverBudget:
        return _Outcome(UNDECIDED, None, frontier.steps)
    return _Outcome(OK, None, frontier.steps)


def _allows(need: int, state: int) -> bool:
    return need == _ANY or need == state or (need == _PRESENT and state != _ABSENT)


# Optional writes with the same effect are interchangeable, so a configuration
# counts them per resulting state instead of tracking each one: (state, count)
# pairs, sorted.
_Tokens = tuple[tuple[int, int], ...]
_Config = tuple[int, int, _Tokens]  # (mask of linearized open ops, state id, tokens)


def _add(tokens: _Tokens, state: int, count: int = 1) -> _Tokens:
    counts = dict(tokens)
    counts[state] = counts.get(state, 0) + count
    return tuple(sorted(counts.items()))


def _take(tokens: _Tokens, state: int) -> _Tokens:
    return tuple((s, c - (s == state)) for s, c in tokens if s != state or c > 1)


def _drop(tokens: _Tokens, state: int) -> _Tokens:
    return tuple(pair for pair in tokens if pair[0] != state)


def _covers(big: _Tokens, small: _Tokens) -> bool:
    counts = dict(big)
    return all(counts.get(s, 0) >= c for s, c in small)


class _Frontier:
    """Every reachable configuration at the current time of the sweep."""

    def __init__(self, init: int, budget: int) -> None:
        self.configs: set[_Config] = {(0, init, ())}
        self.steps = 0
        self._budget = budget
        self._open: dict[int, tuple[int, _MOp]] = {}  # op number -> (slot bit, op)
        self._free: list[int] = []
        self._next_slot = 0
        self._writes: dict[int, tuple[int, int]] = {}  # slot bit -> (need, out)
        self._reads_at: dict[int, int] = {}  # state id -> bits of open reads needing it
        self._dead: set[int] = set()
        self._retired: set[int] = set()  # token classes no longer worth using

    def _spend(self, steps: int) -> None:
        self.steps += steps
        if self.steps > self._budget:
            raise _OverBudget

    def _alloc(self) -> int:
        """A free slot bit; reusing slots keeps masks as small as the concurrency."""
        if self._free:
            return self._free.pop()
        self._next_slot += 1
        return 1 << (self._next_slot - 1)

    def _alive(self, state: int) -> int:
        return _DEAD if state in self._dead else state

    def open(self, n: int, m: _MOp) -> None:
        self._spend(len(self.configs))
        if m.optional:
            cls = self._alive(m.out)
            if cls not in self._retired:
                self.configs = {(mask, st, _add(tok, cls)) for mask, st, tok in self.configs}
            return
        bit = self._alloc()
        self._open[n] = (bit, m)
        if m.out != _SAME:
            self._writes[bit] = (m.need, self._alive(m.out))
            return
        self._reads_at[m.need] = self._reads_at.get(m.need, 0) | bit
        self.configs = {
            (mask | bit if st == m.need else mask, st, tok) for mask, st, tok in self.configs
        }

    def close(self, n: int) -> None:
        """Retire op n: from now on its slot means nothing."""
        bit, m = self._open.pop(n)
        if m.out == _SAME:
            self._reads_at[m.need] &= ~bit
        else:
            del self._writes[bit]
        self._free.append(bit)
        self._spend(len(self.configs))
        self.configs = {(mask & ~bit, st, tok) for mask, st, tok in self.configs}

    def kill(self, value: int) -> None:
        """No op left can read `value`: it becomes one more dead value."""
        self._dead.add(value)
        for bit, (need, out) in self._writes.items():
            if out == value:
                self._writes[bit] = (need, _DEAD)
        self._spend(len(self.configs))
        self.configs = {
            (mask, _DEAD if st == value else st, self._merge(tok, value))
            for mask, st, tok in self.configs
        }
        self._prune()

    def _merge(self, tokens: _Tokens, value: int) -> _Tokens:
        count = dict(tokens).get(value, 0)
        if not count:
            return tokens
        tokens = _drop(tokens, value)
        return tokens if _DEAD in self._retired else _add(tokens, _DEAD, count)

    def retire(self, cls: int) -> None:
        """Optional writes of this class can no longer help: forget them."""
        self._retired.add(cls)
        self._spend(len(self.configs))
        self.configs = {(mask, st, _drop(tok, cls)) for mask, st, tok in self.configs}
        self._prune()

    def require(self, n: int) -> bool:
        """Keep the configurations in which op n has taken effect by now."""
        bit = self._open[n][0]
        done = {c for c in self.configs if c[0] & bit}
        todo = deque(c for c in self.configs if not c[0] & bit)
        seen: dict[tuple[int, int], list[_Tokens]] = {}
        for mask, st, tok in todo:
            seen.setdefault((mask, st), []).append(tok)
        while todo:  # breadth first: configurations with more tokens left come first
            for after in self._successors(*todo.popleft()):
                mask, st, tok = after
                known = seen.setdefault((mask, st), [])
                if any(_covers(k, tok) for k in known):
                    continue  # an equal or better configuration is already queued
                known[:] = [k for k in known if not _covers(tok, k)]
                known.append(tok)
                self._spend(1)
                (done.add if mask & bit else todo.append)(after)
        self.configs = done
        self._prune()
        return bool(done)

    def _successors(self, mask: int, state: int, tokens: _Tokens) -> list[_Config]:
        """Configurations one write later (reads that then match come for free)."""
        found = []
        for wbit, (need, out) in self._writes.items():
            if not mask & wbit and _allows(need, state):
                found.append((mask | wbit | self._reads_at.get(out, 0), out, tokens))
        for out, _ in tokens:
            if out != state:  # same state again would gain nothing
                found.append((mask | self._reads_at.get(out, 0), out, _take(tokens, out)))
        return found

    def _prune(self) -> None:
        """Drop configurations that another with more optional writes left dominates."""
        groups: dict[tuple[int, int], list[_Tokens]] = {}
        for mask, st, tok in self.configs:
            groups.setdefault((mask, st), []).append(tok)
        if len(groups) == len(self.configs):
            return
        self._spend(len(self.configs))
        self.configs = {
            (mask, st, tok) for (mask, st), toks in groups.items() for tok in _maximal(toks)
        }


def _maximal(tokens: list[_Tokens]) -> list[_Tokens]:
    """The token counts that no other one covers."""
    kept: list[_Tokens] = []
    for tok in sorted(tokens, key=lambda t: sum(c for _, c in t), reverse=True):
        if not any(_covers(k, tok) for k in kept):
            kept.append(tok)
    return kept


# ---------------------------------------------------------------- explaining


def _explain(
    key: bytes, ops: Sequence[Op], initial: tuple[bytes, int] | None, failed: int, budget: int
) -> Violation:
    necessary = _minimize(ops, initial, failed, budget)
    chosen = {failed, *necessary, *_candidate_writes(ops, failed)}
    for i in [failed, *necessary]:
        chosen.update(_sources(ops, i))
    involved = tuple(ops[i] for i in sorted(chosen, key=lambda i: (ops[i].invoke, i)))
    return Violation(key, ops[failed], involved, _reason(ops, initial, failed, necessary))


def _minimize(
    ops: Sequence[Op], initial: tuple[bytes, int] | None, failed: int, budget: int
) -> list[int]:
    """Ops whose replies are needed for op `failed` to stay unexplainable.

    Forgetting a reply only makes a history easier to linearize, so blocks
    of replies are forgotten while the failure remains, halving blocks that
    are needed (a greedy, 1-minimal result in O(k log n) checks).
    """
    horizon = ops[failed].response
    assert horizon is not None
    weak: set[int] = set()

    def still_fails(extra: list[int]) -> bool:
        mops, init = _model(ops, initial, frozenset(weak.union(extra)), horizon)
        return _sweep(mops, init, budget).failed == failed

    def needed(block: list[int]) -> list[int]:
        if not block or still_fails(block):
            weak.update(block)
            return []
        if len(block) == 1:
            return block
        half = len(block) // 2
        return needed(block[:half]) + needed(block[half:])

    candidates = [
        i for i, op in enumerate(ops) if i != failed and op.invoke <= horizon and _is_definite(op)
    ]
    return needed(candidates)


def _observed(op: Op) -> State:
    """The state a read-like op (get, remove answering 'not found') saw."""
    if op.kind == GET and op.err == Err.OK:
        assert op.value is not None
        return op.value, op.version
    return None


def _reads_state(op: Op) -> bool:
    if op.kind == GET:
        return op.err in (Err.OK, Err.NO_KEY)
    return op.kind == REMOVE and op.err == Err.NO_KEY


def _is_write(op: Op) -> bool:
    """Could the op change the state? (remove 'not found' leaves it absent)"""
    if op.kind == GET or op.err in _NO_EFFECT:
        return False
    return not (op.kind == REMOVE and op.err == Err.NO_KEY)


def _candidate_writes(ops: Sequence[Op], target: int) -> list[int]:
    """Writes op `target` could have seen: not surely overwritten before it began.

    Writes without a definite reply are listed only when they could explain it.
    """
    o = ops[target]
    assert o.response is not None
    acked_before = [
        op.invoke for op in ops if _is_write(op) and _is_definite(op) and _ends_before(op, o.invoke)
    ]
    cutoff = max(acked_before, default=-math.inf)
    want = _observed(o) if _reads_state(o) else ("present",)
    found: list[int] = []
    for i, op in enumerate(ops):
        if i == target or not _is_write(op) or op.invoke > o.response:
            continue
        if _is_definite(op):
            if not _ends_before(op, cutoff):
                found.append(i)
        elif _write_gives(op, want):
            found.append(i)
    return found


def _ends_before(op: Op, t: float) -> bool:
    return op.response is not None and op.response < t


def _write_gives(op: Op, want: object) -> bool:
    """Does write `op` set the state `want` (('present',) matches any value)?"""
    if op.kind == REMOVE:
        return want is None
    return want == ("present",) or want == (op.value, op.version)


def _sources(ops: Sequence[Op], reader: int) -> list[int]:
    """The last two writes, begun before the read ended, of the state it saw."""
    o = ops[reader]
    if not _reads_state(o) or o.response is None:
        return []
    want = _observed(o)
    found = [
        i
        for i, op in enumerate(ops)
        if _is_write(op) and op.invoke <= o.response and _write_gives(op, want)
    ]
    return found[-2:]


def _reason(
    ops: Sequence[Op], initial: tuple[bytes, int] | None, failed: int, necessary: list[int]
) -> str:
    """One sentence on why op `failed` is unexplainable, the most specific that fits."""
    o = ops[failed]
    candidates = [ops[i] for i in _candidate_writes(ops, failed)]
    if not _reads_state(o):
        if not any(_write_gives(op, ("present",)) for op in candidates):
            return "it removed the key, but the key was surely absent by then"
    elif _observed(o) is None:
        if not any(op.kind == REMOVE for op in candidates) and any(
            _is_definite(op) and _ends_before(op, o.invoke) for op in candidates
        ):
            return (
                "it found the key absent, but a write was acknowledged before it began "
                "and no remove could have come in between"
            )
    else:
        value_reason = _value_reason(ops, initial, o, candidates)
        if value_reason:
            return value_reason
    return _back_in_time(ops, failed, necessary)


def _value_reason(
    ops: Sequence[Op], initial: tuple[bytes, int] | None, o: Op, candidates: list[Op]
) -> str | None:
    seen = _observed(o)
    assert seen is not None and o.response is not None
    shown = show_value(*seen)
    writes = [op for op in ops if _is_write(op) and _write_gives(op, seen)]
    if seen == initial or any(_write_gives(op, seen) for op in candidates):
        return None
    if not writes:
        return f"it returned {shown}, which was never written to this key"
    if all(op.invoke > o.response for op in writes):
        return f"it returned {shown} before any write of it was sent"
    return (
        f"it returned {shown}, but every write of it had been overwritten or removed by an "
        "acknowledged write that ended before this read began (a stale read, or a write "
        "applied twice)"
    )


def _back_in_time(ops: Sequence[Op], failed: int, necessary: list[int]) -> str:
    o = ops[failed]
    seen = _observed(o) if _reads_state(o) else ("present",)
    for i in necessary:
        r = ops[i]
        if _reads_state(r) and _ends_before(r, o.invoke) and _observed(r) != seen:
            return (
                f"the earlier `{r}` had already seen a state that no order of the writes "
                "lets this op see afterwards (a read going back in time)"
            )
    return "no order of these operations that respects real time explains its result"

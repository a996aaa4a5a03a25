"""Tests of the history format and the linearizability checker."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ringkv.sim.checker import (
    OK,
    UNDECIDED,
    VIOLATION,
    CheckResult,
    check,
    check_key,
    lost_writes,
)
from ringkv.sim.history import History, Op

K = b"k"
T = float | None


def put(c: int, v: bytes, inv: float, resp: T, err: int = 0, key: bytes = K, ver: int = 0) -> Op:
    return Op(c, "put", key, v, ver, inv, resp, None if resp is None else err)


def get(c: int, v: bytes | None, inv: float, resp: T, key: bytes = K, ver: int = 0) -> Op:
    err = None if resp is None else (0 if v is not None else 1)
    return Op(c, "get", key, v, ver, inv, resp, err)


def rm(c: int, err: int | None, inv: float, resp: T, key: bytes = K) -> Op:
    return Op(c, "remove", key, None, 0, inv, resp, err)


def only_violation(result: CheckResult) -> tuple[bytes, Op, tuple[Op, ...]]:
    assert not result.ok
    assert len(result.violations) == 1, str(result)
    v = result.violations[0]
    return v.key, v.op, v.involved


# ------------------------------------------------------------ linearizable

LINEARIZABLE = {
    "empty": [],
    "sequential": [
        get(1, None, 0, 1),
        put(1, b"a", 2, 3),
        get(2, b"a", 4, 5),
        put(2, b"b", 6, 7, ver=3),
        get(1, b"b", 8, 9, ver=3),
    ],
    "overlapping writes, reads see either order": [
        put(1, b"a", 0, 10),
        put(2, b"b", 1, 9),
        get(3, b"b", 2, 3),
        get(3, b"a", 4, 5),
        get(4, b"a", 11, 12),
    ],
    "read concurrent with write sees old": [
        put(1, b"a", 0, 1),
        put(2, b"b", 2, 6),
        get(3, b"a", 3, 4),
        get(3, b"b", 7, 8),
    ],
    "timed-out write seen": [
        put(1, b"a", 0, 1),
        put(2, b"b", 2, None),
        get(3, b"b", 50, 51),
        get(3, b"b", 52, 53),
    ],
    "timed-out write never seen": [put(1, b"a", 0, 1), put(2, b"b", 2, None), get(3, b"a", 50, 51)],
    "timed-out write seen late": [
        put(1, b"a", 0, 1),
        put(2, b"b", 2, None),
        get(3, b"a", 50, 51),
        get(3, b"b", 52, 53),
    ],
    "overload and internal error are unknown outcomes": [
        put(1, b"a", 0, 1, err=3),
        put(1, b"b", 2, 3, err=4),
        get(2, b"a", 4, 5),
    ],
    "refused write has no effect": [
        put(1, b"a", 0, 1),
        put(1, b"b", 2, 3, err=2),
        get(2, b"a", 4, 5),
    ],
    "remove semantics": [
        rm(1, 1, 0, 1),
        put(1, b"a", 2, 3),
        rm(2, 0, 4, 5),
        get(1, None, 6, 7),
        rm(1, 1, 8, 9),
    ],
    "concurrent removes, one wins": [put(1, b"a", 0, 1), rm(2, 0, 2, 5), rm(3, 1, 3, 6)],
    "timed-out remove explains absence": [
        put(1, b"a", 0, 1),
        rm(2, None, 2, None),
        get(3, None, 9, 10),
    ],
    "equal times overlap": [put(1, b"a", 0, 1), put(2, b"b", 1, 2), get(3, b"a", 2, 3)],
    "same value written twice": [
        put(1, b"a", 0, 1),
        put(1, b"b", 2, 3),
        put(1, b"a", 4, 5),
        get(2, b"a", 6, 7),
    ],
}


@pytest.mark.parametrize("ops", LINEARIZABLE.values(), ids=list(LINEARIZABLE))
def test_linearizable_histories_pass(ops: list[Op]) -> None:
    result = check(ops)
    assert result.ok, str(result)
    assert result.violations == () and result.undecided == ()


def test_each_timed_out_write_takes_effect_at_most_once() -> None:
    twice = [
        put(1, b"a", 0, None),
        put(2, b"a", 0, None),
        put(3, b"b", 1, 2),
        get(4, b"a", 3, 4),
        put(3, b"c", 5, 6),
        get(4, b"a", 7, 8),
    ]
    assert check(twice).ok
    _, op, involved = only_violation(check(twice[1:]))
    assert op == twice[-1] and twice[1] in involved


def test_timed_out_write_can_explain_a_late_remove() -> None:
    ops = [put(1, b"a", 0, None), get(2, None, 1, 2), rm(2, 0, 50, 51)]
    assert check(ops).ok
    _, op, _ = only_violation(check([*ops, rm(2, 0, 52, 53)]))
    assert op.invoke == 52


def test_timed_out_removes_are_counted() -> None:
    ops = [put(1, b"a", 0, 1), rm(2, None, 2, None), get(3, None, 3, 4), put(1, b"b", 5, 6)]
    assert check([*ops, get(3, None, 7, 8)]).violations[0].op.invoke == 7
    assert check([*ops, rm(4, None, 2, None), get(3, None, 7, 8)]).ok


def test_initial_state() -> None:
    ops = [get(1, b"init", 0, 1, ver=7), rm(1, 0, 2, 3)]
    assert check(ops, initial={K: (b"init", 7)}).ok
    assert not check(ops).ok


# ------------------------------------------------------------ violations

# name -> (ops, index of the failing op, indices that must be reported with it)
VIOLATIONS = {
    "stale read after acknowledged overwrite": (
        [put(1, b"a", 0, 1), put(1, b"b", 2, 3), get(2, b"a", 4, 5)],
        2,
        [0, 1],
    ),
    "read of a value never written": (
        [put(1, b"a", 0, 1), get(2, b"zzz", 2, 3)],
        1,
        [0],
    ),
    "value comes back after acknowledged remove": (
        [put(1, b"a", 0, 1), rm(1, 0, 2, 3), get(2, b"a", 4, 5)],
        2,
        [0, 1],
    ),
    "read going back in time": (
        [put(1, b"old", 0, 1), put(2, b"new", 2, 20), get(3, b"new", 3, 4), get(3, b"old", 5, 6)],
        3,
        [0, 1, 2],
    ),
    "remove not found while key surely existed": (
        [put(1, b"a", 0, 1), rm(2, 1, 2, 3)],
        1,
        [0],
    ),
    "double-executed write": (
        [put(1, b"a", 0, 1), put(1, b"b", 2, 3), get(2, b"b", 4, 5), get(2, b"a", 6, 7)],
        3,
        [0, 2],
    ),
    "version mismatch": ([put(1, b"a", 0, 1, ver=2), get(2, b"a", 2, 3, ver=1)], 1, [0]),
    "remove ok while key surely absent": (
        [put(1, b"a", 0, 1), rm(1, 0, 2, 3), rm(2, 0, 4, 5)],
        2,
        [1],
    ),
    "read of a write before it was sent": ([get(1, b"a", 0, 1), put(2, b"a", 2, 3)], 0, []),
    "refused write seen": (
        [put(1, b"a", 0, 1), put(1, b"b", 2, 3, err=2), get(2, b"b", 4, 5)],
        2,
        [],
    ),
    "timed-out write seen then lost": (
        [put(1, b"a", 0, 1), put(2, b"b", 2, None), get(3, b"b", 3, 4), get(3, b"a", 5, 6)],
        3,
        [0, 1, 2],
    ),
}


@pytest.mark.parametrize("case", VIOLATIONS.values(), ids=list(VIOLATIONS))
def test_violations_name_key_and_ops(case: tuple[list[Op], int, list[int]]) -> None:
    ops, failing, needed = case
    noise = [put(9, b"x", 0, 1, key=b"other"), get(9, b"x", 2, 3, key=b"other")]
    key, op, involved = only_violation(check(noise + ops))
    assert key == K
    assert op == ops[failing]
    assert ops[failing] in involved
    for i in needed:
        assert ops[i] in involved
    assert all(o.key == K for o in involved)


def test_violation_reads_as_one_paragraph() -> None:
    ops = [put(1, b"a", 0, 1), put(1, b"b", 2, 3), get(2, b"a", 4, 5)]
    text = str(check(ops).violations[0])
    assert "\n" not in text
    assert "stale read" in text and "b'a'" in text and "b'b'" in text


def test_reasons_are_specific() -> None:
    def reason(ops: list[Op]) -> str:
        return check(ops).violations[0].reason

    assert "never written" in reason([get(1, b"q", 0, 1)])
    assert "before any write" in reason([get(1, b"a", 0, 1), put(2, b"a", 2, 3)])
    assert "going back in time" in reason(VIOLATIONS["read going back in time"][0])
    assert "surely absent" in reason([rm(1, 0, 0, 1)])
    assert "acknowledged before" in reason([put(1, b"a", 0, 1), get(2, None, 2, 3)])


def test_minimal_report_leaves_out_unrelated_ops() -> None:
    ops = [put(1, b"a", 0, 1), get(2, b"a", 2, 3), put(1, b"b", 4, 5)]
    ops += [get(2, b"b", 6 + i, 6.5 + i) for i in range(20)]
    ops += [put(1, b"c", 40, 41), get(2, b"b", 42, 43)]
    _, op, involved = only_violation(check(ops))
    assert op == ops[-1]
    assert len(involved) <= 4, involved
    assert ops[-2] in involved


def test_budget_exceeded_is_undecided_never_ok() -> None:
    ops = [put(c, bytes([c]), 0, 10) for c in range(8)] + [get(9, bytes([3]), 11, 12)]
    tight = check_key(K, ops, budget=5)
    assert tight.status == UNDECIDED and tight.violation is None
    result = check(ops, budget=5)
    assert not result.ok and result.undecided == (K,) and result.violations == ()
    assert "undecided" in str(result)
    assert check_key(K, ops).status == OK


def test_results_are_deterministic() -> None:
    ops = _execute(random.Random(3), 300, 4, 3.0)
    ops[150] = Op(1, "get", ops[150].key, b"zz", 0, ops[150].invoke, ops[150].invoke + 1, 0)
    assert str(check(ops)) == str(check(list(ops)))


def test_check_key_rejects_foreign_ops() -> None:
    with pytest.raises(ValueError):
        check_key(b"x", [put(1, b"a", 0, 1)])


# ------------------------------------------------------------ lost writes


def test_lost_writes() -> None:
    ops = [
        put(1, b"a", 0, 1, key=b"k1"),
        put(1, b"b", 2, 3, key=b"k1"),
        put(1, b"c", 0, 1, key=b"k2"),
        put(2, b"d", 0.5, None, key=b"k2"),
        put(1, b"e", 0, 1, key=b"k3"),
        rm(1, 0, 2, 3, key=b"k3"),
        put(1, b"f", 0, 1, key=b"k4"),
    ]
    final = {b"k1": (b"a", 0), b"k2": (b"d", 0), b"k3": None, b"k4": None}
    lost = lost_writes(History(ops), final)
    assert [(w.key, w.write) for w in lost] == [(b"k1", ops[1]), (b"k4", ops[6])]
    assert "lost" in str(lost[0])
    assert lost_writes(ops, {b"k1": (b"b", 0), b"k3": None}) == []


def test_lost_write_concurrent_overwrite_is_not_lost() -> None:
    ops = [put(1, b"a", 0, 5), put(2, b"b", 1, 4)]
    assert lost_writes(ops, {K: (b"a", 0)}) == []
    assert lost_writes(ops, {K: (b"b", 0)}) == []


# ------------------------------------------------------------ history format


def test_history_jsonl_round_trip_is_byte_identical() -> None:
    ops = [
        put(1, b"\x00\xffv", 0.1 + 0.2, 1e-9 + 1, ver=-3),
        get(2, None, 3, None),
        rm(3, 1, 4, 5, key=b"\x01" * 32),
    ]
    history = History(ops)
    text = history.to_jsonl()
    again = History.from_jsonl(text)
    assert again == history
    assert again.to_jsonl() == text
    assert History(list(ops)).to_jsonl() == text
    assert len(text.splitlines()) == 3


def test_history_save_load_and_grouping(tmp_path: Path) -> None:
    history = History()
    history.append(put(1, b"a", 0, 1, key=b"y"))
    history.extend([put(1, b"a", 0, 1, key=b"x"), get(1, b"a", 2, 3, key=b"y")])
    path = tmp_path / "h.jsonl"
    history.save(path)
    assert History.load(path) == history
    groups = history.by_key()
    assert list(groups) == [b"y", b"x"]
    assert [op.kind for op in groups[b"y"]] == ["put", "get"]


def test_op_validation() -> None:
    with pytest.raises(ValueError):
        Op(1, "cas", K, None, 0, 0, 1, 0)
    with pytest.raises(ValueError):
        put(1, b"a", 2, 1)
    with pytest.raises(ValueError):
        Op(1, "get", K, None, 0, 0, 1, None)


# ------------------------------------------------------------ properties


def _execute(rng: random.Random, n: int, keys: int, spread: float) -> list[Op]:
    """Run random ops one after another against a dict, then give each op a time
    interval around its execution point: any such history is linearizable."""
    store: dict[bytes, tuple[bytes, int]] = {}
    ops: list[Op] = []
    for i in range(n):
        key = b"k%d" % rng.randrange(keys)
        point = float(i)
        inv = point - rng.uniform(0, spread) * rng.random()
        resp: float | None = point + rng.uniform(0, spread) * rng.random()
        kind = rng.choice(("put", "put", "get", "get", "get", "remove"))
        fate = rng.random()
        client = rng.randrange(5)
        if kind == "put":
            value, ver = b"v%d" % rng.randrange(4), rng.randrange(3)
            err: int | None = 0
            if fate < 0.1:  # timed out, took effect
                resp = err = None
            elif fate < 0.15:  # timed out, never took effect
                ops.append(Op(client, kind, key, value, ver, inv, None, None))
                continue
            elif fate < 0.2:  # refused
                ops.append(Op(client, kind, key, value, ver, inv, resp, 2))
                continue
            store[key] = (value, ver)
            ops.append(Op(client, kind, key, value, ver, inv, resp, err))
        elif kind == "get":
            found = store.get(key)
            value, ver = found if found else (None, 0)
            err = 0 if found else 1
            if fate < 0.1:
                resp = err = None
            ops.append(Op(client, kind, key, value, ver, inv, resp, err))
        else:
            err = 0 if store.pop(key, None) else 1
            if fate < 0.1:
                resp = err = None
            ops.append(Op(client, kind, key, None, 0, inv, resp, err))
    return ops


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 80),
    keys=st.integers(1, 3),
    spread=st.sampled_from([0.0, 0.5, 3.0, 8.0]),
)
def test_sequential_executions_always_pass(seed: int, n: int, keys: int, spread: float) -> None:
    ops = _execute(random.Random(seed), n, keys, spread)
    result = check(ops)
    assert result.ok, str(result)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 80),
    keys=st.integers(1, 3),
    spread=st.sampled_from([0.0, 0.5, 3.0, 8.0]),
    pick=st.integers(0, 10**6),
)
def test_reading_a_never_written_value_always_fails(
    seed: int, n: int, keys: int, spread: float, pick: int
) -> None:
    ops = _execute(random.Random(seed), n, keys, spread)
    reads = [i for i, op in enumerate(ops) if op.kind == "get" and op.response is not None]
    assume(reads)
    i = reads[pick % len(reads)]
    bad = Op(ops[i].client, "get", ops[i].key, b"never", 0, ops[i].invoke, ops[i].response, 0)
    ops[i] = bad
    result = check(ops)
    assert len(result.violations) == 1, str(result)
    assert result.violations[0].key == bad.key
    assert result.violations[0].op == bad
    assert "never written" in result.violations[0].reason


# A brute-force reference: every subset/order of ops that respects real time.


def _brute_force(ops: list[Op], initial: tuple[bytes, int] | None) -> bool:
    items = []
    for op in ops:
        if op.err in (2, 5, 6, 7) or (op.kind == "get" and op.err not in (0, 1)):
            continue
        required = op.err == 0 or (op.kind != "put" and op.err == 1)
        end = op.response if required and op.response is not None else float("inf")
        items.append((op, required, end))

    def step(op: Op, required: bool, state: tuple[bytes, int] | None) -> tuple[bool, object]:
        if op.kind == "put":
            return True, (op.value, op.version)
        if op.kind == "get":
            seen = (op.value, op.version) if op.err == 0 else None
            return seen == state, state
        if not required:
            return True, None
        return (state is not None) == (op.err == 0), None

    @functools.cache
    def search(done: frozenset[int], state: tuple[bytes, int] | None) -> bool:
        if all(i in done for i, (_, req, _) in enumerate(items) if req):
            return True
        for i, (op, req, _) in enumerate(items):
            if i in done:
                continue
            if any(j not in done and e < op.invoke for j, (_, _, e) in enumerate(items)):
                continue
            ok, after = step(op, req, state)
            if ok and search(done | {i}, after):  # type: ignore[arg-type]
                return True
        return False

    return search(frozenset(), initial)


_small_op = st.tuples(
    st.sampled_from(["put", "get", "remove"]),
    st.sampled_from([b"a", b"b"]),
    st.integers(0, 1),
    st.integers(0, 6),
    st.integers(0, 4),
    st.sampled_from([0, 0, 0, 1, 1, None, 2, 3]),
    st.integers(0, 3),
)


@settings(max_examples=400, deadline=None)
@given(
    raw=st.lists(_small_op, min_size=1, max_size=7),
    initial=st.sampled_from([None, (b"a", 0)]),
)
def test_agrees_with_brute_force(
    raw: list[tuple[str, bytes, int, int, int, int | None, int]],
    initial: tuple[bytes, int] | None,
) -> None:
    ops = []
    for kind, value, ver, inv, length, err, client in raw:
        resp = None if err is None else float(inv + length)
        if kind == "get":
            got = value if err == 0 else None
            ops.append(Op(client, kind, K, got, ver if got else 0, float(inv), resp, err))
        elif kind == "put":
            ops.append(Op(client, kind, K, value, ver, float(inv), resp, err))
        else:
            ops.append(Op(client, kind, K, None, 0, float(inv), resp, err))
    expected = _brute_force(ops, initial)
    result = check_key(K, ops, initial=initial)
    assert result.status == (OK if expected else VIOLATION), ops
    if not expected:
        assert result.violation is not None and result.violation.op in ops


def test_simulator_sized_history_is_decided() -> None:
    ops = _execute(random.Random(7), 10_000, 100, 4.0)
    result = check(ops)
    assert result.ok, str(result)
    assert result.ops == 10_000

"""Hash ring: balance, chains, stability under liveness changes, stable hashing."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from functools import cache
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringkv.core.ring import SPACE, Ring, key_position, ranges_contain

N = 40


@pytest.fixture(scope="module")
def ring() -> Ring:
    return Ring(N)


@pytest.fixture(scope="module")
def keys() -> list[bytes]:
    rng = random.Random(431)
    return [rng.randbytes(rng.randint(1, 32)) for _ in range(100_000)]


def test_primary_balance_within_15_percent(ring: Ring, keys: list[bytes]) -> None:
    counts = [0] * N
    for key in keys:
        counts[ring.chain(key)[0]] += 1
    mean = len(keys) / N
    worst = max(abs(c - mean) / mean for c in counts)
    assert worst <= 0.15, f"worst node is {worst:.1%} off the mean"


def test_chain_membership_is_balanced_too(ring: Ring, keys: list[bytes]) -> None:
    counts = [0] * N
    for key in keys[:40_000]:
        for node in ring.chain(key):
            counts[node] += 1
    mean = 3 * 40_000 / N
    assert max(abs(c - mean) / mean for c in counts) <= 0.15


def test_chains_are_distinct_live_and_head_is_primary(ring: Ring, keys: list[bytes]) -> None:
    rng = random.Random(7)
    for size in (40, 39, 16, 3, 2, 1):
        alive = frozenset(rng.sample(range(N), size))
        for key in keys[:2_000]:
            chain = ring.chain(key, alive)
            assert len(chain) == min(3, size)
            assert len(set(chain)) == len(chain)
            assert set(chain) <= alive
            assert ring.primary(key, alive) == chain[0]


def test_empty_and_unknown_members() -> None:
    ring = Ring(5, vnodes=8)
    assert ring.chain(b"k", frozenset()) == ()
    assert ring.primary(b"k", frozenset()) is None
    assert ring.chain(b"k", frozenset({2, 99})) == (2,)
    assert ring.chain(b"k", r=0) == ()
    with pytest.raises(ValueError):
        Ring(0)


def test_single_node_ring_is_a_chain_of_one() -> None:
    ring = Ring(1)
    assert ring.chain(b"anything") == (0,)
    assert ring.owned_ranges(0) == [(0, SPACE)]


def test_removing_a_node_moves_only_its_keys(ring: Ring, keys: list[bytes]) -> None:
    gone = 17
    alive = frozenset(range(N)) - {gone}
    moved_primary = 0
    for key in keys:
        before, after = ring.chain(key), ring.chain(key, alive)
        if gone not in before:
            assert after == before
            continue
        moved_primary += before[0] == gone
        # The survivors keep their order; one new node joins at the tail.
        assert after[:2] == tuple(n for n in before if n != gone)
        assert after[2] not in before
    share = moved_primary / len(keys)
    assert 0.6 / N <= share <= 1.4 / N, f"{share:.4f} of primaries moved"
    # Bringing it back restores every chain.
    assert all(ring.chain(k, alive | {gone}) == ring.chain(k) for k in keys[:20_000])


def test_owned_ranges_match_chain_membership(ring: Ring, keys: list[bytes]) -> None:
    alive = frozenset(range(N)) - {3, 9}
    ranges = ring.owned_ranges(5, alive)
    assert ranges == sorted(ranges)
    assert all(lo < hi for lo, hi in ranges)
    assert all(a[1] < b[0] for a, b in pairwise(ranges))  # merged
    covered = sum(hi - lo for lo, hi in ranges) / SPACE
    assert covered == pytest.approx(3 / len(alive), rel=0.2)
    for key in keys[:20_000]:
        assert ranges_contain(ranges, key_position(key)) == ring.in_chain(5, key, alive)


def test_slot_arcs_tile_the_key_space() -> None:
    ring = Ring(7, vnodes=3)
    arcs = [ring.slot_arc(s) for s in range(ring.slots)]
    assert arcs[0][0] == 0 and arcs[-1][1] == SPACE
    assert all(a[1] == b[0] for a, b in pairwise(arcs))
    for s, (lo, hi) in enumerate(arcs):
        assert ring.slot_of(lo) == s and ring.slot_of(hi - 1) == s


def test_cached_views_are_bounded_and_correct() -> None:
    ring = Ring(10, vnodes=16)
    rng = random.Random(3)
    views = [frozenset(rng.sample(range(10), 6)) for _ in range(30)]
    for view in views + views:  # revisits evicted views
        for i in range(50):
            chain = ring.chain(str(i).encode(), view)
            assert len(chain) == 3 and set(chain) <= view
    assert len(ring._views) <= 8


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(max_size=40),
    alive=st.frozensets(st.integers(0, 11)),
    r=st.integers(1, 5),
)
def test_chain_properties_hold_for_any_view(key: bytes, alive: frozenset[int], r: int) -> None:
    ring = _small_ring()
    chain = ring.chain(key, alive, r)
    assert len(chain) == min(r, len(alive))
    assert len(set(chain)) == len(chain) and set(chain) <= alive
    # A shorter chain is a prefix of a longer one.
    assert ring.chain(key, alive, r + 1)[:r] == chain


@cache
def _small_ring() -> Ring:
    return Ring(12, vnodes=32)


_PROBE = """
from ringkv.core.ring import Ring, key_position
ring = Ring(40)
print(key_position(b"hello"), ring.chain(b"hello"), ring.chain(b"k-42", frozenset(range(0, 40, 2))))
"""


def test_placement_does_not_depend_on_python_hash_seed() -> None:
    ring = Ring(40)
    # Fixed values: any change to the hashing scheme moves every stored key.
    assert key_position(b"hello") == 14688674573012802306
    assert ring.chain(b"hello") == (30, 33, 3)
    expected = f"{key_position(b'hello')} {ring.chain(b'hello')} "
    expected += f"{ring.chain(b'k-42', frozenset(range(0, 40, 2)))}\n"
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout == expected


def test_slots_with_matches_a_scan_of_every_slot() -> None:
    rnd = random.Random(7)
    for n in (1, 2, 5, 40):
        ring = Ring(n)
        for _ in range(3):
            alive = frozenset(i for i in range(n) if rnd.random() < 0.7) or frozenset({0})
            for r in (1, 3, 4):
                for node in range(n):
                    scan = {s for s in range(ring.slots) if node in ring.chain_at(s, alive, r)}
                    assert ring.slots_with(node, alive, r) == scan

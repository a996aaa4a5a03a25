"""The admission table (core/replication/admission.py), over every input of a small
cluster: chains of 1-3 of 5 nodes, every node, hops 0-9, every flag."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.core.replication.admission import (
    Action,
    Decision,
    HopLimits,
    admit,
    may_lead_remove,
    read_ready,
)

LIMITS = HopLimits.of(max_hops=2, replicas=3)
NODES = range(5)
Case = tuple[bool, tuple[int, ...], int, int, bool, bool, "int | None"]


def chains() -> Iterator[tuple[int, ...]]:
    for length in (1, 2, 3):
        yield from itertools.permutations(NODES, length)


def every_case() -> Iterator[tuple[Case, Decision]]:
    for is_read, chain, me, hops, pulling, in_doubt in itertools.product(
        (True, False), chains(), NODES, range(10), (False, True), (False, True)
    ):
        for handed_on_to in (None, *(n for n in NODES if n != me)):
            case = (is_read, chain, me, hops, pulling, in_doubt, handed_on_to)
            yield case, admit(*case, LIMITS)


CASES = list(every_case())


def test_the_hop_limits_are_named_and_ordered() -> None:
    assert LIMITS == HopLimits(execute_after=2, last_hop=5, give_up=7)


def test_nothing_is_sent_back_to_this_node_and_nothing_past_give_up() -> None:
    for (_, _, me, hops, *_), decision in CASES:
        if decision.action is Action.FORWARD:
            assert decision.to is not None and decision.to != me
            assert hops < LIMITS.give_up


def test_only_a_member_reads_and_the_tail_never_leads() -> None:
    for (_, chain, me, *_), decision in CASES:
        if decision.action is Action.READ:
            assert me in chain
        if decision.action is Action.LEAD:
            assert len(chain) == 1 or chain[-1] != me


def test_with_one_view_and_nothing_to_pull_a_request_goes_straight_to_its_target() -> None:
    for (is_read, chain, me, hops, pulling, in_doubt, earlier), decision in CASES:
        if pulling or in_doubt or earlier is not None or hops >= LIMITS.execute_after:
            continue
        target = chain[-1] if is_read else chain[0]
        if me == target:
            assert decision.action is (Action.READ if is_read else Action.LEAD)
        else:
            assert decision == Decision(Action.FORWARD, target)


def test_past_last_hop_a_request_is_taken_where_it_is_or_handed_to_who_may() -> None:
    for (is_read, chain, me, hops, *_), decision in CASES:
        if hops < LIMITS.last_hop:
            continue
        may_take = me in chain if is_read else (len(chain) == 1 or chain[-1] != me)
        if may_take:
            assert decision.action is (Action.READ if is_read else Action.LEAD)
        elif hops >= LIMITS.give_up:
            assert decision.action is Action.DROP
        else:
            fallback = chain[-1] if is_read else chain[-2]
            expected = (
                Decision(Action.DROP) if fallback == me else Decision(Action.FORWARD, fallback)
            )
            assert decision == expected


def test_a_pulling_member_hands_reads_back_and_writes_on_unless_to_the_tail() -> None:
    for (is_read, chain, me, hops, pulling, _, earlier), decision in CASES:
        executes = LIMITS.execute_after <= hops < LIMITS.last_hop
        if not (pulling and executes and me in chain and earlier is None):
            continue
        i = chain.index(me)
        if is_read and i > 0:
            assert decision == Decision(Action.FORWARD, chain[i - 1])
        if not is_read and i + 1 < len(chain) - 1:  # a successor that is not the tail
            assert decision == Decision(Action.FORWARD, chain[i + 1], delegate=True, remember=True)
        if not is_read and i + 1 == len(chain) - 1:  # the successor is the tail
            assert decision.action is Action.LEAD


def test_a_node_in_doubt_hands_reads_to_its_predecessor_and_writes_as_ever() -> None:
    for (is_read, chain, me, hops, pulling, in_doubt, earlier), decision in CASES:
        if pulling or not in_doubt or me not in chain or earlier is not None:
            continue
        if LIMITS.execute_after <= hops < LIMITS.last_hop and chain.index(me) > 0 and is_read:
            assert decision == Decision(Action.FORWARD, chain[chain.index(me) - 1])
        if not is_read:
            assert decision == admit(is_read, chain, me, hops, pulling, False, earlier, LIMITS)


def test_a_retried_write_goes_where_it_was_handed_before_until_last_hop() -> None:
    for (is_read, chain, _, hops, pulling, _, earlier), decision in CASES:
        if is_read or earlier is None or hops >= LIMITS.last_hop:
            continue
        assert decision.action is Action.FORWARD and decision.to == earlier
        assert decision.remember == (pulling and earlier != chain[0])


def test_only_a_pulling_member_delegates_or_remembers() -> None:
    for (is_read, chain, me, _, pulling, _, _), decision in CASES:
        if decision.delegate or decision.remember:
            assert pulling and not is_read and decision.action is Action.FORWARD
        if decision.delegate:
            assert me in chain and chain.index(me) + 1 < len(chain) - 1


@given(
    st.integers(1, 6).flatmap(lambda n: st.permutations(range(8)).map(lambda p: tuple(p[:n]))),
    st.integers(0, 7),
    st.booleans(),
)
def test_with_one_view_every_request_ends_within_one_hop(
    chain: tuple[int, ...], start: int, is_read: bool
) -> None:
    """No loops: all nodes agreeing and nothing pulled, the first node sends a request to
    the one that takes it."""
    node, hops = start, 0
    while (
        decision := admit(is_read, chain, node, hops, False, False, None, LIMITS)
    ).to is not None:
        node, hops = decision.to, hops + 1
    assert hops <= 1
    assert decision.action is (Action.READ if is_read else Action.LEAD)


@pytest.mark.parametrize(
    ("pulling_unsure", "held_back", "is_tail", "in_flight", "ready"),
    [
        (False, False, True, False, True),
        (False, False, True, True, True),  # the tail's copy is what the chain acknowledged
        (False, False, False, False, True),
        (False, False, False, True, False),  # a write on its way down from here
        (True, False, True, False, False),  # may be old: being pulled
        (False, True, True, False, False),  # older than the slot's hold
        (True, True, False, True, False),
    ],
)
def test_a_read_is_answered_only_from_a_copy_that_cannot_be_old(
    pulling_unsure: bool, held_back: bool, is_tail: bool, in_flight: bool, ready: bool
) -> None:
    assert read_ready(pulling_unsure, held_back, is_tail, in_flight) is ready


def test_a_remove_is_led_only_where_the_keys_existence_is_known() -> None:
    assert may_lead_remove(pulling=False, held_back=False)
    assert not may_lead_remove(pulling=True, held_back=False)
    assert not may_lead_remove(pulling=False, held_back=True)

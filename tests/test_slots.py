"""A slot's phases and the transitions between them (core/replication/slots.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from native import pure_python_only

from ringkv.core.replication.slots import NO_FLOOR, InvariantError, Phase, SlotTable
from ringkv.sim.scenarios import Params, run_scenario

ME = 0
MINE = {1, 2, 3}


def stamp_at(when: float) -> int:
    return int(when * 1_000_000) << 12


def table() -> SlotTable:
    return SlotTable(stamp_at)


def test_a_slot_never_touched_is_served() -> None:
    slots = table()
    assert slots.phase(1) is Phase.SERVING
    assert slots.floor(1, True, 5.0) == 0
    assert slots.floor(9, False, 5.0) == NO_FLOOR


def test_a_marked_slot_is_pulled_and_served_again_when_a_sure_source_answers() -> None:
    slots = table()
    slots.mark({1}, now=1.0, due=1.5)
    assert slots.phase(1) is Phase.PULLING and slots.floor(1, True, 2.0) == stamp_at(1.0)
    assert slots.due(1.4) == [] and slots.due(1.5) == [1]
    slots.pull_sent(1, [4, 5])
    assert not slots.source_answered(1, 4, 0)  # 5 still to answer
    assert not slots.source_answered(1, 6, 0)  # not asked this round: does not count
    assert slots.source_answered(1, 5, stamp_at(0.5))
    assert slots.pulled(1, 2.0) is False
    assert slots.phase(1) is Phase.SERVING


def test_a_pull_no_sure_source_answered_holds_the_slot_from_where_the_copies_begin() -> None:
    slots = table()
    slots.mark({1}, now=10.0, due=10.5)
    slots.pull_sent(1, [4])
    assert slots.source_answered(1, 4, stamp_at(30.0))  # the source has all only from 30 on
    assert slots.pulled(1, 11.0) is True
    assert slots.phase(1) is Phase.HELD
    assert slots.floor(1, True, 12.0) == stamp_at(10.0)  # ours since we took it over
    assert slots.facts(1, b"old", lambda key: stamp_at(9.0)) == (False, False, True)
    assert slots.facts(1, b"new", lambda key: stamp_at(10.5)) == (False, False, False)
    slots.mark({1}, now=20.0, due=20.5)  # pulled again: the hold stays until the pull ends
    assert slots.phase(1) is Phase.PULLING and slots.has_hold(1)
    slots.synced(1)
    slots.end_hold(1)
    assert slots.phase(1) is Phase.SERVING


def test_a_fresh_pull_serves_reads_and_ends_whole_whatever_the_sources_said() -> None:
    slots = table()
    slots.mark({1}, now=0.0, due=0.5)
    slots.mark_fresh()
    assert slots.facts(1, b"k", lambda key: 0) == (True, False, False)  # pulling, not unsure
    slots.pull_sent(1, [4])
    assert slots.source_gone(1, 4)
    assert slots.pulled(1, 1.0) is False


def test_a_departure_notes_each_slots_floor_and_drops_the_holds() -> None:
    slots = table()
    slots.mark({1}, now=5.0, due=5.5)
    slots.mark({2}, now=3.0, due=3.0)
    slots.pull_sent(2, [4])
    slots.source_answered(2, 4, NO_FLOOR)
    slots.pulled(2, 3.1)
    slots.note_departure(MINE, 20.0)
    vouched = frozenset(MINE)
    unsure = dict.fromkeys(MINE, NO_FLOOR)
    assert slots.floor_with(1, unsure, vouched) == stamp_at(5.0)
    assert slots.floor_with(2, unsure, vouched) == stamp_at(3.0)
    assert slots.floor_with(3, unsure, vouched) == 0
    assert not slots.any_held()


def test_check_invariants_names_the_slot_that_breaks_a_rule() -> None:
    slots = table()
    slots.mark({1}, now=1.0, due=1.5)
    slots.check_invariants(ME, MINE)
    slots.mark({7}, now=1.0, due=1.5)  # a slot that is not ours
    with pytest.raises(InvariantError, match="slot 7: pulling a slot that is not ours"):
        slots.check_invariants(ME, MINE)


# Any sequence of transitions keeps the invariants.
operations = st.lists(
    st.tuples(
        st.sampled_from(
            ["mark", "send", "answer", "gone", "pulled", "end_hold", "depart", "synced", "fresh"]
        ),
        st.sampled_from(sorted(MINE)),
        st.integers(1, 5),  # a source
        st.sampled_from([0, stamp_at(1.0), NO_FLOOR]),
    ),
    max_size=40,
)


@given(operations)
def test_any_sequence_of_transitions_keeps_the_invariants(
    ops: list[tuple[str, int, int, int]],
) -> None:
    slots = table()
    now = 0.0
    for op, slot, source, floor in ops:
        now += 0.1
        pulling = slots.pulling(slot)
        if op == "mark":
            slots.mark({slot}, now, now + 0.5)
        elif op == "send" and pulling:
            slots.pull_sent(slot, [source, source % 5 + 1])
        elif op == "answer" and slots.source_answered(slot, source, floor):
            slots.pulled(slot, now)
        elif op == "gone" and slots.source_gone(slot, source):
            slots.pulled(slot, now)
        elif op == "end_hold":
            slots.end_hold(slot)
        elif op == "depart":
            slots.note_departure(MINE, now)
        elif op == "synced":
            slots.synced(slot)
        elif op == "fresh" and not slots.any_held():
            slots.mark_fresh()
        slots.check_invariants(ME, MINE)


@pure_python_only
def test_a_broken_transition_fails_the_simulated_run_with_its_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The simulator checks every node's slot states after every step it takes."""

    def hold_even_when_fresh(self: SlotTable, slot: int, now: float) -> bool:
        state = self.state(slot)
        assert state.pull is not None
        state.hold = 0  # held, and the pull (fresh or not) left in place: a broken rule
        return True

    monkeypatch.setattr(SlotTable, "pulled", hold_even_when_fresh)
    params = Params(nodes=5, loss=0.0, keys=4, duration=3.0, clients=1, faults=("pause",))
    result = run_scenario("random-faults", params, 7)
    assert not result.ok
    assert result.error is not None and "InvariantError" in result.error
    assert "a fresh pull is held" in result.error
    assert "--seed 7" in result.replay_command()

"""What this node knows of each ring slot's copy: one SlotState per slot.

A slot's phase says what this node may serve of it:

    SERVING  the copy is whole: every read and write of the slot is served.
    PULLING  a member that may lack writes (it just joined the chain, came back
             from a pause or a suspicion, or just started): it serves no read
             that would end on it, and leads no REMOVE, until every source of
             its gating pull has answered or left. A `fresh` pull (the process
             just started: nothing was written before the cluster had it) may
             serve a read nobody before it in the chain can take.
    HELD     every copy was away at once (suspended together, say): no source
             sure of the slot answered the pull. Keys stamped before `hold`
             get no answer (the client times out rather than reading a key as
             absent or old) until a member sure of the slot answers a full
             pull, or every node has been back for `linger` and every member
             has answered one.

Transitions, each a method of SlotTable:

    SERVING -> PULLING   mark()          joined the chain, paused, suspected, started
    PULLING -> PULLING   pull_sent(), source_answered(), mark() again
    PULLING -> SERVING   pulled() with a sure source (or a fresh start); synced()
                         when the slot stops being ours, or nobody is left to ask
    PULLING -> HELD      pulled() with no sure source
    HELD    -> PULLING   mark()          (the hold is kept until the pull ends)
    HELD    -> SERVING   end_hold()      a sure answer, or every member's after
                                         `linger` back, or its expiry once the slot
                                         is no longer ours; note_departure()

Beside the phase, a slot may carry what a departure left behind: the floor
of our copy when we last left (`left_floor`, for a vouch on return), the
members that left its chain while we were unsure of it (`vouch_for`: their
copy from then and ours since are whole together, if theirs was), and, for a
slot no longer ours, until when writes still reach us (`former_until`): until
then we are as sure of it as when we left, and keep its hold, for returning
nodes that may ask.

`check_invariants` states what must always hold; the simulator calls it
after every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum

NO_FLOOR = (1 << 64) - 1  # a floor stamp: not even the latest write is sure to be here


class Phase(Enum):
    SERVING = "serving"
    PULLING = "pulling"
    HELD = "held"


@dataclass(slots=True)
class Pull:
    """A gating pull of a slot: it is not served until every source has answered."""

    marked_at: float | None  # when it was marked: every write since came here
    since: int = 0  # the oldest stamp to ask for (0: everything)
    waiting: set[int] = field(default_factory=set)  # sources still to answer (empty: not asked)
    fresh: bool = False  # marked on start: nothing was written before the cluster had it
    returning: bool = False  # ask the stand-ins that took our place too
    delegated: bool = False  # writes went to a neighbour meanwhile: pull once more after
    best_floor: int = NO_FLOOR  # the lowest floor a source gave (0: one was sure)


@dataclass(slots=True)
class SlotState:
    pull: Pull | None = None
    hold: int | None = None  # held: keys stamped before this get no answer
    vouch_for: set[int] = field(default_factory=set)
    released_by: set[int] = field(default_factory=set)  # members that answered a full pull
    left_floor: int | None = None  # our floor when we last left (None: we did not have it)
    former_until: float = -math.inf  # no longer ours: writes still reach us until then

    @property
    def phase(self) -> Phase:
        if self.pull is not None:
            return Phase.PULLING
        return Phase.SERVING if self.hold is None else Phase.HELD


_WHOLE = (False, False, False)  # SlotTable.facts of a slot never touched


class InvariantError(Exception):
    """A slot's state broke one of the rules in check_invariants."""


class SlotTable:
    """Every slot's state on this node; slots never touched are SERVING."""

    def __init__(self, stamp_at: Callable[[float], int]) -> None:
        self._stamp_at = stamp_at
        self._states: dict[int, SlotState] = {}
        # When each slot's gating pull is due: a timer queue, kept apart from the
        # states so that a tick looks only at the slots waiting on it.
        self._pull_at: dict[int, float] = {}
        self.hold_check_at: float | None = None  # when held slots are next pulled
        self._changed: set[int] = set()  # slots changed since the last invariant check

    def state(self, slot: int) -> SlotState:
        """The slot's state, to change: every transition takes it from here."""
        self._changed.add(slot)
        state = self._states.get(slot)
        if state is None:
            state = self._states[slot] = SlotState()
        return state

    def _changing(self) -> Iterator[tuple[int, SlotState]]:
        """Every slot's state, to change them all."""
        self._changed.update(self._states)
        return iter(self._states.items())

    def get(self, slot: int) -> SlotState | None:
        """The slot's state, to read (None: never touched, SERVING)."""
        return self._states.get(slot)

    # -- queries --------------------------------------------------------------------

    def phase(self, slot: int) -> Phase:
        state = self._states.get(slot)
        return Phase.SERVING if state is None else state.phase

    def pulling(self, slot: int) -> bool:
        state = self._states.get(slot)
        return state is not None and state.pull is not None

    def pulls(self) -> Iterator[tuple[int, Pull]]:
        return ((s, st.pull) for s, st in self._states.items() if st.pull is not None)

    def held(self) -> Iterator[tuple[int, int]]:
        return ((s, st.hold) for s, st in self._states.items() if st.hold is not None)

    def any_held(self) -> bool:
        return any(st.hold is not None for st in self._states.values())

    def has_hold(self, slot: int) -> bool:
        """Held, or pulled again with the hold kept until the pull ends."""
        state = self._states.get(slot)
        return state is not None and state.hold is not None

    def asks_stand_ins(self, slot: int) -> bool:
        state = self._states.get(slot)
        return state is not None and state.pull is not None and state.pull.returning

    def facts(
        self, slot: int, key: bytes, stamp_of: Callable[[bytes], int]
    ) -> tuple[bool, bool, bool]:
        """What a request of the key needs to know, in one look: (pulling the
        slot, pulling it unsure: not as a fresh start, the key older than a hold)."""
        state = self._states.get(slot)
        if state is None:
            return _WHOLE
        pull, hold = state.pull, state.hold
        held_back = hold is not None and stamp_of(key) < hold
        if pull is None:
            return (False, False, held_back)
        return (True, not pull.fresh, held_back)

    def floor(self, slot: int, mine: bool, now: float) -> int:
        """The stamp from which on our copy of the slot has every write: 0 if it is whole.

        Not whole if we are still pulling it (every write since it was marked
        came to us) or hold it. Nor if we are no member of it (`mine`), unless
        we were one, sure of it, until less than `linger` ago (writes still
        come to us that long).
        """
        state = self._states.get(slot)
        if state is not None:
            if state.pull is not None:
                marked_at = state.pull.marked_at
                return self._stamp_at(now if marked_at is None else marked_at) or 1
            if state.hold is not None:
                return state.hold
            if mine or state.former_until > now:
                return 0
            return NO_FLOOR
        return 0 if mine else NO_FLOOR

    def vouches_for(self, slot: int, member: int) -> bool:
        state = self._states.get(slot)
        return state is not None and member in state.vouch_for

    def floor_with(self, slot: int, unsure: dict[int, int], vouched: frozenset[int]) -> int:
        """The stamp from which on a source's copy of the slot and ours together have
        every write (0: the source is sure of it).

        If it vouches for us, we had the slot until we left, from the floor of
        the hold we kept (0: we were sure of it; none: we did not have it), and
        it has had it since.
        """
        floor = unsure.get(slot, 0)
        if slot in vouched:
            state = self._states.get(slot)
            left = None if state is None else state.left_floor
            floor = min(floor, NO_FLOOR if left is None else left)
        return floor

    # -- transitions ----------------------------------------------------------------

    def mark(self, slots: Iterable[int], now: float, due: float, since: int = 0) -> None:
        """Stop serving these slots now; their gating pull is due at `due`."""
        for slot in slots:
            state = self.state(slot)
            if state.pull is not None:
                state.pull.since = min(state.pull.since, since)
            else:
                state.pull = Pull(marked_at=now, since=since)
                if state.hold is None:
                    state.vouch_for = set()  # from an earlier spell of doubt
            self._pull_at.setdefault(slot, due)

    def mark_fresh(self) -> None:
        """Every slot being pulled now is a fresh process's: nothing to be unsure of."""
        for _, state in self._changing():
            if state.pull is not None:
                state.pull.fresh = True

    def not_fresh(self) -> None:
        """The process started on a data directory: no pull of it is fresh."""
        for _, state in self._changing():
            if state.pull is not None:
                state.pull.fresh = False

    def returning(self, slots: Iterable[int]) -> None:
        """These slots' pulls ask the stand-ins too (gained soon after a return)."""
        for slot in slots:
            pull = self.state(slot).pull
            if pull is not None:
                pull.returning = True

    def delegate(self, slot: int) -> None:
        """A write of the slot went to a neighbour while we pull: pull once more after."""
        pull = self.state(slot).pull
        assert pull is not None
        pull.delegated = True

    def take_delegated(self, slot: int) -> bool:
        pull = self.state(slot).pull
        assert pull is not None
        delegated, pull.delegated = pull.delegated, False
        return delegated

    def since(self, slot: int) -> int:
        """The oldest stamp the slot's gating pull asks for (0: everything)."""
        state = self._states.get(slot)
        return 0 if state is None or state.pull is None else state.pull.since

    def source_answered(self, slot: int, source: int, floor: int) -> bool:
        """A source of this round's pull answered, whole from `floor` on; True if it
        was the last. A pull from before the slot was marked again does not count."""
        pull = self.state(slot).pull
        if pull is None or source not in pull.waiting:
            return False
        pull.waiting.discard(source)
        pull.best_floor = min(pull.best_floor, floor)
        return not pull.waiting

    def source_gone(self, slot: int, source: int) -> bool:
        """A source of this round's pull left the view; True if it was the last."""
        state = self._states.get(slot)
        pull = None if state is None else state.pull
        if pull is None or source not in pull.waiting:
            return False
        self._changed.add(slot)
        pull.waiting.discard(source)
        return not pull.waiting

    def lower_hold(self, slot: int, floor: int) -> None:
        """A source has every write of the held slot from `floor` on, and we have its copy."""
        state = self.state(slot)
        assert state.hold is not None
        state.hold = min(state.hold, floor)

    def released(self, slot: int, member: int, members: list[int]) -> bool:
        """A member answered a full pull of the held slot; True once all `members` have."""
        state = self.state(slot)
        state.released_by.add(member)
        return all(m in state.released_by for m in members)

    def due(self, now: float) -> list[int]:
        """Slots whose gating pull is due, taken off the timer."""
        due = [slot for slot, when in self._pull_at.items() if when <= now]
        for slot in due:
            del self._pull_at[slot]
        return due

    def defer(self, slot: int, when: float) -> None:
        """Pull the slot at `when`, unless its pull is already on the timer."""
        self._pull_at.setdefault(slot, when)

    def pull_waits(self, slot: int) -> bool:
        """Is the slot's gating pull on the timer, not yet sent?"""
        return slot in self._pull_at

    def pull_now(self, slot: int, now: float) -> None:
        self._pull_at[slot] = now

    def pulls_waiting(self) -> bool:
        return bool(self._pull_at)

    def pull_sent(self, slot: int, sources: list[int]) -> None:
        """A gating pull went to these sources: this round waits for each."""
        state = self.state(slot)
        if state.pull is None:
            state.pull = Pull(marked_at=None)
        state.pull.waiting = set(sources)

    def synced(self, slot: int) -> None:
        """The slot is served again (or no longer ours): the pull ends."""
        if slot in self._states:
            self.state(slot).pull = None

    def pulled(self, slot: int, now: float) -> bool:
        """Every source answered or left: serve the slot, held if none was sure of it.
        Returns whether it is held.

        Every copy of it was away at once (suspended, say): the keys this node
        lacks may be on nodes that come back. Reading them as absent would be
        a lie, so until a member sure of the slot answers, keys stamped before
        the slot came here get no answer (the client times out) and only what
        was written since is served.
        """
        state = self.state(slot)
        pull = state.pull
        assert pull is not None
        # We have every write since we joined the chain, and all a source had. What
        # we held before we left is whole only up to then: a vouch counted it in.
        marked_at = now if pull.marked_at is None else pull.marked_at
        floor = min(self._stamp_at(marked_at), pull.best_floor)
        state.pull = None
        if not pull.fresh and pull.best_floor != 0:
            state.hold = floor
            return True
        self.end_hold(slot)
        return False

    def end_hold(self, slot: int) -> None:
        if slot in self._states:
            state = self.state(slot)
            state.hold = None
            state.vouch_for = set()
            state.released_by = set()

    def note_departure(self, mine: set[int], now: float) -> None:
        """Others count this node as gone: note how whole its copy of each slot was.

        A node may be vouched for on its return: the vouch makes a slot whole
        only from the floor of the node's own copy on -- 0 for a slot it had
        whole when it left, the floor of a hold or of a pull under way, none
        for a slot it did not have (the others counted it a member before it
        knew) or a wiped store (`mine` empty). Its copies have a gap from when
        it left: its holds say nothing of now, and it vouches for nobody.
        """
        floors = {slot: self.floor(slot, True, now) for slot in mine}
        for _, state in self._changing():
            state.left_floor = None
        for slot, floor in floors.items():
            self.state(slot).left_floor = floor
        for _, state in self._changing():
            if state.pull is not None:
                state.pull.marked_at = now  # every write comes here again from now on only
            state.hold = None
            state.vouch_for = set()
            state.released_by = set()
            state.former_until = -math.inf

    def returned(self) -> None:
        """Back from a pause or a suspicion: every pull asks the stand-ins too."""
        self.returning([slot for slot, _ in self.pulls()])

    def note_left(self, lost: set[int], mine: set[int], until: float) -> None:
        """We are pushed out of these slots' chains: writes still reach us until
        `until`. Slots ours again are no former ones.

        A slot we were still pulling (and did not hold) we were not sure of:
        nothing to keep.
        """
        for slot, state in self._states.items():
            if state.former_until != -math.inf and slot in mine:
                self.state(slot).former_until = -math.inf
        for slot in lost:
            if self.phase(slot) is not Phase.PULLING or self.has_hold(slot):
                self.state(slot).former_until = until

    def note_holders(self, mine: set[int], gone_from: Callable[[int], set[int]]) -> None:
        """Record who left the chains of our slots that we are not sure of."""
        for slot, state in self._states.items():
            unsure = (state.pull is not None and not state.pull.fresh) or state.hold is not None
            if unsure and slot in mine:
                gone = gone_from(slot)
                if gone:
                    self.state(slot).vouch_for |= gone

    def expire_former(self, mine: set[int], now: float) -> None:
        """Forget slots that stopped being ours more than `linger` ago, and their holds."""
        for slot, state in self._states.items():
            if -math.inf < state.former_until <= now:
                self.state(slot).former_until = -math.inf
                if slot not in mine:
                    self.end_hold(slot)

    # -- invariants -----------------------------------------------------------------

    def check_invariants(self, index: int, mine: set[int]) -> None:
        """What must always hold of every slot's state; raises InvariantError.

        Checks the slots changed since the last call: the others still hold.
        """
        changed, self._changed = self._changed, set()
        for slot in changed:
            state = self._states[slot]
            pull = state.pull
            if pull is not None:
                _require(slot in mine, slot, "pulling a slot that is not ours")
                _require(index not in pull.waiting, slot, "waiting for our own answer")
                _require(not (pull.fresh and state.hold is not None), slot, "a fresh pull is held")
            if state.hold is not None:
                _require(state.hold >= 0, slot, "a hold below stamp 0")
                _require(
                    slot in mine or state.former_until != -math.inf, slot,
                    "held without end though no longer ours",
                )  # fmt: skip
            if state.released_by:
                _require(state.hold is not None, slot, "releases counted for a slot not held")
            _require(index not in state.vouch_for, slot, "vouching for ourselves")


def _require(ok: bool, slot: int, what: str) -> None:
    if not ok:
        raise InvariantError(f"slot {slot}: {what}")

"""Who may serve what: every rule that routes a client's key request, in one place.

A request goes first to its chain's tail (GET) or head (PUT, REMOVE) as
this node sees the chain. Views differ for a moment after every change, so
the rules below also keep a node with an old view from serving stale data:

    hops < execute_after      route to the target (tail or head) unless we are it
    execute_after <= hops     a member executes what reaches it
    last_hop <= hops          nobody routes it on: executed (or not) where it is
    give_up <= hops           a node that may not take it drops it

    A member still pulling the slot hands reads to its predecessor and writes
    to its successor (noting that writes went there: `delegate`), unless the
    successor is the tail: the tail never leads a write, so the puller acts
    for the chain itself. A node in doubt of its view (it ran late) hands
    reads on the same way.
    A retry of a write that a pulling member handed on goes where the first
    went (its outcome is there): `remember` asks the caller to note it.
    Whatever the hops, only a member serves a read and the tail never leads
    a write (it would expose the write before the rest of the chain has it);
    such a request goes to the member that may take it (the tail for a read,
    the tail's predecessor for a write) until give_up.

And, once a request is executed here:

    a read is answered unless our copy of the key may be old (the slot is
    being pulled, not fresh; or the key is older than the slot's hold) or,
    not being the tail, a write of the key is still on its way down from us;
    a REMOVE is led only if we know whether the key exists (the slot is not
    being pulled and the key is not held back).

Unanswered requests are dropped: the client retries, after the pull.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class Action(Enum):
    FORWARD = "forward"
    READ = "read"  # answer from this node's copy (see read_ready)
    LEAD = "lead"  # order the write as head (see may_lead_remove)
    DROP = "drop"


class HopLimits(NamedTuple):
    execute_after: int  # from this many hops on, a member executes what reaches it
    last_hop: int  # from here on, nobody routes a request on
    give_up: int  # from here on, a node that may not take a request drops it

    @classmethod
    def of(cls, max_hops: int, replicas: int) -> HopLimits:
        """Room for a request to walk a whole chain past the point members execute."""
        return cls(max_hops, max_hops + replicas, max_hops + replicas + 2)


class Decision(NamedTuple):
    action: Action
    to: int | None = None  # FORWARD: to which node
    delegate: bool = False  # a pulling member handed a write to its successor
    remember: bool = False  # note `to` for this write's retries


_READ = Decision(Action.READ)
_LEAD = Decision(Action.LEAD)
_DROP = Decision(Action.DROP)
_FORWARD = Action.FORWARD  # an Enum member's lookup costs 10x a global's (3.11)
_FORWARD_TO: dict[int, Decision] = {}  # the plain decisions to forward, one per node


def _forward(to: int) -> Decision:
    decision = _FORWARD_TO.get(to)
    if decision is None:
        decision = _FORWARD_TO[to] = Decision(_FORWARD, to)
    return decision


def admit(
    is_read: bool, chain: tuple[int, ...], me: int, hops: int, pulling: bool, in_doubt: bool,
    handed_on_to: int | None, limits: HopLimits,
) -> Decision:  # fmt: skip
    """What this node does with a key request that reached it after `hops` hops.

    `pulling`: this node is pulling the key's slot; `in_doubt`: of its view;
    `handed_on_to`: where it handed this write (by message ID) earlier.
    """
    # Where to send it on (None: take it here), and whether writes were delegated.
    to: int | None = None
    delegate = False
    if hops < limits.last_hop:
        target = chain[-1] if is_read else chain[0]
        if target != me and (hops < limits.execute_after or me not in chain):
            to = target
        elif pulling or (is_read and in_doubt):
            to = neighbour(chain, me, before=is_read)
            if not is_read and to is not None:
                if to == chain[-1]:
                    to = None  # the tail must not lead: act for the chain here
                else:
                    delegate = True
    remember = False
    if not is_read and hops < limits.last_hop:
        if handed_on_to is not None:
            to = handed_on_to
        remember = to is not None and pulling and to != chain[0]
    if to is not None:
        return Decision(_FORWARD, to, delegate, remember) if delegate or remember else _forward(to)
    if is_read:
        if me in chain:
            return _READ
        fallback = chain[-1]
    else:
        if len(chain) < 2 or chain[-1] != me:
            return _LEAD
        fallback = chain[-2]
    # Views disagree: hand it to the member that may take it while hops are left.
    if hops >= limits.give_up or fallback == me:
        return _DROP
    return _forward(fallback)


def read_ready(pulling_unsure: bool, held_back: bool, is_tail: bool, write_in_flight: bool) -> bool:
    """May a read taken here be answered from this node's copy?

    `pulling_unsure`: the slot is being pulled and the pull is not a fresh
    start's; `held_back`: the key is older than the slot's hold;
    `write_in_flight`: a write of the key is on its way down from here, not
    yet acknowledged by the tail (a later read at the tail could go back).
    """
    if pulling_unsure or held_back:
        return False
    return is_tail or not write_in_flight


def may_lead_remove(pulling: bool, held_back: bool) -> bool:
    """Does this node know whether the key exists (so a REMOVE may answer NO_KEY)?"""
    return not (pulling or held_back)


def neighbour(chain: tuple[int, ...], me: int, before: bool) -> int | None:
    """The member just before (or after) `me` in the chain; None at its end or outside it."""
    if me not in chain:
        return None
    i = chain.index(me) + (-1 if before else 1)
    return chain[i] if 0 <= i < len(chain) else None

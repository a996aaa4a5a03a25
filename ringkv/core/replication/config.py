"""Replication's timers and sizes, in one place beside MembershipConfig."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicationConfig:
    """Seconds unless named otherwise. Targets: 40 nodes on 2 cores, R = 3, chains
    whole again within a few seconds of a failure.

    max_hops 2: a request forwarded this many times is executed by the member
        it lands on (views differ for a moment after every change); a few more
        hops, up to max_hops + R + 2, let members hand it to the one that may
        take it, and bound any loop differing views could make.
    resend_after 0.3: a write not acknowledged this long is sent down again;
        three times a loaded chain's round trip, well inside the 0.7 s a client
        waits in all.
    give_up_after 30: a write nobody acknowledges this long is dropped (every
        member it was meant for is gone).
    sync_retry 1.0: a transfer with no batch for this long is asked for again.
    sync_chunk 128: slots per transfer request (~1.5 MB at 40,000 keys of
        500 B on 40 nodes).
    max_transfers 2: transfer requests in flight per node; the rest wait their
        turn, so a cluster-wide re-pull cannot flood receive buffers into a
        retry storm.
    settle 3.0: after the last view change, how long until the settling pull;
        longer than the 2 s between batches of failures, so that it runs once
        they are over rather than beside the repair of each.
    join_delay 0.5: from joining a chain to pulling it: views agree by then.
    handoff_retry 2.0: between hints to members that have not confirmed.
    linger 10: how long a live node pushed out of a chain still gets its
        writes, a node just back counts the slots it gains as returning, and
        a member pushed out stays sure of a slot.
    lookback 60: a node that held a slot all along and may only have missed
        writes (it was paused, or suspected) pulls just the entries stamped
        since it may have missed them, less this margin: longer than a write
        can stay in flight (give_up_after) plus failure detection; hosts'
        clocks must agree to better than it.
    hold_retry 1.0: between full pulls of a held slot.
    max_clock_skew 60: a replicated or transferred entry stamped later than
        this ahead of our own clock is refused: no correct head stamps it,
        and a stamp near the top of its field would leave the key unwritable.
    """

    max_hops: int = 2
    resend_after: float = 0.3
    give_up_after: float = 30.0
    sync_retry: float = 1.0
    sync_chunk: int = 128
    max_transfers: int = 2
    settle: float = 3.0
    join_delay: float = 0.5
    handoff_retry: float = 2.0
    linger: float = 10.0
    lookback: float = 60.0
    hold_retry: float = 1.0
    max_clock_skew: float = 60.0

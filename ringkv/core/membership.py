"""Epidemic membership: SWIM failure detection with Lifeguard's refinements.

A pure object, one per node: it is told about datagrams and ticks and returns
(datagram, destination node index) pairs. It never does IO, reads a clock or
sleeps; its only randomness is the `random.Random` it is given (seeded from
the node index by default), so a simulator replays it exactly.

Protocol (SWIM, Das et al. 2002; Lifeguard, Dadgar et al. 2018):

- Each probe period the node PINGs the next member of a shuffled round-robin
  list. No ACK within the ack time-out: it asks k others to probe the target
  for it (PING_REQ; they answer ACK or, Lifeguard, NACK). No ACK by the end
  of the period: the target becomes SUSPECT.
- A suspect that does not refute within the suspicion time-out becomes DEAD.
  The time-out starts long and shrinks as other nodes independently suspect
  the same node (Lifeguard's confirmations).
- Updates (node, state, incarnation) ride on every datagram, each sent about
  retransmit_mult * log10(n) times. Every datagram also carries the
  receiver's own entry as the sender sees it, so a wrongly suspected node
  learns it at once and refutes by raising its incarnation.
- Precedence: (incarnation, state) compares lexicographically with
  alive < suspect < dead, so a dead node comes back only with a higher
  incarnation. A datagram is itself evidence that its sender is alive at the
  incarnation in its header.
- A node that learns of a change of state (a suspicion, a death, a
  refutation, a return) also pushes it at once to `push_fanout` random
  members (RUMOR), which push it on in turn when it is news to them: the
  change reaches everyone in a few network hops instead of several probe
  periods, so chains are repaired before the next failure can strike them.
  Piggy-backing still carries it to any node the pushes missed.
- Before declaring a suspect dead, a node PINGs it one last time: a
  refutation that gossip failed to bring arrives in the ACK's header.
- Dead nodes are still pinged now and then, so a node that returns is seen
  even if nobody told us. Every few seconds a node swaps its full view with a
  random member (SYNC), which repairs anything gossip missed.

Local health (Lifeguard): failed probes with missing NACKs, refuting a
suspicion about ourselves and late ticks raise `local_health`; successful
probes lower it. Probe periods and ack time-outs are multiplied by
(1 + local_health), suspicion time-outs by up to 2, so a slow node stops
accusing healthy ones.

Time: the protocol runs on its own clock, which advances with the real one
but by at most `max_clock_step` per call. A tick that comes late (the process
was descheduled, the machine is overloaded) therefore cannot expire probes
or suspicions whose answers may still be waiting unread in the socket. A gap
over `pause_threshold` means this node was itself paused (SIGSTOP): it
records that, bumps its incarnation, announces itself and resynchronises its
view, and `last_pause` lets replication treat its data as stale. A driver may
skip ticks with nothing due (`next_due`, `skip_until`): lateness then counts
from the last tick it skipped, so a stop is measured up to one skipped span
short.

What the node's layers above must know, membership reports as events
(`take_events`): this node was paused, it was suspected, the view changed,
its doubt began or ended.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ringkv.wire.gossip import (
    ACK,
    ALIVE,
    DEAD,
    MAX_ENTRIES,
    MAX_INCARNATION,
    NACK,
    PING,
    PING_REQ,
    RUMOR,
    STATE_NAMES,
    SUSPECT,
    SYNC,
    SYNC_ACK,
    Entry,
    GossipDecodeError,
    GossipMsg,
    decode,
    pack,
)

Send = tuple[bytes, int]  # (datagram, destination node index)
_MAX_SYNCS_ASKED = 64  # SYNCs awaiting their SYNC_ACK, remembered by sequence number
_RELAYS_PER_NODE = 4  # PING_REQs relayed at once; each member asks a few per probe


@dataclass(frozen=True, slots=True)
class Paused:
    """This node was stopped for `gap` seconds (its own clock jumped)."""

    gap: float


@dataclass(frozen=True, slots=True)
class Suspected:
    """Others suspected this node or declared it dead (it has refuted): they may
    have routed around it meanwhile."""


@dataclass(frozen=True, slots=True)
class ViewChanged:
    """Who is believed healthy (alive, not suspected) or not dead changed."""

    healthy: frozenset[int]
    alive: frozenset[int]  # alive or suspect


@dataclass(frozen=True, slots=True)
class DoubtChanged:
    """This node began to doubt its view (it ran late) or heard a member's view."""

    in_doubt: bool


MembershipEvent = Paused | Suspected | ViewChanged | DoubtChanged


@dataclass(frozen=True)
class MembershipConfig:
    """Time-outs in seconds. Targets: 40 nodes on 2 cores, exact view < 5 s.

    probe_period 0.25: every member is probed by someone about once a period,
        so a stopped node is suspected within ~0.5 s; 2 datagrams per node per
        period (PING + the ACK of the PING it receives) = 8/s, whatever n.
    ack_timeout 0.1: loopback RTT is < 1 ms idle but tens of ms on a loaded
        2-core box; leaves the rest of the period for the indirect probes.
        Both are multiplied by (1 + local_health).
    indirect_probes 3: k of SWIM; three independent paths make a false
        suspicion from one lost datagram rare (~1e-3 per probe at 5 % loss).
    suspicion_min 2.0 / suspicion_max 5.0 / suspicion_confirmations 3: a
        suspect has at least 2 s (8 periods, while dissemination at 40 nodes
        takes ~1 s) to refute; 5 s when nobody else confirms. With ~one
        independent probe of the suspect per period, 3 confirmations arrive
        within ~1 s, so a stopped node is dead everywhere ~3-4 s after it
        stops. An unhealthy node stretches these up to 2-fold, and at expiry
        it PINGs the suspect once more (2 ack time-outs) before declaring it.
    retransmit_mult 4: each update is piggy-backed 4 * ceil(log10(n + 1))
        times (8 at 40 nodes), memberlist's default; reaches all with margin.
    push_fanout 3: members each node pushes a change of state to when it
        first learns it: a change costs ~3n datagrams once, and all but ~5 %
        of nodes have it within ~4 hops (milliseconds) instead of ~1 s of
        piggy-backing. Idle clusters have no changes, so no cost.
    max_piggyback 10: updates per datagram (9 bytes each) beyond the receiver's
        own entry; bursts (a resync) drain in a few periods.
    dead_probe_interval 1.0: one dead node pinged per second, so a returning
        node is noticed by direct contact within seconds.
    sync_interval 5.0 / sync_fanout 3: periodic full-view swap with one member;
        after a pause, with 3 at once (repeated each period until one answers),
        since the deaths gossiped while we slept are no longer being gossiped.
    max_health 8: Lifeguard's cap; time-outs grow at most 9-fold.
    max_clock_step 0.25: the most the protocol clock moves per call beyond
        the last tick; drivers tick every 0.05-0.1 s, so only a late tick is
        clipped. A driver that skips ticks with nothing due (skip_until) has
        lateness counted from the last tick it skipped.
    pause_threshold 1.0: a gap this long (10-20 ticks missed) is a pause, not
        scheduling noise.
    """

    probe_period: float = 0.25
    ack_timeout: float = 0.1
    indirect_probes: int = 3
    suspicion_min: float = 2.0
    suspicion_max: float = 5.0
    suspicion_confirmations: int = 3
    retransmit_mult: int = 4
    max_piggyback: int = 10
    push_fanout: int = 3
    dead_probe_interval: float = 1.0
    sync_interval: float = 5.0
    sync_fanout: int = 3
    max_health: int = 8
    max_clock_step: float = 0.25
    pause_threshold: float = 1.0


@dataclass
class _Probe:
    target: int
    seq: int
    incarnation: int  # the target's when probed: a later one answers for itself
    req_at: float  # send PING_REQs if not acked by then
    end: float  # suspect the target if not acked by then
    acked: bool = False
    req_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass
class _Rumor:
    entry: Entry
    sent: int = 0


@dataclass
class _Suspicion:
    incarnation: int
    origin: int  # who suspected first
    start: float
    not_before: float
    confirmers: set[int] = field(default_factory=set)
    last_call: float | None = None  # when the final direct PING goes unanswered


class Membership:
    """One node's view of which nodes of the server list are alive."""

    def __init__(
        self,
        self_index: int,
        n_nodes: int,
        config: MembershipConfig | None = None,
        rng: random.Random | None = None,
        now: float = 0.0,
    ) -> None:
        if not 0 <= self_index < n_nodes:
            raise ValueError("self_index outside the server list")
        if n_nodes > MAX_ENTRIES:
            raise ValueError("a full view must fit in one datagram")
        self.index = self_index
        self.n_nodes = n_nodes
        self.config = cfg = config or MembershipConfig()
        self._rng = rng or random.Random(self_index)
        # Everyone in the server list starts alive at incarnation 0: nodes that
        # never started are found dead by probing within a few seconds.
        self._state = [ALIVE] * n_nodes
        self._inc = [0] * n_nodes
        self._alive = frozenset(range(n_nodes))
        self._healthy = self._alive
        self.view_version = 0
        self._events: list[MembershipEvent] = []  # not yet taken (take_events)
        self.local_health = 0
        self.pauses = 0
        self.deaths = 0  # times this node marked another dead (false deaths show here)
        self.times_suspected = 0  # times this node heard it was suspected or dead
        self.suspicions = 0
        self.last_pause = -math.inf  # `now` when a pause was last detected
        self.last_pause_gap = 0.0  # how long that pause was
        self._rumors: dict[int, _Rumor] = {}  # latest update per node, still being spread
        self._news: dict[int, Entry] = {}  # changes of state not yet pushed (RUMOR)
        self._retransmits = cfg.retransmit_mult * max(1, math.ceil(math.log10(n_nodes + 1)))
        self._suspicions: dict[int, _Suspicion] = {}
        self._probe: _Probe | None = None
        self._relays: dict[int, tuple[int, int, float]] = {}  # seq -> (asker, its seq, nack at)
        self._order: list[int] = []
        self._order_pos = 0
        self._dead_cursor = self_index
        self._seq = 0
        self._resync = False
        self._syncs_asked: dict[int, int] = {}  # sequence number of a SYNC sent -> to whom
        self._started = False
        self._late_noted_until = -math.inf  # one health point per period of lateness
        self._skip_to = -math.inf  # see skip_until
        self._now = self._clock = now
        # Stagger the timers so that nodes started together do not probe in step.
        self._next_probe = now + self._rng.random() * cfg.probe_period
        self._next_dead_probe = now + (1 + self._rng.random()) * cfg.dead_probe_interval
        self._next_sync = now + (0.5 + self._rng.random()) * cfg.sync_interval

    # ----- queries -------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._inc[self.index]

    def alive(self) -> frozenset[int]:
        """Nodes believed alive or suspect, self included; same object until it changes."""
        return self._alive

    def healthy(self) -> frozenset[int]:
        """Nodes believed alive and not suspected; same object until it changes.

        Replication builds chains from these: a suspect leaves its chains at
        once, so repair starts ~0.5 s after a node stops rather than when it
        is finally declared dead.
        """
        return self._healthy

    def alive_count(self) -> int:
        return len(self._alive)

    def state_of(self, i: int) -> str:
        return STATE_NAMES[self._state[i]]

    def take_events(self) -> list[MembershipEvent]:
        """What changed since the last call, oldest first (usually nothing)."""
        events = self._events
        if events:
            self._events = []
        return events

    # ----- inputs --------------------------------------------------------

    def on_message(self, data: bytes, now: float, sender: int | None = None) -> list[Send]:
        """A gossip datagram; `sender`, if known (authenticated), must be the one it names."""
        try:
            msg = decode(data)
        except GossipDecodeError:
            return []
        me = self.index
        if sender is not None and msg.sender != sender:
            return []
        sender = msg.sender
        if not 0 <= sender < self.n_nodes or sender == me:
            return []
        out = self._advance(now)
        # The header is evidence the sender is alive at its incarnation; at an
        # incarnation we know already it changes nothing (what _merge would find).
        if msg.incarnation > self._inc[sender]:
            self._set(sender, ALIVE, msg.incarnation, sender)
        for entry in msg.entries:
            # Our own entry, alive at an incarnation we have: the usual case, a no-op.
            if entry[0] != me or entry[1] != ALIVE or entry[2] > self._inc[me]:
                self._merge(entry)
        self._handle(msg, out)
        if self._news:
            self._push_news(out)
        return out

    def on_tick(self, now: float) -> list[Send]:
        out = self._advance(now)
        # Guards inline, not in the callees: an idle tick makes as few calls as it can.
        if self._relays:
            self._expire_relays(out)
        self._step_probe(out)
        if self._suspicions:
            self._expire_suspicions(out)
        self._maybe_probe_dead(out)
        self._maybe_sync(out)
        if self._news:
            self._push_news(out)
        return out

    def next_due(self) -> float:
        """The `now` at which on_tick next has something to do.

        A driver may skip the ticks before it (and say so with skip_until):
        until then on_tick would only move the clock. The dead-node probe
        timer counts only while some node is dead: until then it waits.
        """
        if not self._started:
            return -math.inf
        # Called after every datagram: comparisons, and no loops over empty dicts.
        probe = self._probe
        if probe is None:
            due = self._next_probe
        elif not probe.acked and not probe.req_sent and probe.req_at < probe.end:
            due = probe.req_at
        else:
            due = probe.end
        if self._next_sync < due:
            due = self._next_sync
        if len(self._alive) < self.n_nodes and self._next_dead_probe < due:
            due = self._next_dead_probe
        if self._relays:
            due = min(due, *(relay[2] for relay in self._relays.values()))
        if self._suspicions:
            due = min(due, *map(self._suspicion_due, self._suspicions.values()))
        return self._now + (due - self._clock)  # protocol clock -> the driver's `now`

    def _suspicion_due(self, suspicion: _Suspicion) -> float:
        last_call = suspicion.last_call
        return self._deadline(suspicion) if last_call is None else last_call

    def skip_until(self, when: float) -> None:
        """The driver skips the ticks it would have made up to `when` (<= next_due()).

        Lateness then counts from `when`, not from the last call: the skipped
        ticks would have found nothing due, so the next call is exactly as late
        as the first tick after `when` would have been. Valid until the next
        call (on_tick or on_message), which may set new timers.
        """
        self._skip_to = when

    # ----- clock, lateness, pauses ---------------------------------------

    def _advance(self, now: float) -> list[Send]:
        if not self._started:
            self._start(now)
        gap = now - self._now
        skip_to, self._skip_to = self._skip_to, -math.inf
        if gap <= 0:
            return []
        late = now - skip_to if skip_to > self._now else gap
        self._now = now
        step = self.config.max_clock_step
        if late <= step:
            self._clock += gap
            return []
        self._clock += gap - late + step  # the skipped span in full, then one step
        return self._on_late(late)

    def _start(self, now: float) -> None:
        # The first call anchors the timers, so a driver whose clock is not the
        # `now` given at construction is not mistaken for a pause.
        self._started = True
        shift = now - self._now
        self._now = self._clock = now
        self._next_probe += shift
        self._next_dead_probe += shift
        self._next_sync += shift

    def _on_late(self, gap: float) -> list[Send]:
        # Replies and refutations may be queued unread behind this late call:
        # push every pending deadline past the next few ticks so that they are
        # read before any verdict.
        if self._clock >= self._late_noted_until:
            self._bump_health(1)
            self._late_noted_until = self._clock + self.config.probe_period
        hold = self._clock + self.config.max_clock_step
        probe = self._probe
        if probe is not None:
            probe.req_at = max(probe.req_at, hold)
            probe.end = max(probe.end, hold)
            self._next_probe = probe.end
        for suspicion in self._suspicions.values():
            suspicion.not_before = max(suspicion.not_before, hold)
            if suspicion.last_call is not None:
                suspicion.last_call = max(suspicion.last_call, hold)
        for seq, (asker, asker_seq, nack_at) in self._relays.items():
            self._relays[seq] = (asker, asker_seq, max(nack_at, hold))
        if gap < self.config.pause_threshold:
            return self._doubt()
        return self._on_pause(gap)

    def _doubt(self) -> list[Send]:
        """A late call, too short for a pause: others may have suspected us meanwhile.

        Ask a few members for their view (SYNC); until one answers, `in_doubt()`
        holds, and replication serves no read as a tail that the others may
        already route writes around.
        """
        out: list[Send] = []
        if not self._resync:
            self._resync = True
            self._events.append(DoubtChanged(True))
            self._syncs_asked.clear()  # views from before this are no answer now
            self._send_sync(out, self.config.sync_fanout)
        return out

    def in_doubt(self) -> bool:
        """Since a late call or a pause, no member has yet sent us its view."""
        return self._resync

    def _on_pause(self, gap: float) -> list[Send]:
        self.pauses += 1
        self._events.append(Paused(gap))
        self.last_pause = self._now
        self.last_pause_gap = gap
        # Others may have declared us dead: come back at a higher incarnation.
        self._inc[self.index] += 1
        self._rumor(self._entry(self.index), push=True)
        if not self._resync:
            self._resync = True
            self._events.append(DoubtChanged(True))
        self._syncs_asked.clear()  # views from before this are no answer now
        out: list[Send] = []
        self._send_sync(out, self.config.sync_fanout)
        return out

    # ----- merging updates -----------------------------------------------

    def _merge(self, entry: Entry) -> None:
        node, state, inc, origin = entry
        # At the top incarnation a node could not refute a suspicion: nobody sends it.
        if not 0 <= node < self.n_nodes or inc >= MAX_INCARNATION:
            return
        if node == self.index:
            self._about_me(state, inc)
            return
        if not 0 <= origin < self.n_nodes:
            origin = node
        current = (self._inc[node], self._state[node])
        if (inc, state) > current:
            self._set(node, state, inc, origin)
        elif (inc, state) == current and state == SUSPECT:
            self._confirm(node, origin)

    def _about_me(self, state: int, inc: int) -> None:
        mine = self._inc[self.index]
        if inc >= MAX_INCARNATION:
            return  # nonsense we could not refute without overflowing the field
        if state == ALIVE:
            # Others know a later incarnation of us (we restarted): adopt it.
            self._inc[self.index] = max(mine, inc)
        elif inc >= mine:
            self._inc[self.index] = inc + 1
            self.times_suspected += 1
            self._events.append(Suspected())  # others may have routed around us meanwhile
            self._bump_health(1)  # being suspected hints that we are the slow one
            self._rumor(self._entry(self.index), push=True)

    def _set(self, node: int, state: int, inc: int, origin: int) -> None:
        was_dead = self._state[node] == DEAD
        if state == DEAD and not was_dead:
            self.deaths += 1
        elif state == SUSPECT and self._state[node] == ALIVE:
            self.suspicions += 1
        self._state[node] = state
        self._inc[node] = inc
        if state == SUSPECT:
            self._suspicions[node] = _Suspicion(inc, origin, self._clock, self._clock, {origin})
        else:
            self._suspicions.pop(node, None)
            origin = node
        changed = False
        if was_dead != (state == DEAD):
            self._alive = frozenset(i for i, s in enumerate(self._state) if s != DEAD)
            self.view_version += 1
            changed = True
        if (node in self._healthy) != (state == ALIVE):
            self._healthy = frozenset(i for i, s in enumerate(self._state) if s == ALIVE)
            changed = True
        if changed:
            self._events.append(ViewChanged(self._healthy, self._alive))
        self._rumor(Entry(node, state, inc, origin), push=True)

    def _confirm(self, node: int, origin: int) -> None:
        suspicion = self._suspicions.get(node)
        if suspicion is None or origin in suspicion.confirmers:
            return
        suspicion.confirmers.add(origin)
        # Pass the confirmation on so that others shorten their time-outs too.
        self._rumor(Entry(node, SUSPECT, suspicion.incarnation, origin))

    def _suspect(self, node: int) -> None:
        if self._state[node] == ALIVE:
            self._set(node, SUSPECT, self._inc[node], self.index)
        elif self._state[node] == SUSPECT:
            self._confirm(node, self.index)

    # ----- message handling ----------------------------------------------

    def _handle(self, msg: GossipMsg, out: list[Send]) -> None:
        kind = msg.kind
        if kind == PING:
            out.append(self._msg(ACK, msg.sender, msg.seq))
        elif kind == ACK:
            self._on_ack(msg.seq, out)
        elif kind == PING_REQ:
            self._on_ping_req(msg, out)
        elif kind == NACK:
            if self._probe is not None and self._probe.seq == msg.seq:
                self._probe.nacks += 1
        elif kind == SYNC:
            out.append(self._msg(SYNC_ACK, msg.sender, msg.seq, full=True))
        elif kind == SYNC_ACK and self._syncs_asked.get(msg.seq) == msg.sender:
            # Only an answer to a SYNC we sent ends doubt: its view is from after the pause.
            self._syncs_asked.clear()
            if self._resync:
                self._resync = False
                self._events.append(DoubtChanged(False))

    def _on_ack(self, seq: int, out: list[Send]) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq:
            if not probe.acked:
                probe.acked = True
                self._bump_health(-1)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            out.append(self._msg(ACK, relay[0], relay[1]))

    def _on_ping_req(self, msg: GossipMsg, out: list[Send]) -> None:
        target = msg.target
        if not 0 <= target < self.n_nodes or target in (self.index, msg.sender):
            return
        if len(self._relays) >= self.n_nodes * _RELAYS_PER_NODE:
            return  # far more than members ask for: a flood, or a bug; the asker probes on
        seq = self._next_seq()
        deadline = self._clock + self._scaled(self.config.ack_timeout)
        self._relays[seq] = (msg.sender, msg.seq, deadline)
        out.append(self._msg(PING, target, seq))

    # ----- timers ----------------------------------------------------------

    def _step_probe(self, out: list[Send]) -> None:
        probe = self._probe
        if probe is not None:
            if not probe.acked and not probe.req_sent and self._clock >= probe.req_at:
                self._send_ping_reqs(probe, out)
            if self._clock < probe.end:
                return
            self._conclude(probe)
        if self._clock >= self._next_probe:
            self._start_probe(out)

    def _start_probe(self, out: list[Send]) -> None:
        cfg = self.config
        period = self._scaled(cfg.probe_period)
        self._next_probe = self._clock + period
        if self._resync:
            self._send_sync(out, 1)
        target = self._next_target()
        if target is None:
            return
        seq = self._next_seq()
        req_at = self._clock + self._scaled(cfg.ack_timeout)
        self._probe = _Probe(target, seq, self._inc[target], req_at, self._next_probe)
        out.append(self._msg(PING, target, seq))

    def _send_ping_reqs(self, probe: _Probe, out: list[Send]) -> None:
        probe.req_sent = True
        helpers = self._pick(self.config.indirect_probes, probe.target)
        probe.expected_nacks = len(helpers)
        for helper in helpers:
            out.append(self._msg(PING_REQ, helper, probe.seq, probe.target))

    def _conclude(self, probe: _Probe) -> None:
        self._probe = None
        if probe.acked:
            return
        # Lifeguard: helpers that did not even NACK point at our own links/CPU.
        self._bump_health(max(0, probe.expected_nacks - probe.nacks))
        if self._inc[probe.target] > probe.incarnation:
            return  # it restarted or refuted meanwhile: the silence was its old self's
        self._suspect(probe.target)

    def _expire_suspicions(self, out: list[Send]) -> None:
        # At the deadline we PING the suspect once more before declaring it dead:
        # a refutation that gossip did not bring us arrives in its ACK's header.
        clock = self._clock
        for node, suspicion in list(self._suspicions.items()):
            if suspicion.last_call is None:
                if clock >= self._deadline(suspicion):
                    suspicion.last_call = clock + self._scaled(2 * self.config.ack_timeout)
                    out.append(self._msg(PING, node, self._next_seq()))
            elif clock >= suspicion.last_call:
                self._set(node, DEAD, suspicion.incarnation, node)

    def _deadline(self, suspicion: _Suspicion) -> float:
        cfg = self.config
        expected = min(cfg.suspicion_confirmations, len(self._alive) - 2)
        if expected < 1:
            fraction = 1.0  # too few members for independent confirmations
        else:
            # log(confirmations + 1) / log(expected + 1); confirmers include the origin.
            fraction = min(1.0, math.log(len(suspicion.confirmers)) / math.log(expected + 1))
        span = cfg.suspicion_max - cfg.suspicion_min
        timeout = max(cfg.suspicion_min, cfg.suspicion_max - span * fraction)
        # An unhealthy node (late ticks, unanswered probes) waits up to twice as
        # long: the suspect's refutation may be waiting for our CPU, not lost.
        timeout *= 1 + self.local_health / cfg.max_health
        return max(suspicion.start + timeout, suspicion.not_before)

    def _expire_relays(self, out: list[Send]) -> None:
        if not self._relays:
            return
        late = [seq for seq, relay in self._relays.items() if self._clock >= relay[2]]
        for seq in late:
            asker, asker_seq, _ = self._relays.pop(seq)
            out.append(self._msg(NACK, asker, asker_seq))

    def _maybe_probe_dead(self, out: list[Send]) -> None:
        # While nobody is dead the timer waits rather than re-arming every
        # interval: next_due leaves it out, so skipped ticks change nothing.
        if len(self._alive) == self.n_nodes or self._clock < self._next_dead_probe:
            return
        self._next_dead_probe = self._clock + self.config.dead_probe_interval
        for _ in range(self.n_nodes):
            self._dead_cursor = (self._dead_cursor + 1) % self.n_nodes
            if self._state[self._dead_cursor] == DEAD:
                # It sees its own DEAD entry in the PING and answers refuted.
                out.append(self._msg(PING, self._dead_cursor, self._next_seq()))
                return

    def _maybe_sync(self, out: list[Send]) -> None:
        if self._clock >= self._next_sync:
            self._next_sync = self._clock + self.config.sync_interval
            self._send_sync(out, 1)

    def _send_sync(self, out: list[Send], fanout: int) -> None:
        asked = self._syncs_asked
        for peer in self._pick(fanout, self.index):
            seq = self._next_seq()
            asked[seq] = peer
            if len(asked) > _MAX_SYNCS_ASKED:
                del asked[next(iter(asked))]
            out.append(self._msg(SYNC, peer, seq, full=True))

    # ----- helpers ---------------------------------------------------------

    def _next_target(self) -> int | None:
        for _ in range(2):  # finish this round, else reshuffle once
            while self._order_pos < len(self._order):
                node = self._order[self._order_pos]
                self._order_pos += 1
                if self._state[node] != DEAD:
                    return node
            self._order = [i for i in range(self.n_nodes) if i != self.index]
            self._rng.shuffle(self._order)
            self._order_pos = 0
        return None

    def _pick(self, k: int, exclude: int) -> list[int]:
        """Up to k random members in state ALIVE, other than self and `exclude`."""
        me = self.index
        candidates = [
            i for i, s in enumerate(self._state) if s == ALIVE and i != me and i != exclude
        ]
        return self._rng.sample(candidates, min(k, len(candidates)))

    def _msg(self, kind: int, dest: int, seq: int = 0, target: int = 0, full: bool = False) -> Send:
        entries = self._full_view() if full else self._piggyback(dest)
        return pack(kind, self.index, self._inc[self.index], seq, target, entries), dest

    def _piggyback(self, dest: int) -> tuple[Entry, ...]:
        entries = [self._entry(dest)]  # lets dest refute at once if we suspect it
        if self._rumors:
            freshest = sorted(self._rumors.items(), key=lambda item: item[1].sent)
            for node, rumor in freshest[: self.config.max_piggyback]:
                if node == dest:
                    continue
                entries.append(rumor.entry)
                rumor.sent += 1
                if rumor.sent >= self._retransmits:
                    del self._rumors[node]
        return tuple(entries)

    def _full_view(self) -> tuple[Entry, ...]:
        return tuple(self._entry(i) for i in range(self.n_nodes))

    def _entry(self, node: int) -> Entry:
        state = self._state[node]
        origin = self._suspicions[node].origin if state == SUSPECT else node
        return Entry(node, state, self._inc[node], origin)

    def _rumor(self, entry: Entry, push: bool = False) -> None:
        self._rumors[entry.node] = _Rumor(entry)
        if push:
            self._news[entry.node] = entry

    def _push_news(self, out: list[Send]) -> None:
        """Send the changes learnt during this call to a few random members.

        A suspect gets the news too: until it hears of the suspicion it may
        serve reads of chains the others already route around it.
        """
        if not self._news:
            return
        news = tuple(self._news.values())
        self._news.clear()
        datagram = pack(RUMOR, self.index, self._inc[self.index], 0, 0, news)
        dests = self._pick(self.config.push_fanout, self.index)
        for entry in news:
            if entry.state == SUSPECT and entry.node != self.index and entry.node not in dests:
                dests.append(entry.node)
        for dest in dests:
            out.append((datagram, dest))

    def _bump_health(self, delta: int) -> None:
        self.local_health = max(0, min(self.config.max_health, self.local_health + delta))

    def _scaled(self, timeout: float) -> float:
        return timeout * (1 + self.local_health)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

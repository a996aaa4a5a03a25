"""One node's part in replication: client requests, peer messages, membership
events and ticks come in here and go to the chain write path, the slot
table, the transfer engine and the handoffs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ringkv.core.membership import (
    DoubtChanged,
    MembershipEvent,
    Paused,
    Suspected,
    ViewChanged,
)
from ringkv.core.replication.admission import (
    Action,
    HopLimits,
    admit,
    may_lead_remove,
    read_ready,
)
from ringkv.core.replication.chain import ChainWrites
from ringkv.core.replication.config import ReplicationConfig
from ringkv.core.replication.handoff import Handoffs
from ringkv.core.replication.slots import SlotTable
from ringkv.core.replication.stats import ReplicationStats
from ringkv.core.replication.transfers import Transfer, TransferQueue
from ringkv.core.replication.view import ChainView
from ringkv.core.replies import ReplyCache
from ringkv.core.ring import Ring
from ringkv.core.storage import TOMBSTONE_TTL, Storage
from ringkv.wire import Addr, Send, peer
from ringkv.wire.codec import Command, Err, KVRequest
from ringkv.wire.peer import (
    Ack,
    Handoff,
    SyncConfirm,
    SyncData,
    SyncDone,
    SyncRequest,
    Write,
)

# Enum members, looked up once: a lookup through the class costs 10x a global's (3.11).
_GET, _REMOVE = Command.GET, Command.REMOVE
_FORWARD, _READ, _DROP = Action.FORWARD, Action.READ, Action.DROP

# Takes a peer message of one type, from a source address, at `now`.
PeerHandler = Callable[[Any, Addr, float], list[Send]]


class Replication:
    def __init__(
        self,
        index: int,
        servers: tuple[Addr, ...],
        ring: Ring,
        replicas: int,
        storage: Storage,
        replies: ReplyCache,
        clock_offset: float = 0.0,
        alive: frozenset[int] | None = None,
        config: ReplicationConfig | None = None,
    ) -> None:
        self.index = index
        self.servers = servers
        self.storage = storage
        self.replies = replies
        self.config = cfg = config or ReplicationConfig()
        self.stats = stats = ReplicationStats()
        # Healthy nodes (alive, not suspected) make the chains.
        self.view = view = ChainView(
            index, ring, replicas, frozenset(range(len(servers))) if alive is None else alive
        )
        self.writes = ChainWrites(view, servers, storage, replies, cfg, stats, clock_offset)
        self.slots = SlotTable(self.writes.stamp_at)
        self.transfers = TransferQueue(view, servers, cfg, stats)
        self.handoffs = Handoffs(view, servers, storage, cfg)
        self._hop_limits = HopLimits.of(cfg.max_hops, replicas)
        # Back from a pause or a suspicion until then: slots gained count as returning.
        self._returned_until = -math.inf
        # Since when every node has been alive in our view (None: not now): once it
        # has been `linger`, every member's answer to a full pull releases a hold.
        self._whole_since: float | None = None
        # The settling pull: when, which slots, and from which stamp on.
        self._settle_at: float | None = None
        self._settle_slots: set[int] = set()
        self._settle_since = 0
        self._roles: tuple[float, dict[str, int]] = (0.0, {})  # (recount after, counts)
        # This node ran late and has not heard the others' view since: it may have
        # been suspected and routed around, so it serves no read as the tail.
        self.in_doubt = False

    # -- client requests ------------------------------------------------------

    def on_key_request(
        self, message_id: bytes, request: KVRequest, data: bytes, client: Addr, hops: int,
        now: float,
    ) -> list[Send]:  # fmt: skip
        """A client's GET, PUT or REMOVE, from the client or forwarded `hops` times."""
        key = request.key
        slots, me = self.slots, self.index
        slot, chain = self.view.locate(key)
        is_read = request.command == _GET
        pulling, unsure, held_back = slots.facts(slot, key, self.storage.stamp_of)
        handed_on = self.writes.handed_on
        earlier = None if is_read else handed_on.get(message_id)
        decision = admit(
            is_read, chain, me, hops, pulling, self.in_doubt,
            None if earlier is None else earlier[0], self._hop_limits,
        )  # fmt: skip
        action = decision.action
        if decision.delegate:
            slots.delegate(slot)
        if action is _FORWARD:
            to = decision.to
            assert to is not None
            if decision.remember:
                handed_on[message_id] = (to, now + self.replies.retention)
            return [(peer.encode_forward(client, data, hops + 1), self.servers[to])]
        if action is _DROP:
            return []
        if action is _READ:
            is_tail = chain[-1] == me
            # Only a non-tail asks whether a write of the key is on its way down.
            in_flight = not is_tail and self.writes.in_flight(key)
            if not read_ready(unsure, held_back, is_tail, in_flight):
                return []  # no answer: the client's retry comes after the pull
            return [(self._read(message_id, key), client)]
        may_remove = request.command != _REMOVE or may_lead_remove(pulling, held_back)
        return self.writes.lead(message_id, request, client, slot, now, may_remove)

    def _read(self, message_id: bytes, key: bytes) -> bytes:
        entry = self.storage.get(key)
        if entry is None:
            return self.replies.answer(message_id, Err.NO_KEY)
        return self.replies.answer(message_id, Err.OK, value=entry[0], version=entry[1])

    # -- down the chain and back ------------------------------------------------

    def peer_handlers(self) -> dict[type, PeerHandler]:
        """The peer messages replication takes, and which of its parts takes each."""
        writes = self.writes
        return {
            Write: writes.on_replicate,
            Ack: writes.on_ack,
            SyncRequest: self.on_sync_request,
            SyncData: self.on_sync_data,
            SyncDone: self.on_sync_done,
            Handoff: self.on_handoff,
            SyncConfirm: self.on_sync_confirm,
        }

    # -- membership changes -----------------------------------------------------

    def on_membership(self, events: Sequence[MembershipEvent], now: float) -> list[Send]:
        """What membership learnt in one call, taken in the order that keeps reads safe.

        A pause or a suspicion first: every slot is pulled again, and a pause
        adopts the view it wakes up to without counting it as a change. Then
        doubt and who is not dead; then the view, if it changed.
        """
        view: ViewChanged | None = None
        for event in events:
            if isinstance(event, ViewChanged):
                view = event
            elif isinstance(event, DoubtChanged):
                self.in_doubt = event.in_doubt
        pause = next((e for e in reversed(events) if isinstance(e, Paused)), None)
        if pause is not None:
            if view is not None:
                self.view.alive = view.healthy
            self.on_pause(pause.gap, now)
        if any(isinstance(event, Suspected) for event in events):
            self.on_suspected(now)
        if view is None:
            return []
        self.view.not_dead = view.alive
        return self.on_view(view.healthy, now) if view.healthy != self.view.alive else []

    def on_view(self, alive: frozenset[int], now: float) -> list[Send]:
        """The set of live nodes changed: pull newly owned slots, plan the settling pull."""
        view, slots, linger = self.view, self.slots, self.config.linger
        old_alive, old_mine = view.change(alive)
        self.writes.note_view(old_alive, now)
        mine = view.mine
        gained = mine - old_mine
        slots.note_left(old_mine - mine, mine, now + linger)
        changed = {s for s in mine if view.chain(s) != view.chain_in(s, old_alive)}
        self._plan_settle(changed, now - self.config.lookback, now)
        for slot, _ in list(slots.pulls()):
            if slot not in mine:
                slots.synced(slot)
        self._mark(gained, now)
        if now < self._returned_until:
            slots.returning(gained)

        def gone_from(slot: int) -> set[int]:
            return {m for m in view.chain_in(slot, old_alive) if m not in alive}

        if now >= self._returned_until:  # just back, our view is old: who it loses left long ago
            slots.note_holders(mine, gone_from)
        slots.expire_former(mine, now)
        self._whole_since = now if len(alive) == len(self.servers) else None
        sends = self._hint_new_members(changed, old_alive)
        return sends + self._drop_transfers_from_departed(now)

    def _drop_transfers_from_departed(self, now: float) -> list[Send]:
        dropped, gating = self.transfers.drop_departed()
        if not dropped:
            return []
        for transfer in gating:
            self._give_up_on(transfer, now)
        return self._pump(now)

    def _hint_new_members(self, changed: set[int], old_alive: frozenset[int]) -> list[Send]:
        """As head of a changed chain, ask its new members to pull from us at once.

        A new member pulls on its own once it learns of the change, but which
        node learns first is chance; while the copies are too few, the next
        failure can take the last of them. A hint is a HANDOFF: the receiver
        pulls the slots from us without waiting.
        """
        view, me = self.view, self.index
        hints: dict[int, list[int]] = {}
        for slot in changed:
            chain = view.chain(slot)
            if chain[0] != me or self.slots.pulling(slot):
                continue  # one hint per chain, and only from a member that has the slot
            before = view.chain_in(slot, old_alive)
            for member in chain:
                if member not in before:
                    hints.setdefault(member, []).append(slot)
        return [
            (peer.encode_slots(Handoff(me, tuple(sorted(slots)))), self.servers[member])
            for member, slots in hints.items()
        ]

    def _plan_settle(self, slots: set[int], missed_since: float, now: float) -> None:
        """Pull these slots again `settle` after the last change, what is stamped since then."""
        since = self.writes.stamp_at(missed_since)
        self._settle_since = since if self._settle_at is None else min(self._settle_since, since)
        self._settle_slots |= slots
        self._settle_at = now + self.config.settle

    def on_start(self, now: float) -> None:
        """A new process may replace one that crashed: pull every slot before serving it.

        Its view starts with every node in it, and may see no change after (a
        whole cluster started together): if so, it is whole from now on.
        """
        self._whole_since = now if len(self.view.alive) == len(self.servers) else None
        self._mark(self.view.mine, now)
        self.slots.mark_fresh()

    def on_restored(self, now: float) -> None:
        """A new process that loaded a data directory: its copy may be as stale as a
        paused node's, not empty like a fresh one's, so it is not served while
        pulling (a fresh pull may serve reads). It pulls every slot whole, from the
        stand-ins too, and may hold what no sure source answers, as after a pause."""
        self.slots.note_departure(set(), now)  # no floor it could vouch with: unknown
        self.slots.not_fresh()
        self._plan_settle(self.view.mine, -self.writes.clock_offset, now)  # stamp 0 on
        self._mark(self.view.mine, now)
        self._returned(now)

    def on_pause(self, gap: float, now: float) -> None:
        """This node was stopped: nothing it holds can be trusted until pulled again."""
        missed_since = now - gap - self.config.lookback
        wiped = gap > TOMBSTONE_TTL
        self.slots.note_departure(set() if wiped else self.view.mine, now)
        if wiped:
            self.storage.wipe()  # its tombstones may be gone elsewhere: old copies must go
            missed_since = -self.writes.clock_offset  # wiped: all is missing (stamp 0 on)
        self._plan_settle(self.view.mine, missed_since, now)
        self._mark(self.view.mine, now, self.writes.stamp_at(missed_since))
        self._returned(now)

    def on_suspected(self, now: float) -> None:
        """Others suspected this node and may have routed writes around it: re-pull."""
        self.slots.note_departure(self.view.mine, now)
        since = self.writes.stamp_at(now - self.config.lookback)
        self._mark(self.view.mine, now, since)
        self._returned(now)

    def _returned(self, now: float) -> None:
        """Back from a pause or a suspicion: pull from stand-ins too, for `linger`."""
        self.slots.returned()
        self._returned_until = now + self.config.linger

    def _mark(self, slots: set[int], now: float, since: int = 0) -> None:
        """Stop serving these slots now; pull them once views have had time to agree.

        Pulling at once could miss writes that nodes with an older view still
        send around this node; join_delay later most views agree, and the
        settling pull after the last change catches what still went around.
        """
        if len(self.view.alive) < 2:
            return  # nobody to pull from: nothing to wait for
        self.slots.mark(slots, now, now + self.config.join_delay, since)

    # -- pulling ------------------------------------------------------------------

    def _pull_due(self, now: float) -> list[Send]:
        due = self.slots.due(now)
        return self._pull(set(due) & self.view.mine, now, gating=True) if due else []

    def _pull(self, slots: set[int], now: float, gating: bool, since: int = 0) -> list[Send]:
        table = self.slots
        if gating and slots:
            since = min(table.since(slot) for slot in slots)
        by_source: dict[int, list[int]] = {}
        for slot in sorted(slots):
            sources = self.view.others(slot)
            if gating:
                if table.asks_stand_ins(slot):
                    sources += self._stand_ins(slot, sources)
                if sources:
                    table.pull_sent(slot, sources)
                else:
                    table.synced(slot)
            for source in sources:
                by_source.setdefault(source, []).append(slot)
        for source, source_slots in by_source.items():
            self.transfers.enqueue(source, source_slots, gating, since=since)
        return self._pump(now)

    def _stand_ins(self, slot: int, sources: list[int]) -> list[int]:
        """Who may have kept the slot in this node's place while it was away.

        Its whole chain may have been away with it and be as stale as it is:
        the next R live nodes after the chain stood in for up to R members.
        """
        view = self.view
        away = view.chain_in(slot, view.alive, 2 * view.replicas)
        return [m for m in away if m not in sources and m != self.index]

    def _pump(self, now: float) -> list[Send]:
        sends, abandoned = self.transfers.pump(now)
        for transfer in abandoned:
            self._give_up_on(transfer, now)
        return sends

    def _pulled(self, slot: int, now: float) -> None:
        if self.slots.pulled(slot, now) and self.slots.hold_check_at is None:
            self.slots.hold_check_at = now + self.config.hold_retry

    def _give_up_on(self, transfer: Transfer, now: float) -> None:
        """The source died: the slot is as complete as the remaining members make it.

        Only a pull of the current round counts: a slot marked again since (an
        empty waiting set: not pulled yet) stays unpulled.
        """
        for slot in transfer.slots:
            if self.slots.source_gone(slot, transfer.source):
                self._pulled(slot, now)

    # -- transfer: serving and receiving ------------------------------------------

    def on_sync_request(self, request: SyncRequest, src: Addr, now: float) -> list[Send]:
        request_id, requester, since, slots = request
        if not self._sent_by(requester, src):
            return []
        wanted = set(slots)
        entries = [
            (key, value, version, stamp)
            for key, (value, version, stamp) in self.storage.entries_in(wanted)
            if stamp >= since
        ]
        outcomes = self.replies.outcomes_in(wanted)
        view, table = self.view, self.slots
        strangers = [s for s in slots if requester not in view.chain(s)]
        mine = view.mine
        unsure = {s: f for s in slots if (f := table.floor(s, s in mine, now))}
        # It left the chain while we were unsure: its copy until then, ours since.
        vouched = {s for s in unsure if table.vouches_for(s, requester)}
        batches = peer.encode_sync_batches(
            request_id, entries, outcomes, strangers, unsure, vouched
        )
        return [(batch, src) for batch in batches]

    def on_sync_data(self, batch: SyncData, src: Addr, now: float) -> list[Send]:
        transfer = self.transfers.on_batch(batch, src, now)
        if transfer is None:
            return []
        limit = self.writes.stamp_limit(now)
        self.stats.keys_pulled += len(batch.entries)
        for key, value, version, stamp in batch.entries:
            if stamp > limit:
                self.stats.refused_stamps += 1
            elif self.storage.apply(key, value, version, stamp, now):
                self.stats.keys_received += 1
        for message_id, err, slot in batch.outcomes:
            self.replies.put(message_id, err, now, slot)
        return self._maybe_complete(batch.request_id, now)

    def on_sync_done(self, done: SyncDone, src: Addr, now: float) -> list[Send]:
        if self.transfers.on_done(done, src) is None:
            return []
        return self._maybe_complete(done.request_id, now)

    def _maybe_complete(self, request_id: int, now: float) -> list[Send]:
        transfer = self.transfers.take_if_complete(request_id)
        if transfer is None:
            return []
        sends = self._finish_transfer(transfer, now)
        return sends + self._pump(now)

    def _finish_transfer(self, transfer: Transfer, now: float) -> list[Send]:
        if transfer.confirm:
            confirm = peer.encode_slots(SyncConfirm(self.index, tuple(transfer.slots)))
            return [(confirm, self.servers[transfer.source])]
        if not transfer.gating:
            if transfer.since == 0 and self.slots.any_held():
                self._end_holds(transfer)
            return []
        strangers = set(transfer.strangers)
        table = self.slots
        for slot in transfer.slots:
            if not table.pulling(slot):
                continue
            if slot in strangers:
                # The source may still route writes around us: ask again later.
                table.defer(slot, now + self.config.join_delay)
                continue
            floor = table.floor_with(slot, transfer.unsure, transfer.vouched)
            if not table.source_answered(slot, transfer.source, floor):
                continue  # others still to answer, or a pull of an earlier round
            if table.take_delegated(slot):
                # Writes went to the successor meanwhile, and it may be the only one to
                # have them yet: pull once more from every member, the successor too.
                table.defer(slot, now)
            else:
                self._pulled(slot, now)
        return []

    def _end_holds(self, transfer: Transfer) -> None:
        """A full pull answered by a member sure of the slot, or one that vouches
        for our copy (sure when we left): our copy is whole now.

        Or every node is back and has been for `linger` (pulls of returning
        nodes and handoffs of stand-ins done): once every other member has
        answered a full pull asked since, the copies of the whole chain are in
        ours.
        """
        strangers = set(transfer.strangers)
        whole_since = self._whole_since
        whole = whole_since is not None and transfer.asked_at >= whole_since + self.config.linger
        table = self.slots
        for slot in transfer.slots:
            if not table.has_hold(slot):
                continue
            if slot not in strangers:
                # Everything the source has is ours now, and it has all from its floor.
                floor = table.floor_with(slot, transfer.unsure, transfer.vouched)
                if floor == 0:
                    table.end_hold(slot)
                    continue
                table.lower_hold(slot, floor)
            if whole and table.released(slot, transfer.source, self.view.others(slot)):
                table.end_hold(slot)

    # -- time -------------------------------------------------------------------

    def on_tick(self, now: float) -> list[Send]:
        sends = self.writes.on_tick(now)
        sends.extend(self._pull_due(now))
        sends.extend(self._retry_transfers(now))
        if self._settle_at is not None and now >= self._settle_at:
            sends.extend(self._settle(now))
        sends.extend(self.handoffs.on_tick(now))
        hold_check_at = self.slots.hold_check_at
        if hold_check_at is not None and now >= hold_check_at:
            sends.extend(self._ask_about_holds(now))
        return sends

    def _ask_about_holds(self, now: float) -> list[Send]:
        """Pull held slots in full again: a member sure of one ends its hold."""
        table, mine = self.slots, self.view.mine
        table.expire_former(mine, now)
        held = {slot for slot, _ in table.held()}
        table.hold_check_at = now + self.config.hold_retry if held else None
        held &= mine
        return self._pull(held, now, gating=False, since=0) if held else []

    def next_due(self, now: float) -> float:
        """When on_tick next has work: `now` while anything waits on a timer, else never.

        In step with on_tick: a timer added there must be counted here.
        """
        if (
            self.writes.has_timers() or self.transfers or self.slots.pulls_waiting()
            or self._settle_at is not None or self.handoffs.has_timers()
            or self.slots.hold_check_at is not None
        ):  # fmt: skip
            return now
        return math.inf

    def _retry_transfers(self, now: float) -> list[Send]:
        for transfer in self.transfers.expire(now):
            self._give_up_on(transfer, now)
        return self._pump(now)

    def _settle(self, now: float) -> list[Send]:
        """Views have had time to agree: pull changed slots again, hand off what is not ours."""
        self._settle_at = None
        slots, self._settle_slots = self._settle_slots & self.view.mine, set()
        sends = self._pull(slots, now, gating=False, since=self._settle_since)
        return sends + self.handoffs.start(now)

    # -- handoffs -------------------------------------------------------------------

    def on_handoff(self, hint: Handoff, src: Addr, now: float) -> list[Send]:
        """A node holds keys of slots we are a member of: pull them, then confirm.

        From a member of the chain (a head's hint), slots we are still waiting
        to pull are pulled from every member at once, without waiting out
        join_delay: the head counts us already, and a copy is missing.
        """
        source, slots = hint
        if source == self.index or not self._sent_by(source, src):
            return []
        table, view = self.slots, self.view
        now_due = {s for s in slots if table.pull_waits(s) and source in view.chain(s)}
        for slot in now_due:
            table.pull_now(slot, now)
        rest = [s for s in slots if s not in now_due]
        if rest:
            self.transfers.enqueue(source, rest, False, confirm=True)
        return self._pull_due(now) if now_due else self._pump(now)

    def on_sync_confirm(self, confirm: SyncConfirm, src: Addr, now: float) -> list[Send]:
        if self._sent_by(confirm.sender, src):
            self.handoffs.on_confirm(confirm)
        return []

    def _sent_by(self, node: int, src: Addr) -> bool:
        """Does a message naming `node` as its sender come from that node's address?"""
        if self.servers[node] == src:
            return True
        self.stats.refused_senders += 1
        return False

    # -- status and checks ----------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise InvariantError if a slot's state breaks a rule (see slots.py)."""
        self.slots.check_invariants(self.index, self.view.mine)

    def roles(self, now: float) -> dict[str, int]:
        """Live keys held as head, middle and tail; O(keys), so recounted every 5 s at most."""
        if now < self._roles[0]:
            return self._roles[1]
        counts = {"head": 0, "middle": 0, "tail": 0}
        view, me = self.view, self.index
        for key, (value, _, _) in self.storage.items():
            if value is None:
                continue
            chain = view.ring.chain(key, view.alive, view.replicas)
            if chain and chain[0] == me:
                counts["head"] += 1
            elif chain and chain[-1] == me:
                counts["tail"] += 1
            elif me in chain:
                counts["middle"] += 1
        self._roles = (now + 5.0, counts)
        return counts

    def settle_planned(self) -> bool:
        """Is a settling pull still to come after the last view change?"""
        return self._settle_at is not None

    def transfers_in_progress(self) -> int:
        """Transfer requests in flight plus those the queued slots will need."""
        return self.transfers.count()

    def unsynced_slots(self) -> int:
        return sum(1 for _ in self.slots.pulls())

    def held_slots(self) -> int:
        """Slots of ours whose older keys get no answer (see SlotTable.pulled)."""
        mine = self.view.mine
        return sum(1 for slot, _ in self.slots.held() if slot in mine)

"""The transfer engine: pulls of ring slots from other nodes, queued and paced.

A pull asks one source for its keys of some slots (SYNC_REQUEST); the source
answers with numbered SYNC_DATA batches and a SYNC_DONE that says how many
there were. At most `max_transfers` pulls are in flight; the rest wait in a
queue, so a cluster-wide re-pull cannot flood receive buffers into a retry
storm. Pulls that may restore a missing copy (gating pulls of slots not yet
served, and pulls asked for by a hint or a handoff) go before settling
pulls, which only double-check copies already in place.

The queue knows nothing of what a slot's pull means: it hands back the
transfers that completed, and the gating ones whose source left the view.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ringkv.core.replication.config import ReplicationConfig
from ringkv.core.replication.stats import ReplicationStats
from ringkv.core.replication.view import ChainView
from ringkv.wire import Addr, Send, peer
from ringkv.wire.peer import SyncData, SyncDone, SyncRequest

# What a queued pull is for: (source, gating, confirm, since).
QueueKey = tuple[int, bool, bool, int]


@dataclass
class Transfer:
    """One pull in flight."""

    source: int
    slots: list[int]
    gating: bool  # the slots are not served until it completes
    sent_at: float  # when requested, or when the last batch came in
    confirm: bool = False  # tell the source when done (a handoff)
    since: int = 0  # only entries stamped since (0: all)
    received: set[int] = field(default_factory=set)
    expected: int | None = None
    strangers: tuple[int, ...] = ()  # slots the source leaves us out of
    # Slots the source may lack writes of -> the stamp from which on it has every write.
    unsure: dict[int, int] = field(default_factory=dict)
    vouched: frozenset[int] = frozenset()  # of those, the source vouches for us
    asked_at: float = 0.0  # when requested

    @property
    def complete(self) -> bool:
        return self.expected is not None and len(self.received) >= self.expected


class TransferQueue:
    def __init__(
        self, view: ChainView, servers: tuple[Addr, ...], config: ReplicationConfig,
        stats: ReplicationStats,
    ) -> None:  # fmt: skip
        self.view = view
        self.servers = servers
        self.config = config
        self.stats = stats
        self._request_ids = itertools.count(1)
        self._in_flight: dict[int, Transfer] = {}  # by request id
        # Slots waiting for a free place, by what they are pulled for: a slot asked
        # for again while it waits is not asked for twice.
        self._queue: dict[QueueKey, set[int]] = {}

    def __bool__(self) -> bool:
        """Anything in flight or queued (on_tick has work)."""
        return bool(self._in_flight or self._queue)

    def in_flight(self) -> list[Transfer]:
        return list(self._in_flight.values())

    def enqueue(
        self, source: int, slots: list[int], gating: bool, confirm: bool = False, since: int = 0
    ) -> None:
        self._queue.setdefault((source, gating, confirm, since), set()).update(slots)

    def pump(self, now: float) -> tuple[list[Send], list[Transfer]]:
        """Send queued requests while fewer than max_transfers are in flight.

        Returns the requests, and the gating pulls dropped because their
        source has left the view.
        """
        sends: list[Send] = []
        abandoned: list[Transfer] = []
        config = self.config
        while self._queue and len(self._in_flight) < config.max_transfers:
            key, waiting = self._next_queued()
            source, gating, confirm, since = key
            chunk = sorted(waiting)[: config.sync_chunk]
            waiting.difference_update(chunk)
            if not waiting:
                del self._queue[key]
            transfer = Transfer(source, chunk, gating, 0.0, confirm, since)
            if source not in self.view.alive:
                if gating:
                    abandoned.append(transfer)
                continue
            request_id = next(self._request_ids)
            transfer.sent_at = transfer.asked_at = now
            self._in_flight[request_id] = transfer
            request = SyncRequest(request_id, self.view.index, since, tuple(chunk))
            sends.append((peer.encode_sync_request(request), self.servers[source]))
        return sends, abandoned

    def _next_queued(self) -> tuple[QueueKey, set[int]]:
        """The oldest queued pull that may restore a missing copy, else the oldest settling pull.

        Pulls of slots not yet served and pulls asked for by a head's hint or a
        handoff may bring copies the chain lacks; a settling pull only
        double-checks copies already in place, and must not delay a repair
        racing the next failure.
        """
        for item in self._queue.items():
            _, gating, confirm, _ = item[0]
            if gating or confirm:
                return item
        return next(iter(self._queue.items()))

    def on_batch(self, batch: SyncData, src: Addr, now: float) -> Transfer | None:
        """A batch of a pull in flight from its source: the pull if the batch is new
        to us (to apply), else None."""
        transfer = self._from_source(batch.request_id, src)
        if transfer is None or batch.number in transfer.received:
            return None
        transfer.sent_at = now  # progress: a large transfer is not asked for again
        transfer.received.add(batch.number)
        return transfer

    def on_done(self, done: SyncDone, src: Addr) -> Transfer | None:
        transfer = self._from_source(done.request_id, src)
        if transfer is None:
            return None
        transfer.expected = done.batches
        transfer.strangers, transfer.unsure, transfer.vouched = (
            done.strangers, done.unsure, done.vouched
        )  # fmt: skip
        return transfer

    def _from_source(self, request_id: int, src: Addr) -> Transfer | None:
        """The pull in flight with this ID, if `src` is the node it was asked of."""
        transfer = self._in_flight.get(request_id)
        if transfer is None or self.servers[transfer.source] != src:
            return None
        return transfer

    def take_if_complete(self, request_id: int) -> Transfer | None:
        """The pull, out of flight, if every batch and the SYNC_DONE came."""
        transfer = self._in_flight.get(request_id)
        if transfer is None or not transfer.complete:
            return None
        del self._in_flight[request_id]
        self.stats.transfers_done += 1
        return transfer

    def expire(self, now: float) -> list[Transfer]:
        """Pulls without a batch for sync_retry: asked again if their source is alive;
        returns the gating ones whose source is not."""
        abandoned: list[Transfer] = []
        for request_id, transfer in list(self._in_flight.items()):
            if now - transfer.sent_at < self.config.sync_retry:
                continue
            del self._in_flight[request_id]
            self.stats.transfers_retried += 1
            if transfer.source in self.view.alive:
                self.enqueue(
                    transfer.source, transfer.slots, transfer.gating, transfer.confirm,
                    transfer.since,
                )  # fmt: skip
            elif transfer.gating:
                abandoned.append(transfer)
        return abandoned

    def drop_departed(self) -> tuple[bool, list[Transfer]]:
        """Free the places of pulls from nodes that left the view.

        Their batches will not come; waiting sync_retry for them would hold up
        the pulls queued behind, while the next failure may strike. Returns
        whether any was dropped, and the gating ones.
        """
        alive = self.view.alive
        departed = [rid for rid, t in self._in_flight.items() if t.source not in alive]
        gating = [t for rid in departed if (t := self._in_flight.pop(rid)).gating]
        return bool(departed), gating

    def count(self) -> int:
        """Requests in flight plus those the queued slots will need."""
        chunk = self.config.sync_chunk
        queued = sum(-(-len(slots) // chunk) for slots in self._queue.values())
        return len(self._in_flight) + queued

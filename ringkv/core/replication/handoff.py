"""Handoff of slots no longer ours: keys this node holds of a slot whose chain it
has left go to the chain's members before they are dropped.

After each settling pull, the node lists the slots it holds keys of without
being a member and asks every member to pull them (HANDOFF), again every
`handoff_retry`, until each has confirmed (SYNC_CONFIRM); only then are the
keys dropped, with no tombstone: the members have them.
"""

from __future__ import annotations

from ringkv.core.replication.config import ReplicationConfig
from ringkv.core.replication.view import ChainView
from ringkv.core.storage import Storage
from ringkv.wire import Addr, Send, peer
from ringkv.wire.peer import Handoff, SyncConfirm


class Handoffs:
    def __init__(
        self, view: ChainView, servers: tuple[Addr, ...], storage: Storage,
        config: ReplicationConfig,
    ) -> None:  # fmt: skip
        self.view = view
        self.servers = servers
        self.storage = storage
        self.config = config
        self._unconfirmed: dict[int, set[int]] = {}  # foreign slot -> members yet to confirm
        self._hint_at: float | None = None

    def has_timers(self) -> bool:
        return self._hint_at is not None

    def start(self, now: float) -> list[Send]:
        """Hand off every slot we hold keys of and are no member of (again, from scratch)."""
        view = self.view
        foreign = self.storage.groups() - view.mine
        self._unconfirmed = {slot: set(view.chain(slot)) for slot in foreign}
        self._hint_at = now
        return self.on_tick(now)

    def on_tick(self, now: float) -> list[Send]:
        if self._hint_at is None or now < self._hint_at:
            return []
        self._hint_at = now + self.config.handoff_retry if self._unconfirmed else None
        by_member: dict[int, list[int]] = {}
        for slot, members in self._unconfirmed.items():
            for member in members:
                by_member.setdefault(member, []).append(slot)
        index = self.view.index
        return [
            (peer.encode_slots(Handoff(index, tuple(slots))), self.servers[member])
            for member, slots in by_member.items()
        ]

    def on_confirm(self, confirm: SyncConfirm) -> None:
        """A member has our keys of these slots: once all members do, drop them."""
        member, slots = confirm
        done: set[int] = set()
        for slot in slots:
            waiting = self._unconfirmed.get(slot)
            if waiting is None:
                continue
            waiting.discard(member)
            if not waiting:
                del self._unconfirmed[slot]
                if slot not in self.view.mine:
                    done.add(slot)
        for key, _ in self.storage.entries_in(done):
            self.storage.remove(key)  # no tombstone: the members have it

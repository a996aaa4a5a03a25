"""White-box replica accounting: when did the last running copy of a key go down?

The promise under test is "no acknowledged write is lost while fewer than R
replicas fail at once". From the outside that is hard to judge, because the
chain of a key moves as nodes fail and data is transferred. The simulator can
look inside: each time a node goes down, for every key it holds, find the
nodes holding the newest copy; if none of them is still running, the key is
exposed, and the number of copies says whose fault a loss would be:

- R copies or more, all down: the failure the promise allows; a later loss
  or unavailable read of that key is excused;
- fewer than R: the key was under-replicated when its last copy went down
  (a write acknowledged before it reached every member, or re-replication too
  slow); nothing is excused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ringkv.core.storage import Storage
from ringkv.sim.cluster import SimNode, Simulator


@dataclass(frozen=True, slots=True)
class Exposure:
    key: bytes
    at: float
    copies: int  # nodes holding the newest copy, none of them running


@dataclass
class ReplicaTracker:
    sim: Simulator
    replicas: int
    exposures: dict[bytes, list[Exposure]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sim.down_hooks.append(self._on_down)

    def excused(
        self, key: bytes, after: float = float("-inf"), before: float = float("inf")
    ) -> bool:
        """Were R copies of the key down at once at some time in [after, before]?"""
        return any(
            e.copies >= self.replicas and after <= e.at <= before
            for e in self.exposures.get(key, ())
        )

    def thin_keys(self) -> list[bytes]:
        """Keys whose last running copy went down with fewer than R copies, sorted."""
        return sorted(
            key
            for key, found in self.exposures.items()
            if any(e.copies < self.replicas for e in found)
        )

    def well_replicated_keys(self) -> list[bytes]:
        return sorted(key for key in self.exposures if self.excused(key))

    def _on_down(self, index: int, node: SimNode) -> None:
        storage = getattr(node, "storage", None)
        if storage is None:
            return  # not a full node: nothing stored
        others = self._other_stores(index)
        for key, entry in storage.items():
            if entry[0] is None:
                continue  # a tombstone: nothing to lose
            copies = _copies_if_exposed(others, key, entry[2])
            if copies is not None:
                self.exposures.setdefault(key, []).append(Exposure(key, self.sim.now, copies))

    def _other_stores(self, going: int) -> list[tuple[Storage, bool]]:
        """(storage, running?) of every other node that has one."""
        sim = self.sim
        found = []
        for i in range(len(sim)):
            storage = getattr(sim.node(i), "storage", None)
            if i != going and storage is not None:
                found.append((storage, not sim.is_down(i)))
        return found


def _copies_if_exposed(others: list[tuple[Storage, bool]], key: bytes, stamp: int) -> int | None:
    """Copies of the key's newest entry if none of them is running, else None.

    The node going down holds one copy at `stamp`; a newer removal elsewhere
    means there is nothing left to lose.
    """
    newest, copies, running, removed = stamp, 1, False, False
    for storage, is_running in others:
        entry = storage.entry(key)
        if entry is None or entry[2] < newest:
            continue
        if entry[2] > newest:
            newest, copies, running = entry[2], 0, False
        copies += 1
        running = running or is_running
        removed = entry[0] is None
    return None if running or removed else copies

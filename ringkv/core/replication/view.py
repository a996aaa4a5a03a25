"""Who this node sees in each slot's chain: the one place a role comes from."""

from __future__ import annotations

from ringkv.core.ring import Ring, key_position


class ChainView:
    """The ring seen through this node's view of who is healthy.

    `alive` (healthy: alive and not suspected) makes the chains; `not_dead`
    (alive or suspect) are the nodes that may still serve, and so still get
    writes meant for them. `mine` is the slots whose chain has this node.
    """

    def __init__(self, index: int, ring: Ring, replicas: int, alive: frozenset[int]) -> None:
        self.index = index
        self.ring = ring
        self.replicas = replicas
        self.alive = alive
        self.not_dead = alive
        self.mine = ring.slots_with(index, alive, replicas)

    def slot_of(self, key: bytes) -> int:
        return self.ring.slot_of(key_position(key))

    def locate(self, key: bytes) -> tuple[int, tuple[int, ...]]:
        """The key's slot and its chain (the request path asks both at once)."""
        ring = self.ring
        slot = ring.slot_of(key_position(key))
        return slot, ring.chain_at(slot, self.alive, self.replicas)

    def chain(self, slot: int) -> tuple[int, ...]:
        """The slot's chain, head first, as this node sees it now."""
        return self.ring.chain_at(slot, self.alive, self.replicas)

    def chain_in(
        self, slot: int, alive: frozenset[int], length: int | None = None
    ) -> tuple[int, ...]:
        """The slot's chain in another view (an older one), or a longer one."""
        return self.ring.chain_at(slot, alive, self.replicas if length is None else length)

    def others(self, slot: int) -> list[int]:
        """The slot's chain without this node."""
        return [m for m in self.chain(slot) if m != self.index]

    def change(self, alive: frozenset[int]) -> tuple[frozenset[int], set[int]]:
        """Move to a new view; return the old view and the slots that were ours in it."""
        old_alive, old_mine = self.alive, self.mine
        self.alive = alive
        self.mine = self.ring.slots_with(self.index, alive, self.replicas)
        return old_alive, old_mine

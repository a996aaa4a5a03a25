"""Consistent hashing with virtual nodes over the server list.

Node identity is the node's index (0..n-1) in servers.txt. Every node owns
`vnodes` virtual nodes; their order around the ring comes from mmh3 of
f"{index}#{v}" (never Python's `hash()`, which is salted per process), so
every process builds the same ring.

Balance: random vnode positions give each node a share whose spread is about
1/sqrt(vnodes) (±25 % at 40 nodes and 128 vnodes, ±8 % even at 1024). So the
ring keeps the hashed *order* of the vnodes but spaces them evenly: the key
space [0, 2**64) is cut into Q = n * vnodes equal slots and slot k belongs to
the k-th vnode in hashed order. Every node then owns exactly 1/n of the keys
as primary, a key's slot is one multiply and shift (no bisect), and the
successors of a node's slots are still a well-mixed sample of the others, so
a dead node's keys spread over many nodes. Liveness changes (the only ones a
fixed server list has) move only the keys whose chain held the node. The
price: changing the *length* of servers.txt reshuffles ownership, which a
restart with a new server list does anyway.

A key's chain is the first r distinct live owners clockwise from its slot,
memoised per slot for each alive set (a small LRU of alive sets), so the hot
path is a hash, a shift, an identity check and a list index.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict

import mmh3

SPACE = 1 << 64  # key positions are unsigned 64-bit
DEFAULT_VNODES = 128
_CACHED_VIEWS = 8  # alive sets memoised; membership changes rarely

Arc = tuple[int, int]  # half-open [lo, hi) range of key positions
_Table = list[tuple[int, ...] | None]
_View = tuple[frozenset[int], _Table]  # (live members of the ring, chains by slot)


def key_position(key: bytes) -> int:
    """Stable 64-bit position of a key (independent of PYTHONHASHSEED)."""
    return mmh3.hash64(key, signed=False)[0]


def ranges_contain(ranges: list[Arc], position: int) -> bool:
    """Whether a position lies in sorted, disjoint ranges (as from `Ring.owned_ranges`)."""
    i = bisect_right(ranges, (position, SPACE)) - 1
    return i >= 0 and ranges[i][0] <= position < ranges[i][1]


class Ring:
    """The ring of a server list of `n_nodes` nodes; immutable once built."""

    def __init__(self, n_nodes: int, vnodes: int = DEFAULT_VNODES) -> None:
        if n_nodes < 1 or vnodes < 1:
            raise ValueError("a ring needs at least one node and one vnode")
        self.n_nodes = n_nodes
        self.vnodes = vnodes
        self.slots = n_nodes * vnodes
        self._owners = _hashed_order(n_nodes, vnodes)
        self._slots_of_node: list[list[int]] = [[] for _ in range(n_nodes)]
        for slot, owner in enumerate(self._owners):
            self._slots_of_node[owner].append(slot)
        self._all = frozenset(range(n_nodes))
        self._views: OrderedDict[tuple[frozenset[int], int], _View] = OrderedDict()
        self._last: tuple[frozenset[int] | None, int, _View] = (None, -1, (self._all, []))

    def slot_of(self, position: int) -> int:
        return (position * self.slots) >> 64

    def slot_arc(self, slot: int) -> Arc:
        """Key positions [lo, hi) of a slot (ceil of the exact boundaries)."""
        q = self.slots
        return (-((-slot * SPACE) // q), -((-(slot + 1) * SPACE) // q))

    def owner_of_slot(self, slot: int) -> int:
        return self._owners[slot]

    def chain(self, key: bytes, alive: frozenset[int] | None = None, r: int = 3) -> tuple[int, ...]:
        """Head-first chain of the first r distinct live nodes at the key."""
        return self.chain_at(self.slot_of(key_position(key)), alive, r)

    def chain_at(
        self, slot: int, alive: frozenset[int] | None = None, r: int = 3
    ) -> tuple[int, ...]:
        live, table = self._view(alive, r)
        found = table[slot]
        if found is None:
            found = table[slot] = self._walk(slot, live, r)
        return found

    def primary(self, key: bytes, alive: frozenset[int] | None = None) -> int | None:
        """The key's first live node, or None when nobody is alive."""
        found = self.chain(key, alive, 1)
        return found[0] if found else None

    def in_chain(
        self, node: int, key: bytes, alive: frozenset[int] | None = None, r: int = 3
    ) -> bool:
        return node in self.chain(key, alive, r)

    def slots_with(self, node: int, alive: frozenset[int] | None = None, r: int = 3) -> set[int]:
        """The slots whose chain contains `node`, in O(vnodes * r) rather than O(slots).

        A slot's chain reaches one of the node's own slots exactly when fewer than r
        other distinct live owners stand between them, so walk back from each of the
        node's slots until r others have been passed.
        """
        members = self._all if alive is None else alive
        if node not in members:
            return set()
        owners, q = self._owners, self.slots
        found: set[int] = set()
        for mine in self._slots_of_node[node]:
            others: set[int] = set()
            for step in range(q):
                slot = (mine - step) % q
                owner = owners[slot]
                if owner != node and owner in members:
                    others.add(owner)
                    if len(others) >= r:
                        break
                found.add(slot)
        return found

    def owned_ranges(self, node: int, alive: frozenset[int] | None = None, r: int = 3) -> list[Arc]:
        """Sorted, merged key-position ranges whose chain contains `node`.

        O(slots): meant for planning key transfers, not for the hot path.
        """
        merged: list[Arc] = []
        for slot in range(self.slots):
            if node not in self.chain_at(slot, alive, r):
                continue
            lo, hi = self.slot_arc(slot)
            if merged and merged[-1][1] == lo:
                merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return merged

    def _view(self, alive: frozenset[int] | None, r: int) -> _View:
        last_alive, last_r, view = self._last
        if alive is last_alive and r == last_r:
            return view
        members = self._all if alive is None else alive
        found = self._views.get((members, r))
        if found is None:
            # Unknown indexes are dropped so that a walk can stop after r live nodes.
            found = (members & self._all, [None] * self.slots)
            self._views[(members, r)] = found
            if len(self._views) > _CACHED_VIEWS:
                self._views.popitem(last=False)
        else:
            self._views.move_to_end((members, r))
        self._last = (alive, r, found)
        return found

    def _walk(self, slot: int, alive: frozenset[int], r: int) -> tuple[int, ...]:
        # Walk clockwise; stop after r distinct live owners or one full turn.
        want = min(r, len(alive))
        found: list[int] = []
        owners = self._owners
        q = self.slots
        for step in range(q):
            if len(found) >= want:
                break
            node = owners[(slot + step) % q]
            if node in alive and node not in found:
                found.append(node)
        return tuple(found)


def _hashed_order(n_nodes: int, vnodes: int) -> list[int]:
    """Owners of the vnodes sorted by their stable hash (ties by index)."""
    points = sorted(
        (mmh3.hash64(f"{i}#{v}".encode(), signed=False)[0], i)
        for i in range(n_nodes)
        for v in range(vnodes)
    )
    return [node for _, node in points]

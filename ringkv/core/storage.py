"""The node's key -> (value, version, stamp) map, counted against a memory budget.

Every write carries a stamp, ordered per key across the whole cluster (see
replication). A copy of a key only ever moves forward: `apply` keeps the
higher stamp. A remove leaves a tombstone (value None) with its stamp, so an
older copy arriving later from a node that missed the remove cannot bring
the key back; tombstones are collected after `TOMBSTONE_TTL`. They count
against the budget, and their share of it is capped (`TOMBSTONE_SHARE`):
beyond it the oldest go early, so that REMOVEs of keys that never existed
cannot crowd out the values (an older copy of such a key, arriving after
its tombstone went, could come back: the price of a bounded store).

Keys can be indexed by group (replication uses ring slots), so that the
keys of a few slots are found without a scan of the whole store; a one-node
deployment, which never transfers, keeps no index.

Each entry is kept as ONE bytes object: a 12-byte header (stamp as an
unsigned 64-bit integer, as on the wire; version as a signed 32-bit one)
followed by the value; a tombstone is the 8-byte stamp alone. A 3-tuple and
a stamp int per key cost ~95 B more (overhead 230-250 B instead of 130-150 B
beside key and value). The public methods unpack an entry into (value,
version, stamp) when they return it, so `get` copies the value once.

A durable node (`--data-dir`) asks the store to keep a journal of what
changed (`record_changes`): every key written, removed or collected since the
last `take_changes`, with its packed entry as it now stands, or None for
gone. The runtime commits that to disk before it sends anything the changes
made possible, and `restore` puts a committed store back at start.

Memory is accounted on stored bytes: key and value lengths plus a fixed
per-entry overhead, ENTRY_OVERHEAD, for what CPython spends besides them:
the dict slot, the two bytes headers and the entry header. A write that
would take the total past the budget is refused and stores nothing; the
node answers it with errCode 2.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator

# Key and entry object headers (2 x 33 B), entry header (12 B), allocator
# rounding and the dict slot (grows with the table); resident size measured
# on CPython 3.11 at 130-150 B per entry (100k-170k keys, 10-1000 B values).
ENTRY_OVERHEAD = 150
TOMBSTONE_TTL = 300.0  # seconds; a node paused longer than this drops its copies
TOMBSTONE_SHARE = 8  # tombstones take at most 1/8 of the budget; the oldest go first

Entry = tuple[bytes | None, int, int]  # value (None: removed), version, stamp
LiveEntry = tuple[bytes, int, int]  # a key's value, version and stamp

_HEAD = struct.Struct("<Qi")  # stamp, version; the value follows
_HEAD_SIZE = _HEAD.size  # a live entry is at least this long, a tombstone shorter
_STAMP = struct.Struct("<Q")  # a tombstone, and the first field of every entry
_pack_head, _unpack_head = _HEAD.pack, _HEAD.unpack_from
_pack_stamp, _unpack_stamp = _STAMP.pack, _STAMP.unpack_from


def _unpack(packed: bytes) -> Entry:
    if len(packed) < _HEAD_SIZE:
        return None, 0, _unpack_stamp(packed)[0]
    stamp, version = _unpack_head(packed)
    return packed[_HEAD_SIZE:], version, stamp


class CorruptEntry(ValueError):
    """A packed entry that `restore` cannot take (a damaged or foreign data file)."""


class Storage:
    __slots__ = (
        "_data", "_group", "_groups", "_journal", "_tombstones", "_wiped", "budget", "live",
        "tombstone_bytes", "used",
    )  # fmt: skip

    def __init__(self, budget_bytes: int, group: Callable[[bytes], int] | None = None) -> None:
        self._data: dict[bytes, bytes] = {}  # key -> packed entry
        self._group = group  # key -> group (a ring slot), or None for no index
        self._groups: dict[int, set[bytes]] = {}
        # (when, key, the tombstone object stored): collected only if still the same one
        self._tombstones: deque[tuple[float, bytes, bytes]] = deque()
        self.budget = budget_bytes
        self.used = 0
        self.tombstone_bytes = 0  # the tombstones' part of `used`
        self.live = 0  # keys with a value (not tombstones)
        self._journal: dict[bytes, bytes | None] | None = None  # None: nobody asked
        self._wiped = False  # since the last take_changes

    def __len__(self) -> int:
        return self.live

    def get(self, key: bytes) -> LiveEntry | None:
        """The live entry of a key, None if absent or removed."""
        packed = self._data.get(key)
        if packed is None or len(packed) < _HEAD_SIZE:
            return None
        stamp, version = _unpack_head(packed)  # inline: the read path
        return packed[_HEAD_SIZE:], version, stamp

    def entry(self, key: bytes) -> Entry | None:
        """The raw entry, tombstones included."""
        packed = self._data.get(key)
        return None if packed is None else _unpack(packed)

    def stamp_of(self, key: bytes) -> int:
        packed = self._data.get(key)
        return _unpack_stamp(packed)[0] if packed is not None else 0

    def fits(self, key: bytes, value: bytes) -> bool:
        delta = _delta(key, value, self._data.get(key))
        return delta <= 0 or self.used + delta <= self.budget

    def put(
        self, key: bytes, value: bytes, version: int, stamp: int = 0, group: int | None = None
    ) -> bool:
        """Store the entry; False (and nothing stored) if it would exceed the budget."""
        old = self._data.get(key)
        delta = _delta(key, value, old)
        if delta > 0 and self.used + delta > self.budget:
            return False
        packed = _pack_head(stamp, version) + value  # raises on a bad field before any change
        if old is None or len(old) < _HEAD_SIZE:
            self.live += 1
            if old is not None:
                self.tombstone_bytes -= len(key) + ENTRY_OVERHEAD
        if old is None:
            self._index(key, group)
        self._data[key] = packed
        self.used += delta
        if self._journal is not None:
            self._journal[key] = packed
        return True

    def remove(
        self, key: bytes, stamp: int = 0, now: float = 0.0, group: int | None = None
    ) -> bool:
        """Remove a key; True if it had a value. A stamped remove leaves a tombstone."""
        old = self._data.get(key)
        existed = old is not None and len(old) >= _HEAD_SIZE
        if old is not None:
            self.used -= _size(key, old)
            del self._data[key]
            if not existed:
                self.tombstone_bytes -= len(key) + ENTRY_OVERHEAD
        if existed:
            self.live -= 1
        if stamp:
            if old is None:
                self._index(key, group)
            self._data[key] = tombstone = _pack_stamp(stamp)
            self.used += len(key) + ENTRY_OVERHEAD
            self.tombstone_bytes += len(key) + ENTRY_OVERHEAD
            self._tombstones.append((now, key, tombstone))
            if self._journal is not None:
                self._journal[key] = tombstone
            self._shed_tombstones()
        elif old is not None:
            self._unindex(key)
            if self._journal is not None:
                self._journal[key] = None
        return existed

    def apply(
        self, key: bytes, value: bytes | None, version: int, stamp: int, now: float,
        group: int | None = None,
    ) -> bool:  # fmt: skip
        """Take a replicated or transferred copy if it is newer than ours.

        `group`, when the caller knows it, spares the index hashing the key again.
        """
        old = self._data.get(key)
        if old is not None and _unpack_stamp(old)[0] >= stamp:
            return False
        if value is None:
            self.remove(key, stamp, now, group)
            return True
        return self.put(key, value, version, stamp, group)

    def collect_tombstones(self, now: float, ttl: float = TOMBSTONE_TTL) -> None:
        queue = self._tombstones
        while queue and queue[0][0] + ttl <= now:
            self._drop_oldest_tombstone()

    def _shed_tombstones(self) -> None:
        """Drop the oldest tombstones while they take more than their share of the
        budget, or the queue (which also holds tombstones written over since) is
        longer than that share could hold twice."""
        queue, cap = self._tombstones, self.budget // TOMBSTONE_SHARE
        longest = 2 * cap // ENTRY_OVERHEAD
        while queue and (self.tombstone_bytes > cap or len(queue) > longest):
            self._drop_oldest_tombstone()

    def _drop_oldest_tombstone(self) -> None:
        _, key, tombstone = self._tombstones.popleft()
        if self._data.get(key) is tombstone:  # not written or removed again since
            del self._data[key]
            self._unindex(key)
            self.used -= len(key) + ENTRY_OVERHEAD
            self.tombstone_bytes -= len(key) + ENTRY_OVERHEAD
            if self._journal is not None:
                self._journal[key] = None

    def wipe(self) -> None:
        if self._journal is not None:
            self._journal.clear()
            self._wiped = True
        self._data.clear()
        self._groups.clear()
        self._tombstones.clear()
        self.used = 0
        self.tombstone_bytes = 0
        self.live = 0

    # -- durability ------------------------------------------------------------------

    def record_changes(self) -> None:
        """From now on, keep what changed for `take_changes`."""
        self._journal = {}

    def take_changes(self) -> tuple[bool, dict[bytes, bytes | None]]:
        """(wiped since the last call, key -> packed entry now or None for gone); the
        journal starts afresh. A wipe comes first: the changes after it follow."""
        if self._journal is None:
            raise TypeError("this store keeps no journal (record_changes)")
        wiped, changes = self._wiped, self._journal
        self._wiped, self._journal = False, {}
        return wiped, changes

    def restore(self, entries: Iterable[tuple[bytes, bytes]], now: float) -> None:
        """Take back packed entries as `take_changes` gave them, into an empty store.

        Tombstones are kept for a whole TOMBSTONE_TTL from `now`. Raises
        CorruptEntry for an entry that cannot be one of ours, and MemoryError
        when they do not fit the budget (a smaller --memory-mb than they had).
        """
        if self._data:
            raise ValueError("restore needs an empty store")
        for key, packed in entries:
            size = len(packed)
            if not key or (size < _HEAD_SIZE and size != _STAMP.size):
                raise CorruptEntry(f"key {key[:40]!r}: an entry of {size} bytes")
            self._data[key] = packed
            self._index(key, None)
            self.used += _size(key, packed)
            if size < _HEAD_SIZE:
                self.tombstone_bytes += len(key) + ENTRY_OVERHEAD
                self._tombstones.append((now, key, packed))
            else:
                self.live += 1
        if self.used > self.budget:
            raise MemoryError(f"{self.used:,} bytes stored, over the budget of {self.budget:,}")

    def items(self) -> Iterator[tuple[bytes, Entry]]:
        """A snapshot of every entry, tombstones included."""
        snapshot = list(self._data.items())  # unpacked one by one: no second copy of the store
        return ((key, _unpack(packed)) for key, packed in snapshot)

    def groups(self) -> set[int]:
        """The groups that hold at least one entry (tombstones included)."""
        if self._group is None:
            raise TypeError("this store keeps no group index")
        return set(self._groups)

    def entries_in(self, groups: Iterable[int]) -> list[tuple[bytes, Entry]]:
        """The entries (tombstones included) of keys in these groups."""
        if self._group is None:
            raise TypeError("this store keeps no group index")
        data, index = self._data, self._groups
        return [(key, _unpack(data[key])) for group in groups for key in index.get(group, ())]

    def _index(self, key: bytes, group: int | None) -> None:
        if self._group is not None:
            if group is None:
                group = self._group(key)
            self._groups.setdefault(group, set()).add(key)

    def _unindex(self, key: bytes) -> None:
        if self._group is not None:
            group = self._group(key)
            keys = self._groups.get(group)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._groups[group]


def _delta(key: bytes, value: bytes, old: bytes | None) -> int:
    """How much `used` grows if `value` replaces the packed entry `old` of `key`."""
    if old is None:
        return len(key) + len(value) + ENTRY_OVERHEAD
    return len(value) - max(0, len(old) - _HEAD_SIZE)


def _size(key: bytes, packed: bytes) -> int:
    return len(key) + max(0, len(packed) - _HEAD_SIZE) + ENTRY_OVERHEAD

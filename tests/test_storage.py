"""Storage accounting and the at-most-once reply cache."""

from __future__ import annotations

import struct
import sys
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.core.replies import ReplyCache
from ringkv.core.storage import ENTRY_OVERHEAD, TOMBSTONE_SHARE, CorruptEntry, Storage


def test_put_get_remove_and_accounting() -> None:
    store = Storage(budget_bytes=10_000)
    assert store.put(b"k", b"v" * 10, 3)
    assert store.get(b"k") == (b"v" * 10, 3, 0)
    assert store.used == 1 + 10 + ENTRY_OVERHEAD
    assert store.put(b"k", b"w" * 4, 4)
    assert store.used == 1 + 4 + ENTRY_OVERHEAD
    assert store.remove(b"k")
    assert not store.remove(b"k")
    assert store.used == 0 and len(store) == 0


def test_put_over_budget_refused_and_nothing_stored() -> None:
    store = Storage(budget_bytes=1_000)
    assert store.put(b"a", b"x" * 500, 0)
    used = store.used
    assert not store.put(b"b", b"y" * 500, 0)
    assert store.get(b"b") is None and store.used == used
    # Growing an existing value past the budget is refused too; the old value stays.
    assert not store.put(b"a", b"z" * 2_000, 1)
    assert store.get(b"a") == (b"x" * 500, 0, 0)
    # Shrinking always fits.
    assert store.put(b"a", b"", 2)


def test_wipe_frees_everything() -> None:
    store = Storage(budget_bytes=1 << 20)
    for i in range(100):
        store.put(str(i).encode(), b"x" * 100, 0)
    store.wipe()
    assert len(store) == 0 and store.used == 0


def test_reply_cache_keeps_outcomes_for_retention_then_expires() -> None:
    cache = ReplyCache(retention=5.0)
    cache.put(b"a", 0, now=100.0)
    cache.put(b"b", 1, now=102.0)
    cache.expire(104.9)
    assert cache.get(b"a") == 0
    cache.expire(105.0)
    assert cache.get(b"a") is None and cache.get(b"b") == 1
    cache.expire(107.0)
    assert len(cache) == 0


def test_reply_cache_retention_is_at_least_the_window() -> None:
    cache = ReplyCache(retention=5.0)
    cache.put(b"a", 0, now=100.4)  # buckets round expiry up, never down
    cache.expire(105.39)
    assert cache.get(b"a") == 0


def test_reply_cache_first_outcome_wins() -> None:
    cache = ReplyCache()
    cache.put(b"a", 0, now=0.0)
    cache.put(b"a", 1, now=1.0)
    assert cache.get(b"a") == 0


def test_reply_cache_memory_is_bounded() -> None:
    cache = ReplyCache(retention=60.0, max_entries=5_000)
    for i in range(10_000):
        cache.put(i.to_bytes(16, "big"), 0, now=float(i) / 1000)
    assert len(cache) <= 5_000
    assert cache.get((9_999).to_bytes(16, "big")) == 0  # newest kept
    assert cache.get((0).to_bytes(16, "big")) is None  # oldest dropped early


def test_apply_keeps_the_newer_stamp() -> None:
    store = Storage(budget_bytes=1 << 20)
    assert store.apply(b"k", b"new", 2, stamp=20, now=0.0)
    assert not store.apply(b"k", b"old", 1, stamp=10, now=0.0)
    assert store.get(b"k") == (b"new", 2, 20)


def test_stamped_remove_leaves_a_tombstone_that_beats_older_copies() -> None:
    store = Storage(budget_bytes=1 << 20)
    store.put(b"k", b"v", 0, stamp=10)
    assert store.remove(b"k", stamp=11, now=5.0)
    assert store.get(b"k") is None and len(store) == 0
    assert not store.apply(b"k", b"v", 0, stamp=10, now=6.0)  # the old copy stays dead
    assert store.get(b"k") is None
    assert store.apply(b"k", b"again", 0, stamp=12, now=6.0)  # a newer write wins
    assert store.get(b"k") == (b"again", 0, 12)


def test_tombstones_collected_after_ttl() -> None:
    store = Storage(budget_bytes=1 << 20)
    store.put(b"k", b"v", 0, stamp=1)
    store.remove(b"k", stamp=2, now=0.0)
    store.collect_tombstones(now=10.0, ttl=60.0)
    assert store.entry(b"k") == (None, 0, 2)
    store.collect_tombstones(now=60.0, ttl=60.0)
    assert store.entry(b"k") is None and store.used == 0


def test_live_count_and_accounting_through_tombstones() -> None:
    store = Storage(budget_bytes=1 << 20)
    store.put(b"a", b"1234", 0, stamp=1)
    store.remove(b"a", stamp=2, now=0.0)
    assert len(store) == 0 and store.used == 1 + ENTRY_OVERHEAD
    store.apply(b"a", b"12", 0, stamp=3, now=0.0)
    assert len(store) == 1 and store.used == 1 + 2 + ENTRY_OVERHEAD


def test_group_index_follows_every_change() -> None:
    store = Storage(1 << 20, group=lambda key: key[0] % 3)
    for key in (b"a", b"b", b"c", b"d"):  # groups 1, 2, 0, 1
        store.put(key, b"v", 1, stamp=1)
    assert store.groups() == {0, 1, 2}
    assert sorted(k for k, _ in store.entries_in({1})) == [b"a", b"d"]
    store.remove(b"b", stamp=2, now=0.0)  # a tombstone stays findable: transfers carry it
    assert [(k, e[0]) for k, e in store.entries_in({2})] == [(b"b", None)]
    store.collect_tombstones(now=1e9)
    assert store.groups() == {0, 1}
    store.remove(b"c")  # no stamp: gone, with its group
    assert store.groups() == {1}
    store.wipe()
    assert store.groups() == set()
    assert store.entries_in({0, 1, 2}) == []


def test_a_store_without_an_index_says_so() -> None:
    with pytest.raises(TypeError):
        Storage(1 << 20).groups()


def test_a_group_the_caller_knows_is_not_computed_again() -> None:
    def never(key: bytes) -> int:
        raise AssertionError("the index hashed a key whose group it was given")

    store = Storage(1 << 20, group=never)
    store.apply(b"a", b"v", 1, 5, 0.0, group=7)
    store.apply(b"b", None, 0, 6, 0.0, group=7)  # a tombstone of a key never seen
    assert store.groups() == {7}
    assert sorted(k for k, _ in store.entries_in({7})) == [b"a", b"b"]


# -- the packed representation ------------------------------------------------------------

INT32_MIN, INT32_MAX, UINT64_MAX = -(2**31), 2**31 - 1, 2**64 - 1


@pytest.mark.parametrize("version", [INT32_MIN, -1, 0, 1, INT32_MAX])
@pytest.mark.parametrize("stamp", [0, 1, 2**32, 2**63 - 1, UINT64_MAX])
@pytest.mark.parametrize("value", [b"", b"\x00" * 12, b"v" * 10_000])
def test_entries_round_trip_every_field_range(value: bytes, version: int, stamp: int) -> None:
    store = Storage(1 << 20, group=lambda key: 0)
    assert store.put(b"k", value, version, stamp)
    expected = (value, version, stamp)
    assert store.get(b"k") == expected and store.entry(b"k") == expected
    assert store.stamp_of(b"k") == stamp
    assert list(store.items()) == [(b"k", expected)]
    assert store.entries_in({0}) == [(b"k", expected)]
    assert len(store) == 1 and store.used == 1 + len(value) + ENTRY_OVERHEAD


@pytest.mark.parametrize("stamp", [1, 2**63 - 1, UINT64_MAX])
def test_a_tombstone_keeps_its_stamp_and_is_no_empty_value(stamp: int) -> None:
    store = Storage(1 << 20)
    store.put(b"k", b"", 7, stamp=0)
    assert store.get(b"k") == (b"", 7, 0) and len(store) == 1  # an empty value is a value
    assert store.remove(b"k", stamp=stamp, now=0.0)
    assert store.get(b"k") is None and store.entry(b"k") == (None, 0, stamp)
    assert store.stamp_of(b"k") == stamp and len(store) == 0
    assert list(store.items()) == [(b"k", (None, 0, stamp))]


@pytest.mark.parametrize(
    ("version", "stamp"), [(2**31, 1), (INT32_MIN - 1, 1), (0, 2**64), (0, -1)]
)
def test_a_field_out_of_its_wire_range_is_refused_and_changes_nothing(
    version: int, stamp: int
) -> None:
    store = Storage(1 << 20)
    store.put(b"k", b"old", 1, stamp=0)
    used = store.used
    with pytest.raises(struct.error):
        store.put(b"k", b"new", version, stamp)
    with pytest.raises(struct.error):
        store.put(b"other", b"new", version, stamp)
    assert store.get(b"k") == (b"old", 1, 0) and store.get(b"other") is None
    assert store.used == used and len(store) == 1


def test_a_tombstone_written_again_waits_for_its_own_ttl() -> None:
    store = Storage(budget_bytes=1 << 20)
    store.remove(b"k", stamp=2, now=0.0)
    store.apply(b"k", b"v", 0, stamp=3, now=50.0)
    store.remove(b"k", stamp=4, now=50.0)
    store.collect_tombstones(now=60.0, ttl=60.0)  # the first tombstone's time: not this one
    assert store.entry(b"k") == (None, 0, 4)
    store.collect_tombstones(now=110.0, ttl=60.0)
    assert store.entry(b"k") is None and store.used == 0


def test_entry_overhead_covers_what_the_interpreter_spends() -> None:
    """The budget must not undercount: every byte an entry adds is accounted."""
    keys = [i.to_bytes(4, "big") for i in range(20_000)]
    store = Storage(1 << 30)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, key in enumerate(keys):  # fresh values and stamps, as off the wire
            store.put(key, bytes(100), 1, stamp=2**62 + i)
        spent = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    key_objects = sum(map(sys.getsizeof, keys))  # made before, kept by the store
    assert spent + key_objects <= store.used


# -- the reply cache's representation -----------------------------------------------------


def test_reply_cache_entry_costs_a_dict_slot_only() -> None:
    """No int or list slot per entry beside the message ID (which the caller made)."""
    n = 20_000
    ids = [i.to_bytes(16, "big") for i in range(n)]
    cache = ReplyCache()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, message_id in enumerate(ids):
            cache.put(message_id, i % 3, now=i / 1000, slot=300 + i % 7)
        spent = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert spent / n < 48  # a dict slot at two-thirds load; an int alone would add 28


def test_reply_cache_outcomes_keep_error_and_slot_past_sharing_limit() -> None:
    cache = ReplyCache()
    for slot in range(10_000):  # more distinct outcomes than are shared at once
        cache.put(slot.to_bytes(4, "big"), slot % 3, now=0.0, slot=slot)
    assert cache.get((9_999).to_bytes(4, "big")) == 9_999 % 3
    found = cache.outcomes_in({0, 4_095, 4_096, 9_999})
    assert sorted(found) == [(s.to_bytes(4, "big"), s % 3, s) for s in (0, 4_095, 4_096, 9_999)]


def test_reply_cache_expires_in_put_order_and_ignores_repeats() -> None:
    cache = ReplyCache(retention=5.0)
    cache.put(b"a", 0, now=0.0)
    cache.put(b"a", 1, now=3.0)  # a repeat: neither kept nor counted in a later bucket
    cache.put(b"b", 1, now=3.0)
    cache.put(b"c", 2, now=1.0)  # a clock step back: waits behind b, never goes early
    cache.expire(5.0)
    assert (cache.get(b"a"), cache.get(b"b"), cache.get(b"c")) == (None, 1, 2)
    cache.expire(8.0)
    assert len(cache) == 0
    cache.put(b"d", 0, now=9.0)  # usable again once drained
    assert cache.get(b"d") == 0 and len(cache) == 1


def test_removes_of_keys_that_never_existed_cannot_crowd_out_values() -> None:
    store = Storage(1 << 20)
    for n in range(100_000):  # ~17 MB of tombstones if each were kept
        store.remove(b"absent-%d" % n, stamp=n + 1, now=0.0)
    assert store.tombstone_bytes <= store.budget // TOMBSTONE_SHARE
    assert store.used == store.tombstone_bytes
    assert store.put(b"value", b"v" * 800_000, 1, stamp=1)  # within the rest of the budget
    assert store.entry(b"absent-99999") == (None, 0, 100_000)  # the newest tombstones stay
    assert store.entry(b"absent-0") is None  # the oldest went early


def test_the_tombstone_queue_is_bounded_when_one_key_is_removed_again_and_again() -> None:
    store = Storage(1 << 20)
    for n in range(100_000):
        store.remove(b"same", stamp=n + 1, now=0.0)
    assert len(store._tombstones) <= 2 * (store.budget // TOMBSTONE_SHARE) // ENTRY_OVERHEAD
    assert store.entry(b"same") == (None, 0, 100_000)
    assert store.tombstone_bytes == len(b"same") + ENTRY_OVERHEAD == store.used


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "remove", "apply", "apply-remove", "collect"]),
            st.sampled_from([b"a", b"b", b"c", b"d"]),
            st.integers(1, 40),
        ),
        max_size=60,
    )
)
def test_accounting_matches_a_recount_after_any_sequence(ops: list[tuple[str, bytes, int]]) -> None:
    store = Storage(3 * (ENTRY_OVERHEAD + 8) * TOMBSTONE_SHARE)  # room for ~3 tombstones
    for when, (op, key, stamp) in enumerate(ops):
        if op == "put":
            store.put(key, b"v" * stamp, 0, stamp)
        elif op == "remove":
            store.remove(key, stamp, float(when))
        elif op == "apply":
            store.apply(key, b"w" * stamp, 0, stamp, float(when))
        elif op == "apply-remove":
            store.apply(key, None, 0, stamp, float(when))
        else:
            store.collect_tombstones(float(when), ttl=5.0)
        entries = dict(store.items())
        tombstones = [k for k, (value, _, _) in entries.items() if value is None]
        assert store.tombstone_bytes == sum(len(k) + ENTRY_OVERHEAD for k in tombstones)
        assert store.used == sum(
            len(k) + len(v or b"") + ENTRY_OVERHEAD for k, (v, _, _) in entries.items()
        )
        assert store.tombstone_bytes <= store.budget // TOMBSTONE_SHARE
        assert len(store) == len(entries) - len(tombstones)


# -- the journal a data directory commits, and restoring from it ----------------------

_JOURNAL_OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "remove", "unstamped-remove", "apply-remove", "collect", "wipe"]),
        st.sampled_from([b"a", b"b", b"c", b"d"]),
        st.integers(1, 40),
    ),
    max_size=60,
)


@given(_JOURNAL_OPS, st.integers(1, 7))
def test_a_disk_kept_from_the_journal_restores_the_same_store(
    ops: list[tuple[str, bytes, int]], commit_every: int
) -> None:
    """Whatever happened, and however the changes were batched into commits, a store
    restored from what was committed is the store that was: entries and accounting."""
    store = Storage(3 * (ENTRY_OVERHEAD + 8) * TOMBSTONE_SHARE)
    store.record_changes()
    disk: dict[bytes, bytes] = {}

    def commit() -> None:
        wiped, changes = store.take_changes()
        if wiped:
            disk.clear()
        for key, packed in changes.items():
            if packed is None:
                disk.pop(key, None)
            else:
                disk[key] = packed

    for when, (op, key, stamp) in enumerate(ops):
        if op == "put":
            store.put(key, b"v" * stamp, stamp % 3, stamp)
        elif op == "remove":
            store.remove(key, stamp, float(when))
        elif op == "unstamped-remove":
            store.remove(key)  # a hand-off: gone without a tombstone
        elif op == "apply-remove":
            store.apply(key, None, 0, stamp, float(when))
        elif op == "collect":
            store.collect_tombstones(float(when), ttl=5.0)
        else:
            store.wipe()
        if when % commit_every == 0:
            commit()
    commit()
    again = Storage(store.budget)
    again.restore(disk.items(), now=0.0)
    assert dict(again.items()) == dict(store.items())
    assert (again.used, again.tombstone_bytes, len(again)) == (
        store.used, store.tombstone_bytes, len(store),
    )  # fmt: skip


def test_the_journal_says_what_each_change_left_behind() -> None:
    store = Storage(100_000)
    store.record_changes()
    store.put(b"k", b"v", 1, stamp=5)
    store.remove(b"gone", stamp=6, now=0.0)  # a tombstone for a key never seen
    store.put(b"x", b"y", 0, stamp=7)
    store.remove(b"x")  # handed off: no tombstone
    wiped, changes = store.take_changes()
    assert not wiped
    assert changes == {
        b"k": struct.pack("<Qi", 5, 1) + b"v",
        b"gone": struct.pack("<Q", 6),
        b"x": None,
    }
    assert store.take_changes() == (False, {})
    store.wipe()
    store.put(b"after", b"z", 0, stamp=8)
    wiped, changes = store.take_changes()
    assert wiped and list(changes) == [b"after"]


def test_restore_refuses_a_damaged_entry_and_a_store_over_the_budget() -> None:
    with pytest.raises(CorruptEntry):
        Storage(10_000).restore([(b"k", b"\x00" * 5)], now=0.0)  # neither stamp nor entry
    with pytest.raises(CorruptEntry):
        Storage(10_000).restore([(b"", struct.pack("<Q", 1))], now=0.0)
    big = [(b"k%d" % i, struct.pack("<Qi", 1, 0) + b"v" * 100) for i in range(100)]
    with pytest.raises(MemoryError):
        Storage(10_000).restore(big, now=0.0)


def test_restored_tombstones_wait_a_whole_ttl_from_the_restart() -> None:
    store = Storage(100_000)
    store.restore([(b"t", struct.pack("<Q", 9))], now=1_000.0)
    store.collect_tombstones(1_000.0 + 299.0)
    assert store.entry(b"t") == (None, 0, 9)
    store.collect_tombstones(1_000.0 + 300.0)
    assert store.entry(b"t") is None

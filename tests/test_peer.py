"""Node-to-node messages: what one node encodes, the next decodes unchanged."""

from __future__ import annotations

import pytest

from ringkv.wire import peer
from ringkv.wire.peer import PeerDecodeError, Write


def test_replicate_round_trip_keeps_path_and_targets() -> None:
    write = Write(
        b"M" * 16, ("10.0.0.7", 4321), 0, b"key", b"value", 7, 1 << 40, (3, 9), (3, 9, 12, 4)
    )
    back = peer.decode_replicate(peer.encode_replicate(write))
    assert (back.message_id, back.client, back.err) == (b"M" * 16, ("10.0.0.7", 4321), 0)
    assert (back.key, back.value, back.version, back.stamp) == (b"key", b"value", 7, 1 << 40)
    assert back.path == (3, 9)
    assert back.targets == (3, 9, 12, 4)


def test_replicate_of_a_remove_has_no_value() -> None:
    write = Write(b"R" * 16, ("h", 1), 1, b"k", None, 0, 5, (0,))
    back = peer.decode_replicate(peer.encode_replicate(write))
    assert back.value is None
    assert back.targets == ()


def test_short_replicate_is_a_decode_error() -> None:
    data = peer.encode_replicate(Write(b"R" * 16, ("h", 1), 0, b"k", b"v", 0, 5, (0, 1), (0, 1)))
    with pytest.raises(PeerDecodeError):
        peer.decode_replicate(data[:30])


def test_sync_request_carries_the_requester_and_the_oldest_stamp_wanted() -> None:
    since = (1_800_000_000 * 1_000_000) << 12  # a stamp: wall-clock µs, node bits
    data = peer.encode_sync_request(77, 39, since, [5, 1000, 4095])
    assert peer.kind_of(data) == peer.SYNC_REQUEST
    assert peer.decode_sync_request(data) == (77, 39, since, [5, 1000, 4095])


def test_sync_done_lists_the_slots_that_leave_the_requester_out_and_those_unsure() -> None:
    entries = [(b"a", b"1", 1, 10), (b"b", None, 0, 11)]
    unsure = {8: 1 << 60, 0: 0, 4095: 7}  # slot -> the stamp from which on all is there
    vouched = {0, 4095}  # of those, the ones the requester left while the source was unsure
    batches = peer.encode_sync_batches(9, entries, [], [3, 8], unsure, vouched)
    done = batches[-1]
    assert peer.kind_of(done) == peer.SYNC_DONE
    assert peer.decode_sync_head(done) == (9, len(batches) - 1)
    assert peer.decode_sync_done(done) == ([3, 8], unsure, vouched)
    assert peer.decode_sync_done(peer.encode_sync_batches(9, [])[-1]) == ([], {}, set())


def test_sync_done_with_a_torn_slot_list_is_a_decode_error() -> None:
    for done in (
        peer.encode_sync_batches(9, [], [], strangers=[3])[-1],
        peer.encode_sync_batches(9, [], [], unsure={3: 5})[-1],
    ):
        with pytest.raises(PeerDecodeError):
            peer.decode_sync_done(done[:-1])

"""What `ringkv cluster status` makes of the nodes' STATUS answers."""

from __future__ import annotations

from ringkv.cli.cluster import datagrams_per_request


def test_datagrams_per_request_counts_the_request_and_all_the_nodes_sent() -> None:
    # A PUT through a front end outside its chain of 3: request, forward, two
    # replicates, the reply and two acks (one datagram each, nothing batched).
    front = {"requests": 1, "datagrams_out": 1}
    head = {"requests": 0, "datagrams_out": 1}
    middle = {"requests": 0, "datagrams_out": 1}
    tail = {"requests": 0, "datagrams_out": 3}
    statuses = {0: front, 1: head, 2: middle, 3: tail}
    assert datagrams_per_request(statuses) == 7.0
    later = {i: {k: v * 3 for k, v in s.items()} for i, s in statuses.items()}
    assert datagrams_per_request(later, statuses) == 7.0  # over the interval only
    assert datagrams_per_request(statuses, statuses) is None  # no request meanwhile

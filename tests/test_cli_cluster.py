"""What `ringkv cluster status` makes of the nodes' STATUS answers."""

from __future__ import annotations

from ringkv.cli.cluster import datagrams_per_request, status_table


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


def test_status_table_notes_a_node_that_sheds_requests() -> None:
    servers = [("127.0.0.1", 43100), ("127.0.0.1", 43101)]
    before = {i: {"requests": 100, "shed": 10, "states": "AA"} for i in range(2)}
    after = {0: {**before[0], "requests": 300, "shed": 60}, 1: {**before[1], "requests": 200}}
    table = status_table(servers, after, before, 2.0, set())
    notes = list(table.columns[-1].cells)
    assert notes == ["overloaded: 25 req/s shed", ""]

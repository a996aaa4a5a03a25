"""What `ringkv cluster status` makes of the nodes' STATUS answers."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from cluster_helpers import running

from ringkv.cli.cluster import datagrams_per_request, status_table
from ringkv.client.client import Client
from ringkv.client.local import free_udp_port
from ringkv.runtime.cluster import local_servers


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


def test_a_node_that_exits_is_reaped_and_shown_with_its_status(tmp_path: Path) -> None:
    servers = local_servers(1, "127.0.0.1", free_udp_port(), distinct_hosts=False)
    with running(servers, tmp_path) as cluster:
        pid = cluster.pid(0)
        with Client(servers[0], timeout=0.5) as client:
            client.shutdown()
        deadline = time.monotonic() + 10
        while not cluster.exited() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cluster.exited() == {0: 0}
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped already: no zombie holds the pid
        table = status_table(servers, {}, {}, 1.0, set(), cluster.exited())
        assert list(table.columns[-1].cells) == ["exited (status 0)"]


def test_a_membership_change_is_one_json_line_in_each_nodes_log(tmp_path: Path) -> None:
    servers = local_servers(3, "127.0.0.1", free_udp_port(), distinct_hosts=False)
    with running(servers, tmp_path, log_format="json") as cluster:
        os.kill(cluster.pid(2), signal.SIGKILL)
        log = tmp_path / "logs" / "node-0.log"
        deadline, views = time.monotonic() + 20, []
        while not any(v["healthy"] == 2 for v in views) and time.monotonic() < deadline:
            time.sleep(0.2)
            lines = [json.loads(line) for line in log.read_text().splitlines()]
            views = [line for line in lines if line.get("event") == "view"]
        last = views[-1]
        assert last["healthy"] == 2 and last["not_healthy"] == [2]
        assert last["node"] == f"{servers[0][0]}:{servers[0][1]}" and last["level"] == "info"
        assert last["slots"] >= last["was"]["slots"]  # node 0 took over some of node 2's slots
        assert all(line["level"] != "error" for line in lines)

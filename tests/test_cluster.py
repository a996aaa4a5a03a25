"""Real node processes on loopback: routing, membership, replication, transfer.

Suspension is SIGSTOP/SIGCONT and a crash is SIGKILL, as the evaluation does.
Clients only use live front ends (a suspended node cannot answer anyone).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import apply_writes, read_back, store, wait_for_counts

from ringkv.client.client import Client, ClientTimeout
from ringkv.client.local import free_udp_port
from ringkv.core.ring import Ring
from ringkv.runtime.cluster import LocalCluster, local_servers

pytestmark = pytest.mark.cluster


def _start(tmp: Path, servers: list[tuple[str, int]]) -> LocalCluster:
    cluster = LocalCluster.create(servers, tmp)
    cluster.start()
    cluster.wait_ready(60)
    return cluster


@pytest.fixture
def cluster10(tmp_path: Path) -> Iterator[LocalCluster]:
    """Ten nodes on ten loopback addresses, as if on ten machines."""
    cluster = _start(tmp_path, local_servers(10, "", free_udp_port(), distinct_hosts=True))
    try:
        wait_for_counts(cluster, 10, 15)
        yield cluster
    finally:
        cluster.stop()


def test_any_node_is_a_front_end(cluster10: LocalCluster) -> None:
    with Client(cluster10.servers[0]) as writer:
        assert writer.put(b"shared", b"value", version=7).err == 0
    for addr in cluster10.servers[1:]:
        with Client(addr) as reader:
            reply = reader.get(b"shared")
            assert (reply.err, reply.value, reply.version) == (0, b"value", 7)


def test_suspend_two_of_a_chain_keeps_every_key_and_no_stale_read(cluster10: LocalCluster) -> None:
    expected = store(cluster10, 5000)
    assert len(expected) == 5000
    head, middle, _ = Ring(10).chain(b"k0", None, 3)
    cluster10.suspend(head)
    cluster10.suspend(middle)
    print(f"\nsuspend 2: 8 everywhere after {wait_for_counts(cluster10, 8, 10):.1f} s")
    time.sleep(1.5)  # re-replication of the chains the two nodes were in
    counts = read_back(cluster10, expected)
    assert counts == {"correct": 5000, "wrong": 0, "missing": 0, "timeouts": 0}, counts

    cluster10.resume(head)
    cluster10.resume(middle)
    print(f"resume 2: 10 everywhere after {wait_for_counts(cluster10, 10, 10):.1f} s")
    keys = list(expected)
    work = [("put", k, os.urandom(32)) for k in keys[::3]] + [("rm", k, b"") for k in keys[1::3]]
    timeouts = apply_writes(cluster10, expected, work)
    assert timeouts < 50
    counts = read_back(cluster10, expected)
    assert counts["wrong"] == 0 and counts["missing"] == 0, counts


def test_crashed_node_restarts_empty_and_gets_its_ranges_back(cluster10: LocalCluster) -> None:
    expected = store(cluster10, 2000)
    victim = 3
    cluster10.kill(victim)
    wait_for_counts(cluster10, 9, 10)
    keys = list(expected)
    apply_writes(cluster10, expected, [("put", k, os.urandom(32)) for k in keys[::2]])
    cluster10.start_node(victim)
    cluster10.wait_ready(30)
    wait_for_counts(cluster10, 10, 15)
    time.sleep(1.0)
    counts = read_back(cluster10, expected)
    assert counts["wrong"] == 0 and counts["missing"] == 0, counts
    # Now the restarted node is the only copy of nothing: kill its two chain partners.
    chain = Ring(10).chain(b"k0", None, 3)
    others = [n for n in chain if n != victim][:2]
    for node in others:
        cluster10.suspend(node)
    wait_for_counts(cluster10, 8, 10)
    time.sleep(1.5)
    counts = read_back(cluster10, expected)
    assert counts["wrong"] == 0 and counts["missing"] == 0, counts


@pytest.fixture(scope="module")
def cluster40(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    start = time.monotonic()
    servers = local_servers(40, "127.0.0.1", free_udp_port(), distinct_hosts=False)
    cluster = _start(tmp_path_factory.mktemp("c40"), servers)
    try:
        waited = wait_for_counts(cluster, 40, 15)
        since_start = time.monotonic() - start
        print(f"\n40 nodes: 40 everywhere {since_start:.1f} s after start ({waited:.1f} s waited)")
        yield cluster
    finally:
        cluster.stop()


def test_40_nodes_take_every_write_as_soon_as_they_count_40(cluster40: LocalCluster) -> None:
    """Right after start every slot is still being pulled, and views may differ.

    Writes that bounced between differing views used to be dropped at a tail
    (about 1 in 100 timed out); they now go to a member that may lead them.
    """
    expected = store(cluster40, 2000, prefix=b"cold")
    assert len(expected) == 2000


def test_40_nodes_suspend_4_and_resume(cluster40: LocalCluster) -> None:
    victims = [5, 15, 25, 35]
    for v in victims:
        cluster40.suspend(v)
    print(f"\nsuspend 4: 36 everywhere after {wait_for_counts(cluster40, 36, 10):.1f} s")
    for v in victims:
        cluster40.resume(v)
    print(f"resume 4: 40 everywhere after {wait_for_counts(cluster40, 40, 10):.1f} s")


def test_40_nodes_suspend_24_in_batches(cluster40: LocalCluster) -> None:
    """EVALUATION.md's suspend stages, scaled down to 4,000 keys."""
    expected = store(cluster40, 4000, prefix=b"s")
    assert len(expected) == 4000
    order = list(range(40))
    suspended = order[1::2][:20] + order[0::2][:4]  # 24 nodes
    for batch in range(6):
        for node in suspended[batch * 4 : batch * 4 + 4]:
            cluster40.suspend(node)
        time.sleep(2)
    wait_for_counts(cluster40, 16, 10)
    counts = read_back(cluster40, expected)
    recovered = counts["correct"] / len(expected)
    print(f"\nsuspend 24: recovered {recovered:.2%} {counts}")
    assert counts["wrong"] == 0
    # Without re-replication about 78 % would survive (1 - 0.6**3); the ideal with
    # transfers finishing between batches is 99.2 %; 98.8 and 99.8 % measured on
    # their own. The issue asks 97 %; the target figure (99 %, 40,000 keys) is
    # measured by `ringkv check`.
    assert recovered >= 0.97

    for node in suspended[:3]:
        cluster40.resume(node)
    wait_for_counts(cluster40, 19, 20)
    time.sleep(2)
    later = read_back(cluster40, expected)
    assert later["wrong"] == 0, later
    print(f"resume 3: {later}")
    for node in suspended[3:]:
        cluster40.resume(node)
    wait_for_counts(cluster40, 40, 15)


def test_request_queued_at_a_stopped_node_is_not_executed_on_resume(
    cluster10: LocalCluster,
) -> None:
    front, stopped = cluster10.servers[0], 4
    with Client(front) as client:
        assert client.put(b"queued", b"first").err == 0
        cluster10.suspend(stopped)
        with Client(cluster10.servers[stopped], timeout=0.05, tries=1) as late:
            with pytest.raises(ClientTimeout):
                late.put(b"queued", b"stale")  # waits in the stopped node's socket
        wait_for_counts(cluster10, 9, 10)
        assert client.put(b"queued", b"second").err == 0
        cluster10.resume(stopped)
        wait_for_counts(cluster10, 10, 10)
        time.sleep(1.0)
        for addr in cluster10.servers:
            with Client(addr) as reader:
                assert reader.get(b"queued").value == b"second"

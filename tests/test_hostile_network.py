"""Real node processes under hostile traffic: the fuzzer, and key rotation under load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cluster_helpers import wait_for_counts

from ringkv.check.fuzz import Fuzzer, FuzzTargetError, _is_client_write
from ringkv.client.client import Client, ClientTimeout
from ringkv.client.local import free_udp_port, local_node
from ringkv.core.node import Node, NodeConfig
from ringkv.runtime.cluster import LocalCluster, local_servers
from ringkv.servers import peer_addr
from ringkv.wire import peer
from ringkv.wire.codec import Command, Err, encode_request
from ringkv.wire.seal import load_keyring


def _fuzz(target: tuple[str, int], count: int, nodes: int) -> dict[str, object]:
    run = subprocess.run(
        [sys.executable, "-m", "ringkv", "fuzz", "--server", f"{target[0]}:{target[1]}",
         "--count", str(count), "--nodes", str(nodes), "--json"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    report: dict[str, object] = json.loads(run.stdout)
    assert run.returncode == (0 if report["passed"] else 1), run.stderr
    return report


def test_the_fuzzer_makes_every_kind_of_datagram_without_failing_itself() -> None:
    fuzzer = Fuzzer(("127.0.0.1", 1), seed=7, nodes=3)
    for kind, _, make in fuzzer._makers:
        for _ in range(300):
            assert isinstance(make(), bytes), kind


def test_the_fuzzer_does_not_send_what_parses_as_a_client_write_of_a_sentinel() -> None:
    # Protobuf skips unknown fields: garbage (here field 15, 2 bytes) before a
    # valid Msg still parses, and any client may PUT any key.
    put = encode_request(b"i" * 16, Command.PUT, b"fuzz-sentinel-00", b"forged")
    assert _is_client_write(b"\x7a\x02xy" + put, {b"fuzz-sentinel-00"})
    assert not _is_client_write(b"\x7a\x02xy" + put, {b"other"})
    assert _is_client_write(encode_request(b"i" * 16, Command.SHUTDOWN), set())


def test_the_fuzzer_aims_at_this_host_only() -> None:
    with pytest.raises(FuzzTargetError):
        Fuzzer(("10.1.2.3", 43100))


def test_a_one_node_cluster_survives_20000_fuzzed_datagrams() -> None:
    with local_node() as node:
        pid = node.proc.pid
        report = _fuzz(node.addr, 20_000, 1)
        assert report["failures"] == []
        assert report["sent"] + report["skipped_client_writes"] == 20_000
        assert node.proc.poll() is None and node.proc.pid == pid


@pytest.mark.cluster
def test_a_keyed_three_node_cluster_survives_20000_fuzzed_datagrams(tmp_path: Path) -> None:
    cluster = LocalCluster.create(local_servers(3, "127.0.0.1", free_udp_port(), False), tmp_path)
    cluster.start()
    try:
        cluster.wait_ready(60)
        wait_for_counts(cluster, 3, 15)
        report = _fuzz(cluster.servers[0], 20_000, 3)
        assert report["failures"] == []
        statuses = cluster.status()
        assert all(s["count"] == 3 for s in statuses.values()), statuses
        assert statuses[0]["unauthenticated"] > 0  # the forged peer and gossip datagrams
        assert all(p.poll() is None for p in cluster.procs.values())
    finally:
        cluster.stop()


@pytest.mark.cluster
def test_a_key_rotates_across_a_running_cluster_without_losing_a_request(tmp_path: Path) -> None:
    cluster = LocalCluster.create(local_servers(10, "127.0.0.1", free_udp_port(), False), tmp_path)
    cluster.start()
    stop = threading.Event()
    outcomes: list[int | None] = []

    def load() -> None:
        with Client(cluster.servers, timeout=0.2, tries=4, random_front_end=True) as client:
            n = 0
            while not stop.is_set():
                key = b"rotate-%d" % n
                try:
                    put = client.put(key, b"v%d" % n)
                    got = client.get(key)
                    outcomes.append(put.err if put.err != Err.OK else got.err)
                    assert got.value == b"v%d" % n or got.err != Err.OK
                except ClientTimeout:
                    outcomes.append(None)
                n += 1

    try:
        cluster.wait_ready(60)
        wait_for_counts(cluster, 10, 20)
        worker = threading.Thread(target=load)
        worker.start()
        assert cluster.key_file is not None
        old = load_keyring(cluster.key_file)
        for step in ("add", "use", "retire"):
            command = [sys.executable, "-m", "ringkv", "keyring", step, str(cluster.key_file)]
            subprocess.run(command, check=True, capture_output=True, timeout=60)
            for proc in cluster.procs.values():
                os.kill(proc.pid, signal.SIGHUP)
            time.sleep(2.0)
        stop.set()
        worker.join(30)
        rotated = load_keyring(cluster.key_file)
        assert rotated.keys != old.keys and len(rotated.keys) == 1
        assert len(outcomes) > 50
        assert outcomes.count(None) == 0 and set(outcomes) == {Err.OK}, outcomes
        statuses = cluster.status()  # sealed with the new key only
        assert len(statuses) == 10 and all(s["count"] == 10 for s in statuses.values())
        assert all(s["deaths"] == 0 for s in statuses.values())
    finally:
        stop.set()
        cluster.stop()


def test_fuzzed_peer_messages_from_a_member_of_an_unkeyed_cluster_never_raise() -> None:
    """The deepest a forged datagram gets: the peer port of a node without a key,
    from a member's own address. BATCHes (some holding a BATCH) and ACKs of
    many writes among them; each is decoded at the edge or dropped, and the
    node's slot states keep their rules."""
    servers = tuple(("127.0.0.1", 43100 + i) for i in range(3))
    node = Node(NodeConfig(servers=servers, self_index=0))
    fuzzer = Fuzzer(servers[0], seed=3, nodes=3)
    kinds = set()
    for i in range(5_000):
        message = fuzzer._peer_message()
        kinds.add(message[2:3])
        node.on_peer_datagram(message, peer_addr(servers[1]), 1.0 + i * 1e-4)
        node.on_datagram(message, ("127.0.0.1", 5555), 1.0 + i * 1e-4)
    node.check_invariants()
    assert {bytes((peer.BATCH,)), bytes((peer.ACK,))} <= kinds
    assert node.stats.dropped > 0

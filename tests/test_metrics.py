"""Prometheus metrics: the core's counters as metric families, a node answering
scrapes over real HTTP, and a 10-node cluster whose counters add up to the
requests a client sent."""

from __future__ import annotations

import json
import random
import socket
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import running
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ringkv.client.client import Client
from ringkv.client.local import free_udp_port, local_node
from ringkv.core.node import Node, NodeConfig
from ringkv.runtime.cluster import (
    PROMETHEUS_CONFIG,
    PROMETHEUS_TARGETS,
    LocalCluster,
    local_servers,
    metrics_addr,
    write_prometheus_config,
)
from ringkv.runtime.metrics import registry_for
from ringkv.wire import Addr
from ringkv.wire.codec import Command, Err, encode_request

CLIENT = ("127.0.0.1", 5555)


class _Runtime:
    def __init__(self) -> None:
        self.faults = {"datagram": 2}
        self.send_drops = 7
        self.data_dir = None


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_cores_counters_become_metric_families() -> None:
    node = Node(NodeConfig(servers=(("127.0.0.1", 43100),), pid=99))
    requests = [
        encode_request(b"p%015d" % 1, Command.PUT, b"k", b"v"),
        encode_request(b"g%015d" % 1, Command.GET, b"k"),
        encode_request(b"g%015d" % 2, Command.GET, b"absent"),
        encode_request(b"p%015d" % 1, Command.PUT, b"k", b"v"),  # a repeat: from the cache
    ]
    for data in requests:
        node.on_datagram(data, CLIENT, 1.0, age=0.003)
    node.on_datagram(encode_request(b"s" * 16, Command.GET, b"k"), CLIENT, 1.0, age=0.3)
    node.on_datagram(b"garbage", CLIENT, 1.0)
    got = samples(generate_latest(registry_for(node, _Runtime())).decode())
    assert got[("ringkv_requests_total", ())] == 5
    assert got[("ringkv_commands_total", (("command", "put"),))] == 2
    assert got[("ringkv_commands_total", (("command", "get"),))] == 2
    assert got[("ringkv_replies_total", (("outcome", "ok"),))] == 3
    assert got[("ringkv_replies_total", (("outcome", "no_key"),))] == 1
    assert got[("ringkv_replies_total", (("outcome", "overload"),))] == 1
    assert got[("ringkv_shed_total", ())] == 1
    assert got[("ringkv_reply_cache_hits_total", ())] == 1
    assert got[("ringkv_request_queue_seconds_count", ())] == 5
    assert got[("ringkv_request_queue_seconds_bucket", (("le", "0.005"),))] == 4
    assert got[("ringkv_request_queue_seconds_bucket", (("le", "0.25"),))] == 4
    assert got[("ringkv_request_queue_seconds_sum", ())] == pytest.approx(4 * 0.003 + 0.3)
    assert got[("ringkv_dropped_datagrams_total", (("reason", "malformed"),))] == 1
    assert got[("ringkv_members", (("state", "alive"),))] == 1
    assert got[("ringkv_keys", ())] == 1
    assert got[("ringkv_memory_budget_bytes", ())] == 512 << 20
    assert got[("ringkv_node", (("index", "0"), ("pid", "99")))] == 1
    assert got[("ringkv_handler_faults_total", (("of", "datagram"),))] == 2
    assert got[("ringkv_send_drops_total", ())] == 7
    assert ("process_resident_memory_bytes", ()) in got


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_a_node_answers_scrapes_and_survives_hostile_connections() -> None:
    metrics_port = free_udp_port()  # likely free for TCP too; the node says if not
    with local_node(args=["--metrics-port", str(metrics_port)]) as node:
        with Client(node.addr) as client:
            assert client.put(b"k", b"v").err == Err.OK
        url = f"http://127.0.0.1:{metrics_port}"
        status, text = _get(url + "/metrics")
        assert status == 200
        assert samples(text)[("ringkv_commands_total", (("command", "put"),))] == 1
        assert _get(url + "/")[0] == 404
        with socket.create_connection(("127.0.0.1", metrics_port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000)  # never ends its head
            assert sock.recv(100) == b""  # closed on it
        with Client(node.addr) as client:
            assert client.get(b"k").value == b"v"
        assert _get(url + "/metrics")[0] == 200


@pytest.fixture
def cluster10_with_metrics(tmp_path: Path) -> Iterator[LocalCluster]:
    servers = local_servers(10, "", free_udp_port(), distinct_hosts=True)
    with running(servers, tmp_path, ready=60, metrics=True) as cluster:
        yield cluster


@pytest.mark.cluster
def test_scrapes_of_a_10_node_cluster_add_up_to_the_requests_sent(
    cluster10_with_metrics: LocalCluster,
) -> None:
    cluster, rng = cluster10_with_metrics, random.Random(5)
    sent: Counter[str] = Counter()
    with Client(cluster.servers, timeout=2.0, tries=1, random_front_end=True) as client:
        for i in range(300):
            key = b"metrics-%d" % rng.randrange(100)
            if i % 2:
                client.get(key)
                sent["get"] += 1
            else:
                client.put(key, b"v")
                sent["put"] += 1
    scrapes = []
    for addr in cluster.servers:
        host, port = metrics_addr(addr)
        status, text = _get(f"http://{host}:{port}/metrics")
        assert status == 200
        scrapes.append(samples(text))

    def total(name: str, *labels: tuple[str, str]) -> float:
        return sum(scrape.get((name, tuple(labels)), 0.0) for scrape in scrapes)

    assert total("ringkv_requests_total") == 300
    assert total("ringkv_commands_total", ("command", "put")) == sent["put"]
    assert total("ringkv_commands_total", ("command", "get")) == sent["get"]
    # Each request got one reply, from whichever node answered it.
    outcomes = [e.name.lower() for e in Err]
    assert sum(total("ringkv_replies_total", ("outcome", o)) for o in outcomes) == 300
    assert total("ringkv_members", ("state", "alive")) == 100  # 10 views of 10


def test_cluster_up_writes_a_prometheus_config_and_its_targets(tmp_path: Path) -> None:
    servers: list[Addr] = [("127.0.0.1", 43100), ("::1", 43101)]
    config = write_prometheus_config(servers, tmp_path)
    assert config == tmp_path / PROMETHEUS_CONFIG
    [group] = json.loads((tmp_path / PROMETHEUS_TARGETS).read_text())
    assert group["targets"] == ["127.0.0.1:46100", "[::1]:46101"]
    text = config.read_text()
    assert "file_sd_configs" in text and PROMETHEUS_TARGETS in text

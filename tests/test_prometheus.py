"""A real Prometheus scrapes a real cluster through the configuration that
`ringkv cluster up` writes: the config passes `promtool check config`, every
node is a target that is up, and the summed request counter is the number of
requests a client sent. Needs Debian's prometheus package (.ci/run installs
it); skipped, saying so, without it."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import running

from ringkv.client.client import Client
from ringkv.client.local import free_udp_port
from ringkv.runtime.cluster import LocalCluster, local_servers, write_prometheus_config

pytestmark = pytest.mark.cluster
REQUESTS = 60


def _free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        pytest.skip(
            "needs prometheus and promtool (Debian's prometheus package; .ci/run installs it)"
        )
    servers = local_servers(3, "127.0.0.1", free_udp_port(), distinct_hosts=False)
    with running(servers, tmp_path, metrics=True) as started:
        yield started


def _query(port: int, expression: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success"
    result: list[dict[str, object]] = answer["data"]["result"]
    return result


def _value(result: list[dict[str, object]]) -> float | None:
    if not result:
        return None
    sample = result[0]["value"]
    assert isinstance(sample, list)
    return float(sample[1])


def test_prometheus_scrapes_every_node_with_the_config_cluster_up_writes(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    config = write_prometheus_config(cluster.servers, tmp_path, interval=1)
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with Client(cluster.servers, timeout=1.0, tries=1, random_front_end=True) as client:
        for i in range(REQUESTS):
            assert client.put(b"prometheus-%d" % i, b"v").err == 0
    port = _free_tcp_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=log,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 40
        up = total = None
        while time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                up = _value(_query(port, "sum(up)"))
                total = _value(_query(port, "sum(ringkv_requests_total)"))
            except OSError:
                continue  # not listening yet
            if up == 3 and total == REQUESTS:
                break
        assert (up, total) == (3, REQUESTS)
        targets = _query(port, "ringkv_members")
        assert len(targets) == 3 * 3  # each node's view, by state
    finally:
        prometheus.terminate()
        prometheus.wait(10)

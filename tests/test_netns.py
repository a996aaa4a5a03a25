"""Ten nodes on five hosts' worth of distinct addresses: Linux network namespaces.

Each of five namespaces holds two nodes on its own address in 198.18.0.0/24
(the benchmarking range), linked by veth pairs to a bridge that lives in a
namespace of its own; the client runs in a sixth. Nothing is routed, NATed or
linked outside the namespaces the test makes, and they are removed when it
ends, passed or failed. Needs root and iproute2: skipped, saying so, elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HOSTS = 5
NODES_PER_HOST = 2
PORTS = (10001, 10002)
CLIENT_HELPER = Path(__file__).with_name("netns_client.py")
pytestmark = pytest.mark.cluster


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class Hosts:
    prefix: str
    servers_file: Path
    client_ns: str
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)

    def run_client(self, *args: str) -> dict[str, object]:
        done = subprocess.run(
            ["ip", "netns", "exec", self.client_ns, sys.executable, str(CLIENT_HELPER),
             args[0], str(self.servers_file), *args[1:]],
            check=True, capture_output=True, timeout=60, env=_env(),
        )  # fmt: skip
        result: dict[str, object] = json.loads(done.stdout)
        return result

    def wait_for_counts(self, want: dict[str, int], limit: float = 30.0) -> dict[str, object]:
        deadline = time.monotonic() + limit
        while True:
            counts = self.run_client("counts")
            if all(counts.get(addr) == n for addr, n in want.items()):
                return counts
            if time.monotonic() > deadline:
                return counts
            time.sleep(0.5)


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _can_make_namespaces() -> str | None:
    """Why this test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (the ip command)"
    probe = f"rkprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return f"cannot make a network namespace here: {exc}"
    _ip("netns", "del", probe)
    return None


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    why = _can_make_namespaces()
    if why is not None:
        pytest.skip(why)
    prefix = f"rk{os.getpid() % 10000}"
    bridge_ns, client_ns = f"{prefix}b", f"{prefix}c"
    made = Hosts(prefix, tmp_path / "servers.txt", client_ns)
    try:
        _ip("netns", "add", bridge_ns)
        made.namespaces.append(bridge_ns)
        _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge_ns, "link", "set", "br0", "up")
        names = [f"{prefix}h{i}" for i in range(HOSTS)] + [client_ns]
        addresses = [f"198.18.0.{10 + i}" for i in range(HOSTS)] + ["198.18.0.100"]
        for i, (ns, address) in enumerate(zip(names, addresses, strict=True)):
            _ip("netns", "add", ns)
            made.namespaces.append(ns)
            inside, outside = f"{prefix}v{i}", f"{prefix}w{i}"
            _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
            _ip("link", "set", inside, "netns", ns)
            _ip("link", "set", outside, "netns", bridge_ns)
            _ip("-n", bridge_ns, "link", "set", outside, "master", "br0")
            _ip("-n", bridge_ns, "link", "set", outside, "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        servers = [(addresses[h], port) for h in range(HOSTS) for port in PORTS]
        made.servers_file.write_text("".join(f"{a}:{p}\n" for a, p in servers))
        key = tmp_path / "cluster.key"
        subprocess.run([sys.executable, "-m", "ringkv", "keygen", str(key)], check=True, env=_env())
        for index, (address, port) in enumerate(servers):
            with open(tmp_path / f"node-{index}.log", "wb") as log:
                made.procs[index] = subprocess.Popen(
                    ["ip", "netns", "exec", names[index // NODES_PER_HOST], sys.executable,
                     "-m", "ringkv", "node", "--listen", f"{address}:{port}", "--servers",
                     str(made.servers_file), "--cluster-key", str(key), "--log-level", "warning"],
                    stdout=log, stderr=log, env=_env(),
                )  # fmt: skip
        yield made
    finally:
        for proc in made.procs.values():
            proc.kill()
            proc.wait()
        for ns in reversed(made.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_ten_nodes_on_five_addresses_agree_serve_and_survive_a_suspension(hosts: Hosts) -> None:
    servers = hosts.servers_file.read_text().split()
    every = dict.fromkeys(servers, len(servers))
    counts = hosts.wait_for_counts(every, 40)
    assert counts == every, "not every node saw all ten"
    result = hosts.run_client("putget", "first")
    assert result == {"keys": 10, "wrong": []}

    stopped = 3  # the second node of the second host
    os.kill(hosts.procs[stopped].pid, signal.SIGSTOP)
    try:
        others = {addr: 9 for i, addr in enumerate(servers) if i != stopped}
        counts = hosts.wait_for_counts(others, 30)
        assert {a: counts[a] for a in others} == others
        assert counts[servers[stopped]] is None  # stopped: no answer
    finally:
        os.kill(hosts.procs[stopped].pid, signal.SIGCONT)
    assert hosts.wait_for_counts(every, 30) == every
    time.sleep(2.0)  # the returning node pulls what it missed
    assert hosts.run_client("putget", "after") == {"keys": 10, "wrong": []}

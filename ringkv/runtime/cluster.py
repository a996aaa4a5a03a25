"""A cluster of real node processes on this machine, and the status of any cluster.

`LocalCluster` is what `ringkv cluster up` and the integration tests use:
it writes the server list, starts one `ringkv node` process per line, and
suspends (SIGSTOP), resumes (SIGCONT), kills and restarts them by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringkv.wire import Addr, peer
from ringkv.wire.seal import OPERATOR, Channel, Keyring, Sealer, load_keyring, save_keyring

STATE_FILE = "cluster.json"
KEY_FILE = "cluster.key"
# A local cluster's node answers Prometheus on its port plus this (TCP); beside
# the server list, PROMETHEUS_CONFIG scrapes them all through PROMETHEUS_TARGETS.
METRICS_PORT_OFFSET = 3000
PROMETHEUS_CONFIG = "prometheus.yml"
PROMETHEUS_TARGETS = "prometheus-targets.json"


def local_servers(nodes: int, host: str, base_port: int, distinct_hosts: bool) -> list[Addr]:
    """Addresses for a local cluster; with distinct_hosts node i binds 127.0.0.(i+1)."""
    if distinct_hosts:
        if nodes > 254:
            raise ValueError("distinct loopback hosts go up to 254 nodes")
        return [(f"127.0.0.{i + 1}", base_port) for i in range(nodes)]
    return [(host, base_port + i) for i in range(nodes)]


def format_servers(servers: list[Addr]) -> str:
    return "".join(f"{host}:{port}\n" for host, port in servers)


def metrics_addr(addr: Addr) -> Addr:
    return addr[0], addr[1] + METRICS_PORT_OFFSET


def write_prometheus_config(servers: list[Addr], folder: Path, interval: int = 5) -> Path:
    """A file_sd target list of the nodes' metrics endpoints and a minimal
    prometheus.yml that scrapes them every `interval` seconds; returns the latter."""
    hosts = [metrics_addr(addr) for addr in servers]
    targets = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in hosts]
    group = {"targets": targets, "labels": {"job": "ringkv"}}
    (folder / PROMETHEUS_TARGETS).write_text(json.dumps([group], indent=1) + "\n")
    config = folder / PROMETHEUS_CONFIG
    config.write_text(
        "# Scrapes every node of the cluster `ringkv cluster up` started here:\n"
        f"#   prometheus --config.file={config.name}\n"
        "global:\n"
        f"  scrape_interval: {interval}s\n"
        "scrape_configs:\n"
        "  - job_name: ringkv\n"
        "    file_sd_configs:\n"
        f"      - files: [{PROMETHEUS_TARGETS}]\n"
    )
    return config


@dataclass
class LocalCluster:
    servers: list[Addr]
    workdir: Path
    servers_file: Path
    memory_mb: int = 512
    replicas: int = 3
    log_level: str = "info"
    log_format: str = "text"
    key_file: Path | None = None  # None: the nodes run --insecure
    metrics: bool = False  # each node answers Prometheus on metrics_addr(its address)
    data_dir: Path | None = None  # node i keeps its store in data_dir/node-i
    durability: str = "none"
    max_disk_mb: int | None = None
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    suspended: set[int] = field(default_factory=set)

    @classmethod
    def create(
        cls,
        servers: list[Addr],
        workdir: Path,
        servers_file: Path | None = None,
        insecure: bool = False,
        **options: Any,
    ) -> LocalCluster:
        """Write the server list and, unless insecure, a new cluster key in `workdir`."""
        workdir.mkdir(parents=True, exist_ok=True)
        servers_file = servers_file or workdir / "servers.txt"
        servers_file.write_text(format_servers(servers))
        key_file = workdir / KEY_FILE
        if insecure:
            # A key left by an earlier cluster would make the tools seal what these
            # nodes cannot open.
            key_file.unlink(missing_ok=True)
        else:
            save_keyring(key_file, Keyring.generate())
        return cls(
            servers=servers, workdir=workdir, servers_file=servers_file,
            key_file=None if insecure else key_file, **options,
        )  # fmt: skip

    @property
    def keyring(self) -> Keyring | None:
        return None if self.key_file is None else load_keyring(self.key_file)

    def status(self, only: set[int] | None = None, timeout: float = 0.5) -> dict[int, Any]:
        """query_status of this cluster's nodes, with its key."""
        return query_status(self.servers, only, timeout, self.keyring)

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        for index in range(len(self.servers)):
            self.start_node(index)
        self.save_state()

    def start_node(self, index: int) -> None:
        host, port = self.servers[index]
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        command = [
            sys.executable, "-m", "ringkv", "node",
            "--listen", f"{host}:{port}",
            "--servers", str(self.servers_file),
            "--memory-mb", str(self.memory_mb),
            "--replicas", str(self.replicas),
            "--log-level", self.log_level,
            "--log-format", self.log_format,
        ]  # fmt: skip
        if self.key_file is not None:
            command += ["--cluster-key", str(self.key_file)]
        elif len(self.servers) > 1:
            command.append("--insecure")
        if self.metrics:
            command += ["--metrics-port", str(port + METRICS_PORT_OFFSET)]
        if self.data_dir is not None:
            command += ["--data-dir", str(self.data_dir / f"node-{index}")]
            command += ["--durability", self.durability]
            if self.max_disk_mb is not None:
                command += ["--max-disk-mb", str(self.max_disk_mb)]
        with open(logs / f"node-{index}.log", "ab") as log:
            self.procs[index] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self.suspended.discard(index)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every running node answers a status query and serves all its slots.

        A node pulls its slots from the others once views agree (about a second
        after start); until then it may hold back a REMOVE, which needs to know
        whether the key exists, and a slot whose sources were still pulling it
        is held until one of them is sure of it.
        """
        deadline = time.monotonic() + timeout
        wanted = {i for i in self.procs if i not in self.suspended}
        while True:
            statuses = self.status(wanted, timeout=0.3)
            ready = {
                i for i, s in statuses.items()
                if not s.get("unsynced_slots") and not s.get("held_slots")
            }  # fmt: skip
            if wanted <= ready:
                return
            self._check_exited()
            if time.monotonic() > deadline:
                missing = sorted(wanted - ready)
                raise TimeoutError(f"nodes {missing} were not ready within {timeout:.0f} s")
            time.sleep(0.1)

    def _check_exited(self) -> None:
        for index, code in self.exited().items():
            log = self.workdir / "logs" / f"node-{index}.log"
            raise RuntimeError(f"node {index} exited with code {code}; see {log}")

    def exited(self) -> dict[int, int]:
        """Nodes whose process has ended, with its exit status (negative: the
        signal that ended it). Asking reaps them: no zombie keeps its pid."""
        codes = {index: proc.poll() for index, proc in self.procs.items()}
        return {index: code for index, code in codes.items() if code is not None}

    def pid(self, index: int) -> int:
        return self.procs[index].pid

    def suspend(self, index: int) -> None:
        os.kill(self.pid(index), signal.SIGSTOP)
        self.suspended.add(index)
        self.save_state()

    def resume(self, index: int) -> None:
        os.kill(self.pid(index), signal.SIGCONT)
        self.suspended.discard(index)
        self.save_state()

    def kill(self, index: int) -> None:
        """SIGKILL: a crash, nothing handed off."""
        proc = self.procs.pop(index)
        proc.kill()
        proc.wait()
        self.suspended.discard(index)

    def crash(self) -> None:
        """SIGKILL every node at once, as a power loss would stop them."""
        for proc in self.procs.values():
            _signal(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait()
        self.procs.clear()
        self.suspended.clear()

    def stop(self, grace: float = 5.0) -> None:
        for index, proc in self.procs.items():
            if index in self.suspended:
                _signal(proc.pid, signal.SIGCONT)
            _signal(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        self.suspended.clear()
        (self.workdir / STATE_FILE).unlink(missing_ok=True)

    def alive_indexes(self) -> list[int]:
        return [i for i in self.procs if i not in self.suspended]

    def save_state(self) -> None:
        state = {
            "servers_file": str(self.servers_file.resolve()),
            "pids": {str(i): p.pid for i, p in self.procs.items()},
            "suspended": sorted(self.suspended),
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=1))


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def load_state(workdir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((workdir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def query_status(
    servers: list[Addr],
    only: set[int] | None = None,
    timeout: float = 0.5,
    keyring: Keyring | None = None,
) -> dict[int, dict[str, Any]]:
    """Ask nodes for their STATUS; returns what answered within the time-out, by index.

    A cluster with a key answers only requests sealed with it (as the operator).
    """
    wanted = set(range(len(servers))) if only is None else set(only)
    token = os.urandom(8)
    request = peer.encode_status_request(token)
    sealer = None if keyring is None else Sealer(keyring, OPERATOR, time.time_ns() // 1000)
    found: dict[int, dict[str, Any]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        for index in wanted:
            sealed = request if sealer is None else sealer.seal(request, index, Channel.DATA)
            sock.sendto(sealed, servers[index])
        deadline = time.monotonic() + timeout
        while len(found) < len(wanted):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                data, _ = sock.recvfrom(65536)
            except (TimeoutError, ConnectionRefusedError):
                continue
            if sealer is not None:
                opened = sealer.open_reply(data)
                if opened is None:
                    continue
                data = opened
            try:
                got_token, status = peer.decode_status_reply(data)
            except peer.PeerDecodeError:
                continue
            if got_token == token and status.get("index") in wanted:
                found[int(status["index"])] = status
    return found

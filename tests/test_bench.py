"""`ringkv bench`: short runs against a real node and the echo server (figures sane, not fast)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from ringkv.check.bench import (
    BenchConfig,
    BenchResult,
    WorkerResult,
    merge,
    run_bench,
    split_clients,
)
from ringkv.cli import main
from ringkv.client.local import LocalNode, free_udp_port, local_node


@pytest.fixture(scope="module")
def node() -> Iterator[LocalNode]:
    with local_node() as running:
        yield running


def assert_sane(figures: dict[str, object]) -> None:
    assert figures["answered"] > 0  # type: ignore[operator]
    assert figures["mismatches"] == 0
    assert set(figures["errors"]) == {"0"}  # type: ignore[arg-type]
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]  # type: ignore[operator]


def test_split_clients() -> None:
    assert split_clients(5, 2) == [3, 2]
    assert split_clients(2, 4) == [1, 1]


def test_run_bench_over_two_processes(node: LocalNode) -> None:
    config = BenchConfig(servers=(node.addr,), clients=2, duration=1.0, procs=2, keys=3)
    result: BenchResult = run_bench(config)
    assert result.procs == 2
    assert result.requests == result.answered + result.timeouts
    assert_sane(result.to_dict())


def test_cli_compare_echo_json(node: LocalNode) -> None:
    server = f"{node.addr[0]}:{node.addr[1]}"
    args = ["bench", "--server", server, "--compare-echo", "--clients", "2", "--duration", "1"]
    result = CliRunner().invoke(main, [*args, "--json", "--value-size", "100"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["echo"]["echo"] is True and figures["node"]["echo"] is False
    assert_sane(figures["echo"])
    assert_sane(figures["node"])
    assert figures["node_to_echo"] > 0
    assert 0 < figures["echo"]["client_cpu_pct"] <= 110  # measured, one core at most (+ slack)
    assert figures["echo_client_bound"] == (figures["echo"]["client_cpu_pct"] >= 90)


def test_the_busiest_worker_says_whether_the_bench_set_the_pace() -> None:
    config = BenchConfig(servers=(("127.0.0.1", 1),), procs=2)
    idle = WorkerResult(answered=10, elapsed=2.0, cpu=0.5)
    busy = WorkerResult(answered=10, elapsed=2.0, cpu=1.9)
    assert merge(config, [idle, busy]).client_cpu_pct == 95.0
    assert merge(config, [idle, busy]).client_bound
    assert not merge(config, [idle, idle]).client_bound


def test_cli_echo_server_human_output() -> None:
    port = str(free_udp_port())
    args = ["bench", "--echo-server", port, "--clients", "2", "--duration", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"127.0.0.1:{port} (echo server)" in result.stdout
    assert "throughput" in result.stdout and "mismatches   0" in result.stdout

"""`ringkv check`: quick runs against a real node, a real cluster and a deliberately wrong server.

The faulty-server runs show the check judges the protocol, not ringkv: each
fault must fail exactly the Part 1 stage that looks at it, and no other.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

from ringkv.check.base import Params, Scale
from ringkv.check.load import Tally, make_value, timed_request, value_seq
from ringkv.check.nodes import NodeControl, NodeControlError, is_local
from ringkv.check.seq import Register, classify, schedule
from ringkv.check.suite import SelectionError, select
from ringkv.cli.check import check
from ringkv.client.client import Client, ClientError, Reply
from ringkv.client.local import free_udp_port, local_node, stop
from ringkv.report.html import read_data
from ringkv.runtime.cluster import LocalCluster, local_servers
from ringkv.wire import Addr
from ringkv.wire.codec import Command, Err

PART1 = [
    "1.liveness", "1.basic", "1.versions", "1.remove", "1.invalid", "1.at-most-once",
    "1.performance", "1.capacity", "1.shutdown",
]  # fmt: skip
FAULTY_SERVER = Path(__file__).with_name("faulty_server.py")


def run_check(tmp_path: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
    out = tmp_path / "check.json"
    result = CliRunner().invoke(check, [*args, "--quick", "--seed", "7", "--json", str(out)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output, json.loads(out.read_text())


def verdicts(figures: dict[str, Any]) -> dict[str, bool]:
    return {stage["id"]: stage["passed"] for stage in figures["stages"]}


# -- pieces ------------------------------------------------------------------------


def test_scale_gives_the_evaluation_figures_at_40_nodes() -> None:
    s = Scale.of(40, Params())
    assert (s.suspend, s.suspend_batch, s.resume_some) == (24, 4, 3)
    assert (s.seq_step, s.seq_max_down) == (3, 12)
    small = Scale.of(10, Params())
    assert small.suspend == 6 and small.seq_max_down < 10


def test_schedule_goes_down_to_the_limit_and_back_up() -> None:
    assert schedule(8, 3, 12) == [3, 3, 3, 3, -3, -3, -3, -3]
    assert schedule(4, 1, 3) == [1, 1, -1, -1]
    assert sum(schedule(5, 2, 4)) >= 0


def test_values_name_their_key_and_write() -> None:
    value = make_value(b"key-1", 42, 500)
    assert len(value) == 500 and value_seq(b"key-1", value) == 42
    assert value_seq(b"key-2", value) is None  # another key's value is invented
    assert value_seq(b"key-1", value[:-1] + b"x") is None  # so is a corrupted one


def test_reads_are_classified_against_the_last_acknowledged_write() -> None:
    key, reg = b"k", Register(acked=3, maybe={4})

    def read(seq: int) -> str:
        return classify(key, reg, Reply(Err.OK, make_value(key, seq, 100)))

    assert (read(3), read(4), read(2), read(9)) == ("right", "right", "stale", "invented")
    assert classify(key, reg, Reply(Err.NO_KEY)) == "missing"
    assert classify(key, Register(maybe={0}), Reply(Err.NO_KEY)) == "right"
    assert classify(key, reg, Reply(Err.INTERNAL)) == "error"


def test_selection_adds_the_stages_whose_state_is_needed() -> None:
    ids = [s.id for s in select(["suspend-2c"], {1, 2})]
    assert ids == ["2.store-load-0", "2.suspend-1", "2.suspend-2a", "2.suspend-2c"]
    assert [s.id for s in select(["basic"], {1, 2})] == ["1.basic", "2.basic"]
    with pytest.raises(SelectionError):
        select(["no-such-stage"], {1})


def test_only_loopback_nodes_are_signalled_without_ssh() -> None:
    assert is_local(("127.0.0.7", 1)) and is_local(("localhost", 1))
    assert not is_local(("192.0.2.1", 1))
    with pytest.raises(NodeControlError, match="--ssh"):
        NodeControl().check_reachable([("127.0.0.1", 1), ("192.0.2.1", 1)])
    NodeControl("ssh {host}").check_reachable([("192.0.2.1", 1)])


def test_a_node_too_busy_for_get_pid_is_stopped_with_the_pid_it_gave_before() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    silent = ("127.0.0.1", free_udp_port())  # nobody answers GET_PID there
    control = NodeControl()
    try:
        control.learn({silent: sleeper.pid})
        assert control.suspend(silent) == sleeper.pid
        assert _stopped_soon(sleeper.pid, True)
        assert control.resume_all() == [silent]
        assert _stopped_soon(sleeper.pid, False)
    finally:
        sleeper.kill()
        sleeper.wait()


def _stopped_soon(pid: int, stopped: bool) -> bool:
    """Signals are delivered asynchronously: poll the state for a moment."""
    for _ in range(100):
        if (psutil.Process(pid).status() == psutil.STATUS_STOPPED) == stopped:
            return True
        time.sleep(0.02)
    return False


def test_no_node_at_local_fails_part1_at_once(tmp_path: Path) -> None:
    start = time.monotonic()
    nobody = f"127.0.0.1:{free_udp_port()}"
    code, output, figures = run_check(tmp_path, "--part", "1", "--local", nobody)
    assert code == 1 and time.monotonic() - start < 10
    assert not any(verdicts(figures).values())
    assert "no node answers" in output


# -- Part 1 against ringkv and against a faulty server -------------------------------


def test_part1_quick_passes_against_a_ringkv_node(tmp_path: Path) -> None:
    with local_node() as node:
        code, output, figures = run_check(tmp_path, "--part", "1", "--local", _addr(node.addr))
        assert code == 0, output
        assert verdicts(figures) == dict.fromkeys(PART1, True)
        assert node.proc.wait(timeout=5) == 0  # the shutdown stage ended it


@contextmanager
def faulty_server(*args: str) -> Iterator[Addr]:
    addr = ("127.0.0.1", free_udp_port())
    command = [sys.executable, str(FAULTY_SERVER), "--listen", _addr(addr), *args]
    proc = subprocess.Popen(command)
    try:
        _wait_answering(addr, proc)
        yield addr
    finally:
        stop(proc)


def _wait_answering(addr: Addr, proc: subprocess.Popen[bytes]) -> None:
    with Client(addr, timeout=0.05, tries=1) as client:
        for _ in range(200):
            assert proc.poll() is None, "the faulty server exited"
            try:
                client.is_alive()
                return
            except ClientError:
                continue
    raise AssertionError("the faulty server did not answer")


def _addr(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"


def test_a_correct_minimal_server_passes_part1_and_fills_up(tmp_path: Path) -> None:
    """The faulty server without faults, with a budget small enough to answer errCode 2."""
    with faulty_server("--budget-bytes", "1000000") as addr:
        code, output, figures = run_check(tmp_path, "--part", "1", "--local", _addr(addr))
    assert code == 0, output
    capacity = next(s for s in figures["stages"] if s["id"] == "1.capacity")
    assert capacity["figures"]["out of space"] > 0


@pytest.mark.parametrize(
    ("fault", "failing"),
    [
        ("forget-replies", "1.at-most-once"),
        ("long-keys-ok", "1.invalid"),
        ("omit-zero-errcode", "1.liveness"),
    ],
)
def test_each_fault_fails_exactly_its_stage(tmp_path: Path, fault: str, failing: str) -> None:
    with faulty_server("--fault", fault) as addr:
        code, output, figures = run_check(tmp_path, "--part", "1", "--local", _addr(addr))
    assert code == 1
    expected = {stage: stage != failing for stage in PART1}
    assert verdicts(figures) == expected, output


# -- Part 2 against a local cluster ---------------------------------------------------


@pytest.mark.cluster
def test_part2_quick_passes_against_a_local_cluster(tmp_path: Path) -> None:
    servers = local_servers(10, "", free_udp_port(), distinct_hosts=True)
    cluster = LocalCluster.create(servers, tmp_path / "cluster", log_level="warning")
    cluster.start()
    try:
        cluster.wait_ready(60)
        args = ["--part", "2", "--servers", str(cluster.servers_file)]
        code, output, figures = run_check(tmp_path, *args, "--report", str(tmp_path / "report"))
        print(output)
        assert code == 0, output
        assert all(verdicts(figures).values()) and len(figures["stages"]) == 13
        # The report shades a window per suspension, each closed by its resume.
        drawn = read_data(tmp_path / "report" / "report.html")["timeline"]
        assert drawn["faults"] and all(f["end"] is not None for f in drawn["faults"])
        assert drawn["nodes_down"][-1][1] == 0 and drawn["violation_count"] == 0
        assert [s["name"] for s in drawn["spans"]] == list(verdicts(figures))
        # Every node the check suspended was resumed.
        states = {psutil.Process(cluster.pid(i)).status() for i in range(len(servers))}
        assert psutil.STATUS_STOPPED not in states
    finally:
        cluster.stop()


class _Answers:
    """An AsyncClient stand-in that answers every request with one reply."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    async def request(self, *args: object, **kwargs: object) -> Reply:
        return self.reply


@pytest.mark.parametrize(
    ("err", "counted_as_answered"), [(Err.OK, True), (Err.NO_KEY, True), (Err.OVERLOAD, False)]
)
def test_an_overload_leaves_the_outcome_open_like_a_time_out(
    err: int, counted_as_answered: bool
) -> None:
    tally = Tally()
    client = _Answers(Reply(err, overload_wait_ms=50))
    got = asyncio.run(timed_request(client, tally, Command.PUT, b"k", b"v"))  # type: ignore[arg-type]
    assert (got is not None) == counted_as_answered
    assert tally.errors[err] == 1  # its errCode is counted all the same

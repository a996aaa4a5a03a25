"""`--data-dir`: real processes killed with SIGKILL and started again on their data.

The crash tests judge by the values themselves (`make_value`: each names its
key and its write number): after a restart a key must hold its last
acknowledged write, or a later write whose PUT had no answer. An older one
is a lost write; a number never written is a phantom. Memory-only nodes
run the same test as a control: the checker must see their writes lost.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import lmdb
import pytest
from click.testing import CliRunner
from test_metrics import samples

from ringkv.check.crash import Register, Writers, judge, verdict_of
from ringkv.cli.main import main
from ringkv.client.client import Client
from ringkv.client.local import free_udp_port, stop, wait_until_alive
from ringkv.runtime.cluster import LocalCluster, local_servers
from ringkv.wire import Addr
from ringkv.wire.codec import Err


def start_node(addr: Addr, *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "ringkv", "node", "--listen", f"{addr[0]}:{addr[1]}"]
    proc = subprocess.Popen([*command, "--log-level", "warning", *args], stderr=subprocess.PIPE)
    wait_until_alive(addr, proc)
    return proc


def killed(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# -- one node ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fsync", "flush"])
def test_a_killed_node_comes_back_with_its_store(tmp_path: Path, mode: str) -> None:
    addr = ("127.0.0.1", free_udp_port())
    args = ("--data-dir", str(tmp_path / "data"), "--durability", mode)
    proc = start_node(addr, *args)
    with Client(addr) as client:
        for i in range(200):
            assert client.put(b"k%d" % i, b"value %d" % i, version=i).ok
        for i in range(0, 200, 4):
            assert client.remove(b"k%d" % i).ok
    killed(proc)
    proc = start_node(addr, *args)
    try:
        with Client(addr) as client:
            for i in range(200):
                got = client.get(b"k%d" % i)
                if i % 4 == 0:
                    assert got.err == Err.NO_KEY, i  # the remove survived too
                else:
                    assert (got.err, got.value, got.version) == (Err.OK, b"value %d" % i, i)
    finally:
        stop(proc)


def test_a_wipeout_is_durable_too(tmp_path: Path) -> None:
    addr = ("127.0.0.1", free_udp_port())
    args = ("--data-dir", str(tmp_path / "data"))
    proc = start_node(addr, *args)
    with Client(addr) as client:
        assert client.put(b"before", b"x").ok
        assert client.wipeout().ok
        assert client.put(b"after", b"y").ok
    killed(proc)
    proc = start_node(addr, *args)
    try:
        with Client(addr) as client:
            assert client.get(b"before").err == Err.NO_KEY
            assert client.get(b"after").value == b"y"
    finally:
        stop(proc)


def test_the_disk_bound_answers_no_space(tmp_path: Path) -> None:
    """--max-disk-mb 1: the store may take half of it; a PUT beyond gets errCode 2."""
    addr = ("127.0.0.1", free_udp_port())
    proc = start_node(addr, "--data-dir", str(tmp_path / "data"), "--max-disk-mb", "1")
    try:
        with Client(addr) as client:
            codes = [client.put(b"k%d" % i, b"v" * 5_000).err for i in range(200)]
            assert Err.NO_SPACE in codes
            stored = codes.index(Err.NO_SPACE)
            assert 80 <= stored <= 104  # 512 KiB of 5 kB values (and their overhead)
            assert client.is_alive().ok
    finally:
        stop(proc)


def test_the_data_dir_is_in_the_metrics(tmp_path: Path) -> None:
    addr, metrics_port = ("127.0.0.1", free_udp_port()), free_udp_port()
    args = ("--data-dir", str(tmp_path / "data"), "--metrics-port", str(metrics_port))
    proc = start_node(addr, *args, "--max-disk-mb", "64")
    try:
        with Client(addr) as client:
            for i in range(50):
                assert client.put(b"k%d" % i, b"v" * 100).ok
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            got = samples(response.read().decode())
    finally:
        stop(proc)
    assert 1 <= got[("ringkv_disk_commits_total", ())] <= 50
    assert got[("ringkv_disk_committed_keys_total", ())] == 50
    assert got[("ringkv_disk_bytes", ())] > 50 * 100
    assert got[("ringkv_disk_limit_bytes", ())] == 64 << 20


def _refused(tmp_path: Path, addr: Addr, *args: str) -> str:
    command = [sys.executable, "-m", "ringkv", "node", "--listen", f"{addr[0]}:{addr[1]}"]
    done = subprocess.run([*command, *args], capture_output=True, timeout=30)
    assert done.returncode == 1
    return done.stderr.decode()


def test_a_data_dir_of_another_node_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ("127.0.0.1", free_udp_port())
    proc = start_node(first, "--data-dir", str(data))
    with Client(first) as client:
        assert client.put(b"k", b"v").ok
    stop(proc)
    other = ("127.0.0.1", free_udp_port())
    message = _refused(tmp_path, other, "--data-dir", str(data))
    assert "belongs to another node or cluster" in message
    assert f"{first[0]}:{first[1]}" in message and f"{other[0]}:{other[1]}" in message


def test_a_damaged_entry_is_refused_not_served(tmp_path: Path) -> None:
    data = tmp_path / "data"
    addr = ("127.0.0.1", free_udp_port())
    stop(start_node(addr, "--data-dir", str(data)))
    with lmdb.open(str(data), max_dbs=2) as env:
        entries = env.open_db(b"entries")
        with env.begin(write=True, db=entries) as txn:
            txn.put(b"bad", b"\x01\x02\x03")  # neither a stamp nor an entry
    assert "damaged entry" in _refused(tmp_path, addr, "--data-dir", str(data))


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--durability", "fsync"], "--durability fsync needs --data-dir"),
        (["--data-dir", "DIR", "--durability", "none"], "give --durability flush|fsync"),
    ],
)
def test_durability_flags_that_contradict_each_other_are_named(
    tmp_path: Path, args: list[str], complaint: str
) -> None:
    argv = [a.replace("DIR", str(tmp_path)) for a in args]
    result = CliRunner().invoke(main, ["node", "--listen", "127.0.0.1:1", *argv])
    assert result.exit_code == 2 and complaint in result.output


# -- a whole cluster losing power ----------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.parametrize("mode", ["fsync", "flush", "none"])
def test_acknowledged_writes_survive_every_node_killed_at_once(tmp_path: Path, mode: str) -> None:
    """Five nodes under write load: one is SIGKILLed, the writes go on a second
    without it, then the other four are killed together, and all five start again
    on their data. No acknowledged write is lost, none comes back that was never
    written, neither in reads made while the nodes are still pulling nor after.
    (The first node's copy is older than the others': served as a new, empty
    process's would be, it gave stale reads in the simulator.) Memory-only nodes
    (none) are the control: their writes are all lost."""
    servers = local_servers(5, "", free_udp_port(), distinct_hosts=True)
    data = None if mode == "none" else tmp_path / "data"
    cluster = LocalCluster.create(
        servers, tmp_path / "cluster", log_level="warning", data_dir=data, durability=mode
    )
    cluster.start()
    try:
        cluster.wait_ready(60)
        writers = Writers(servers)
        load = threading.Thread(target=writers.run)
        load.start()
        time.sleep(1.5)
        cluster.kill(0)
        time.sleep(1.0)  # node 0 misses these writes
        cluster.crash()  # mid-load: writes in flight at every stage of their chains
        writers.stop.set()
        load.join(timeout=30)
        assert writers.acknowledged == len(writers.regs) == 128  # every key had an OK
        cluster.start()
        early = judge(writers.regs, servers)  # at once: nodes still loading and pulling
        cluster.wait_ready(60)
        verdicts = judge(writers.regs, servers)
        print(mode, "while pulling:", dict(early), "after:", dict(verdicts))
        if mode == "none":
            assert verdicts == {"lost": len(writers.regs)}  # the checker sees a loss
        else:
            assert early["lost"] == early["phantom"] == 0
            assert verdicts == {"right": len(writers.regs)}
    finally:
        cluster.stop()
    logs = (tmp_path / "cluster" / "logs").glob("node-*.log")
    assert not any("Traceback" in log.read_text() for log in logs)


@pytest.mark.parametrize(
    ("acked", "open_", "seen", "verdict"),
    [
        (3, set(), 3, "right"),
        (3, {4, 5}, 5, "right"),  # a write with no answer may have been applied
        (3, set(), 2, "lost"),
        (3, set(), 0, "lost"),  # not found: every write gone
        (0, {1}, 0, "right"),  # nothing acknowledged, nothing owed
        (3, set(), 9, "phantom"),  # never written
        (3, set(), None, "phantom"),  # not a value of ours
    ],
)
def test_a_value_read_back_is_judged_against_what_was_acknowledged(
    acked: int, open_: set[int], seen: int | None, verdict: str
) -> None:
    reg = Register(acked=acked, open=open_, written=max([acked, *open_]))
    assert verdict_of(reg, seen) == verdict

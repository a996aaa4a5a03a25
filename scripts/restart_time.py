"""How a killed node comes back, with a data directory and without: keys pulled, time to serve.

    .venv/bin/python scripts/restart_time.py [--keys 100000] [--away 10] [--nodes 3]

A cluster of NODES nodes (R = 3, so with 3 nodes every node holds every
key) is loaded with KEYS keys; node 0 is SIGKILLed, AWAY seconds pass while
1,000 more keys are written, and node 0 is started again. Measured: the
seconds until it serves every slot it holds (STATUS: no slot unsynced or
held), the keys it loaded from its data directory, and the entries its
pulls brought (and how many of those were newer than its copy). Run once
with `--durability fsync` and once memory-only, one after the other.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from ringkv.check.load import make_value, put_all
from ringkv.runtime.cluster import LocalCluster, local_servers

MISSED = 1_000  # keys written while the node is away
DEATH = 5.0  # seconds until the others count a killed node dead (suspicion 2-5 s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--away", type=float, default=10.0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=45001)
    parser.add_argument("--modes", default="fsync,none", help="Durability modes, in turn.")
    args = parser.parse_args()
    for mode in args.modes.split(","):
        figures = _measure(mode, args.nodes, args.keys, args.away, args.base_port)
        print(mode, figures, flush=True)


def _measure(mode: str, nodes: int, keys: int, away: float, base_port: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        servers = local_servers(nodes, "", base_port, distinct_hosts=True)
        data = None if mode == "none" else work / "data"
        cluster = LocalCluster.create(
            servers, work / "cluster", log_level="info", data_dir=data, durability=mode,
            memory_mb=256,
        )  # fmt: skip
        cluster.start()
        try:
            cluster.wait_ready(60)
            if _write(servers, "k", keys):
                raise SystemExit("PUTs timed out while loading the cluster")
            cluster.kill(0)
            started = time.monotonic()
            time.sleep(DEATH)  # the others route around it before the writes it misses
            unknown = _write(servers[1:], "missed", MISSED)
            time.sleep(max(0.0, away - (time.monotonic() - started)))
            cluster.start_node(0)
            back = time.monotonic()
            cluster.wait_ready(300)
            serving = time.monotonic() - back
            status = cluster.status({0})[0]
            loaded = _restored(work / "cluster" / "logs" / "node-0.log")
        finally:
            cluster.stop()
    return {
        "keys_loaded_from_disk": loaded,
        "seconds_until_serving": round(serving, 2),
        "keys_pulled": status["keys_pulled"],
        "keys_pulled_newer": status["keys_pulled_newer"],
        "keys_held_after": status["keys"],
        "missed_writes_timed_out": unknown,
    }


def _write(servers: list[Any], tag: str, count: int) -> int:
    """PUT `count` keys; how many PUTs timed out."""
    keys = [f"{tag}-{i}".encode() for i in range(count)]
    _, unknown = put_all(servers, {key: make_value(key, 0, 500) for key in keys}, 64)
    return len(unknown)


def _restored(log: Path) -> int:
    """The keys node 0 loaded from its data directory at its last start (its log says)."""
    found = re.findall(r"restored ([\d,]+) keys", log.read_text())
    return int(found[-1].replace(",", "")) if found else 0


if __name__ == "__main__":
    main()

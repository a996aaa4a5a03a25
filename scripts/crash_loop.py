"""Kill every node of a loaded cluster at once, ROUNDS times, and count the writes lost.

    .venv/bin/python scripts/crash_loop.py [--nodes 10] [--rounds 20] [--durability fsync]

One cluster (`--data-dir` in a temporary folder) is started; writers
(ringkv.check.crash) PUT under load; at a random moment 1-3 s into each
round every node is SIGKILLed at once (a power loss of the whole cluster, as
far as the processes can tell); the cluster is started again on its data
and every key is read back and judged against what was acknowledged. The
writers go on across rounds, so later rounds also check the writes of the
earlier ones. Prints one line per round and the totals.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from ringkv.check.crash import Writers, judge
from ringkv.runtime.cluster import LocalCluster, local_servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--durability", choices=["flush", "fsync"], default="fsync")
    parser.add_argument("--base-port", type=int, default=46001)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        servers = local_servers(args.nodes, "", args.base_port, distinct_hosts=True)
        cluster = LocalCluster.create(
            servers, work / "cluster", log_level="warning", data_dir=work / "data",
            durability=args.durability,
        )  # fmt: skip
        writers = Writers(servers)
        totals: Counter[str] = Counter()
        try:
            cluster.start()
            for r in range(1, args.rounds + 1):
                totals += _round(cluster, writers, rng.uniform(1.0, 3.0), r)
        finally:
            cluster.stop()
    print(f"{args.durability}, {args.nodes} nodes, {args.rounds} rounds: {dict(totals)}")


def _round(cluster: LocalCluster, writers: Writers, load_for: float, r: int) -> Counter[str]:
    cluster.wait_ready(120)
    before = sum(reg.acked for reg in writers.regs.values())
    writers.stop.clear()
    load = threading.Thread(target=writers.run)
    load.start()
    time.sleep(load_for)
    cluster.crash()
    writers.stop.set()
    load.join()
    acked = sum(reg.acked for reg in writers.regs.values()) - before
    started = time.monotonic()
    cluster.start()
    cluster.wait_ready(120)
    ready = time.monotonic() - started
    verdicts = judge(writers.regs, cluster.servers)
    print(
        f"round {r}: killed after {load_for:.1f} s, {acked:,} writes acknowledged in the round;"
        f" back in {ready:.1f} s; {dict(verdicts)}",
        flush=True,
    )
    return verdicts


if __name__ == "__main__":
    main()

"""Repair time of a running local cluster: how long until every chain is whole again.

Usage (a fresh cluster; it stops nodes of it and resumes them at the end):

    ringkv cluster up --nodes 40 --detach
    .venv/bin/python scripts/repair_time.py servers.txt --keys 40000 --stop 4 --seed 1 \
        --cluster-key .ringkv/cluster.key

Stores KEYS values of 500 bytes through random nodes, SIGSTOPs STOP random
nodes at the same instant, then polls every live node's status every 0.25 s
and prints, per poll, the slots not yet pulled and the transfers in flight
summed over the cluster. Repair is over at the first poll after the chains
changed at which both are zero everywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import time

from ringkv.client.client import AsyncClient
from ringkv.runtime.cluster import query_status
from ringkv.servers import load_servers
from ringkv.wire import Addr
from ringkv.wire.seal import Keyring, load_keyring

POLL = 0.25
LIMIT = 30.0  # seconds of polling at most


async def _store(servers: list[Addr], keys: int, rng: random.Random) -> None:
    async def worker(numbers: range) -> None:
        async with AsyncClient(rng.choice(servers)) as client:
            for i in numbers:
                await client.put(b"repair-%07d" % i, os.urandom(500))

    await asyncio.gather(*(worker(range(w, keys, 64)) for w in range(64)))


def _poll(servers: list[Addr], live: set[int], keyring: Keyring | None) -> tuple[int, int, int]:
    """(nodes answering, slots not yet pulled, transfers in flight), summed over live nodes."""
    status = query_status(servers, only=live, timeout=0.2, keyring=keyring)
    unsynced = sum(s.get("unsynced_slots", 0) for s in status.values())
    transfers = sum(s.get("transfers", 0) for s in status.values())
    return len(status), unsynced, transfers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("servers")
    parser.add_argument("--keys", type=int, default=40_000)
    parser.add_argument("--stop", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cluster-key", help="the cluster's key file (none: --insecure nodes)")
    args = parser.parse_args()
    keyring = load_keyring(args.cluster_key) if args.cluster_key else None
    servers, rng = load_servers(args.servers), random.Random(args.seed)
    asyncio.run(_store(servers, args.keys, rng))
    time.sleep(3.0)  # let the writes' acknowledgements settle
    pids = {i: s["pid"] for i, s in query_status(servers, keyring=keyring).items()}
    victims = rng.sample(sorted(pids), args.stop)
    live = set(pids) - set(victims)
    for i in victims:
        os.kill(pids[i], signal.SIGSTOP)
    start, changed = time.monotonic(), False
    try:
        while (elapsed := time.monotonic() - start) < LIMIT:
            answering, unsynced, transfers = _poll(servers, live, keyring)
            print(f"{elapsed:5.2f} s  {answering} answering  unsynced slots {unsynced:5d}"
                  f"  transfers {transfers:4d}", flush=True)  # fmt: skip
            changed |= unsynced > 0
            if changed and unsynced == 0 and transfers == 0:
                print(f"every chain whole again {elapsed:.2f} s after the stop")
                return
            time.sleep(POLL)
        print(f"not whole after {LIMIT:.0f} s")
    finally:
        for i in victims:
            os.kill(pids[i], signal.SIGCONT)


if __name__ == "__main__":
    main()

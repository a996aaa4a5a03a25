"""Shared pieces of the multi-process cluster tests."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ringkv.client.client import AsyncClient, ClientTimeout
from ringkv.runtime.cluster import LocalCluster
from ringkv.wire import Addr
from ringkv.wire.codec import Err


@contextmanager
def running(
    servers: list[Addr], workdir: Path, ready: float = 30.0, **options: Any
) -> Iterator[LocalCluster]:
    """A LocalCluster of `servers` (LocalCluster.create's options), started and
    serving every slot, stopped when the block ends."""
    cluster = LocalCluster.create(servers, workdir, **options)
    cluster.start()
    try:
        cluster.wait_ready(ready)
        yield cluster
    finally:
        cluster.stop()


def wait_for_counts(cluster: LocalCluster, want: int, limit: float) -> float:
    """Seconds until every running, unsuspended node reports `want`; fails after `limit`."""
    start = time.monotonic()
    live = set(cluster.alive_indexes())
    seen: dict[int, int] = {}
    while time.monotonic() - start < limit:
        statuses = cluster.status(live, timeout=0.5)
        seen = {i: s["count"] for i, s in statuses.items()}
        if len(seen) == len(live) and all(c == want for c in seen.values()):
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"counts not all {want} after {limit} s: {seen}")


Expected = dict[bytes, bytes | None]  # None: removed


async def _run(
    cluster: LocalCluster, work: Iterable[tuple[str, bytes, bytes]], clients: int
) -> list[tuple[str, bytes, bytes, int | None, bytes | None]]:
    """Run (op, key, value) items over `clients` concurrent clients with live front ends."""
    front_ends = [cluster.servers[i] for i in cluster.alive_indexes()]
    items = list(work)
    results: list[tuple[str, bytes, bytes, int | None, bytes | None]] = []

    async def worker(part: list[tuple[str, bytes, bytes]]) -> None:
        async with AsyncClient(front_ends, random_front_end=True) as client:
            for op, key, value in part:
                try:
                    if op == "put":
                        reply = await client.put(key, value)
                    elif op == "rm":
                        reply = await client.remove(key)
                    else:
                        reply = await client.get(key)
                    results.append((op, key, value, reply.err, reply.value))
                except ClientTimeout:
                    results.append((op, key, value, None, None))

    await asyncio.gather(*(worker(items[w::clients]) for w in range(clients)))
    return results


def store(cluster: LocalCluster, keys: int, prefix: bytes = b"k", clients: int = 16) -> Expected:
    """PUT `keys` fresh keys; returns what was acknowledged."""
    work = [("put", prefix + str(i).encode(), os.urandom(32)) for i in range(keys)]
    results = asyncio.run(_run(cluster, work, clients))
    return {key: value for _, key, value, err, _ in results if err == Err.OK}


def apply_writes(
    cluster: LocalCluster, expected: Expected, work: list[tuple[str, bytes, bytes]]
) -> int:
    """Overwrite / remove keys, updating `expected`; returns the time-outs.

    A write that timed out may or may not have happened: its key is dropped from
    `expected` so that later reads of it are not judged.
    """
    timeouts = 0
    for op, key, value, err, _ in asyncio.run(_run(cluster, work, 16)):
        if err is None:
            timeouts += 1
            expected.pop(key, None)
        elif op == "put" and err == Err.OK:
            expected[key] = value
        elif op == "rm":
            expected[key] = None
    return timeouts


def read_back(cluster: LocalCluster, expected: Expected, clients: int = 16) -> dict[str, int]:
    """GET every expected key; counts of correct, wrong (stale or missing), time-outs."""
    work = [("get", key, b"") for key in expected]
    counts = {"correct": 0, "wrong": 0, "missing": 0, "timeouts": 0}
    for _, key, _, err, value in asyncio.run(_run(cluster, work, clients)):
        want = expected[key]
        if err is None:
            counts["timeouts"] += 1
        elif want is None:
            counts["correct" if err == Err.NO_KEY else "wrong"] += 1
        elif err == Err.OK and value == want:
            counts["correct"] += 1
        elif err == Err.NO_KEY:
            counts["missing"] += 1
        else:
            counts["wrong"] += 1
    return counts

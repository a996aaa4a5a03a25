"""A digest of every datagram the simulator carries, per seeded schedule.

A change meant to keep behaviour (a restructuring) must give the same digests
as the commit before it: same datagrams, same order, same times. Run it on
both commits and compare:

    .venv/bin/python scripts/sim_fingerprint.py --schedules 50 > after.txt
    git stash; .venv/bin/python scripts/sim_fingerprint.py --schedules 50 > before.txt
    diff before.txt after.txt

The schedules are the property test's (tests/test_sim.py: `schedule`), plus
the 16-node shape of nodes suspended three at a time and resumed at random.
"""

from __future__ import annotations

import argparse
import hashlib
import random

from ringkv.sim.cluster import Simulator
from ringkv.sim.scenarios import Params, run_scenario

PROPERTY_FAULTS = ("pause", "crash", "join", "loss")


def schedule(number: int) -> tuple[Params, int]:
    nodes = random.Random(f"schedule/{number}").randint(5, 20)
    params = Params(
        nodes=nodes, loss=0.05, keys=12, duration=12.0, clients=3, faults=PROPERTY_FAULTS,
        check=False,
    )  # fmt: skip
    return params, 1000 + number


def fingerprint(params: Params, seed: int) -> str:
    digest = hashlib.sha256()
    original = Simulator.send

    def send(sim: Simulator, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        digest.update(f"{sim.now:.9f}{src}{dst}{len(data)}".encode())
        digest.update(data)
        original(sim, data, src, dst)

    Simulator.send = send  # type: ignore[method-assign]
    try:
        run_scenario("random-faults", params, seed)
    finally:
        Simulator.send = original  # type: ignore[method-assign]
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedules", type=int, default=50)
    parser.add_argument("--first", type=int, default=0)
    args = parser.parse_args()
    for number in range(args.first, args.first + args.schedules):
        params, seed = schedule(number)
        print(seed, params.nodes, fingerprint(params, seed), flush=True)


if __name__ == "__main__":
    main()

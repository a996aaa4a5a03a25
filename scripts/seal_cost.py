"""Microseconds to seal and to open one cluster datagram (wire/seal.py), median of 3 runs.

.venv/bin/python scripts/seal_cost.py [--bytes 600] [--count 100000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import timeit

from ringkv.wire.seal import Channel, Keyring, Sealer


def once(keys: Keyring, payload: bytes, count: int) -> tuple[float, float]:
    """(µs to seal, µs to open) one datagram, over `count` of each."""
    sender, receiver = Sealer(keys, 0, 1), Sealer(keys, 1, 1)
    sealed = iter([sender.seal(payload, 1, Channel.DATA) for _ in range(count)])
    seal_s = timeit.timeit(lambda: sender.seal(payload, 1, Channel.DATA), number=count)
    open_s = timeit.timeit(lambda: receiver.open(next(sealed), Channel.DATA), number=count)
    return seal_s / count * 1e6, open_s / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=600)
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    keys = Keyring.generate()
    payload = b"RK" + os.urandom(args.bytes - 2)
    runs = [once(keys, payload, args.count) for _ in range(3)]
    seal_us = statistics.median(r[0] for r in runs)
    open_us = statistics.median(r[1] for r in runs)
    print(f"seal {seal_us:.2f} us, open {open_us:.2f} us per {args.bytes}-byte datagram")


if __name__ == "__main__":
    main()

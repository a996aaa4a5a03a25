#!/usr/bin/env python3
"""Wait, a bounded time, until every name of a ringkv server list resolves.

    ringkv-wait-names SERVERS_FILE [--timeout SECONDS] [--interval SECONDS] [-- COMMAND ...]

A node resolves the names of its server list once, when it starts, and stops
if one does not resolve. In a container the other nodes' names may appear a
little after this one starts (Kubernetes publishes a pod's DNS record once the
pod has an address; Docker's resolver knows a container once it runs). This
checks the list the way the node will (`ringkv.servers.load_servers`) until it
loads, then exits 0, or replaces itself with COMMAND when one follows `--`.

Exit status: 0 when the list loads (or COMMAND's), 1 when the names still do
not all resolve after --timeout seconds, 2 for a list that does not parse
(waiting does not mend that).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ringkv.servers import ServerListError, load_servers, parse_servers

EXIT_TIMEOUT = 1
EXIT_BAD_LIST = 2


def wait_for_names(
    path: Path,
    timeout: float,
    interval: float,
    say: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """0 once `path` loads with every name resolved, else the exit status to end with."""
    try:
        parse_servers(path.read_text())
    except (OSError, ServerListError) as exc:
        say(f"{path}: {exc}")
        return EXIT_BAD_LIST
    deadline = clock() + timeout
    last = ""
    while True:
        try:
            load_servers(path)
        except ServerListError as exc:
            if str(exc) != last:
                say(f"waiting: {exc}")
                last = str(exc)
        else:
            return 0
        if clock() >= deadline:
            say(f"gave up after {timeout:g} s: {last}")
            return EXIT_TIMEOUT
        sleep(interval)


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    command: list[str] = []
    if "--" in args:
        split = args.index("--")
        args, command = args[:split], args[split + 1 :]
    parser = argparse.ArgumentParser(
        prog="ringkv-wait-names",
        description="Wait until every name of a ringkv server list resolves.",
    )
    parser.add_argument("servers", type=Path, help="the server list, one HOST:PORT a line")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds (default 120)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between tries")
    options = parser.parse_args(args)

    def say(message: str) -> None:
        print(f"ringkv-wait-names: {message}", file=sys.stderr, flush=True)

    status = wait_for_names(options.servers, options.timeout, options.interval, say)
    if status != 0 or not command:
        return status
    os.execvp(command[0], command)  # does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

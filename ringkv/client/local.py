"""A `ringkv node` process on loopback for tests and benches: start, wait until it answers, stop."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from ringkv.client.client import Client, ClientError
from ringkv.wire import Addr


@dataclass
class LocalNode:
    addr: Addr
    proc: subprocess.Popen[bytes]


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until_alive(addr: Addr, proc: subprocess.Popen[bytes], limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    with Client(addr, timeout=0.05, tries=1) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ringkv node on {addr[0]}:{addr[1]} exited ({proc.returncode})")
            try:
                client.is_alive()
                return
            except ClientError:
                continue
    raise RuntimeError(f"ringkv node on {addr[0]}:{addr[1]} did not answer IS_ALIVE")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def local_node(host: str = "127.0.0.1", args: Sequence[str] = ()) -> Iterator[LocalNode]:
    """Run `ringkv node` on a free port of `host` until the block ends."""
    addr = (host, free_udp_port(host))
    command = [sys.executable, "-m", "ringkv.cli", "node", "--listen", f"{host}:{addr[1]}"]
    proc = subprocess.Popen([*command, "--log-level", "warning", *args])
    try:
        wait_until_alive(addr, proc)
        yield LocalNode(addr, proc)
    finally:
        stop(proc)

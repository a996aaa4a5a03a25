"""The runtime's ordering against a real socket: what a stopped process sees first on SIGCONT."""

from __future__ import annotations

import socket
import time

from ringkv.core.node import Outbox
from ringkv.runtime.server import OVERDUE_TICK, NodeServer, open_udp_socket


class _OrderNode:
    """Records the order in which the runtime calls it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.exit_requested = False

    def on_tick(self, now: float) -> Outbox:
        self.calls.append("tick")
        return Outbox()

    def on_datagram(self, data: bytes, src: tuple[str, int], now: float, age: float = 0.0) -> list:
        self.calls.append("datagram")
        return []


def _server_with_a_queued_datagram(since_last_tick: float) -> tuple[NodeServer, _OrderNode]:
    node = _OrderNode()
    server = NodeServer(node, ("127.0.0.1", 0), gossip=False)  # type: ignore[arg-type]
    server._sock = open_udp_socket(("127.0.0.1", 0))
    server._sock.setblocking(False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"request", server._sock.getsockname())
    time.sleep(0.05)  # on loopback the datagram is queued by then
    server._last_tick = time.monotonic() - since_last_tick
    return server, node


def test_datagrams_after_a_stop_wait_for_the_overdue_tick() -> None:
    server, node = _server_with_a_queued_datagram(since_last_tick=OVERDUE_TICK + 1.5)
    try:
        server._drain()
    finally:
        server._sock.close()
    assert node.calls == ["tick", "datagram"]


def test_datagrams_between_ticks_are_handled_at_once() -> None:
    server, node = _server_with_a_queued_datagram(since_last_tick=0.05)
    try:
        server._drain()
    finally:
        server._sock.close()
    assert node.calls == ["datagram"]

"""The runtime's ordering against a real socket: what a stopped process sees first on SIGCONT."""

from __future__ import annotations

import asyncio
import math
import socket
import time

import pytest

from ringkv.core.node import Outbox
from ringkv.runtime.server import (
    MAX_TICK_GAP,
    OVERDUE_TICK,
    TICK_INTERVAL,
    NodeServer,
    open_udp_socket,
    tick_after,
)


class _OrderNode:
    """Records the order in which the runtime calls it."""

    def __init__(self, due: float = -math.inf) -> None:
        self.calls: list[str] = []
        self.exit_requested = False
        self.due = due  # what next_due answers
        self.skipped_to = -math.inf

    def next_due(self, now: float) -> float:
        return self.due

    def skip_ticks_until(self, when: float) -> None:
        self.skipped_to = when

    def on_tick(self, now: float) -> Outbox:
        self.calls.append("tick")
        return Outbox()

    def take(self, data: bytes, src: tuple[str, int], now: float, age: float = 0.0) -> None:
        self.calls.append("datagram")

    def take_peer(self, data: bytes, src: tuple[str, int], now: float, age: float = 0.0) -> None:
        self.calls.append("peer")

    def flush(self) -> list:
        return []

    def on_gossip(self, data: bytes, src: object, now: float) -> list:
        self.calls.append("gossip")
        return []

    def take_notices(self) -> list:
        return []


def _server_with_a_queued_datagram(since_last_tick: float) -> tuple[NodeServer, _OrderNode]:
    node = _OrderNode()
    server = NodeServer(node, ("127.0.0.1", 0), gossip=False)  # type: ignore[arg-type]
    server._loop = asyncio.new_event_loop()  # only to hold the tick timer
    server._sock = open_udp_socket(("127.0.0.1", 0))
    server._sock.setblocking(False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"request", server._sock.getsockname())
    time.sleep(0.05)  # on loopback the datagram is queued by then
    server._last_tick = time.monotonic() - since_last_tick
    server._tick_at = server._last_tick + TICK_INTERVAL
    return server, node


def _drain_once(server: NodeServer) -> None:
    """One wake-up of the data socket, then close what the test opened."""
    try:
        server._drain()
    finally:
        server._sock.close()
        for sock in (server._gossip_sock, server._peer_sock):
            if sock is not None:
                sock.close()
        server._loop.close()


def test_peer_datagrams_are_read_before_client_requests_and_answers_leave_by_their_port() -> None:
    server, node = _server_with_a_queued_datagram(since_last_tick=0.05)
    server._peer_sock = open_udp_socket(("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        for _ in range(2):
            peer.sendto(b"a peer's write", server._peer_sock.getsockname())
        time.sleep(0.05)
        server._peer_dests = frozenset([peer.getsockname()])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.settimeout(2.0)
            peer.settimeout(2.0)
            server._send([(b"to the peer", peer.getsockname()), (b"reply", client.getsockname())])
            assert peer.recvfrom(100) == (b"to the peer", server._peer_sock.getsockname())
            assert client.recvfrom(100) == (b"reply", server._sock.getsockname())
    _drain_once(server)
    assert node.calls == ["peer", "peer", "datagram"]


def test_datagrams_after_a_stop_wait_for_the_overdue_tick() -> None:
    server, node = _server_with_a_queued_datagram(since_last_tick=OVERDUE_TICK + 1.5)
    _drain_once(server)
    assert node.calls == ["tick", "datagram"]


def test_datagrams_between_ticks_are_handled_at_once() -> None:
    server, node = _server_with_a_queued_datagram(since_last_tick=0.05)
    _drain_once(server)
    assert node.calls == ["datagram"]


def test_datagrams_after_a_stop_wait_for_the_overdue_tick_even_after_skipped_ticks() -> None:
    # The last tick was long ago, but the ticks since were skipped, not missed.
    server, node = _server_with_a_queued_datagram(since_last_tick=OVERDUE_TICK + 0.3)
    server._tick_at = time.monotonic() + 0.05
    _drain_once(server)
    assert node.calls == ["datagram"]


@pytest.mark.parametrize(
    ("due", "now", "expected"),
    [
        (-math.inf, 10.0, 10.1),  # due at once: the next grid point
        (10.05, 10.0, 10.1),
        (10.25, 10.0, 10.3),  # the idle probe period: two grid points skipped
        (10.3 + 1e-12, 10.0, 10.3),  # a deadline on a grid point, up to float error
        (math.inf, 10.0, 10.0 + MAX_TICK_GAP),  # nothing due: still a tick now and then
        (10.0, 10.23, 10.3),  # due at once, learnt between grid points
    ],
)
def test_next_tick_is_the_first_grid_point_with_something_due(
    due: float, now: float, expected: float
) -> None:
    assert tick_after(10.0, due, now) == pytest.approx(expected)


def test_timer_follows_the_nodes_next_deadline_both_ways() -> None:
    node = _OrderNode()
    server = NodeServer(node, ("127.0.0.1", 0), gossip=False)  # type: ignore[arg-type]
    server._loop = loop = asyncio.new_event_loop()
    try:
        last = server._last_tick = time.monotonic()
        node.due = last + 0.1  # a probe in flight: its PING_REQ deadline
        server._arm(last)
        first = server._timer
        assert server._tick_at == pytest.approx(last + 0.1)
        node.due = last + 0.25  # the ACK came: only the next probe is due
        server._arm(last + 0.001)
        assert server._tick_at == pytest.approx(last + 0.3)
        assert first is not None and first.cancelled()
        assert node.skipped_to == pytest.approx(last + 0.2)  # membership hears of the skip
        second = server._timer
        server._arm(last + 0.002)  # nothing changed: the timer stays
        assert server._timer is second
    finally:
        loop.close()


def test_an_overdue_tick_is_not_postponed_by_datagrams_read_before_it() -> None:
    node = _OrderNode()
    server = NodeServer(node, ("127.0.0.1", 0), gossip=False)  # type: ignore[arg-type]
    server._loop = loop = asyncio.new_event_loop()
    try:
        last = server._last_tick = time.monotonic()
        node.due = last + 0.1
        server._arm(last)
        timer = server._timer
        # The timer has expired, but the loop handles a datagram first; news
        # in it is due at once. The tick stays where it is and runs next.
        node.due = -math.inf
        server._arm(last + 0.101)
        assert server._timer is timer and not timer.cancelled()
        assert server._tick_at == pytest.approx(last + 0.1)
    finally:
        loop.close()


@pytest.mark.parametrize("stopped", [True, False])
def test_after_a_stop_queued_gossip_is_read_before_queued_requests(stopped: bool) -> None:
    """Seed 1088: a node must know it was suspected before it acts on a queued request."""
    server, node = _server_with_a_queued_datagram(
        since_last_tick=OVERDUE_TICK + 1.5 if stopped else 0.05
    )
    server._gossip_sock = open_udp_socket(("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.sendto(b"you are suspect", server._gossip_sock.getsockname())
    time.sleep(0.05)
    _drain_once(server)
    # Between ticks the event loop hands gossip over in its own time.
    assert node.calls == (["tick", "gossip", "datagram"] if stopped else ["datagram"])


class _FaultyNode(_OrderNode):
    """Raises on datagrams starting with b"bad" and on its first tick."""

    def take(self, data: bytes, src: tuple[str, int], now: float, age: float = 0.0) -> None:
        if data.startswith(b"bad"):
            raise ValueError("a bug this datagram found")
        super().take(data, src, now, age)

    def on_tick(self, now: float) -> Outbox:
        if "tick" not in self.calls:
            self.calls.append("tick")
            raise ValueError("a bug this tick found")
        return super().on_tick(now)


def test_a_datagram_that_raises_drops_itself_only_and_a_tick_that_raises_rearms() -> None:
    node = _FaultyNode()
    server = NodeServer(node, ("127.0.0.1", 0), gossip=False)  # type: ignore[arg-type]
    server._loop = asyncio.new_event_loop()
    server._sock = open_udp_socket(("127.0.0.1", 0))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for data in (b"good", b"bad", b"good"):
                client.sendto(data, server._sock.getsockname())
        time.sleep(0.05)
        server._last_tick = server._tick_at = time.monotonic()
        server._drain()
        assert node.calls == ["datagram", "datagram"]
        server._tick()  # raises inside: counted, and the next one is timed
        assert server._timer is not None
        assert server.faults == {"datagram": 1, "tick": 1}
    finally:
        server._sock.close()
        server._loop.close()

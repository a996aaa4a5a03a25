"""One node process: UDP sockets, the tick timer and signals around a core `Node`.

The data socket carries client requests and node-to-node data; the gossip
socket carries membership only, so probes never wait behind client floods.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from ringkv.core.node import Addr, Node, Send
from ringkv.servers import gossip_addr

log = logging.getLogger("ringkv.node")

TICK_INTERVAL = 0.05
RECV_BUFFER = 8 << 20  # bursts of thousands of requests must not overflow the kernel queue
SEND_BUFFER = 4 << 20


def open_udp_socket(addr: Addr, recv_buffer: int = RECV_BUFFER) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    _set_buffer(sock, socket.SO_RCVBUF, getattr(socket, "SO_RCVBUFFORCE", None), recv_buffer)
    _set_buffer(sock, socket.SO_SNDBUF, getattr(socket, "SO_SNDBUFFORCE", None), SEND_BUFFER)
    sock.bind(addr)
    sock.setblocking(False)
    return sock


def _set_buffer(sock: socket.socket, option: int, force: int | None, size: int) -> None:
    # The *FORCE variants pass net.core.rmem_max when we run as root.
    for opt in (force, option):
        if opt is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
            return
        except OSError:
            continue


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, handle: Callable[[bytes, Addr], None]) -> None:
        self.handle = handle

    def datagram_received(self, data: bytes, addr: Addr) -> None:  # type: ignore[override]
        self.handle(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that is down: nothing to do.
        pass


class NodeServer:
    """Drives a Node from real sockets and the monotonic clock."""

    def __init__(self, node: Node, listen: Addr, gossip: bool) -> None:
        self.node = node
        self.listen = listen
        self.gossip_enabled = gossip
        self._data: asyncio.DatagramTransport | None = None
        self._gossip: asyncio.DatagramTransport | None = None
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._data, _ = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self._on_data), sock=open_udp_socket(self.listen)
        )
        if self.gossip_enabled:
            self._gossip, _ = await loop.create_datagram_endpoint(
                lambda: _Endpoint(self._on_gossip),
                sock=open_udp_socket(gossip_addr(self.listen), 1 << 20),
            )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        loop.call_soon(self._tick)
        log.info("listening on %s:%d (pid %d)", *self.listen, os.getpid())
        await self._stopped.wait()
        log.info("stopping on signal")
        self._data.close()
        if self._gossip is not None:
            self._gossip.close()

    def _on_data(self, data: bytes, addr: Addr) -> None:
        sends = self.node.on_datagram(data, addr, time.monotonic())
        sendto = self._data.sendto  # type: ignore[union-attr]
        for payload, dest in sends:
            sendto(payload, dest)
        if self.node.exit_requested:
            self._exit_now()

    def _on_gossip(self, data: bytes, addr: Addr) -> None:
        self._send_gossip(self.node.on_gossip(data, time.monotonic()))

    def _send_gossip(self, sends: list[Send]) -> None:
        if self._gossip is None:
            return
        for payload, dest in sends:
            self._gossip.sendto(payload, dest)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        outbox = self.node.on_tick(time.monotonic())
        for payload, dest in outbox.data:
            self._data.sendto(payload, dest)  # type: ignore[union-attr]
        self._send_gossip(outbox.gossip)
        loop.call_later(TICK_INTERVAL, self._tick)

    def _exit_now(self) -> None:
        # SHUTDOWN behaves like a crash: no hand-off. The reply is already
        # in the kernel's send queue (sendto on UDP does not buffer in user space).
        logging.shutdown()
        os._exit(0)


def serve(node: Node, listen: Addr, gossip: bool) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(NodeServer(node, listen, gossip).run())
        return
    uvloop.run(NodeServer(node, listen, gossip).run())

"""A bare UDP echo server: the ceiling that `ringkv bench` can measure on this machine.

It sends every datagram back unchanged and parses nothing, so a bench run
against it shows what the bench and the kernel cost without any server work.
The default runs on uvloop like a node does (same event loop, same socket
setup), so node/echo is the share of the loop's capacity that a node keeps;
`blocking=True` is the plainest possible loop (recvfrom, sendto, repeat).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from ringkv.runtime.server import open_udp_socket
from ringkv.servers import parse_addr
from ringkv.wire import Addr


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sendto = transport.sendto  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # a bench client that went away


async def _serve_async(listen: Addr) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Echo, sock=open_udp_socket(listen))
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    transport.close()


def _serve_blocking(listen: Addr) -> None:
    sock = open_udp_socket(listen)
    sock.setblocking(True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    recvfrom, sendto = sock.recvfrom, sock.sendto
    try:
        while True:
            data, addr = recvfrom(65535)
            sendto(data, addr)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def serve_echo(listen: Addr, blocking: bool = False) -> None:
    """Echo on `listen` until SIGTERM or SIGINT."""
    if blocking:
        _serve_blocking(listen)
        return
    import uvloop

    uvloop.run(_serve_async(listen))


if __name__ == "__main__":
    # `python -m ringkv.runtime.echo HOST:PORT [--blocking]`, used by `ringkv bench --echo-server`.
    serve_echo(parse_addr(sys.argv[1]), blocking="--blocking" in sys.argv[2:])

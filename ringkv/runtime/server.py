"""One node process: UDP sockets, the tick timer and signals around a core `Node`.

Three sockets (ringkv.servers): the data socket carries client requests, the
gossip socket membership, the peer socket the rest of node-to-node traffic.
Neither of the last two waits behind a flood of client requests: each has its
own kernel queue, and the peer socket is read before the data socket at every
wake-up.

The data and peer sockets are read with recvmsg and kernel receive
timestamps, so the node knows how long each datagram waited: requests queued
while the process was stopped (SIGSTOP) are recognised as stale when it
resumes, and those queued behind a backlog are shed (Node.take).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from ringkv.core.node import TICK_INTERVAL, Node
from ringkv.runtime.datadir import DataDir, DataDirError
from ringkv.runtime.logs import FIELDS
from ringkv.servers import gossip_addr, peer_addr
from ringkv.wire import Addr, Send
from ringkv.wire.seal import KeyringError, load_keyring

log = logging.getLogger("ringkv.node")

# Ticks fall on a grid of TICK_INTERVAL after the last one, but a grid point
# with nothing due is skipped: an idle node wakes up ~3 times a second for its
# probes instead of 10, and each wake-up of a Python process costs more than
# the little work it then does.
# At least this often, so that a skipped span hides little of a SIGSTOP from
# pause detection (Membership.skip_until), and reply expiry rides on ticks.
MAX_TICK_GAP = 0.5
_GRID_SLACK = 1e-6  # a deadline on a grid point (up to float error) is due at that point
# uvloop's timers count whole milliseconds of a cached clock and fire up to
# ~1 ms early; a tick just before a deadline would leave it a whole step.
_TIMER_SLACK = 0.002
# A tick this overdue when datagrams arrive means the process was stopped: tick first.
OVERDUE_TICK = 0.5
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; not exported by Python
_TIMESPEC = struct.Struct("qq")
MAX_DATAGRAM = 65_535
GOSSIP_BACKLOG = 4096  # gossip datagrams read at once after a stop: a 1 MiB queue's worth
DRAIN_LIMIT = 64  # datagrams per wake-up, so timers and gossip get their turn
RECV_BUFFER = 8 << 20  # bursts of thousands of requests must not overflow the kernel queue
SEND_BUFFER = 4 << 20
EXIT_DATA_DIR = 3  # the data directory failed: stopped rather than lose acknowledged writes


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


def _enable_timestamps(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        log.warning("no kernel receive timestamps: requests queued during a stop are not aged")


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, handle: Callable[[bytes, Addr], None]) -> None:
        # The handler itself, not a method calling it: one Python frame less per datagram.
        self.datagram_received = handle  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that is down: nothing to do.
        pass


class NodeServer:
    """Drives a Node from real sockets and the monotonic clock."""

    def __init__(
        self,
        node: Node,
        listen: Addr,
        gossip: bool,
        key_file: Path | None = None,
        metrics: Addr | None = None,
        data_dir: DataDir | None = None,
    ) -> None:
        self.node = node
        self.data_dir = data_dir  # the store's durable copy; None: memory only
        self.metrics = metrics  # where to answer Prometheus scrapes; None: nowhere
        self.key_file = key_file  # read again on SIGHUP: key rotation
        self.listen = listen
        self.gossip_enabled = gossip
        self._sock: socket.socket
        self._gossip: asyncio.DatagramTransport | None = None
        self._gossip_sock: socket.socket | None = None  # read directly after a stop
        self._peer_sock: socket.socket | None = None  # None: a one-node cluster
        self._peer_dests: frozenset[Addr] = frozenset()  # sends to these leave by _peer_sock
        self.send_drops = 0
        self.faults: dict[str, int] = {}  # handlers that raised, by what they handled
        self._fault_logged = -math.inf
        self._stopped = asyncio.Event()
        self._last_tick = time.monotonic()  # the last tick made (the grid's origin)
        self._tick_at = self._last_tick  # the next tick, on the grid
        self._timer: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop

    async def run(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._sock = open_udp_socket(self.listen)
        _enable_timestamps(self._sock)
        loop.add_reader(self._sock.fileno(), self._drain)
        if self.gossip_enabled:
            self._gossip_sock = open_udp_socket(gossip_addr(self.listen), 1 << 20)
            self._gossip, _ = await loop.create_datagram_endpoint(
                lambda: _Endpoint(self._on_gossip), sock=self._gossip_sock
            )
            self._peer_sock = open_udp_socket(peer_addr(self.listen))
            _enable_timestamps(self._peer_sock)
            self._peer_dests = frozenset(peer_addr(addr) for addr in self.node.config.servers)
            loop.add_reader(self._peer_sock.fileno(), self._drain)
        metrics_server = None
        if self.metrics is not None:
            from ringkv.runtime.metrics import MetricsServer, registry_for

            try:
                metrics_server = await MetricsServer(registry_for(self.node, self)).start(
                    self.metrics
                )
            except OSError as exc:
                host, port = self.metrics
                raise SystemExit(
                    f"cannot answer metrics on {host}:{port}: {exc.strerror}"
                ) from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_key)
        self._tick_at = time.monotonic()
        self._timer = loop.call_soon(self._tick)
        log.info("listening on %s:%d (pid %d)", *self.listen, os.getpid())
        await self._stopped.wait()
        log.info("stopping on signal")
        if metrics_server is not None:
            metrics_server.close()
        loop.remove_reader(self._sock.fileno())
        self._sock.close()
        if self._peer_sock is not None:
            loop.remove_reader(self._peer_sock.fileno())
            self._peer_sock.close()
        if self._gossip is not None:
            self._gossip.close()
        if self.data_dir is not None:
            self._persist()
            self.data_dir.close()

    def _drain(self) -> None:
        """Read what the peer and data sockets hold (up to DRAIN_LIMIT each, peers
        first) and act on each.

        After a SIGCONT the event loop polls sockets before it runs overdue
        timers: without a tick first, the node would answer reads from data
        it has not yet noticed may be stale.
        """
        # Lateness counts from the last tick on the grid, made or skipped.
        if time.monotonic() - (self._tick_at - TICK_INTERVAL) > OVERDUE_TICK:
            self._run_tick()
        self._read_data()
        self._arm(time.monotonic())  # the datagrams may have given replication work to time

    def _read_data(self) -> None:
        """Take each datagram the sockets hold, then send what they all send: one
        datagram per peer for the whole wake-up (Node.flush)."""
        node = self.node
        try:
            if self._peer_sock is not None:
                self._read(self._peer_sock, node.take_peer)
            self._read(self._sock, node.take)
        finally:
            self._persist()
            self._send(node.flush())

    def _read(self, sock: socket.socket, take: Callable[[bytes, Addr, float, float], None]) -> None:
        """Hand up to DRAIN_LIMIT datagrams of one socket to the node, with their age."""
        node = self.node
        for _ in range(DRAIN_LIMIT):
            try:
                data, ancillary, _, addr = sock.recvmsg(MAX_DATAGRAM, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. ICMP errors reported on the socket
            age = 0.0
            if ancillary:
                seconds, nanos = _TIMESPEC.unpack_from(ancillary[0][2])
                age = time.time() - (seconds + nanos * 1e-9)
            try:
                take(data, addr, time.monotonic(), age)
            except Exception:
                self._contain("datagram", data)  # that datagram only: the batch goes on
                continue
            if node.exit_requested:
                self._persist()
                self._send(node.flush())
                self._exit_now()

    def _persist(self) -> None:
        """Commit what the store changed, before anything those changes made possible is
        sent. A node that cannot keep its store durable stops: acknowledging writes it
        might lose would break the promise its --durability makes."""
        if self.data_dir is None:
            return
        try:
            self.data_dir.commit(*self.node.take_changes())
        except DataDirError as exc:
            log.critical("stopping, nothing of this batch sent: %s", exc)
            logging.shutdown()
            os._exit(EXIT_DATA_DIR)

    def _contain(self, kind: str, data: bytes | None = None) -> None:
        """A bug met while handling one datagram or tick: count it, log it (at most
        once a second), and go on; nothing one datagram does stops the node's loop."""
        self.faults[kind] = self.faults.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._fault_logged >= 1.0:
            self._fault_logged = now
            head = "" if data is None else f" ({len(data)} bytes, starting {data[:16].hex()})"
            log.exception("%s%s raised; dropped (faults so far: %s)", kind, head, self.faults)

    def _send(self, sends: list[Send]) -> None:
        """Replies leave by the data socket, peer datagrams by the peer socket (the
        address their receiver checks them against)."""
        sendto = self._sock.sendto
        peer_dests = self._peer_dests
        peer_sendto = sendto if self._peer_sock is None else self._peer_sock.sendto
        for payload, dest in sends:
            try:
                if dest in peer_dests:
                    peer_sendto(payload, dest)
                else:
                    sendto(payload, dest)
            except (BlockingIOError, InterruptedError):
                self.send_drops += 1  # send queue full: UDP may lose it, peers retry
            except OSError:
                pass  # unreachable destination: the same

    def _on_gossip(self, data: bytes, addr: Addr) -> None:
        now = time.monotonic()
        try:
            sends = self.node.on_gossip(data, addr, now)
        except Exception:
            self._contain("gossip", data)
            return
        if sends:
            self._send_gossip(sends)
        self._log_notices()
        self._arm(now)  # e.g. an ACK: the probe's PING_REQ deadline is off

    def _send_gossip(self, sends: list[Send]) -> None:
        if self._gossip is None:
            return
        for payload, dest in sends:
            self._gossip.sendto(payload, dest)

    def _tick(self) -> None:
        self._timer = None
        self._run_tick()
        self._arm(self._last_tick)  # also after a tick that raised

    def _arm(self, now: float) -> None:
        """Time the next tick: the first grid point at or after the node's next deadline."""
        if self._timer is not None and self._tick_at <= now:
            # The tick is overdue (the loop read sockets first) and runs next:
            # moving it past `now` would starve it under a stream of datagrams.
            return
        at = tick_after(self._last_tick, self.node.next_due(now), now)
        if at != self._tick_at or self._timer is None:
            if self._timer is not None:
                self._timer.cancel()
            delay = at - now + _TIMER_SLACK
            self._timer = self._loop.call_later(delay, self._tick)
            self._tick_at = at
        self.node.skip_ticks_until(at - TICK_INTERVAL)

    def _run_tick(self) -> None:
        self._last_tick = now = time.monotonic()
        stopped = now - self._tick_at > OVERDUE_TICK - TICK_INTERVAL
        try:
            outbox = self.node.on_tick(now)
        except Exception:
            self._contain("tick")
            return
        self._persist()
        if self.data_dir is not None:
            self.data_dir.sync_due(now)
        if outbox.data:
            self._send(outbox.data)
        if outbox.gossip:
            self._send_gossip(outbox.gossip)
        self._log_notices()
        if stopped:
            self._read_queued_gossip()

    def _log_notices(self) -> None:
        """One line for each membership change and what follows it (Node.take_notices)."""
        for notice in self.node.take_notices():
            log.info("%s", notice.text(), extra={FIELDS: {"event": notice.event, **notice.fields}})

    def _read_queued_gossip(self) -> None:
        """After a stop, what others decided meanwhile comes before queued requests.

        The loop may hand over the data socket first: a node that others
        suspected and routed around while it was stopped must know it before
        it leads a write or serves a read that waited in its queue.
        """
        sock = self._gossip_sock
        if sock is None:
            return
        for _ in range(GOSSIP_BACKLOG):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self._on_gossip(data, addr)

    def _reload_key(self) -> None:
        if self.key_file is None:
            log.warning("SIGHUP: this node has no cluster key file to read again")
            return
        try:
            keyring = load_keyring(self.key_file)
        except KeyringError as exc:
            log.error("SIGHUP: keeping the current cluster key: %s", exc)
            return
        self.node.set_keyring(keyring)
        log.info("SIGHUP: cluster keyring of %d keys from %s", len(keyring.keys), self.key_file)

    def _exit_now(self) -> None:
        # SHUTDOWN behaves like a crash: no hand-off. The reply is already
        # in the kernel's send queue (plain sendto does not buffer in user space).
        logging.shutdown()
        os._exit(0)


def tick_after(
    last: float,
    due: float,
    now: float,
    interval: float = TICK_INTERVAL,
    max_gap: float = MAX_TICK_GAP,
) -> float:
    """The next tick: the first point of the grid `last + k * interval` after `now` and `due`.

    No later than max_gap after `last` (unless that is past); `due` may be
    -inf (due now) or inf (nothing due). The points before it are those a
    fixed tick would have found nothing to do at.
    """
    span = due - last
    max_steps = round(max_gap / interval)
    if span <= interval:
        steps = 1
    elif span >= max_steps * interval:
        steps = max_steps
    else:
        steps = math.ceil(span / interval - _GRID_SLACK)
    if now >= last + steps * interval:  # e.g. news that is due at once, between ticks
        steps = int((now - last) // interval) + 1
    return last + steps * interval


def serve(server: NodeServer) -> None:
    """Run a node's server on uvloop until SIGTERM or SIGINT."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(server.run())
        return
    uvloop.run(server.run())

"""Client library with the reference retry policy of PROTOCOL.md.

Both clients use one unconnected UDP socket: a cluster node other than the one
a request went to may answer, so replies are matched on messageID alone,
never on the source address. Retries re-send the very same datagram (same
messageID), which is what lets the server's reply cache give at-most-once.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ringkv.wire import Addr
from ringkv.wire.codec import (
    Command,
    Err,
    WireError,
    decode_msg,
    decode_response,
    encode_request,
    new_message_id,
)

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "ClientTimeout",
    "Reply",
    "RetryPolicy",
    "describe_err",
]

MAX_DATAGRAM = 65535
RECV_BUFFER = 1 << 20

ERR_TEXT: dict[int, str] = {
    Err.OK: "success",
    Err.NO_KEY: "key not found",
    Err.NO_SPACE: "out of space: the node's memory budget is full",
    Err.OVERLOAD: "temporary overload: the node asked to retry later",
    Err.INTERNAL: "internal failure in the node",
    Err.BAD_COMMAND: "unrecognized command",
    Err.BAD_KEY: "invalid key: empty or longer than 32 bytes",
    Err.BAD_VALUE: "invalid value: longer than 10,000 bytes",
}


def describe_err(err: int) -> str:
    """One line for an errCode, e.g. 'key not found (errCode 1)'."""
    return f"{ERR_TEXT.get(err, 'unknown error')} (errCode {err})"


class ClientError(Exception):
    """Base of the errors the client raises (protocol errCodes are returned, not raised)."""


class ClientTimeout(ClientError):
    """Every try of a request went unanswered."""

    def __init__(self, target: Addr, waits: Sequence[float]) -> None:
        self.target = target
        self.waits = tuple(waits)
        spent = "+".join(f"{w * 1000:g}" for w in self.waits)
        tries = "try" if len(self.waits) == 1 else "tries"
        super().__init__(
            f"no reply from {target[0]}:{target[1]} after {len(self.waits)} {tries} ({spent} ms)"
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded KVResponse, plus the address it came from."""

    err: int
    value: bytes = b""
    version: int = 0
    pid: int = 0
    membership_count: int = 0
    overload_wait_ms: int = 0
    source: Addr | None = None

    @property
    def ok(self) -> bool:
        return self.err == Err.OK


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Wait `timeout` for the first try, doubling each time: 100+200+400 ms by default."""

    timeout: float = 0.1
    tries: int = 3

    def waits(self) -> list[float]:
        return [self.timeout * (1 << attempt) for attempt in range(self.tries)]


def parse_reply(data: bytes, source: Addr | None = None) -> tuple[bytes, Reply]:
    """(messageID, Reply) of a reply datagram; WireError if it is garbage."""
    message_id, payload = decode_msg(data)
    r = decode_response(payload)
    reply = Reply(
        err=r.errCode,
        value=r.value,
        version=r.version,
        pid=r.pid,
        membership_count=r.membershipCount,
        overload_wait_ms=r.overloadWaitTime,
        source=source,
    )
    return message_id, reply


def _as_list(servers: Sequence[Addr] | Addr) -> list[Addr]:
    if isinstance(servers, tuple) and len(servers) == 2 and isinstance(servers[1], int):
        return [servers]  # a single address
    listed = list(servers)
    if not listed:
        raise ValueError("no servers given")
    return listed


def _family(addr: Addr) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr[0] else socket.AF_INET


def client_socket(first_server: Addr) -> socket.socket:
    """An unconnected, non-blocking UDP socket bound to an ephemeral port."""
    family = _family(first_server)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
    except OSError:
        pass  # the kernel default still works, only bursts of strays suffer
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    sock.setblocking(False)
    return sock


def route_ip(target: Addr) -> str:
    """The local address the kernel would send from to `target` (for message IDs)."""
    probe = socket.socket(_family(target), socket.SOCK_DGRAM)
    try:
        probe.connect(target)  # UDP connect sends nothing, it only picks a route
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def resolve(addr: Addr) -> Addr:
    """The numeric address of HOST:PORT; ClientError if the name does not resolve."""
    try:
        info = socket.getaddrinfo(addr[0], addr[1], _family(addr), socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ClientError(f"cannot resolve {addr[0]}: {exc.strerror}") from None
    return str(info[0][4][0]), int(info[0][4][1])


class _Targets:
    """The server list, the choice of front end and the ID prefix shared by both clients."""

    def __init__(self, servers: Sequence[Addr] | Addr, random_front_end: bool) -> None:
        self.servers = _as_list(servers)
        self.random_front_end = random_front_end
        self._resolved: dict[Addr, Addr] = {}

    def pick(self, target: Addr | None) -> Addr:
        if target is not None:
            return target
        if self.random_front_end:
            return random.choice(self.servers)
        return self.servers[0]

    def resolve(self, addr: Addr) -> Addr:
        """Numeric address for sendto, so host names are looked up once, not per datagram."""
        numeric = self._resolved.get(addr)
        if numeric is None:
            numeric = self._resolved[addr] = resolve(addr)
        return numeric


def _id_host(targets: _Targets) -> str:
    """The IPv4 address for message IDs; a name that does not resolve fails later, per request."""
    try:
        return route_ip(targets.resolve(targets.servers[0]))
    except ClientError:
        return "0.0.0.0"


class Client:
    """Blocking client. Not thread-safe: use one per thread.

    `servers` is one address or a list; requests go to the first one unless
    `random_front_end` is set, then to a random one per request (every retry
    of a request goes to the same node).
    """

    def __init__(
        self,
        servers: Sequence[Addr] | Addr,
        timeout: float = 0.1,
        tries: int = 3,
        random_front_end: bool = False,
    ) -> None:
        self.targets = _Targets(servers, random_front_end)
        self.policy = RetryPolicy(timeout, tries)
        self.sock = client_socket(self.targets.servers[0])
        self._id_host = _id_host(self.targets)
        self._id_port = int(self.sock.getsockname()[1])

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def new_message_id(self) -> bytes:
        return new_message_id(self._id_host, self._id_port)

    def request(
        self,
        command: int,
        key: bytes = b"",
        value: bytes = b"",
        version: int = 0,
        message_id: bytes | None = None,
        target: Addr | None = None,
    ) -> Reply:
        """Send one request with the retry policy; ClientTimeout if no try is answered."""
        dest = self.targets.pick(target)
        message_id = message_id if message_id is not None else self.new_message_id()
        datagram = encode_request(message_id, command, key, value, version)
        waits = self.policy.waits()
        for attempt, wait in enumerate(waits):
            self.sock.sendto(datagram, self.targets.resolve(dest))
            reply = self._await_reply(message_id, wait)
            if reply is None:
                continue
            if reply.err == Err.OVERLOAD and attempt + 1 < len(waits):
                time.sleep(reply.overload_wait_ms / 1000)
                continue
            return reply
        raise ClientTimeout(dest, waits)

    def _await_reply(self, message_id: bytes, wait: float) -> Reply | None:
        """The reply to `message_id` within `wait` seconds, skipping strays and garbage."""
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data, source = self.sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                return None
            except ConnectionError:
                continue  # an ICMP error some platforms report on unconnected sockets
            try:
                got_id, reply = parse_reply(data, (str(source[0]), int(source[1])))
            except WireError:
                continue
            if got_id == message_id:
                return reply
        return None

    # -- the protocol's commands ----------------------------------------------

    def put(self, key: bytes, value: bytes, version: int = 0) -> Reply:
        return self.request(Command.PUT, key, value, version)

    def get(self, key: bytes) -> Reply:
        return self.request(Command.GET, key)

    def remove(self, key: bytes) -> Reply:
        return self.request(Command.REMOVE, key)

    def is_alive(self, target: Addr | None = None) -> Reply:
        return self.request(Command.IS_ALIVE, target=target)

    def pid(self, target: Addr | None = None) -> Reply:
        return self.request(Command.GET_PID, target=target)

    def membership_count(self, target: Addr | None = None) -> Reply:
        return self.request(Command.GET_MEMBERSHIP_COUNT, target=target)

    def wipeout(self, target: Addr | None = None) -> Reply:
        return self.request(Command.WIPEOUT, target=target)

    def shutdown(self, target: Addr | None = None) -> Reply | None:
        """Send SHUTDOWN once; the node may die before answering, so None is no error."""
        dest = self.targets.pick(target)
        message_id = self.new_message_id()
        self.sock.sendto(encode_request(message_id, Command.SHUTDOWN), self.targets.resolve(dest))
        return self._await_reply(message_id, self.policy.timeout)


class _AsyncEndpoint(asyncio.DatagramProtocol):
    """Hands each reply to the future waiting for its messageID; drops everything else."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future[Reply]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str | bytes, int]) -> None:
        try:
            message_id, reply = parse_reply(data, (str(addr[0]), int(addr[1])))
        except WireError:
            return
        future = self.waiting.get(message_id)
        if future is not None and not future.done():
            future.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors: the retry policy covers a missing reply


class AsyncClient:
    """asyncio client with the same policy as Client; many requests may be in flight.

    One socket per object, opened on first use (or with `async with`), so any
    number of AsyncClients can share one event loop.
    """

    def __init__(
        self,
        servers: Sequence[Addr] | Addr,
        timeout: float = 0.1,
        tries: int = 3,
        random_front_end: bool = False,
    ) -> None:
        self.targets = _Targets(servers, random_front_end)
        self.policy = RetryPolicy(timeout, tries)
        self._transport: asyncio.DatagramTransport | None = None
        self._endpoint = _AsyncEndpoint()
        self._open_lock = asyncio.Lock()
        self._id_host = "127.0.0.1"
        self._id_port = 0

    async def __aenter__(self) -> AsyncClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def open(self) -> None:
        async with self._open_lock:
            if self._transport is not None:
                return
            sock = client_socket(self.targets.servers[0])
            self._id_host = _id_host(self.targets)
            self._id_port = int(sock.getsockname()[1])
            loop = asyncio.get_running_loop()
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: self._endpoint, sock=sock
            )

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def new_message_id(self) -> bytes:
        return new_message_id(self._id_host, self._id_port)

    async def request(
        self,
        command: int,
        key: bytes = b"",
        value: bytes = b"",
        version: int = 0,
        message_id: bytes | None = None,
        target: Addr | None = None,
    ) -> Reply:
        """Send one request with the retry policy; ClientTimeout if no try is answered."""
        if self._transport is None:
            await self.open()
        dest = self.targets.pick(target)
        message_id = message_id if message_id is not None else self.new_message_id()
        datagram = encode_request(message_id, command, key, value, version)
        waits = self.policy.waits()
        for attempt, wait in enumerate(waits):
            reply = await self._try_once(datagram, message_id, dest, wait)
            if reply is None:
                continue
            if reply.err == Err.OVERLOAD and attempt + 1 < len(waits):
                await asyncio.sleep(reply.overload_wait_ms / 1000)
                continue
            return reply
        raise ClientTimeout(dest, waits)

    async def request_each(
        self, command: int, targets: Sequence[Addr]
    ) -> list[Reply | ClientError]:
        """Send `command` to every target at once, not one after another (a silent node
        costs its waits once); a target that never answered gets its ClientTimeout."""
        answers = await asyncio.gather(
            *(self.request(command, target=addr) for addr in targets), return_exceptions=True
        )
        replies: list[Reply | ClientError] = []
        for answer in answers:
            if not isinstance(answer, Reply | ClientError):
                raise answer  # not a missing reply: a bug or a socket error worth seeing
            replies.append(answer)
        return replies

    async def _try_once(
        self, datagram: bytes, message_id: bytes, dest: Addr, wait: float
    ) -> Reply | None:
        transport = self._transport
        if transport is None:
            raise ClientError("the client is closed")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._endpoint.waiting[message_id] = future
        try:
            transport.sendto(datagram, self.targets.resolve(dest))
            return await asyncio.wait_for(future, wait)
        except TimeoutError:
            return None
        finally:
            if self._endpoint.waiting.get(message_id) is future:
                del self._endpoint.waiting[message_id]

    # -- the protocol's commands ----------------------------------------------

    async def put(self, key: bytes, value: bytes, version: int = 0) -> Reply:
        return await self.request(Command.PUT, key, value, version)

    async def get(self, key: bytes) -> Reply:
        return await self.request(Command.GET, key)

    async def remove(self, key: bytes) -> Reply:
        return await self.request(Command.REMOVE, key)

    async def is_alive(self, target: Addr | None = None) -> Reply:
        return await self.request(Command.IS_ALIVE, target=target)

    async def pid(self, target: Addr | None = None) -> Reply:
        return await self.request(Command.GET_PID, target=target)

    async def membership_count(self, target: Addr | None = None) -> Reply:
        return await self.request(Command.GET_MEMBERSHIP_COUNT, target=target)

    async def wipeout(self, target: Addr | None = None) -> Reply:
        return await self.request(Command.WIPEOUT, target=target)

    async def shutdown(self, target: Addr | None = None) -> Reply | None:
        """Send SHUTDOWN once; the node may die before answering, so None is no error."""
        if self._transport is None:
            await self.open()
        dest = self.targets.pick(target)
        message_id = self.new_message_id()
        datagram = encode_request(message_id, Command.SHUTDOWN)
        return await self._try_once(datagram, message_id, dest, self.policy.timeout)

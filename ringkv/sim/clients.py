"""Simulated clients: closed loops with the reference retry policy, recording a History.

A client sends one request at a time to a front end, waits 100 ms, then
resends the very same datagram (same message ID, same node) after 200 and
400 ms, and gives up after the third try: exactly what the evaluation
client does. Every request becomes one `Op` of the simulator's history, with
response None when every try went unanswered. Requests come from a
`Workload` shared by a group of clients.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ringkv.sim.cluster import Simulator, client_addr, node_addr
from ringkv.sim.history import GET, PUT, REMOVE, Op
from ringkv.wire import Addr
from ringkv.wire.codec import Command, Err, WireError, decode_msg, decode_response, encode_request

_COMMANDS = {PUT: Command.PUT, GET: Command.GET, REMOVE: Command.REMOVE}
_MESSAGE_ID = struct.Struct("!4sIQ")  # 16 bytes like the protocol's: unique per client and request


@dataclass(frozen=True)
class RetryPolicy:
    """The reference policy: 100 ms for the first try, doubling, 3 tries."""

    timeout: float = 0.1
    tries: int = 3

    def waits(self) -> list[float]:
        return [self.timeout * (1 << attempt) for attempt in range(self.tries)]


@dataclass(frozen=True, slots=True)
class Request:
    kind: str
    key: bytes
    value: bytes | None = None
    version: int = 0


class Values:
    """Write values that are unique across the run, so a read names its write."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self.count = 0

    def next(self) -> tuple[bytes, int]:
        """(value, version); the version is the write's number, a valid int32."""
        self.count += 1
        head = b"v%d:" % self.count
        return head + b"." * max(0, self.size - len(head)), self.count & 0x7FFF_FFFF

    def put(self, key: bytes) -> Request:
        value, version = self.next()
        return Request(PUT, key, value, version)


class Workload:
    """Where a group of closed-loop clients gets its requests."""

    def next_request(self, client: SimClient) -> Request | None:
        """The client's next request; None sends the client home."""
        raise NotImplementedError

    def completed(self, op: Op) -> None:
        """Told of every finished op (replied or timed out)."""


class Batch(Workload):
    """A fixed list of requests, shared by the clients until it runs out."""

    def __init__(self, requests: Iterable[Request], on_op: Callable[[Op], None] | None = None):
        self._todo = deque(requests)
        self._on_op = on_op
        self.ops: list[Op] = []

    def next_request(self, client: SimClient) -> Request | None:
        return self._todo.popleft() if self._todo else None

    def completed(self, op: Op) -> None:
        self.ops.append(op)
        if self._on_op is not None:
            self._on_op(op)


class RandomMix(Workload):
    """Random puts, gets and removes over a small key space until a deadline.

    A small key space keeps several clients on the same keys, which is where
    ordering bugs show.
    """

    def __init__(
        self,
        sim: Simulator,
        keys: Sequence[bytes],
        values: Values,
        until: float,
        rng: random.Random,
        weights: tuple[float, float, float] = (0.45, 0.45, 0.1),  # put, get, remove
    ) -> None:
        self.sim = sim
        self.keys = list(keys)
        self.values = values
        self.until = until
        self.rng = rng
        self.weights = weights

    def next_request(self, client: SimClient) -> Request | None:
        if self.sim.now >= self.until:
            return None
        rng = self.rng
        key = self.keys[rng.randrange(len(self.keys))]
        kind = rng.choices((PUT, GET, REMOVE), self.weights)[0]
        if kind == PUT:
            return self.values.put(key)
        return Request(kind, key)


class _Pending:
    __slots__ = ("datagram", "invoke", "message_id", "request", "target", "tries")

    def __init__(
        self, request: Request, message_id: bytes, datagram: bytes, target: Addr, invoke: float
    ) -> None:
        self.request = request
        self.message_id = message_id
        self.datagram = datagram
        self.target = target
        self.invoke = invoke
        self.tries = 1


class SimClient:
    """One closed-loop client with its own address; belongs to a `ClientGroup`."""

    def __init__(self, group: ClientGroup, number: int) -> None:
        self.group = group
        self.sim = group.sim
        self.id = self.sim.new_client_id()
        self.number = number  # position in its group: picks its fixed front end
        self.addr = client_addr(self.id)
        self._sent = 0
        self._pending: _Pending | None = None
        self.sim.attach(self.addr, self._on_datagram)

    def start(self) -> None:
        self._next()

    def _next(self) -> None:
        request = self.group.workload.next_request(self)
        if request is None:
            self.group.client_done(self)
            return
        self._sent += 1
        message_id = _MESSAGE_ID.pack(b"rksm", self.id, self._sent)
        value = request.value or b""
        datagram = encode_request(
            message_id, _COMMANDS[request.kind], request.key, value, request.version
        )
        target = node_addr(self.group.front_end(self))
        self._pending = _Pending(request, message_id, datagram, target, self.sim.now)
        self._send_try()

    def _send_try(self) -> None:
        pending = self._pending
        assert pending is not None
        self.sim.send(pending.datagram, self.addr, pending.target)
        wait = self.group.waits[pending.tries - 1]
        self.sim.after(wait, self._on_timeout, pending, pending.tries)

    def _on_timeout(self, pending: _Pending, tries: int) -> None:
        if self._pending is not pending or pending.tries != tries:
            return  # answered meanwhile, or an older try's timer
        if pending.tries < len(self.group.waits):
            pending.tries += 1
            self._send_try()
            return
        self._finish(None, b"", 0)

    def _on_datagram(self, data: bytes, src: Addr) -> None:
        pending = self._pending
        if pending is None:
            return
        try:
            message_id, payload = decode_msg(data)
            if message_id != pending.message_id:
                return  # a late or duplicated reply to an earlier request
            response = decode_response(payload)
        except WireError:
            return
        self._finish(response.errCode, response.value, response.version)

    def _finish(self, err: int | None, value: bytes, version: int) -> None:
        pending = self._pending
        assert pending is not None
        self._pending = None
        request = pending.request
        response = None if err is None else self.sim.now
        if request.kind == GET:
            got = err == Err.OK
            op_value, op_version = (value, version) if got else (None, 0)
        else:
            op_value, op_version = request.value, request.version
        op = Op(
            self.id, request.kind, request.key, op_value, op_version, pending.invoke, response, err
        )
        self.sim.history.append(op)
        self.group.workload.completed(op)
        self._next()

    def close(self) -> None:
        self.sim.detach(self.addr)


class ClientGroup:
    """`count` clients sharing a workload; front ends fixed per client or random per request.

    With `halt`, the simulator's current `run` returns as soon as the last
    client has gone home (the scenario's "wait for this phase" step).
    """

    def __init__(
        self,
        sim: Simulator,
        workload: Workload,
        count: int,
        front_ends: Sequence[int],
        random_front_end: bool = True,
        retry: RetryPolicy | None = None,
        halt: bool = True,
    ) -> None:
        if not front_ends:
            raise ValueError("a client group needs at least one front end")
        self.sim = sim
        self.workload = workload
        self.front_ends = list(front_ends)
        self.random_front_end = random_front_end
        self.waits = (retry or RetryPolicy()).waits()
        self.halt = halt
        self.rng = sim.rng(f"front-ends/{sim.new_client_id()}")
        self.clients = [SimClient(self, n) for n in range(count)]
        self.active = 0
        self.done = False

    def front_end(self, client: SimClient) -> int:
        if self.random_front_end:
            return self.front_ends[self.rng.randrange(len(self.front_ends))]
        return self.front_ends[client.number % len(self.front_ends)]

    def start(self) -> ClientGroup:
        self.active = len(self.clients)
        if not self.clients:
            self._all_done()
        for client in list(self.clients):
            client.start()
        return self

    def client_done(self, client: SimClient) -> None:
        client.close()
        self.active -= 1
        if self.active == 0:
            self._all_done()

    def _all_done(self) -> None:
        self.done = True
        if self.halt:
            self.sim.halt()


def run_batch(
    sim: Simulator,
    requests: Iterable[Request],
    clients: int,
    front_ends: Sequence[int],
    random_front_end: bool = True,
    limit: float = 3600.0,
) -> list[Op]:
    """Run a batch of requests to completion with closed-loop clients; its ops in order."""
    batch = Batch(requests)
    group = ClientGroup(sim, batch, clients, front_ends, random_front_end).start()
    if not group.done:
        sim.run_for(limit)
    if not group.done:
        raise RuntimeError(f"a batch did not finish within {limit} virtual seconds")
    return batch.ops

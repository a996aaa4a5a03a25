"""A whole cluster of core nodes on a virtual clock, in one process.

The simulator is the second driver of the pure `Node` (the runtime is the
first): it feeds datagrams and ticks in and routes what comes out through a
seeded `Network`. Nothing here sleeps or reads a clock; time is the `now` of
the event being handled, events sit in one heap ordered by (time, sequence
number), so equal times resolve in scheduling order and a seed replays the
same run byte for byte.

Faults are what a real deployment suffers:

- pause/resume is SIGSTOP/SIGCONT: the node's inbound datagrams queue up
  (bounded like a kernel socket buffer) and its ticks stop; at resume it
  gets one late tick and then every queued datagram at once, each with the
  time it waited (the runtime reads that from kernel receive timestamps);
- crash discards the node object (its datagrams are dropped from then on);
  SHUTDOWN (`exit_requested`) is a crash right after the reply is sent;
- restart builds a new `Node` for the same index and address, with an empty
  store; a node listed in `start_down` joins the same way.
"""

from __future__ import annotations

import heapq
import itertools
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ringkv.core.membership import Membership, MembershipConfig
from ringkv.core.node import TICK_INTERVAL, Node, NodeConfig, Outbox
from ringkv.core.ring import Ring
from ringkv.report.timeline import Fault
from ringkv.servers import gossip_addr, peer_addr
from ringkv.sim.history import History
from ringkv.sim.network import Network, NetworkConfig
from ringkv.wire import Addr
from ringkv.wire.seal import KEY_BYTES, Keyring

Handler = Callable[[bytes, Addr], None]
# Sees every datagram before the network does; True takes it (tests drop or hold it).
Interceptor = Callable[[bytes, Addr, Addr], bool]

UP, PAUSED, CRASHED = "up", "paused", "crashed"

# A node's three ports (ringkv.servers), numbered in the order a resumed
# process reads what they queued: gossip first, then peers, then clients.
GOSSIP_PORT, PEER_PORT, DATA_PORT = 0, 1, 2
# A paused process's socket buffers: the runtime asks for 8 MiB (data, peer)
# and 1 MiB (gossip). The kernel charges each datagram its buffer overhead too.
DATA_QUEUE_BYTES = 8 << 20
GOSSIP_QUEUE_BYTES = 1 << 20
QUEUE_BYTES = (GOSSIP_QUEUE_BYTES, DATA_QUEUE_BYTES, DATA_QUEUE_BYTES)  # by port
QUEUED_OVERHEAD = 768

_TICK, _DELIVER, _CALL = 0, 1, 2


def node_addr(index: int) -> Addr:
    """Node i of the simulated cluster: 10.1.x.y, port 1 (IP literals, as deployed)."""
    return (f"10.1.{index >> 8 & 255}.{index & 255}", 1)


def node_index(addr: Addr) -> int:
    """The index of the simulated node at `addr` (the inverse of node_addr)."""
    *_, high, low = addr[0].split(".")
    return int(high) << 8 | int(low)


CLIENT_NET = "10.2."  # simulated clients' addresses start with this


def client_addr(client: int) -> Addr:
    return (f"{CLIENT_NET}{client >> 8 & 255}.{client & 255}", 1 + (client >> 16))


class SimNode(Protocol):
    """What the simulator needs of a node: `Node`'s pure entry points."""

    exit_requested: bool

    def on_datagram(
        self, data: bytes, src: Addr, now: float, age: float = 0.0
    ) -> list[tuple[bytes, Addr]]: ...
    def on_peer_datagram(
        self, data: bytes, src: Addr, now: float, age: float = 0.0
    ) -> list[tuple[bytes, Addr]]: ...
    def on_gossip(self, data: bytes, src: Addr, now: float) -> list[tuple[bytes, Addr]]: ...
    def on_tick(self, now: float) -> Outbox: ...
    def membership_count(self) -> int: ...
    def check_invariants(self) -> None: ...


NodeFactory = Callable[[NodeConfig, float], SimNode]


class SimulationError(RuntimeError):
    """A node (or a scenario callback) raised: the message says when and where."""


@dataclass(frozen=True)
class SimConfig:
    nodes: int
    seed: int = 0
    network: NetworkConfig = field(default_factory=NetworkConfig)
    membership: MembershipConfig | None = None
    replicas: int = 3
    memory_budget: int = 512 << 20
    tick_interval: float = TICK_INTERVAL
    tick_jitter: float = 0.002  # asyncio's call_later drifts by a little each tick
    start_down: tuple[int, ...] = ()  # in the server list but started later (joins)
    clock_skew: float = 0.0  # each node's wall clock is off by up to this (write stamps)
    node_factory: NodeFactory = Node  # MembershipOnly for membership-only scale runs
    # Check each node's invariants after every datagram and tick it handles; a
    # broken one fails the run like any exception, at the step that broke it.
    check_invariants: bool = True
    # Nodes seal their datagrams with a cluster key (from the seed), as deployed.
    sealed: bool = True
    # Each node keeps a data directory (--data-dir): its store's changes are
    # committed to a disk that outlives crashes before anything is sent, and a
    # restarted node loads it back, as the runtime does.
    durable: bool = False


@dataclass
class Traffic:
    """Datagrams and bytes sent by nodes so far (cumulative)."""

    at: float
    data: int = 0
    gossip: int = 0
    data_bytes: int = 0
    gossip_bytes: int = 0

    def rates(self, since: Traffic, nodes: int) -> dict[str, float]:
        """Per-node, per-second rates between `since` and this snapshot."""
        span = (self.at - since.at) * max(1, nodes)
        if span <= 0:
            return {"datagrams": 0.0, "gossip": 0.0, "data": 0.0, "bytes": 0.0}
        gossip = self.gossip - since.gossip
        data = self.data - since.data
        sent_bytes = self.data_bytes + self.gossip_bytes - since.data_bytes - since.gossip_bytes
        return {
            "datagrams": (gossip + data) / span,
            "gossip": gossip / span,
            "data": data / span,
            "bytes": sent_bytes / span,
        }


class _Slot:
    """One line of the server list: the node running there, if any."""

    __slots__ = (
        "addr",
        "data",
        "data_bytes",
        "disk",
        "gen",
        "gossip",
        "gossip_addr",
        "gossip_bytes",
        "inbox",
        "inbox_bytes",
        "index",
        "node",
        "peer_addr",
        "starts",
        "state",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.addr = node_addr(index)
        self.gossip_addr = gossip_addr(self.addr)
        self.peer_addr = peer_addr(self.addr)
        self.state = CRASHED
        self.node: SimNode | None = None
        self.gen = 0  # bumped on every state change: stale ticks are ignored
        # (port, data, source, arrival time)
        self.inbox: list[tuple[int, bytes, Addr, float]] = []
        self.inbox_bytes = [0, 0, 0]  # by port
        self.starts = 0
        self.data = self.gossip = self.data_bytes = self.gossip_bytes = 0
        self.disk: dict[bytes, bytes] = {}  # the committed store (SimConfig.durable)


@dataclass
class Convergence:
    """Time from a membership change until every live node's count was exact."""

    fault: str
    at: float
    took: float | None = None  # None: not (yet) converged
    interrupted: bool = False  # a partition began first: exactness is undefined then

    def to_dict(self) -> dict[str, Any]:
        return {"fault": self.fault, "at": round(self.at, 6), "took": _round(self.took)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


class Simulator:
    """Event queue, virtual clock, nodes, network and faults."""

    def __init__(self, config: SimConfig) -> None:
        # One ring for every node: a pure, memoised function of the server list,
        # so each view's chain table is computed once for the whole cluster.
        self._ring: Ring | None = None  # built at the first full Node
        self.config = config
        self.seed = config.seed
        self.now = 0.0
        self.history = History()
        self._queue: list[tuple[Any, ...]] = []
        self._seq = itertools.count()
        self._halted = False
        self._clients = 0
        self._slots = [_Slot(i) for i in range(config.nodes)]
        self._servers = tuple(slot.addr for slot in self._slots)
        self._ports: dict[Addr, tuple[_Slot, int]] = {}
        owner: dict[Addr, int] = {}
        for slot in self._slots:
            self._ports[slot.addr] = (slot, DATA_PORT)
            self._ports[slot.gossip_addr] = (slot, GOSSIP_PORT)
            self._ports[slot.peer_addr] = (slot, PEER_PORT)
            owner[slot.addr] = owner[slot.gossip_addr] = owner[slot.peer_addr] = slot.index
        self._peer_ports = frozenset(slot.peer_addr for slot in self._slots)
        self._endpoints: dict[Addr, Handler] = {}
        self.network = Network(config.network, self.rng("network"), owner)
        self._poll_token: object | None = None  # the live run_until poll
        self._tick_rng = self.rng("ticks")
        skew_rng = self.rng("clocks")
        self._clock_offsets = [skew_rng.uniform(-1, 1) * config.clock_skew for _ in self._slots]
        self.keyring = Keyring((self.rng("key").randbytes(KEY_BYTES),)) if config.sealed else None
        # Called as (index, node) right after a node goes down (paused, crashed,
        # cut off), while a crashed node's object is still at hand.
        self.down_hooks: list[Callable[[int, SimNode], None]] = []
        # Tests aim faults at chosen messages with these (see `send` and `inject`).
        self.interceptors: list[Interceptor] = []
        self.monitor = MembershipMonitor(self)
        # Every spell a node spent out of service (paused, crashed, cut off), for reports.
        self.outages: list[Fault] = []
        if config.start_down:
            self.monitor.fault("initial")  # views start with everyone alive: not a flap
        for slot in self._slots:
            if slot.index not in config.start_down:
                self._start(slot)

    # -- randomness ---------------------------------------------------------

    def rng(self, purpose: str) -> random.Random:
        """A generator for one purpose, derived from the seed (str seeding is stable)."""
        return random.Random(f"{self.seed}/{purpose}")

    # -- the event loop -----------------------------------------------------

    def at(self, when: float, fn: Callable[..., object], *args: object) -> None:
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), _CALL, fn, args, None))

    def after(self, delay: float, fn: Callable[..., object], *args: object) -> None:
        self.at(self.now + delay, fn, *args)

    def halt(self) -> None:
        """Make the current `run` return after the event being handled."""
        self._halted = True

    def run(self, until: float) -> bool:
        """Handle events up to virtual time `until`; True if halted earlier."""
        queue = self._queue
        self._halted = False
        pop = heapq.heappop
        kind, a, c = _CALL, None, None
        try:
            while queue and queue[0][0] <= until:
                when, _, kind, a, b, c = pop(queue)
                self.now = when
                if kind == _DELIVER:
                    self._deliver(a, b, c)
                elif kind == _TICK:
                    self._tick(a, b)
                else:
                    a(*b)
                if self._halted:
                    return True
        except SimulationError:
            raise
        except Exception as exc:
            raise SimulationError(_describe_failure(self.now, kind, a, c, exc)) from exc
        self.now = max(self.now, until)
        return False

    def run_for(self, duration: float) -> bool:
        return self.run(self.now + duration)

    def run_until(self, done: Callable[[], bool], limit: float, poll: float = 0.05) -> bool:
        """Run until `done()` holds (checked every `poll` s) or `limit` s pass; True if it held."""
        if done():
            return True
        token = object()
        self._poll_token = token

        def check() -> None:
            if self._poll_token is not token:
                return
            if done():
                self.halt()
            else:
                self.after(poll, check)

        self.after(poll, check)
        deadline = self.now + limit
        try:
            while self.run(deadline):  # halted: by the poll, or by someone else
                if done():
                    return True
            return done()
        finally:
            self._poll_token = None

    # -- datagrams ----------------------------------------------------------

    def send(self, data: bytes, src: Addr, dst: Addr) -> None:
        if self.interceptors and any(take(data, src, dst) for take in list(self.interceptors)):
            return
        now = self.now
        queue = self._queue
        for delay in self.network.fate(src, dst):
            heapq.heappush(queue, (now + delay, next(self._seq), _DELIVER, dst, data, src))

    def inject(self, data: bytes, src: Addr, dst: Addr, delay: float = 0.0) -> None:
        """Deliver a datagram after `delay`, past interceptors and the network's faults."""
        item = (self.now + delay, next(self._seq), _DELIVER, dst, data, src)
        heapq.heappush(self._queue, item)

    def attach(self, addr: Addr, handler: Handler) -> None:
        """Receive the datagrams sent to `addr` (a simulated client)."""
        self._endpoints[addr] = handler

    def detach(self, addr: Addr) -> None:
        self._endpoints.pop(addr, None)

    def new_client_id(self) -> int:
        self._clients += 1
        return self._clients

    def _deliver(self, dst: Addr, data: bytes, src: Addr) -> None:
        port = self._ports.get(dst)
        if port is None:
            handler = self._endpoints.get(dst)
            if handler is not None:
                handler(data, src)
            return
        slot, kind = port
        if slot.state is UP:
            self._feed(slot, kind, data, src)
        elif slot.state is PAUSED:
            self._enqueue(slot, kind, data, src)

    def _enqueue(self, slot: _Slot, kind: int, data: bytes, src: Addr) -> None:
        cost = len(data) + QUEUED_OVERHEAD
        if slot.inbox_bytes[kind] + cost > QUEUE_BYTES[kind]:
            return  # the kernel drops what does not fit
        slot.inbox_bytes[kind] += cost
        slot.inbox.append((kind, data, src, self.now))

    def _feed(self, slot: _Slot, kind: int, data: bytes, src: Addr, age: float = 0.0) -> None:
        node = slot.node
        assert node is not None
        if kind == GOSSIP_PORT:
            sends = node.on_gossip(data, src, self.now)
        elif kind == PEER_PORT:
            sends = node.on_peer_datagram(data, src, self.now, age)
        else:
            sends = node.on_datagram(data, src, self.now, age)
        self._commit(slot)
        self._emit(slot, sends, gossip=kind == GOSSIP_PORT)
        if self.config.check_invariants:
            node.check_invariants()
        if kind == GOSSIP_PORT:
            return
        if node.exit_requested:
            self._stop(slot, "shutdown")

    def _emit(self, slot: _Slot, sends: list[tuple[bytes, Addr]], gossip: bool) -> None:
        if not sends:
            return
        size = 0
        if gossip:
            for data, dst in sends:
                size += len(data)
                self.send(data, slot.gossip_addr, dst)
        else:  # as the runtime sends: to a peer port from its own, else from the data port
            peer_ports = self._peer_ports
            for data, dst in sends:
                size += len(data)
                self.send(data, slot.peer_addr if dst in peer_ports else slot.addr, dst)
        if gossip:
            slot.gossip += len(sends)
            slot.gossip_bytes += size
        else:
            slot.data += len(sends)
            slot.data_bytes += size

    def _commit(self, slot: _Slot) -> None:
        """A durable node's changes reach its disk before what they made possible is sent."""
        node = slot.node
        if not self.config.durable or not isinstance(node, Node):
            return
        wiped, changes = node.take_changes()
        if wiped:
            slot.disk.clear()
        for key, packed in changes.items():
            if packed is None:
                slot.disk.pop(key, None)
            else:
                slot.disk[key] = packed

    def _emit_outbox(self, slot: _Slot, outbox: Outbox) -> None:
        self._commit(slot)
        self._emit(slot, outbox.gossip, gossip=True)
        self._emit(slot, outbox.data, gossip=False)

    # -- ticks --------------------------------------------------------------

    def _tick(self, index: int, gen: int) -> None:
        slot = self._slots[index]
        if slot.gen != gen or slot.state is not UP:
            return
        assert slot.node is not None
        self._emit_outbox(slot, slot.node.on_tick(self.now))
        if self.config.check_invariants:
            slot.node.check_invariants()
        self._schedule_tick(slot, self.config.tick_interval)

    def _schedule_tick(self, slot: _Slot, base: float) -> None:
        when = self.now + base + self.config.tick_jitter * self._tick_rng.random()
        heapq.heappush(self._queue, (when, next(self._seq), _TICK, slot.index, slot.gen, None))

    # -- faults -------------------------------------------------------------

    def pause(self, index: int) -> None:
        slot = self._need(index, UP)
        slot.state = PAUSED
        slot.gen += 1
        self._went_down(index, slot.node)
        self._outage_begins(index, "suspended")
        self.monitor.fault(f"pause {index}")

    def resume(self, index: int) -> None:
        """SIGCONT: one late tick, then the queued gossip, peer and data datagrams."""
        slot = self._need(index, PAUSED)
        slot.state = UP
        slot.gen += 1
        self._outage_ends(index)
        node = slot.node
        assert node is not None
        self._emit_outbox(slot, node.on_tick(self.now))
        inbox, slot.inbox, slot.inbox_bytes = slot.inbox, [], [0, 0, 0]
        # The runtime reads queued gossip first: what others decided while this
        # node was stopped (that it is suspected, say) must be known before it
        # acts on requests queued meanwhile. Peers' datagrams come before clients'.
        inbox.sort(key=lambda queued: queued[0])
        for kind, data, src, arrived in inbox:
            if slot.state is not UP:
                break  # a queued SHUTDOWN ended it
            self._feed(slot, kind, data, src, self.now - arrived)
        if slot.state is UP:
            self._schedule_tick(slot, self.config.tick_interval)
            self.monitor.fault(f"resume {index}")

    def crash(self, index: int) -> None:
        slot = self._slots[index]
        if slot.state is CRASHED:
            raise ValueError(f"node {index} is already down")
        self._stop(slot, "crash")

    def restart(self, index: int) -> None:
        """A new process for a crashed (or never started) node: same address, empty store."""
        self._start(self._need(index, CRASHED))

    def partition(self, *groups: list[int]) -> None:
        """Cut the network between the groups and everyone else (clients reach all).

        For `down_hooks` the nodes in the groups count as failed.
        """
        self.network.partition(groups)
        self.monitor.interrupt()
        for i in self.network.cut_off():
            self._went_down(i, self._slots[i].node)
            self._outage_begins(i, "cut off")

    def heal(self) -> None:
        if not self.network.partitioned:
            return
        self.network.heal()
        for outage in self.outages:
            if outage.kind == "cut off" and outage.end is None:
                outage.end = self.now
        self.monitor.fault("heal")

    def is_down(self, index: int) -> bool:
        """Paused, crashed or cut off by a partition."""
        return self._slots[index].state is not UP or self.network.is_cut(index)

    def set_loss(self, loss: float) -> None:
        self.network.loss = loss

    def _start(self, slot: _Slot) -> None:
        if slot.starts:
            self._outage_ends(slot.index)  # a restart
        slot.starts += 1
        slot.node = node = self._build(slot)
        if self.config.durable and isinstance(node, Node):
            node.restore(slot.disk.items(), self.now)
        slot.state = UP
        slot.gen += 1
        # A process starts ticking at a random phase of the tick period.
        self._schedule_tick(slot, self.config.tick_interval * self._tick_rng.random())
        if slot.starts > 1 or self.now > 0:
            self.monitor.fault(f"start {slot.index}")

    def _build(self, slot: _Slot) -> SimNode:
        cfg = self.config
        full = cfg.node_factory is Node
        if full and self._ring is None:
            self._ring = Ring(cfg.nodes)
        config = NodeConfig(
            servers=self._servers,
            self_index=slot.index,
            pid=100_000 + slot.index * 100 + slot.starts,
            memory_budget=cfg.memory_budget,
            replicas=cfg.replicas,
            membership=cfg.membership,
            clock_offset=self._clock_offsets[slot.index],
            seed=self._node_seed(slot),
            ring=self._ring if full else None,
            keyring=self.keyring,
            boot=slot.starts,  # larger for every process started at this address
        )
        return cfg.node_factory(config, self.now)

    def _node_seed(self, slot: _Slot) -> int:
        """The node's own randomness: from the sim seed, new for every process started."""
        return self.rng(f"node/{slot.index}/{slot.starts}").getrandbits(64)

    def _stop(self, slot: _Slot, why: str) -> None:
        node = slot.node
        slot.state = CRASHED
        slot.node = None
        slot.inbox, slot.inbox_bytes = [], [0, 0, 0]
        slot.gen += 1
        self._went_down(slot.index, node)
        self._outage_ends(slot.index)  # a paused process can be killed too
        self._outage_begins(slot.index, why)
        self.monitor.fault(f"{why} {slot.index}")

    def _outage_begins(self, index: int, kind: str) -> None:
        self.outages.append(Fault(f"node {index}", kind, self.now))

    def _outage_ends(self, index: int) -> None:
        """Close the node's own outage (a resume or restart; a cut ends at heal)."""
        for outage in reversed(self.outages):
            if outage.node == f"node {index}" and outage.end is None and outage.kind != "cut off":
                outage.end = self.now
                return

    def _went_down(self, index: int, node: SimNode | None) -> None:
        if node is not None:
            for hook in self.down_hooks:
                hook(index, node)

    def _need(self, index: int, state: str) -> _Slot:
        slot = self._slots[index]
        if slot.state is not state:
            raise ValueError(f"node {index} is {slot.state}, not {state}")
        return slot

    # -- queries ------------------------------------------------------------

    @property
    def servers(self) -> tuple[Addr, ...]:
        return self._servers

    def __len__(self) -> int:
        return len(self._slots)

    def state_of(self, index: int) -> str:
        return self._slots[index].state

    def nodes_in(self, state: str) -> list[int]:
        return [s.index for s in self._slots if s.state is state]

    def node(self, index: int) -> SimNode | None:
        return self._slots[index].node

    def membership_counts(self) -> dict[int, int]:
        """membership_count() of every running (not paused, not crashed) node."""
        return {
            s.index: s.node.membership_count()
            for s in self._slots
            if s.state is UP and s.node is not None
        }

    def views_exact(self) -> bool:
        """Every running node counts exactly the running nodes."""
        up = [s.node for s in self._slots if s.state is UP]
        expected = len(up)
        return all(node is not None and node.membership_count() == expected for node in up)

    def traffic(self) -> Traffic:
        t = Traffic(self.now)
        for s in self._slots:
            t.data += s.data
            t.gossip += s.gossip
            t.data_bytes += s.data_bytes
            t.gossip_bytes += s.gossip_bytes
        return t


def _describe_failure(now: float, kind: int, a: Any, c: Any, exc: Exception) -> str:
    """When, doing what, and where in the code an event raised."""
    if kind == _DELIVER:
        doing = f"delivering a datagram from {c[0]}:{c[1]} to {a[0]}:{a[1]}"
    elif kind == _TICK:
        doing = f"ticking node {a}"
    else:
        doing = f"calling {getattr(a, '__qualname__', a)}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"at virtual time {now:.6f}, {doing}: {type(exc).__name__}: {exc}{where}"


class MembershipMonitor:
    """Measures, for every membership change, how long until all views are exact.

    While nothing is pending it still samples now and then: a view that goes
    wrong with no fault behind it is a flap (a false suspicion), which is
    recorded as a change of its own.
    """

    def __init__(self, sim: Simulator, period: float = 0.05, idle_period: float = 0.5) -> None:
        self.sim = sim
        self.period = period
        self.idle_period = idle_period
        self.pending: list[Convergence] = []
        self.results: list[Convergence] = []
        self._scheduled_at: float | None = None
        self._arm(idle_period)

    def fault(self, what: str) -> None:
        change = Convergence(what, self.sim.now)
        self.pending.append(change)
        self.results.append(change)
        self._arm(self.period)

    def interrupt(self) -> None:
        for change in self.pending:
            change.interrupted = True
        self.pending.clear()

    @property
    def flaps(self) -> int:
        return sum(1 for c in self.results if c.fault == "flap")

    def _arm(self, delay: float) -> None:
        when = self.sim.now + delay
        if self._scheduled_at is not None and self._scheduled_at <= when:
            return
        self._scheduled_at = when
        self.sim.at(when, self._sample, when)

    def _sample(self, when: float) -> None:
        if when != self._scheduled_at:
            return  # superseded by an earlier sample
        self._scheduled_at = None
        sim = self.sim
        if not sim.network.partitioned:
            exact = sim.views_exact()
            if exact and self.pending:
                for change in self.pending:
                    change.took = sim.now - change.at
                self.pending.clear()
            elif not exact and not self.pending:
                self.fault("flap")
                return
        self._arm(self.period if self.pending else self.idle_period)


class MembershipOnly:
    """The membership layer alone behind the Node entry points, for scale runs.

    Wired exactly as `Node` wires it (same seeding, same gossip addresses),
    so its gossip is the real thing, though never sealed (it ignores the
    key); it stores nothing and answers no requests, which is what makes
    1,000 nodes affordable in one process.
    """

    def __init__(self, config: NodeConfig, now: float = 0.0) -> None:
        n_nodes = len(config.servers)
        self.index = config.self_index
        self.exit_requested = False
        seed = self.index if config.seed is None else config.seed
        self.membership = Membership(
            self.index, n_nodes, config.membership, random.Random(seed), now
        )
        self._gossip_addrs = [gossip_addr(addr) for addr in config.servers]

    def on_datagram(
        self, data: bytes, src: Addr, now: float, age: float = 0.0
    ) -> list[tuple[bytes, Addr]]:
        return []

    on_peer_datagram = on_datagram

    def on_gossip(self, data: bytes, src: Addr, now: float) -> list[tuple[bytes, Addr]]:
        addrs = self._gossip_addrs
        sends = [(d, addrs[i]) for d, i in self.membership.on_message(data, now)]
        self.membership.take_events()  # nothing above membership to tell
        return sends

    def on_tick(self, now: float) -> Outbox:
        addrs = self._gossip_addrs
        outbox = Outbox(gossip=[(d, addrs[i]) for d, i in self.membership.on_tick(now)])
        self.membership.take_events()
        return outbox

    def check_invariants(self) -> None:
        """Membership alone keeps no slot state."""

    def membership_count(self) -> int:
        return self.membership.alive_count()

"""Prometheus metrics of one node: `ringkv node --metrics-port PORT`.

The numbers are the core's own counters, plain ints that the request path
increments anyway (NodeStats, replication's and membership's counters), read
through `Node.status` when Prometheus scrapes: the same numbers STATUS gives
`ringkv cluster status`. The request path never calls the metrics library.

The scrape is answered on the node's event loop by a small HTTP server, so it
reads the core between two datagrams, never during one (a scrape on a thread
of its own would race the loop). Every connection is bounded: the request
head in bytes and time, the connections at once in number.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from ringkv.core.node import Node
from ringkv.runtime.datadir import DataDir
from ringkv.wire import Addr
from ringkv.wire.codec import Err

log = logging.getLogger("ringkv.metrics")

MAX_HEAD_BYTES = 8192  # a scrape's request line and headers
HEAD_TIMEOUT = 5.0  # seconds to send them
MAX_CONNECTIONS = 8
_STATES = {"A": "alive", "S": "suspect", "D": "dead"}
_ERR_NAMES = {int(e): e.name.lower() for e in Err}
# STATUS counters of datagrams refused or dropped, by why.
_DROPPED = {
    "dropped": "malformed",
    "unauthenticated": "unauthenticated",
    "stale": "stale",
    "refused_admin": "admin_not_allowed",
    "refused_stamps": "stamp_ahead",
    "refused_senders": "wrong_sender",
}


class RuntimeCounters(Protocol):
    """What the runtime counts itself (NodeServer)."""

    faults: dict[str, int]  # handlers that raised, by what they handled
    send_drops: int  # datagrams the kernel would not queue
    data_dir: DataDir | None  # the store's durable copy, if the node keeps one


class NodeCollector(Collector):
    """A node's STATUS as Prometheus metric families, made at each scrape."""

    def __init__(self, node: Node, runtime: RuntimeCounters) -> None:
        self.node = node
        self.runtime = runtime

    def collect(self) -> Iterator[Any]:
        status = self.node.status(time.monotonic())
        yield from _requests(status)
        yield from _membership(status)
        yield from _storage(status)
        yield from _replication(status)
        yield from _datagrams(status)
        yield _by(
            CounterMetricFamily, "ringkv_handler_faults",
            "Datagrams or ticks whose handler raised (each dropped)", "of",
            dict(sorted(self.runtime.faults.items())),
        )  # fmt: skip
        yield _counter(
            "ringkv_send_drops", "Datagrams not sent: the socket's send queue was full",
            self.runtime.send_drops,
        )  # fmt: skip
        if self.runtime.data_dir is not None:
            yield from _data_dir(self.runtime.data_dir)


def _data_dir(data: DataDir) -> Iterator[Any]:
    yield _counter("ringkv_disk_commits", "Transactions committed to the data directory",
                   data.commits)  # fmt: skip
    yield _counter("ringkv_disk_committed_keys", "Keys written or deleted by those commits",
                   data.committed_keys)  # fmt: skip
    yield _gauge("ringkv_disk_bytes", "Size of the data directory's database (pages in use)",
                 data.used_bytes())  # fmt: skip
    yield _gauge("ringkv_disk_limit_bytes", "The database's map size (--max-disk-mb)",
                 data.max_bytes)  # fmt: skip


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _by(
    family: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    label: str,
    values: dict[str, Any],
) -> CounterMetricFamily | GaugeMetricFamily:
    metric = family(name, doc, labels=[label])
    for key, value in values.items():
        metric.add_metric([key], value)
    return metric


def _requests(status: dict[str, Any]) -> Iterator[Any]:
    yield _counter("ringkv_requests", "Client requests read (shed ones too)", status["requests"])
    commands = {name.lower(): n for name, n in status["commands"].items()}
    yield _by(
        CounterMetricFamily, "ringkv_commands", "Client requests executed, by command",
        "command", commands,
    )  # fmt: skip
    outcomes = {_ERR_NAMES.get(int(code), code): n for code, n in status["reply_errs"].items()}
    yield _by(
        CounterMetricFamily, "ringkv_replies", "Replies sent to clients, by outcome (errCode)",
        "outcome", outcomes,
    )  # fmt: skip
    wait = status["queue_wait"]
    buckets, total = [], 0
    for bound, count in zip((*wait["bounds"], float("inf")), wait["counts"], strict=True):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else str(bound), total))
    yield HistogramMetricFamily(
        "ringkv_request_queue_seconds",
        "Time client requests waited in the kernel's queue before the node read them",
        buckets=buckets,
        sum_value=wait["sum"],
    )
    yield _counter(
        "ringkv_shed", "Client requests answered without being executed (overload)",
        status["shed"],
    )  # fmt: skip
    yield _counter(
        "ringkv_forwarded", "Client requests received from another node", status["forwarded"]
    )
    cache = status["reply_cache"]
    yield _counter(
        "ringkv_reply_cache_hits", "Repeats answered from the reply cache", cache["hits"]
    )
    yield _gauge("ringkv_reply_cache_entries", "Outcomes kept for repeats", cache["entries"])


def _membership(status: dict[str, Any]) -> Iterator[Any]:
    states = dict.fromkeys(_STATES.values(), 0)
    for letter in status["states"]:
        states[_STATES[letter]] += 1
    yield _by(
        GaugeMetricFamily, "ringkv_members", "Nodes in this node's view, by state", "state", states
    )
    yield _counter("ringkv_suspicions", "Times this node suspected another", status["suspicions"])
    yield _counter("ringkv_deaths", "Times this node declared another dead", status["deaths"])
    yield _counter("ringkv_pauses", "Times this node found it had been stopped", status["pauses"])
    yield _gauge(
        "ringkv_incarnation", "This node's incarnation (raised to refute)", status["incarnation"]
    )
    info = GaugeMetricFamily(
        "ringkv_node", "This node's index and process", labels=["index", "pid"]
    )
    info.add_metric([str(status["index"]), str(status["pid"])], 1)
    yield info


def _storage(status: dict[str, Any]) -> Iterator[Any]:
    yield _gauge("ringkv_keys", "Keys stored", status["keys"])
    yield _gauge("ringkv_stored_bytes", "Bytes counted against the budget", status["stored_bytes"])
    yield _gauge("ringkv_memory_budget_bytes", "The memory budget", status["budget"])


def _replication(status: dict[str, Any]) -> Iterator[Any]:
    yield _by(
        GaugeMetricFamily, "ringkv_slots", "Ring slots held, by role", "role", status["roles"]
    )
    yield _gauge("ringkv_unsynced_slots", "Slots not yet pulled whole", status["unsynced_slots"])
    yield _gauge("ringkv_held_slots", "Slots held back from serving", status["held_slots"])
    yield _gauge("ringkv_transfers_in_progress", "Pulls under way", status["transfers"])
    yield _counter("ringkv_transfers", "Pulls completed", status["transfers_done"])
    yield _counter("ringkv_transfers_retried", "Pulls asked again", status["transfers_retried"])
    yield _counter("ringkv_keys_pulled", "Entries pulls brought", status["keys_pulled"])
    yield _counter(
        "ringkv_keys_pulled_newer", "Entries pulls brought that were newer than this node's copy",
        status["keys_pulled_newer"],
    )  # fmt: skip
    yield _gauge(
        "ringkv_pending_writes", "Writes sent on, not yet acknowledged", status["pending_writes"]
    )


def _datagrams(status: dict[str, Any]) -> Iterator[Any]:
    yield _counter(
        "ringkv_datagrams_received", "Client and peer datagrams read (not gossip)",
        status["datagrams_in"],
    )  # fmt: skip
    yield _counter(
        "ringkv_datagrams_sent", "Client replies and peer datagrams sent (not gossip)",
        status["datagrams_out"],
    )  # fmt: skip
    yield _by(
        CounterMetricFamily, "ringkv_peer_messages_sent", "Peer messages sent, by kind",
        "kind", status["peer_sent"],
    )  # fmt: skip
    yield _counter("ringkv_gossip_sent", "Gossip datagrams sent", status["gossip_sent"])
    dropped = {reason: status[key] for key, reason in _DROPPED.items()}
    yield _by(
        CounterMetricFamily, "ringkv_dropped_datagrams", "Datagrams refused or dropped, by why",
        "reason", dropped,
    )  # fmt: skip


def registry_for(node: Node, runtime: RuntimeCounters) -> CollectorRegistry:
    """The node's metrics and the process's (CPU, memory, file descriptors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, runtime))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class MetricsServer:
    """GET /metrics over HTTP/1.1 on the event loop; anything else gets 404."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._open = 0

    async def start(self, addr: Addr) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, addr[0], addr[1], limit=MAX_HEAD_BYTES)
        log.info("metrics on http://%s:%d/metrics", *addr)
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open <= MAX_CONNECTIONS:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
                writer.write(self._answer(head))
                await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass  # a client that sends too much, too slowly or nothing: closed
        finally:
            self._open -= 1
            writer.close()

    def _answer(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] != b"GET" or parts[1].split(b"?")[0] != b"/metrics":
            return _response(b"404 Not Found", b"text/plain", b"GET /metrics\n")
        body = generate_latest(self.registry)
        return _response(b"200 OK", CONTENT_TYPE_LATEST.encode(), body)


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type
        + b"\r\nContent-Length: " + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n" + body
    )  # fmt: skip

"""`ringkv cluster …`: start a local cluster with a live view, and steer any cluster."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import click
import psutil  # type: ignore[import-untyped]  # psutil ships no type hints
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ringkv.cli.options import (
    cluster_key_option,
    data_dir_options,
    durability_of,
    json_option,
    memory_mb_option,
    nodes_option,
    raise_interrupt,
    read_keyring,
    read_servers,
    replicas_option,
    servers_file_option,
)
from ringkv.runtime.cluster import (
    KEY_FILE,
    METRICS_PORT_OFFSET,
    LocalCluster,
    load_state,
    local_servers,
    metrics_addr,
    query_status,
    write_prometheus_config,
)
from ringkv.wire import Addr
from ringkv.wire.seal import Keyring

_STATE_NAMES = {"A": "alive", "S": "suspect", "D": "dead"}
_STATE_STYLES = {"alive": "green", "suspect": "yellow", "dead": "red", "no answer": "red"}


@click.group()
def cluster() -> None:
    """Start, watch and steer a cluster."""


_workdir_option = click.option(
    "--dir", "workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".ringkv"),
    show_default=True, help="Where the cluster's state and node logs are kept.",
)  # fmt: skip
_servers_option = servers_file_option(
    "The cluster's server list.", default=Path("servers.txt"), show_default=True
)
_key_option = cluster_key_option(
    f"The cluster's key file [default: DIR/{KEY_FILE} if there is one]."
)


def _keyring(key_file: Path | None, workdir: Path) -> Keyring | None:
    """The key given, else the one `cluster up` made in the working folder, else none."""
    if key_file is None and (workdir / KEY_FILE).exists():
        key_file = workdir / KEY_FILE
    return None if key_file is None else read_keyring(key_file)


@cluster.command()
@nodes_option(most=1000)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address all nodes bind.")
@click.option(
    "--base-port", type=click.IntRange(1, 60000), default=10001, show_default=True,
    help="Node i's port (without --distinct-hosts: plus i); each node also takes that port "
    "plus 1000 (gossip), 2000 (peers) and, with metrics, 3000 (TCP).",
)  # fmt: skip
@click.option(
    "--distinct-hosts", is_flag=True,
    help="Node i binds 127.0.0.(i+1) at --base-port, as if on separate machines.",
)  # fmt: skip
@memory_mb_option()
@replicas_option()
@click.option(
    "--detach", is_flag=True, help="Start the nodes and return; stop with `cluster down`."
)
@click.option(
    "--insecure", is_flag=True,
    help=f"No cluster key: nodes believe any datagram. Without it DIR/{KEY_FILE} is made anew.",
)  # fmt: skip
@click.option(
    "--metrics/--no-metrics", default=True, show_default=True,
    help="Each node answers Prometheus scrapes on its port plus 3000; prometheus.yml and "
    "its target list are written beside the server list.",
)  # fmt: skip
@data_dir_options("each node's (in DIR/node-I)")
@_servers_option
@_workdir_option
def up(
    nodes: int, host: str, base_port: int, distinct_hosts: bool, memory_mb: int, replicas: int,
    detach: bool, insecure: bool, metrics: bool, data_dir: Path | None, durability: str | None,
    max_disk_mb: int | None, servers_file: Path, workdir: Path,
) -> None:  # fmt: skip
    """Start NODES node processes on this machine and show their status until Ctrl-C.

    With --data-dir, `cluster down` leaves the data, and `cluster up` with the
    same nodes, ports and DIR brings it back.
    """
    if load_state(workdir):
        raise click.UsageError(f"a cluster is already running from {workdir} (ringkv cluster down)")
    mode = durability_of(data_dir, durability)
    servers = local_servers(nodes, host, base_port, distinct_hosts)
    local = LocalCluster.create(
        servers, workdir, servers_file, insecure, memory_mb=memory_mb, replicas=replicas,
        metrics=metrics, data_dir=data_dir, durability=mode, max_disk_mb=max_disk_mb,
    )  # fmt: skip
    local.start()
    console = Console()
    console.print(f"started {nodes} nodes; server list in {servers_file}, logs in {workdir}/logs")
    if data_dir is not None:
        console.print(f"data in {data_dir}/node-0 … node-{nodes - 1} (durability {mode})")
    if local.key_file is not None:
        console.print(f"cluster key in {local.key_file}")
    if metrics:
        config = write_prometheus_config(servers, servers_file.resolve().parent)
        first = metrics_addr(servers[0])
        console.print(
            f"metrics: http://{first[0]}:{first[1]}/metrics for node 0, each node at its port"
            f" + {METRICS_PORT_OFFSET}; Prometheus config: {config}"
        )
    if detach:
        local.wait_ready()
        return
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        watch(servers, console, local, local.keyring)
    except KeyboardInterrupt:
        pass
    finally:
        console.print("stopping the nodes …")
        local.stop()


@cluster.command()
@_servers_option
@_key_option
@_workdir_option
@click.option("--watch", "keep_watching", is_flag=True, help="Refresh every second until Ctrl-C.")
def status(servers_file: Path, key_file: Path | None, workdir: Path, keep_watching: bool) -> None:
    """The status table of a running cluster, once."""
    servers = read_servers(servers_file)
    keyring = _keyring(key_file, workdir)
    console = Console()
    if keep_watching:
        try:
            watch(servers, console, None, keyring)
        except KeyboardInterrupt:
            pass
        return
    statuses = query_status(servers, keyring=keyring)
    console.print(status_table(servers, statuses, {}, 1.0, set()))


@cluster.command()
@_workdir_option
def down(workdir: Path) -> None:
    """Stop the cluster that `cluster up --detach` started."""
    state = load_state(workdir)
    if not state:
        raise click.UsageError(f"no running cluster recorded in {workdir}")
    for pid in state["pids"].values():
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.kill(int(pid), sig)
            except ProcessLookupError:
                break
    (workdir / "cluster.json").unlink(missing_ok=True)
    click.echo(f"sent SIGTERM to {len(state['pids'])} nodes")


@cluster.command()
@click.argument("indexes", nargs=-1, type=int, required=True)
@_workdir_option
def suspend(indexes: tuple[int, ...], workdir: Path) -> None:
    """SIGSTOP nodes by their line number in the server list (0-based)."""
    _signal_nodes(workdir, indexes, signal.SIGSTOP, suspended=True)


@cluster.command()
@click.argument("indexes", nargs=-1, type=int, required=True)
@_workdir_option
def resume(indexes: tuple[int, ...], workdir: Path) -> None:
    """SIGCONT suspended nodes."""
    _signal_nodes(workdir, indexes, signal.SIGCONT, suspended=False)


def _signal_nodes(
    workdir: Path, indexes: tuple[int, ...], sig: signal.Signals, suspended: bool
) -> None:
    state = load_state(workdir)
    if not state:
        raise click.UsageError(f"no running cluster recorded in {workdir}")
    pids = state["pids"]
    marked = set(state.get("suspended", []))
    for index in indexes:
        if str(index) not in pids:
            raise click.UsageError(f"no node {index} (nodes are 0..{len(pids) - 1})")
        os.kill(int(pids[str(index)]), sig)
        (marked.add if suspended else marked.discard)(index)
    state["suspended"] = sorted(marked)
    (workdir / "cluster.json").write_text(json.dumps(state, indent=1))
    click.echo(f"{'suspended' if suspended else 'resumed'} {', '.join(map(str, indexes))}")


@cluster.command()
@_servers_option
@_key_option
@_workdir_option
@click.option("--duration", type=click.FloatRange(min=1), default=600, show_default=True)
@json_option("Print the figures as one JSON object.")
def soak(
    servers_file: Path, key_file: Path | None, workdir: Path, duration: float, as_json: bool
) -> None:
    """Watch a running cluster: false deaths, count stability, idle cost.

    Polls every node once a second for DURATION seconds and reports the
    deaths and suspicions the nodes declared meanwhile (with no node
    stopped, every one is false), the lowest and highest membership count
    seen, gossip datagrams per node per second and, for nodes on this host,
    the CPU they used (% of one core, all nodes together).
    """
    servers = read_servers(servers_file)
    console = Console(stderr=True, quiet=as_json)
    report = soak_cluster(servers, duration, console, _keyring(key_file, workdir))
    if as_json:
        click.echo(json.dumps(report))
        return
    for name, value in report.items():
        click.echo(f"{name:>28}: {value}")


def soak_cluster(
    servers: list[Addr], duration: float, console: Console, keyring: Keyring | None = None
) -> dict[str, Any]:
    first = query_status(servers, timeout=1.0, keyring=keyring)
    if len(first) < len(servers):
        raise click.ClickException(f"only {len(first)} of {len(servers)} nodes answer")
    procs = _local_processes(first)
    for proc in procs:
        proc.cpu_percent(None)
    start = time.monotonic()
    low, high, polls = len(servers), 0, 0
    last = first
    while (elapsed := time.monotonic() - start) < duration:
        time.sleep(1.0)
        statuses = query_status(servers, timeout=0.5, keyring=keyring)
        polls += 1
        counts = [s["count"] for s in statuses.values()]
        low = min([low, *counts]) if len(statuses) == len(servers) else 0
        high = max([high, *counts])
        last = {**last, **statuses}
        console.print(f"{elapsed:5.0f} s: counts {min(counts)}..{max(counts)}", end="\r")
    elapsed = time.monotonic() - start
    cpu = sum(p.cpu_percent(None) for p in procs) if procs else None
    gossip = sum(last[i]["gossip_sent"] - first[i]["gossip_sent"] for i in first)
    return {
        "seconds": round(elapsed, 1),
        "nodes": len(servers),
        "false_deaths": sum(last[i]["deaths"] - first[i]["deaths"] for i in first),
        "suspicions": sum(last[i]["suspicions"] - first[i]["suspicions"] for i in first),
        "lowest_count_seen": low,
        "highest_count_seen": high,
        "gossip_datagrams_per_node_s": round(gossip / len(servers) / elapsed, 2),
        "cpu_percent_of_one_core": None if cpu is None else round(cpu, 1),
        "local_nodes_measured": len(procs),
        "polls": polls,
    }


def _local_processes(statuses: dict[int, dict[str, Any]]) -> list[psutil.Process]:
    procs = []
    for status in statuses.values():
        try:
            procs.append(psutil.Process(int(status["pid"])))
        except (psutil.Error, KeyError, ValueError):
            continue
    return procs


def watch(
    servers: list[Addr], console: Console, local: LocalCluster | None, keyring: Keyring | None
) -> None:
    """Refresh the status table every second."""
    previous: dict[int, dict[str, Any]] = {}
    last = time.monotonic()
    with Live(console=console, refresh_per_second=2, screen=False) as live:
        while True:
            statuses = query_status(servers, timeout=0.5, keyring=keyring)
            now = time.monotonic()
            suspended = local.suspended if local else set()
            exited = local.exited() if local else {}
            live.update(status_table(servers, statuses, previous, now - last, suspended, exited))
            previous, last = statuses, now
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))


def status_table(
    servers: list[Addr],
    statuses: dict[int, dict[str, Any]],
    previous: dict[int, dict[str, Any]],
    interval: float,
    suspended: set[int],
    exited: dict[int, int] | None = None,
) -> Table:
    views = [s.get("states", "") for s in statuses.values()]
    answered = len(statuses)
    table = Table(title=f"ringkv: {answered}/{len(servers)} nodes answering", expand=False)
    # state: what most nodes believe; h/m/t: keys held as head/middle/tail;
    # moving: transfers in flight plus ring slots not yet pulled.
    columns = ("node", "address", "pid", "state", "count", "keys", "h/m/t", "moving", "req/s")
    for column in (*columns, "note"):
        numeric = column in ("count", "keys", "moving", "req/s")
        table.add_column(column, justify="right" if numeric else "left")
    for index, (host, port) in enumerate(servers):
        status = statuses.get(index)
        seen = _cluster_view(index, views)
        style = _STATE_STYLES.get(seen, "")
        note = "suspended here" if index in suspended else ("" if status else "no answer")
        if exited and index in exited:
            note = f"exited (status {exited[index]})"
        row = [str(index), f"{host}:{port}", "", f"[{style}]{seen}"]
        if status is None:
            table.add_row(*row, "", "", "", "", "", note)
            continue
        row[2] = str(status.get("pid", ""))
        earlier = previous.get(index, {})
        before = earlier.get("requests", status["requests"])
        rate = (status["requests"] - before) / interval if interval > 0 else 0.0
        shed = status.get("shed", 0) - earlier.get("shed", status.get("shed", 0))
        if shed > 0 and interval > 0:
            note = f"overloaded: {shed / interval:,.0f} req/s shed"
        roles = status.get("roles", {})
        held = "/".join(str(roles.get(r, 0)) for r in ("head", "middle", "tail"))
        moving = status.get("transfers", 0) + status.get("unsynced_slots", 0)
        table.add_row(
            *row, str(status.get("count", "")), str(status.get("keys", "")), held,
            str(moving), f"{rate:,.0f}", note,
        )  # fmt: skip
    cost = datagrams_per_request(statuses, previous)
    if cost is not None:
        table.caption = f"datagrams per client request: {cost:.2f}"
    return table


def datagrams_per_request(
    statuses: dict[int, dict[str, Any]], previous: dict[int, dict[str, Any]] | None = None
) -> float | None:
    """Every datagram a client request costs (client and peer ports, not gossip):
    the request itself, plus all the nodes send (replies and peer datagrams), per
    request received.

    Since `previous` (the same nodes' earlier statuses) if given, else since the
    nodes started; None before any request.
    """
    requests = sent = 0
    for index, status in statuses.items():
        before = (previous or {}).get(index, {})
        requests += status.get("requests", 0) - before.get("requests", 0)
        sent += status.get("datagrams_out", 0) - before.get("datagrams_out", 0)
    return (requests + sent) / requests if requests > 0 else None


def _cluster_view(index: int, views: list[str]) -> str:
    """What most answering nodes believe about node `index`."""
    votes = [v[index] for v in views if index < len(v)]
    if not votes:
        return "no answer"
    winner = max(set(votes), key=votes.count)
    return _STATE_NAMES.get(winner, winner)

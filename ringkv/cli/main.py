"""The `ringkv` group and its own commands: node, the client commands, echo and bench."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from ringkv.cli.options import (
    CIDR,
    IPNetwork,
    client_options,
    cluster_key_option,
    data_dir_options,
    durability_of,
    hex_option,
    json_option,
    listen_option,
    memory_mb_option,
    procs_option,
    read_keyring,
    read_servers,
    replicas_option,
    seed_option,
    server_option,
    servers_file_option,
    timeout_option,
    tries_option,
)
from ringkv.servers import ServerListError, resolve_addr
from ringkv.wire import Addr

if TYPE_CHECKING:
    from ringkv.check.bench import BenchConfig, BenchResult
    from ringkv.client import Client, Reply
    from ringkv.core.node import Node
    from ringkv.runtime.datadir import DataDir


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ringkv")
def main() -> None:
    """ringkv: a distributed key-value store speaking the CPEN 431 UDP protocol."""


@main.command()
@listen_option("This node's client address, HOST:PORT.")
@servers_file_option(
    "Server list (one HOST:PORT a line); this node is the line equal to --listen. "
    "Without it the node is a one-node cluster."
)
@memory_mb_option("Budget for stored bytes; PUTs beyond it get errCode 2.")
@replicas_option("Replication factor (the same on every node of a cluster).")
@cluster_key_option(
    "The cluster's key file (`ringkv keygen`): node-to-node traffic is sealed with it. "
    "Read again on SIGHUP, for key rotation."
)
@click.option(
    "--insecure", is_flag=True,
    help="Run a multi-node cluster without a cluster key: any datagram from anyone is believed.",
)  # fmt: skip
@click.option(
    "--admin-from", "admin_from", multiple=True, type=CIDR, metavar="CIDR",
    help="Take WIPEOUT and SHUTDOWN only from clients in this network (repeatable); "
    "others get errCode 5. Default: from every client, as the protocol has it.",
)  # fmt: skip
@click.option(
    "--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
    help="Answer Prometheus scrapes on http://LISTEN_HOST:PORT/metrics. Default: off.",
)  # fmt: skip
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
    help="json: one object a line, a membership change's fields as fields.",
)  # fmt: skip
@data_dir_options("this node's")
def node(
    listen: Addr, servers_file: Path | None, memory_mb: int, replicas: int,
    key_file: Path | None, insecure: bool, admin_from: tuple[IPNetwork, ...],
    metrics_port: int | None, log_level: str, log_format: str, data_dir: Path | None,
    durability: str | None, max_disk_mb: int | None,
) -> None:  # fmt: skip
    """Run one node of a cluster."""
    from ringkv.core.node import Node, NodeConfig
    from ringkv.runtime.datadir import DISK_SHARE
    from ringkv.runtime.logs import configure
    from ringkv.runtime.server import NodeServer, serve

    configure(listen, log_level, log_format)
    try:
        listen = resolve_addr(listen)
    except ServerListError as exc:
        raise click.UsageError(f"--listen {exc}") from None
    servers = [listen]
    if servers_file:
        servers = read_servers(servers_file)
        if listen not in servers:
            raise click.UsageError(
                f"--listen {listen[0]}:{listen[1]} is not a line of {servers_file}"
            )
    if key_file is not None and insecure:
        raise click.UsageError("give --cluster-key or --insecure, not both")
    if key_file is None and len(servers) > 1 and not insecure:
        raise click.UsageError(
            "a node of a multi-node cluster needs --cluster-key FILE (make one with "
            "`ringkv keygen FILE`), or --insecure to believe any datagram from anyone"
        )
    mode = durability_of(data_dir, durability)
    disk_bytes = (max_disk_mb or 4 * memory_mb) << 20
    budget = memory_mb << 20 if mode == "none" else min(memory_mb << 20, disk_bytes // DISK_SHARE)
    config = NodeConfig(
        servers=tuple(servers),
        self_index=servers.index(listen),
        pid=os.getpid(),
        memory_budget=budget,
        replicas=replicas,
        clock_offset=time.time() - time.monotonic(),
        keyring=None if key_file is None else read_keyring(key_file),
        boot=time.time_ns() // 1000,
        admin_from=admin_from or None,
    )
    metrics = None if metrics_port is None else (listen[0], metrics_port)
    core = Node(config)
    store = None if data_dir is None else _open_data_dir(core, data_dir, mode, disk_bytes)
    serve(NodeServer(core, listen, len(servers) > 1, key_file, metrics, store))


def _open_data_dir(node: Node, path: Path, mode: str, max_bytes: int) -> DataDir:
    """The node's data directory, its store loaded into the node; a bad one stops the node."""
    import logging

    from ringkv.runtime.datadir import DataDir, DataDirError, Identity, restore_into

    identity = Identity(node.config.servers, node.config.self_index)
    try:
        store = DataDir(path, mode, identity, max_bytes)
        logging.getLogger("ringkv.datadir").info("%s", restore_into(node, store, time.monotonic()))
    except DataDirError as exc:
        raise click.ClickException(str(exc)) from None
    return store


@main.group()
def keyring() -> None:
    """Rotate a cluster key without downtime, one step at a time.

    Apply each step to every node's key file, then SIGHUP every node, before
    the next: add (a new key that every node opens), use (the new key seals),
    retire (only the new key is left).
    """


def _keyring_step(key_file: Path, step: str, done: str) -> None:
    from ringkv.wire.seal import KeyringError, save_keyring

    keys = read_keyring(key_file)
    try:
        save_keyring(key_file, getattr(keys, step)())
    except KeyringError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"{key_file}: {done}; now SIGHUP every node")


_KEY_FILE = click.argument("key_file", type=click.Path(dir_okay=False, path_type=Path))


@keyring.command()
@_KEY_FILE
def add(key_file: Path) -> None:
    """Add a new key at the end: opened by every node, sealing with none yet."""
    _keyring_step(key_file, "with_new_key", "a new key added")


@keyring.command()
@_KEY_FILE
def use(key_file: Path) -> None:
    """Move the newest key to the front: nodes seal with it, the others still open."""
    _keyring_step(key_file, "newest_first", "the newest key seals")


@keyring.command()
@_KEY_FILE
def retire(key_file: Path) -> None:
    """Drop every key but the first."""
    _keyring_step(key_file, "primary_only", "the older keys retired")


@main.command()
@click.argument("key_file", type=click.Path(dir_okay=False, path_type=Path))
def keygen(key_file: Path) -> None:
    """Make a new cluster key file (mode 0600) for `--cluster-key`."""
    from ringkv.wire.seal import Keyring, KeyringError, save_keyring

    try:
        save_keyring(key_file, Keyring.generate(), replace=False)
    except KeyringError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise click.UsageError(f"cannot write {key_file}: {exc.strerror}") from None
    click.echo(f"wrote a new cluster key to {key_file}")


# -- client commands ---------------------------------------------------------------

DEFAULT_SERVER: Addr = ("127.0.0.1", 43100)
EXIT_ERR = 1  # a protocol errCode other than 0 (not found included)
EXIT_TIMEOUT = 3  # click itself uses 2 for bad usage


def _servers(server: Addr | None, servers_file: Path | None) -> tuple[list[Addr], bool]:
    """The servers to use and whether they came from a list (then any node may be asked)."""
    if server is not None and servers_file:
        raise click.UsageError("give --server or --servers, not both")
    if not servers_file:
        return [server or DEFAULT_SERVER], False
    return read_servers(servers_file), True


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def _call(
    server: Addr | None,
    servers_file: Path | None,
    timeout: float,
    tries: int,
    action: Callable[[Client], Reply],
) -> Reply:
    """Run one request; exit 3 on a time-out and 1 on a non-zero errCode."""
    from ringkv.client import Client, ClientError, ClientTimeout, describe_err

    servers, from_list = _servers(server, servers_file)
    try:
        with Client(servers, timeout, tries, random_front_end=from_list) as client:
            reply = action(client)
    except ClientTimeout as exc:
        _fail(str(exc), EXIT_TIMEOUT)
    except (ClientError, OSError) as exc:
        _fail(str(exc), EXIT_ERR)
    if not reply.ok:
        _fail(describe_err(reply.err), EXIT_ERR)
    return reply


def _key_bytes(text: str, as_hex: bool, what: str) -> bytes:
    from ringkv.client.console import to_bytes

    try:
        return to_bytes(text, as_hex)
    except ValueError as exc:
        raise click.BadParameter(f"not hex: {exc}", param_hint=what) from None


@main.command()
@click.argument("key")
@click.argument("value")
@click.option("--version", "version", type=int, default=0, show_default=True)
@hex_option
@client_options
def put(
    key: str,
    value: str,
    version: int,
    as_hex: bool,
    server: Addr | None,
    servers_file: Path | None,
    timeout: float,
    tries: int,
) -> None:
    """Store VALUE (and a version number) under KEY."""
    key_b, value_b = _key_bytes(key, as_hex, "KEY"), _key_bytes(value, as_hex, "VALUE")
    _call(server, servers_file, timeout, tries, lambda c: c.put(key_b, value_b, version))
    click.echo("ok")


@main.command()
@click.argument("key")
@click.option("--show-version", is_flag=True, help="Also print the stored version.")
@hex_option
@client_options
def get(
    key: str,
    show_version: bool,
    as_hex: bool,
    server: Addr | None,
    servers_file: Path | None,
    timeout: float,
    tries: int,
) -> None:
    """Print the value stored under KEY."""
    from ringkv.client.console import show_bytes

    key_b = _key_bytes(key, as_hex, "KEY")
    reply = _call(server, servers_file, timeout, tries, lambda c: c.get(key_b))
    text, is_hex = show_bytes(reply.value, as_hex)
    if is_hex and not as_hex:
        click.echo("(the value is not UTF-8 text: shown as hex)", err=True)
    click.echo(text)
    if show_version:
        click.echo(f"version {reply.version}")


@main.command()
@click.argument("key")
@hex_option
@client_options
def rm(
    key: str,
    as_hex: bool,
    server: Addr | None,
    servers_file: Path | None,
    timeout: float,
    tries: int,
) -> None:
    """Remove KEY."""
    key_b = _key_bytes(key, as_hex, "KEY")
    _call(server, servers_file, timeout, tries, lambda c: c.remove(key_b))
    click.echo("ok")


def _per_node(
    command: int,
    heading: str,
    field: Callable[[Reply], str],
    servers: list[Addr],
    timeout: float,
    tries: int,
) -> None:
    """Ask every node of a list and print a table; exit 3 if one is silent, 1 on an errCode."""
    from ringkv.client import ClientTimeout, Reply
    from ringkv.client.console import ask_every_node, node_table, print_table

    rows = ask_every_node(servers, command, timeout, tries)
    print_table(node_table(rows, heading, field))
    answers = [answer for _, answer in rows]
    if any(isinstance(answer, ClientTimeout) for answer in answers):
        raise SystemExit(EXIT_TIMEOUT)
    if any(not isinstance(answer, Reply) or not answer.ok for answer in answers):
        raise SystemExit(EXIT_ERR)


def _admin(
    command: int,
    heading: str,
    field: Callable[[Reply], str],
    server: Addr | None,
    servers_file: Path | None,
    timeout: float,
    tries: int,
) -> None:
    servers, from_list = _servers(server, servers_file)
    if from_list:
        _per_node(command, heading, field, servers, timeout, tries)
        return
    reply = _call(server, None, timeout, tries, lambda c: c.request(command))
    click.echo(field(reply))


@main.command()
@client_options
def alive(server: Addr | None, servers_file: Path | None, timeout: float, tries: int) -> None:
    """Check that a node answers (--servers: every node)."""
    from ringkv.wire.codec import Command

    _admin(Command.IS_ALIVE, "state", lambda r: "alive", server, servers_file, timeout, tries)


@main.command()
@client_options
def pid(server: Addr | None, servers_file: Path | None, timeout: float, tries: int) -> None:
    """Print a node's process ID (--servers: every node)."""
    from ringkv.wire.codec import Command

    _admin(Command.GET_PID, "pid", lambda r: str(r.pid), server, servers_file, timeout, tries)


@main.command()
@client_options
def members(server: Addr | None, servers_file: Path | None, timeout: float, tries: int) -> None:
    """Print how many nodes a node believes alive (--servers: every node)."""
    from ringkv.wire.codec import Command

    _admin(
        Command.GET_MEMBERSHIP_COUNT,
        "members",
        lambda r: str(r.membership_count),
        server,
        servers_file,
        timeout,
        tries,
    )


@main.command()
@server_option("The node to fuzz (loopback only) [default: 127.0.0.1:43100].")
@click.option("--count", type=click.IntRange(min=1), default=20_000, show_default=True)
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True,
              help="The size of its cluster: node indices to forge.")  # fmt: skip
@seed_option("Seed of the datagrams sent.", default=1, show_default=True)
@json_option("Print the report as one JSON object.")
def fuzz(server: Addr | None, count: int, nodes: int, seed: int, as_json: bool) -> None:
    """Send COUNT hostile datagrams to a node, then check it is unharmed.

    Random, mutated and well-formed-but-forged client, peer and gossip
    datagrams (never a well-formed WIPEOUT or SHUTDOWN); then the node must
    still answer with the same PID and membership count, a PUT/GET round trip
    must work, and the sentinel keys stored before must read back unchanged.
    Exit code 1 if anything gave.
    """
    import json

    from ringkv.check.fuzz import Fuzzer, FuzzTargetError

    try:
        fuzzer = Fuzzer(server or DEFAULT_SERVER, seed, nodes)
    except FuzzTargetError as exc:
        raise click.UsageError(str(exc)) from None
    report = fuzzer.run(count)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        click.echo(f"sent {sum(report.sent.values())} datagrams: {dict(report.sent)}")
        click.echo(f"not sent, being client writes of what is checked: {report.skipped}")
        click.echo(f"liveness checks: {report.liveness_checks}")
        for failure in report.failures:
            click.echo(f"FAILED: {failure}")
        click.echo("passed" if report.passed else "failed")
    if not report.passed:
        raise SystemExit(EXIT_ERR)


@main.command()
@client_options
def wipe(server: Addr | None, servers_file: Path | None, timeout: float, tries: int) -> None:
    """Delete every key held by one node (WIPEOUT)."""
    _call(server, servers_file, timeout, tries, lambda c: c.wipeout())
    click.echo("ok")


@main.command()
@client_options
def shutdown(server: Addr | None, servers_file: Path | None, timeout: float, tries: int) -> None:
    """Make a node exit at once, like a crash (sent once, not retried)."""
    from ringkv.client import Client, ClientError

    servers, from_list = _servers(server, servers_file)
    try:
        with Client(servers, timeout, tries, random_front_end=from_list) as client:
            target = client.targets.pick(None)
            reply = client.shutdown(target)
    except (ClientError, OSError) as exc:
        _fail(str(exc), EXIT_ERR)
    where = f"{target[0]}:{target[1]}"
    if reply is None:
        click.echo(f"shutdown sent to {where} (no reply: it may have exited before answering)")
    else:
        click.echo(f"shutdown sent to {where} (acknowledged)")


# -- bench and echo -------------------------------------------------------------------


@main.command()
@listen_option("Address to echo on, HOST:PORT.")
@click.option("--blocking", is_flag=True, help="A plain recvfrom/sendto loop instead of uvloop.")
def echo(listen: Addr, blocking: bool) -> None:
    """Run a bare UDP echo server: the bench's ceiling."""
    from ringkv.runtime.echo import serve_echo

    serve_echo(listen, blocking)


@main.command()
@server_option("The node to load [default: 127.0.0.1:43100].")
@servers_file_option("Server list: load its first node, or every node with --random-front-end.")
@click.option("--random-front-end", is_flag=True, help="Send each request to a random node.")
@click.option(
    "--clients",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Concurrent clients.",
)
@click.option(
    "--duration", type=click.FloatRange(min=0.1), default=5.0, show_default=True, help="Seconds."
)
@click.option(
    "--value-size", type=click.IntRange(0, 10_000), default=500, show_default=True, help="Bytes."
)
@click.option(
    "--keys",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Keys per client, used in turn.",
)
@procs_option(1, "Processes to spread the clients over.")
@timeout_option()
@tries_option()
@click.option(
    "--echo",
    "target_is_echo",
    is_flag=True,
    help="The target is an echo server (`ringkv echo`): any echoed request is success.",
)
@click.option(
    "--echo-server",
    "echo_port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Start a bare echo server on 127.0.0.1:PORT and bench it.",
)
@click.option(
    "--compare-echo",
    is_flag=True,
    help="Bench an echo server, then the target, and print node/echo.",
)
@click.option(
    "--echo-blocking",
    is_flag=True,
    help="The started echo server uses a plain blocking loop, not uvloop.",
)
@json_option("Print one JSON object, no progress bar.")
@click.option(
    "--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
    help="Also write DIR/report.html: throughput and latency over the run.",
)  # fmt: skip
def bench(
    server: Addr | None,
    servers_file: Path | None,
    random_front_end: bool,
    clients: int,
    duration: float,
    value_size: int,
    keys: int,
    procs: int,
    timeout: float,
    tries: int,
    target_is_echo: bool,
    echo_port: int | None,
    compare_echo: bool,
    echo_blocking: bool,
    as_json: bool,
    report_dir: Path | None,
) -> None:
    """Closed-loop PUT→GET load; prints throughput, latency and errors.

    Each client waits for its reply before sending its next request.

    \b
    Figures:
      requests     operations finished, answered or timed out
      throughput   answered requests per second of the run
      latency      p50, p99, max and mean from first send to reply, retries included
      time-outs    requests whose every try (100+200+400 ms) went unanswered
      retries      datagrams re-sent after a time-out or an overload reply
      error codes  the errCode of every answer (0 is success)
      mismatches   GETs that missed the value and version just PUT (exit code 1 if any)
      node/echo    with --compare-echo or --echo-server: the target's throughput over
                   that of a bare UDP echo server benched the same way in the same run

    Without --server/--servers, --echo-server PORT benches only the echo server.
    """
    from ringkv.check.bench import BenchConfig, BenchError

    has_target = server is not None or servers_file is not None
    servers, _ = _servers(server, servers_file)
    config = BenchConfig(
        servers=tuple(servers),
        clients=clients,
        duration=duration,
        value_size=value_size,
        procs=procs,
        keys=keys,
        random_front_end=random_front_end,
        echo=target_is_echo,
        timeout=timeout,
        tries=tries,
    )
    want_echo = compare_echo or echo_port is not None
    want_target = has_target or not want_echo
    try:
        results = _bench_runs(config, want_echo, want_target, echo_port, echo_blocking, as_json)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    if report_dir is not None:
        _bench_report(results, report_dir, as_json)
    if any(r.mismatches for r in results.values()):
        raise SystemExit(EXIT_ERR)


def _bench_report(results: dict[str, BenchResult], folder: Path, as_json: bool) -> None:
    """One page for the runs of this bench, one after the other on its time axis."""
    from ringkv.report.html import write_report
    from ringkv.report.timeline import Span, Timeline

    timeline = Timeline(origin=min(min(r.samples.at, default=0.0) for r in results.values()))
    for name, result in results.items():
        timeline.samples.extend(result.samples)
        first, last = min(result.samples.at, default=0.0), max(result.samples.at, default=0.0)
        timeline.spans.append(Span(name, f"{name}: {result.target}", first, last))
    clients = next(iter(results.values())).clients
    title = f"ringkv bench, {clients} clients: " + ", ".join(
        f"{name} {r.throughput:,.0f} req/s" for name, r in results.items()
    )
    path = write_report(folder, title, timeline, [], {k: r.to_dict() for k, r in results.items()})
    click.echo(f"report written to {path}", err=as_json)


def _bench_runs(
    config: BenchConfig,
    want_echo: bool,
    want_target: bool,
    echo_port: int | None,
    echo_blocking: bool,
    as_json: bool,
) -> dict[str, BenchResult]:
    import dataclasses
    import json

    from ringkv.check.bench import describe, echo_server, ratio
    from ringkv.client.local import free_udp_port

    results: dict[str, BenchResult] = {}
    if want_echo:
        with echo_server(echo_port or free_udp_port(), blocking=echo_blocking) as addr:
            echo_config = dataclasses.replace(
                config, servers=(addr,), echo=True, random_front_end=False
            )
            results["echo"] = _bench_one(echo_config, "echo", as_json)
    if want_target:
        results["node"] = _bench_one(config, "node", as_json)
    both = len(results) == 2
    if as_json:
        out: dict[str, object] = {k: v.to_dict() for k, v in results.items()}
        if both:
            out["node_to_echo"] = round(ratio(results["node"], results["echo"]), 4)
            out["echo_client_bound"] = results["echo"].client_bound
        click.echo(json.dumps(out if both else next(iter(out.values()))))
    else:
        blocks = [f"{name}:\n{describe(r)}" if both else describe(r) for name, r in results.items()]
        click.echo("\n\n".join(blocks))
        if both:
            share = ratio(results["node"], results["echo"])
            click.echo(f"\nnode/echo    {share:.3f} ({share:.0%} of the bare echo's throughput)")
            if results["echo"].client_bound:
                click.echo(
                    "             the echo's figure is the bench client's ceiling, not the echo's:"
                    " the ratio overstates the node (../shared/tools/kvload.c measures both"
                    " without that limit)"
                )
    return results


def _bench_one(config: BenchConfig, label: str, as_json: bool) -> BenchResult:
    from ringkv.check.bench import run_bench

    return run_bench(config) if as_json else _run_with_progress(config, label)


def _run_with_progress(config: BenchConfig, label: str) -> BenchResult:
    """run_bench with a progress bar on stderr, gone once the figures are printed."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ringkv.check.bench import run_bench

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[rate]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=config.duration, rate="starting")

        def update(elapsed: float, done: int) -> None:
            rate = f"{done:,} requests, {done / elapsed:,.0f} req/s" if elapsed > 0 else ""
            progress.update(task, completed=elapsed, rate=rate)

        return run_bench(config, update)

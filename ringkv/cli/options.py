"""Click options, parameter types and small helpers that several `ringkv` commands share.

An option keeps its name, type and default wherever it is used; where the
commands explain it differently, the help text is an argument.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ringkv.servers import ServerListError, load_servers, parse_addr
from ringkv.wire import Addr
from ringkv.wire.seal import Keyring, KeyringError, load_keyring

F = TypeVar("F", bound=Callable[..., Any])


class AddrType(click.ParamType[Addr]):
    name = "HOST:PORT"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Addr:
        if isinstance(value, tuple):
            return value
        try:
            return parse_addr(str(value))
        except ServerListError as exc:
            self.fail(str(exc), param, ctx)


ADDR = AddrType()
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class CidrType(click.ParamType[IPNetwork]):
    name = "CIDR"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> IPNetwork:
        if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
            return value
        try:
            return ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            self.fail(f"{value!r} is not an address or network (e.g. 10.0.0.0/8)", param, ctx)


CIDR = CidrType()


def read_servers(path: str | Path) -> list[Addr]:
    """The server list in `path`; a bad or missing file is a usage error."""
    try:
        return load_servers(path)
    except ServerListError as exc:
        raise click.UsageError(str(exc)) from None


def read_keyring(path: str | Path) -> Keyring:
    """The cluster keyring in `path`; a bad or missing file is a usage error."""
    try:
        return load_keyring(path)
    except KeyringError as exc:
        raise click.UsageError(str(exc)) from None


def cluster_key_option(help: str, **extra: Any) -> Callable[[F], F]:
    path = click.Path(dir_okay=False, path_type=Path)
    return click.option(
        "--cluster-key", "key_file", type=path, envvar="RINGKV_CLUSTER_KEY", show_envvar=True,
        help=help, **extra,
    )  # fmt: skip


def raise_interrupt(signum: int, frame: object) -> None:
    """A signal handler that unwinds like Ctrl-C (for SIGTERM)."""
    raise KeyboardInterrupt


# -- addresses and server lists ----------------------------------------------------------


def listen_option(help: str) -> Callable[[F], F]:
    return click.option("--listen", type=ADDR, required=True, help=help)


def server_option(help: str) -> Callable[[F], F]:
    return click.option("--server", type=ADDR, help=help)


def servers_file_option(help: str, **extra: Any) -> Callable[[F], F]:
    """--servers FILE, passed as the Path `servers_file`."""
    path = click.Path(dir_okay=False, path_type=Path)
    return click.option("--servers", "servers_file", type=path, help=help, **extra)


# -- requests ------------------------------------------------------------------------------


def timeout_option(help: str | None = None) -> Callable[[F], F]:
    return click.option(
        "--timeout", type=click.FloatRange(min=0.001), default=0.1, show_default=True, help=help
    )


def tries_option() -> Callable[[F], F]:
    return click.option("--tries", type=click.IntRange(min=1), default=3, show_default=True)


def client_options(func: F) -> F:
    """--server/--servers/--timeout/--tries, shared by every client command."""
    options = [
        server_option("The node to ask, HOST:PORT [default: 127.0.0.1:43100]."),
        servers_file_option("Server list (one HOST:PORT a line): ask a random node of it."),
        timeout_option("Seconds to wait for the first try; each retry waits twice as long."),
        tries_option(),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def hex_option(func: F) -> F:
    return click.option(
        "--hex", "as_hex", is_flag=True, help="Keys and values are given and printed as hex."
    )(func)


# -- nodes and runs ------------------------------------------------------------------------


def nodes_option(most: int | None = None) -> Callable[[F], F]:
    """--nodes N: a cluster's size, 40 by default as in the evaluation."""
    return click.option("--nodes", type=click.IntRange(1, most), default=40, show_default=True)


def memory_mb_option(help: str | None = None) -> Callable[[F], F]:
    return click.option(
        "--memory-mb", type=click.IntRange(min=1), default=512, show_default=True, help=help
    )


def data_dir_options(what: str) -> Callable[[F], F]:
    """--data-dir, --durability and --max-disk-mb, for a node or every node of a cluster."""

    def add(f: F) -> F:
        f = click.option(
            "--max-disk-mb", type=click.IntRange(min=1), metavar="MB",
            help="LMDB's map size [default: 4 x --memory-mb]; the store takes at most half "
            "of it (PUTs beyond get errCode 2).",
        )(f)  # fmt: skip
        f = click.option(
            "--durability", type=click.Choice(["none", "flush", "fsync"]),
            help="fsync: on disk before acknowledged; flush: handed to the OS before "
            "acknowledged, disk synced every second [default: fsync with --data-dir, "
            "else none: memory only].",
        )(f)  # fmt: skip
        f = click.option(
            "--data-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
            help=f"Keep {what} store in LMDB under DIR, and load it back at start.",
        )(f)  # fmt: skip
        return f

    return add


def durability_of(data_dir: Path | None, durability: str | None) -> str:
    """The mode the flags ask for; a contradiction is a usage error."""
    if durability is None:
        return "none" if data_dir is None else "fsync"
    if durability == "none" and data_dir is not None:
        raise click.UsageError("--data-dir keeps a store on disk: give --durability flush|fsync")
    if durability != "none" and data_dir is None:
        raise click.UsageError(f"--durability {durability} needs --data-dir DIR")
    return durability


def replicas_option(help: str | None = None) -> Callable[[F], F]:
    return click.option(
        "--replicas", type=click.IntRange(min=1), default=3, show_default=True, help=help
    )


def procs_option(default: int, help: str) -> Callable[[F], F]:
    return click.option(
        "--procs", type=click.IntRange(min=1), default=default, show_default=True, help=help
    )


def seed_option(help: str | None = None, **extra: Any) -> Callable[[F], F]:
    return click.option("--seed", type=int, help=help, **extra)


def json_option(help: str) -> Callable[[F], F]:
    """--json as a flag: print the figures as JSON (`as_json`)."""
    return click.option("--json", "as_json", is_flag=True, help=help)

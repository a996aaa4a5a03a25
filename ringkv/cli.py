"""The `ringkv` command line."""

from __future__ import annotations

import logging
import os
import sys

import click

from ringkv.servers import Addr, ServerListError, load_servers, parse_addr


class AddrType(click.ParamType):
    name = "HOST:PORT"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Addr:
        if isinstance(value, tuple):
            return value  # type: ignore[return-value]
        try:
            return parse_addr(str(value))
        except ServerListError as exc:
            self.fail(str(exc), param, ctx)


ADDR = AddrType()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ringkv")
def main() -> None:
    """ringkv: a distributed key-value store speaking the CPEN 431 UDP protocol."""


@main.command()
@click.option("--listen", type=ADDR, required=True, help="This node's client address, HOST:PORT.")
@click.option(
    "--servers",
    "servers_file",
    type=click.Path(dir_okay=False),
    help="Server list (one HOST:PORT a line); this node is the line equal to --listen. "
    "Without it the node is a one-node cluster.",
)
@click.option(
    "--memory-mb",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Budget for stored bytes; PUTs beyond it get errCode 2.",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Replication factor (the same on every node of a cluster).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
def node(
    listen: Addr, servers_file: str | None, memory_mb: int, replicas: int, log_level: str
) -> None:
    """Run one node of a cluster."""
    from ringkv.core.node import Node, NodeConfig
    from ringkv.runtime.server import serve

    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s node {listen[0]}:{listen[1]} %(message)s",
    )
    servers = [listen]
    if servers_file:
        try:
            servers = load_servers(servers_file)
        except ServerListError as exc:
            raise click.UsageError(str(exc)) from None
        if listen not in servers:
            raise click.UsageError(
                f"--listen {listen[0]}:{listen[1]} is not a line of {servers_file}"
            )
    config = NodeConfig(
        servers=tuple(servers),
        self_index=servers.index(listen),
        pid=os.getpid(),
        memory_budget=memory_mb << 20,
        replicas=replicas,
    )
    serve(Node(config), listen, gossip=len(servers) > 1)


if __name__ == "__main__":
    main()

"""What the client commands print: values and per-node tables."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table

from ringkv.client.client import AsyncClient, ClientError, ClientTimeout, Reply, describe_err
from ringkv.wire import Addr

Answer = Reply | ClientError  # ClientTimeout when a node stayed silent


def to_bytes(text: str, as_hex: bool) -> bytes:
    """A key or value from the command line: UTF-8 text, or hex digits with --hex."""
    if as_hex:
        return bytes.fromhex(text)  # ValueError names the bad digit
    return text.encode()


def show_bytes(data: bytes, as_hex: bool) -> tuple[str, bool]:
    """(text to print, whether it is hex): bytes that are not UTF-8 fall back to hex."""
    if not as_hex:
        try:
            return data.decode(), False
        except UnicodeDecodeError:
            pass
    return data.hex(), True


def ask_every_node(
    servers: Sequence[Addr], command: int, timeout: float, tries: int
) -> list[tuple[Addr, Answer]]:
    """`command` to every node of `servers` at once, each with its answer."""

    async def ask_all() -> list[Answer]:
        async with AsyncClient(list(servers), timeout, tries) as client:
            return await client.request_each(command, servers)

    return list(zip(servers, asyncio.run(ask_all()), strict=True))


def node_table(
    rows: list[tuple[Addr, Answer]], heading: str, field: Callable[[Reply], str]
) -> Table:
    table = Table(box=None, pad_edge=False)
    table.add_column("node")
    table.add_column(heading)
    for (host, port), answer in rows:
        if isinstance(answer, ClientTimeout):
            cell = f"[red]no reply after {len(answer.waits)} tries[/red]"
        elif isinstance(answer, ClientError):
            cell = f"[red]{answer}[/red]"
        elif not answer.ok:
            cell = f"[red]{describe_err(answer.err)}[/red]"
        else:
            cell = field(answer)
        table.add_row(f"{host}:{port}", cell)
    return table


def print_table(table: Table) -> None:
    Console().print(table)

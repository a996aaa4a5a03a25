"""Server lists: `servers.txt` holds one `host:port` a line, the same file on every node.

Each node also listens on `port + GOSSIP_PORT_OFFSET` for membership traffic
and on `port + PEER_PORT_OFFSET` for the rest of node-to-node traffic
(replication, forwards, transfers), so that neither queues behind a flood of
client requests: the data port itself is for clients and tools.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from ringkv.wire import Addr

GOSSIP_PORT_OFFSET = 1000
PEER_PORT_OFFSET = 2000


class ServerListError(ValueError):
    """A server list or address that does not parse; the message names the problem."""


def parse_addr(text: str) -> Addr:
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ServerListError(f"{text.strip()!r} is not HOST:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise ServerListError(f"{text.strip()!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ServerListError(f"{text.strip()!r}: port {port} is out of range 1..65535")
    return host.strip("[]"), port


def parse_servers(text: str) -> list[Addr]:
    """Parse a server list; blank lines and `#` comments are ignored."""
    servers: list[Addr] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            addr = parse_addr(line)
        except ServerListError as exc:
            raise ServerListError(f"line {number}: {exc}") from None
        if addr in servers:
            raise ServerListError(f"line {number}: {line} is listed twice")
        servers.append(addr)
    if not servers:
        raise ServerListError("the server list is empty")
    _check_derived_ports(servers)
    return servers


def _check_derived_ports(servers: list[Addr]) -> None:
    """Each server's gossip and peer ports exist and are no other server's port."""
    taken: dict[Addr, str] = {}
    for host, port in servers:
        if port + PEER_PORT_OFFSET > 65535:
            raise ServerListError(
                f"{host}:{port}: its peer port {port + PEER_PORT_OFFSET} is out of range"
                f" (ports above {65535 - PEER_PORT_OFFSET} leave no room for it)"
            )
        for offset, role in (
            (0, "data"),
            (GOSSIP_PORT_OFFSET, "gossip"),
            (PEER_PORT_OFFSET, "peer"),
        ):
            addr = (host, port + offset)
            if addr in taken:
                raise ServerListError(
                    f"{host}:{port + offset} is both {taken[addr]} and {host}:{port}'s {role} port"
                )
            taken[addr] = f"{host}:{port}'s {role} port"


def load_servers(path: str | Path) -> list[Addr]:
    """The server list in `path`, host names resolved to addresses (once, here:
    a node never resolves a name on its event loop)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ServerListError(f"cannot read server list {path}: {exc.strerror}") from None
    try:
        servers = parse_servers(text)
        resolved = [resolve_addr(addr) for addr in servers]
        if resolved != servers:  # names: check again what they stand for
            for (host, port), addr in zip(servers, resolved, strict=True):
                first = resolved.index(addr)
                if servers[first] != (host, port):
                    name = f"{servers[first][0]}:{servers[first][1]}"
                    raise ServerListError(f"{host}:{port} and {name} are both {addr[0]}:{port}")
            _check_derived_ports(resolved)
        return resolved
    except ServerListError as exc:
        raise ServerListError(f"{path}: {exc}") from None


def resolve_addr(addr: Addr) -> Addr:
    """`addr` with its host as an IP address: a name is looked up (IPv4 first)."""
    host, port = addr
    try:
        ipaddress.ip_address(host)
        return addr
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ServerListError(
            f"{host}:{port}: the name {host!r} does not resolve ({exc})"
        ) from None
    found.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(found[0][4][0]), port


def gossip_addr(addr: Addr) -> Addr:
    return addr[0], addr[1] + GOSSIP_PORT_OFFSET


def peer_addr(addr: Addr) -> Addr:
    return addr[0], addr[1] + PEER_PORT_OFFSET

"""Server lists: what parses, and what is refused with a message naming the problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ringkv.servers import ServerListError, gossip_addr, load_servers, parse_servers, peer_addr


def test_a_server_list_with_comments_and_ipv6() -> None:
    text = "# a comment\n127.0.0.1:43100\n\n[::1]:43101  # trailing\n"
    servers = parse_servers(text)
    assert servers == [("127.0.0.1", 43100), ("::1", 43101)]
    assert gossip_addr(servers[0]) == ("127.0.0.1", 44100)
    assert peer_addr(servers[0]) == ("127.0.0.1", 45100)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("127.0.0.1\n", "is not HOST:PORT"),
        ("127.0.0.1:x\n", "is not a number"),
        ("127.0.0.1:70000\n", "out of range 1..65535"),
        ("127.0.0.1:1\n127.0.0.1:1\n", "listed twice"),
        ("127.0.0.1:64000\n", "peer port 66000 is out of range"),
        # One server's gossip port is another's data port.
        (
            "10.0.0.1:5000\n10.0.0.1:6000\n",
            "10.0.0.1:6000 is both 10.0.0.1:5000's gossip port and 10.0.0.1:6000's data port",
        ),
        (
            "10.0.0.1:5000\n10.0.0.1:3000\n",
            "10.0.0.1:5000 is both 10.0.0.1:5000's data port and 10.0.0.1:3000's peer port",
        ),
    ],
)
def test_a_bad_server_list_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ServerListError, match=message):
        parse_servers(text)


def test_the_same_ports_on_different_hosts_are_fine() -> None:
    assert len(parse_servers("10.0.0.1:5000\n10.0.0.2:6000\n10.0.0.2:5500\n")) == 3


def test_host_names_are_resolved_once_when_the_list_is_read(tmp_path: Path) -> None:
    servers = tmp_path / "servers.txt"
    servers.write_text("localhost:43100\n127.0.0.1:43101\n")
    assert load_servers(servers) == [("127.0.0.1", 43100), ("127.0.0.1", 43101)]
    servers.write_text("localhost:43100\n127.0.0.1:43100\n")  # the same node twice
    same = "127.0.0.1:43100 and localhost:43100 are both 127.0.0.1:43100"
    with pytest.raises(ServerListError, match=re.escape(same)):
        load_servers(servers)
    servers.write_text("127.0.0.1:43100\nno-such-host.invalid:43101\n")
    with pytest.raises(ServerListError, match=re.escape("'no-such-host.invalid' does not resolve")):
        load_servers(servers)

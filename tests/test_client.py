"""The client library and the client commands, against a real node process and fake responders."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ringkv.cli import main
from ringkv.client import AsyncClient, Client, ClientError, ClientTimeout
from ringkv.client.local import LocalNode, free_udp_port, local_node
from ringkv.wire import Addr
from ringkv.wire.codec import Command, Err, decode_msg, encode_response


def server_arg(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"


# -- a fake server that answers from another port ------------------------------------------

Answer = Callable[[int, bytes, socket.socket, socket.socket, Addr], bool]


class Responder:
    """Receives on `addr`; `answer` decides what to send (from `other`) and when the job is done."""

    def __init__(self, answer: Answer) -> None:
        self.inbox = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.inbox.bind(("127.0.0.1", 0))
        self.inbox.settimeout(5)
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self.addr: Addr = self.inbox.getsockname()
        self.other_addr: Addr = self.other.getsockname()
        self.seen: list[bytes] = []
        self._answer = answer
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data, src = self.inbox.recvfrom(65535)
            except OSError:
                return
            message_id, _ = decode_msg(data)
            self.seen.append(message_id)
            if self._answer(len(self.seen), message_id, self.inbox, self.other, src):
                return

    def close(self) -> None:
        self._thread.join(timeout=5)
        self.inbox.close()
        self.other.close()


def noisy_answer(
    try_no: int, message_id: bytes, inbox: socket.socket, other: socket.socket, src: Addr
) -> bool:
    """Garbage, a stray reply, a bad checksum, then the real reply, all from another port."""
    good = encode_response(message_id, Err.OK, value=b"from elsewhere", version=7)
    other.sendto(b"\xff\x00 not protobuf", src)
    other.sendto(encode_response(b"someone else's id", Err.OK, value=b"stray"), src)
    other.sendto(good[:-1] + bytes([good[-1] ^ 0xFF]), src)  # checksum broken
    other.sendto(good, src)
    return True


def second_try_answer(
    try_no: int, message_id: bytes, inbox: socket.socket, other: socket.socket, src: Addr
) -> bool:
    """Drop the first try (as if lost), answer the retry."""
    if try_no == 1:
        return False
    other.sendto(encode_response(message_id, Err.OK, pid=4242), src)
    return True


def overload_answer(
    try_no: int, message_id: bytes, inbox: socket.socket, other: socket.socket, src: Addr
) -> bool:
    if try_no == 1:
        inbox.sendto(encode_response(message_id, Err.OVERLOAD, overload_wait_ms=20), src)
        return False
    inbox.sendto(encode_response(message_id, Err.OK, membership_count=5), src)
    return True


@pytest.fixture
def responder(request: pytest.FixtureRequest) -> Iterator[Responder]:
    r = Responder(request.param)
    yield r
    r.close()


# -- against a real node --------------------------------------------------------------------


def test_put_get_remove(client: Client) -> None:
    assert client.put(b"colour", b"blue", version=3).ok
    reply = client.get(b"colour")
    assert (reply.err, reply.value, reply.version) == (Err.OK, b"blue", 3)
    assert client.remove(b"colour").ok
    assert client.remove(b"colour").err == Err.NO_KEY
    assert client.get(b"colour").err == Err.NO_KEY


def test_admin_commands(client: Client, node: LocalNode) -> None:
    assert client.is_alive().ok
    assert client.pid().pid == node.proc.pid
    assert client.membership_count().membership_count == 1
    assert client.wipeout().ok


def test_retry_of_an_old_id_returns_the_cached_reply(client: Client) -> None:
    id_a, id_b = client.new_message_id(), client.new_message_id()
    assert client.request(Command.PUT, b"amo", b"A", message_id=id_a).ok
    assert client.request(Command.PUT, b"amo", b"B", message_id=id_b).ok
    assert client.request(Command.PUT, b"amo", b"A", message_id=id_a).ok  # late retry of A
    assert client.get(b"amo").value == b"B"


def test_random_front_end_uses_the_listed_servers(node: LocalNode) -> None:
    with Client([node.addr, node.addr], random_front_end=True) as c:
        assert c.put(b"rfe", b"1").ok
        assert c.get(b"rfe").value == b"1"


def test_async_clients_share_a_loop(node: LocalNode) -> None:
    async def scenario() -> list[bytes]:
        async with AsyncClient(node.addr) as one, AsyncClient([node.addr]) as two:
            await asyncio.gather(
                *(c.put(b"ak%d" % i, b"v%d" % i) for i, c in enumerate([one, two]))
            )
            replies = await asyncio.gather(one.get(b"ak1"), two.get(b"ak0"))
            return [r.value for r in replies]

    assert asyncio.run(scenario()) == [b"v1", b"v0"]


def test_shutdown_ends_the_node() -> None:
    with local_node() as running, Client(running.addr) as c:
        c.shutdown()  # the reply may or may not arrive
        assert running.proc.wait(timeout=5) == 0


# -- time-outs and odd replies ------------------------------------------------------------


def test_timeout_against_a_silent_port() -> None:
    port = free_udp_port()
    with Client(("127.0.0.1", port), timeout=0.01, tries=2) as c, pytest.raises(ClientTimeout) as e:
        c.get(b"k")
    assert isinstance(e.value, ClientError)
    assert str(e.value) == f"no reply from 127.0.0.1:{port} after 2 tries (10+20 ms)"


def test_async_timeout() -> None:
    async def scenario() -> None:
        async with AsyncClient(("127.0.0.1", free_udp_port()), timeout=0.01, tries=2) as c:
            await c.is_alive()

    with pytest.raises(ClientTimeout):
        asyncio.run(scenario())


@pytest.mark.parametrize("responder", [noisy_answer], indirect=True)
def test_reply_from_another_address_and_garbage_ignored(responder: Responder) -> None:
    with Client(responder.addr, timeout=1) as c:
        reply = c.get(b"k")
    assert (reply.value, reply.version, reply.source) == (
        b"from elsewhere",
        7,
        responder.other_addr,
    )


@pytest.mark.parametrize("responder", [noisy_answer], indirect=True)
def test_async_reply_from_another_address(responder: Responder) -> None:
    async def scenario() -> bytes:
        async with AsyncClient(responder.addr, timeout=1) as c:
            return (await c.get(b"k")).value

    assert asyncio.run(scenario()) == b"from elsewhere"


@pytest.mark.parametrize("responder", [second_try_answer], indirect=True)
def test_retry_resends_the_same_message_id(responder: Responder) -> None:
    with Client(responder.addr, timeout=0.05) as c:
        assert c.pid().pid == 4242
    assert len(responder.seen) == 2 and responder.seen[0] == responder.seen[1]


@pytest.mark.parametrize("responder", [overload_answer], indirect=True)
def test_overload_waits_then_retries(responder: Responder) -> None:
    with Client(responder.addr, timeout=1) as c:
        assert c.membership_count().membership_count == 5
    assert len(responder.seen) == 2 and responder.seen[0] == responder.seen[1]


# -- the command line ------------------------------------------------------------------------


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_put_get_rm(node: LocalNode) -> None:
    srv = server_arg(node.addr)
    assert run_cli("put", "greeting", "hello", "--version", "2", "--server", srv)[:2] == (0, "ok\n")
    assert run_cli("get", "greeting", "--show-version", "--server", srv)[:2] == (
        0,
        "hello\nversion 2\n",
    )
    assert run_cli("get", "6772656574696e67", "--hex", "--server", srv)[:2] == (0, "68656c6c6f\n")
    assert run_cli("rm", "greeting", "--server", srv)[0] == 0
    code, _, err = run_cli("get", "greeting", "--server", srv)
    assert (code, err) == (1, "error: key not found (errCode 1)\n")


def test_cli_error_codes(node: LocalNode) -> None:
    srv = server_arg(node.addr)
    code, _, err = run_cli("put", "k", "x" * 10_001, "--server", srv)
    assert (code, err) == (1, "error: invalid value: longer than 10,000 bytes (errCode 7)\n")


def test_cli_admin(node: LocalNode, tmp_path: Path) -> None:
    srv = server_arg(node.addr)
    assert run_cli("alive", "--server", srv)[:2] == (0, "alive\n")
    assert run_cli("pid", "--server", srv)[:2] == (0, f"{node.proc.pid}\n")
    assert run_cli("members", "--server", srv)[:2] == (0, "1\n")
    servers = tmp_path / "servers.txt"
    servers.write_text(f"{srv}\n127.0.0.1:{free_udp_port()}\n")
    code, out, _ = run_cli("alive", "--servers", str(servers), "--timeout", "0.01")
    assert code == 3 and "alive" in out and "no reply" in out


def test_cli_timeout_and_usage() -> None:
    port = free_udp_port()
    code, _, err = run_cli("get", "k", "--server", f"127.0.0.1:{port}", "--timeout", "0.01")
    assert (code, err) == (
        3,
        f"error: no reply from 127.0.0.1:{port} after 3 tries (10+20+40 ms)\n",
    )
    assert run_cli("get", "k", "--server", "nowhere")[0] == 2
    assert run_cli("get", "zz", "--hex")[0] == 2

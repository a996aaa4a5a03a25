"""EVALUATION.md Part 1 against a real `ringkv node` process, through the project's client.

Every stage but the timed performance runs (those are `ringkv bench`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import psutil
import pytest

from ringkv.client.client import AsyncClient, Client, ClientTimeout
from ringkv.client.local import LocalNode, local_node
from ringkv.wire.codec import Command, Err


def test_liveness(client: Client, node: LocalNode) -> None:
    assert client.is_alive().err == Err.OK
    assert client.pid().pid == node.proc.pid
    assert client.membership_count().membership_count == 1
    assert client.wipeout().err == Err.OK


@pytest.mark.parametrize("size", [8, 32, 2048, 10_000])
def test_basic_put_get(client: Client, size: int) -> None:
    key, value = os.urandom(32), os.urandom(size)
    assert client.put(key, value, version=size).err == Err.OK
    reply = client.get(key)
    assert (reply.err, reply.value, reply.version) == (Err.OK, value, size)


def test_versions(client: Client) -> None:
    key = os.urandom(8)
    client.put(key, b"one", version=1)
    assert client.get(key).version == 1
    client.put(key, b"two", version=2)
    reply = client.get(key)
    assert (reply.value, reply.version) == (b"two", 2)


def test_remove(client: Client) -> None:
    key = os.urandom(8)
    client.put(key, b"v")
    assert client.get(key).err == Err.OK
    assert client.remove(key).err == Err.OK
    assert client.get(key).err == Err.NO_KEY
    client.put(key, b"v")
    assert client.remove(key).err == Err.OK
    assert client.remove(key).err == Err.NO_KEY


def test_invalid_requests(client: Client) -> None:
    assert client.request(0x42).err == Err.BAD_COMMAND
    assert client.get(b"k" * 33).err == Err.BAD_KEY
    assert client.put(b"k", b"v" * 10_001).err == Err.BAD_VALUE


# -- at-most-once: a retry (same message ID) is answered, never re-executed ---


def test_amo_put_rem_rem(client: Client) -> None:
    key, rem = os.urandom(8), client.new_message_id()
    client.put(key, b"v")
    assert client.request(Command.REMOVE, key, message_id=rem).err == Err.OK
    assert client.request(Command.REMOVE, key, message_id=rem).err == Err.OK  # cached, not 1


def test_amo_empty_rem_rem(client: Client) -> None:
    key, rem = os.urandom(8), client.new_message_id()
    assert client.request(Command.REMOVE, key, message_id=rem).err == Err.NO_KEY
    client.put(key, b"v")
    assert client.request(Command.REMOVE, key, message_id=rem).err == Err.NO_KEY
    assert client.get(key).err == Err.OK  # the retry removed nothing


def test_amo_rem_put_rem(client: Client) -> None:
    key, rem = os.urandom(8), client.new_message_id()
    client.put(key, b"v")
    assert client.request(Command.REMOVE, key, message_id=rem).err == Err.OK
    client.put(key, b"again")
    assert client.request(Command.REMOVE, key, message_id=rem).err == Err.OK
    assert client.get(key).value == b"again"


def test_amo_many_put_retries(client: Client) -> None:
    key, put = os.urandom(8), client.new_message_id()
    assert client.request(Command.PUT, key, b"v", message_id=put).err == Err.OK
    assert client.remove(key).err == Err.OK
    for _ in range(20):
        assert client.request(Command.PUT, key, b"v", message_id=put).err == Err.OK
    assert client.remove(key).err == Err.NO_KEY  # no retry stored the value again


def test_amo_put1_put2_retry1(client: Client) -> None:
    key, first = os.urandom(8), client.new_message_id()
    client.request(Command.PUT, key, b"one", message_id=first)
    client.put(key, b"two")
    client.request(Command.PUT, key, b"one", message_id=first)
    assert client.get(key).value == b"two"


# -- capacity ------------------------------------------------------------------

CAPACITY_KEYS = 146_800


async def _put_and_read(addr: tuple[str, int], keys: range, value_of: bytes) -> list[int]:
    """PUT then GET every key with 32 concurrent clients; returns the failed key numbers."""

    async def worker(part: range) -> list[int]:
        failed = []
        async with AsyncClient(addr) as client:
            for i in part:
                key = i.to_bytes(4, "big")
                value = value_of + key
                if (await client.put(key, value)).err != Err.OK:
                    failed.append(i)
            for i in part:
                key = i.to_bytes(4, "big")
                reply = await client.get(key)
                if reply.err != Err.OK or reply.value != value_of + key:
                    failed.append(i)
        return failed

    parts = [keys[w::32] for w in range(32)]
    results = await asyncio.gather(*(worker(p) for p in parts))
    return sorted(i for r in results for i in r)


def test_capacity_146800_values_of_500_bytes(client: Client, node: LocalNode) -> None:
    client.wipeout()
    failed = asyncio.run(_put_and_read(node.addr, range(CAPACITY_KEYS), b"v" * 496))
    assert failed == []
    rss = psutil.Process(node.proc.pid).memory_info().rss
    print(f"\nresident size after {CAPACITY_KEYS} x 500 B: {rss / 2**20:.1f} MiB")
    client.wipeout()


def test_small_budget_answers_out_of_space_and_stays_up() -> None:
    with local_node(args=["--memory-mb", "2"]) as small, Client(small.addr) as client:
        errs = [client.put(i.to_bytes(4, "big"), b"x" * 1000).err for i in range(4000)]
        assert errs[0] == Err.OK
        assert Err.NO_SPACE in errs
        assert set(errs) <= {Err.OK, Err.NO_SPACE}
        assert client.is_alive().err == Err.OK
        assert client.get((0).to_bytes(4, "big")).value == b"x" * 1000
        # Freeing space makes room again.
        client.remove((0).to_bytes(4, "big"))
        assert client.put(b"new", b"x" * 500).err == Err.OK


def test_malformed_datagrams_are_dropped_and_node_answers(client: Client, node: LocalNode) -> None:
    junk = [b"", b"\x00", b"\xff" * 100, os.urandom(2000), b"\x0a\xff\xff\xff\xff\x0f"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        for i in range(2000):
            sock.sendto(junk[i % len(junk)] + os.urandom(i % 7), node.addr)
        with pytest.raises(TimeoutError):
            sock.recvfrom(65536)  # no reply to any of them
    assert client.is_alive().err == Err.OK
    assert node.proc.poll() is None


def test_shutdown_ends_the_process() -> None:
    with local_node() as doomed, Client(doomed.addr, timeout=0.05, tries=2) as client:
        client.shutdown()
        assert doomed.proc.wait(timeout=5) == 0
        with pytest.raises(ClientTimeout):
            client.is_alive()


def test_sigterm_ends_the_process_cleanly() -> None:
    with local_node() as running:
        running.proc.terminate()
        start = time.monotonic()
        assert running.proc.wait(timeout=5) == 0
        assert time.monotonic() - start < 5

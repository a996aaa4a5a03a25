"""Load shedding with a real node process: requests that waited in the kernel's
queue past SHED_AGE are answered with OVERLOAD (errCode 3), not executed."""

from __future__ import annotations

import os
import signal
import socket
import time

from ringkv.client.client import Client
from ringkv.client.local import local_node
from ringkv.core.node import SHED_AGE, STALE_REQUEST_AGE
from ringkv.wire.codec import Command, Err, decode_msg, decode_response, encode_request

QUEUED = 40


def test_requests_queued_while_the_node_was_stopped_are_answered_overload() -> None:
    with local_node() as node, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5.0)
        ids = [f"shed-{i:011d}".encode() for i in range(QUEUED)]
        os.kill(node.proc.pid, signal.SIGSTOP)
        try:
            for i, message_id in enumerate(ids):
                sock.sendto(encode_request(message_id, Command.PUT, b"k%d" % i, b"v"), node.addr)
            # Past SHED_AGE, short of the age at which requests are dropped unanswered.
            time.sleep((SHED_AGE + STALE_REQUEST_AGE) / 2)
        finally:
            os.kill(node.proc.pid, signal.SIGCONT)
        replies = {}
        for _ in ids:
            got_id, payload = decode_msg(sock.recv(65_535))
            replies[got_id] = decode_response(payload)
        assert set(replies) == set(ids)
        for reply in replies.values():
            assert reply.errCode == Err.OVERLOAD
            assert reply.overloadWaitTime >= SHED_AGE * 1000
        with Client(node.addr) as client:
            assert [client.get(b"k%d" % i).err for i in range(QUEUED)] == [Err.NO_KEY] * QUEUED
            assert client.put(b"k0", b"after").err == Err.OK
            assert client.get(b"k0").value == b"after"

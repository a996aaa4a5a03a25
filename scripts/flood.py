"""An open-loop client flood at one node of a running cluster, and what it did there.

    .venv/bin/python scripts/flood.py SERVERS_FILE KEY_FILE|- NODE RATE SECONDS

Sends RATE requests a second for SECONDS to node NODE of the server list
(half PUTs of a new random 32-byte key with a 500-byte value, half GETs of a
key put earlier), each with its own message ID and never retried: unlike a
closed-loop load (kvload, `ringkv bench`), the rate does not fall when the
node falls behind. Then it prints, as JSON:

- replies by errCode and the requests that got none;
- what the cluster's STATUS says changed meanwhile: deaths and suspicions
  summed over every node (a client flood must cause neither), the smallest
  membership count, and the flooded node's `shed` and `stale` counters;
- the flooded node's resident size before and after, and its budget;
- how many client requests the flooded node read (`requests_read`): the
  rest of what was sent was dropped by the kernel, its queue full, before
  the node could see it.

KEY_FILE is the cluster key (`-` for an --insecure cluster). The flooder is
one Python process: on a 2-core machine it takes a core the cluster does not
get, so measure the node's capacity the same way (kvload at that node alone)
in the same sitting, and flood at a multiple of it.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import socket
import sys
import time
from collections import Counter

import psutil

from ringkv.runtime.cluster import query_status
from ringkv.servers import load_servers
from ringkv.wire.codec import Command, WireError, decode_msg, decode_response, encode_request
from ringkv.wire.seal import load_keyring

LATE = 1.5  # seconds after the last send that replies are still counted
STEP = 0.002  # seconds between bursts


def cluster_facts(servers, keyring, node):
    statuses = query_status(servers, timeout=1.0, keyring=keyring)
    flooded = statuses.get(node, {})
    rss = None
    if "pid" in flooded:
        try:
            rss = psutil.Process(int(flooded["pid"])).memory_info().rss
        except psutil.Error:
            pass
    return {
        "answering": len(statuses),
        "deaths": sum(s.get("deaths", 0) for s in statuses.values()),
        "suspicions": sum(s.get("suspicions", 0) for s in statuses.values()),
        "min_count": min((s.get("count", 0) for s in statuses.values()), default=0),
        "shed": flooded.get("shed", 0),
        "requests": flooded.get("requests", 0),
        "stale": flooded.get("stale", 0),
        "budget": flooded.get("budget"),
        "rss": rss,
    }


def requests(rng, count):
    """Half PUTs of new keys, half GETs of keys put earlier in the list; all made
    before the flood begins, so that making them does not slow the sender."""
    keys, made = [], []
    for i in range(count):
        message_id = rng.randbytes(16)
        if i % 2 == 0 or not keys:
            key = rng.randbytes(32)
            keys.append(key)
            made.append(encode_request(message_id, Command.PUT, key, rng.randbytes(500)))
        else:
            made.append(encode_request(message_id, Command.GET, rng.choice(keys)))
    return made


def receive(sock, until, results):
    """The receiving half (a process of its own): the first reply to each message
    ID, by errCode, until the monotonic clock reaches `until`."""
    replies: Counter[str] = Counter()
    answered = set()
    sock.settimeout(0.05)
    while time.monotonic() < until:
        try:
            data = sock.recv(65_535)
        except (TimeoutError, InterruptedError):
            continue
        except OSError:
            continue
        try:
            message_id, payload = decode_msg(data)
            err = decode_response(payload).errCode
        except WireError:
            replies["undecodable"] += 1
            continue
        if message_id not in answered:
            answered.add(message_id)
            replies[str(err)] += 1
    results.send((dict(replies), len(answered)))


def flood(target, rate, seconds, rng):
    made = requests(rng, int(rate * seconds))
    send_dropped = sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        # Room for the replies that arrive in bursts (FORCE: as root, past
        # net.core.rmem_max), so that the flooder, not the node, loses none.
        force = getattr(socket, "SO_RCVBUFFORCE", None)
        try:
            sock.setsockopt(socket.SOL_SOCKET, force or socket.SO_RCVBUF, 64 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        began = time.monotonic()
        ours, theirs = multiprocessing.get_context("fork").Pipe()
        receiver = multiprocessing.get_context("fork").Process(
            target=receive, args=(sock, began + seconds + LATE, theirs)
        )
        receiver.start()
        end = began + seconds
        sendto = sock.sendto
        while (now := time.monotonic()) < end and sent < len(made):
            due = min(int((now - began) * rate), len(made))
            for data in made[sent:due]:
                try:
                    sendto(data, target)
                except (BlockingIOError, InterruptedError):
                    send_dropped += 1
            sent = max(sent, due)
            time.sleep(STEP)
        took = time.monotonic() - began
        replies, answered = ours.recv()
        receiver.join()
    return {
        "sent": sent,
        "sent_per_s": round(sent / took),
        "send_dropped": send_dropped,
        "replies_by_errcode": replies,
        "unanswered": sent - answered,
    }


def main() -> None:
    servers_file, key_file, node, rate, seconds = sys.argv[1:6]
    servers = load_servers(servers_file)
    keyring = None if key_file == "-" else load_keyring(key_file)
    index = int(node)
    before = cluster_facts(servers, keyring, index)
    result = flood(servers[index], float(rate), float(seconds), random.Random(7))
    after = cluster_facts(servers, keyring, index)
    result["cluster"] = {
        "deaths": after["deaths"] - before["deaths"],
        "suspicions": after["suspicions"] - before["suspicions"],
        "min_count_after": after["min_count"],
        "answering_after": after["answering"],
        "nodes": len(servers),
    }
    result["flooded_node"] = {
        "requests_read": after["requests"] - before["requests"],
        "shed": after["shed"] - before["shed"],
        "stale": after["stale"] - before["stale"],
        "rss_before": before["rss"],
        "rss_after": after["rss"],
        "budget": after["budget"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

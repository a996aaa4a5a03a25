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
- the flooded node's resident size before and after, and its budget.

KEY_FILE is the cluster key (`-` for an --insecure cluster). The flooder is
one Python process: on a 2-core machine it takes a core the cluster does not
get, so measure the node's capacity the same way (kvload at that node alone)
in the same sitting, and flood at a multiple of it.
"""

from __future__ import annotations

import json
import os
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
        "stale": flooded.get("stale", 0),
        "budget": flooded.get("budget"),
        "rss": rss,
    }


def requests(rng, count):
    """Half PUTs of new keys, half GETs of keys put earlier in the list."""
    keys = []
    for i in range(count):
        message_id = os.urandom(16)
        if i % 2 == 0 or not keys:
            key = rng.randbytes(32)
            keys.append(key)
            yield encode_request(message_id, Command.PUT, key, rng.randbytes(500))
        else:
            yield encode_request(message_id, Command.GET, rng.choice(keys))


def flood(target, rate, seconds, rng):
    replies: Counter[str] = Counter()
    answered = set()
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        sock.setblocking(False)

        def drain():
            while True:
                try:
                    data = sock.recv(65_535)
                except (BlockingIOError, InterruptedError):
                    return
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

        made = requests(rng, int(rate * seconds))
        began = time.monotonic()
        end = began + seconds
        while (now := time.monotonic()) < end:
            due = int((now - began) * rate) - sent
            for data in (next(made, None) for _ in range(due)):
                if data is None:
                    break
                try:
                    sock.sendto(data, target)
                except (BlockingIOError, InterruptedError):
                    replies["send_dropped"] += 1
                sent += 1
            drain()
            time.sleep(STEP)
        late = time.monotonic() + LATE
        while time.monotonic() < late:
            drain()
            time.sleep(STEP)
        took = time.monotonic() - began - LATE
    return {
        "sent": sent,
        "sent_per_s": round(sent / took),
        "replies_by_errcode": dict(replies),
        "unanswered": sent - len(answered),
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
        "shed": after["shed"] - before["shed"],
        "stale": after["stale"] - before["stale"],
        "rss_before": before["rss"],
        "rss_after": after["rss"],
        "budget": after["budget"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""The client side of tests/test_netns.py, run inside the client's namespace:

    python tests/netns_client.py counts SERVERS_FILE      membership count of every node
    python tests/netns_client.py putget SERVERS_FILE TAG  PUT then GET a key through every node

Prints one JSON object; a node that does not answer shows as null.
"""

from __future__ import annotations

import json
import sys

from ringkv.client.client import Client, ClientError
from ringkv.servers import load_servers


def counts(servers: list[tuple[str, int]]) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for host, port in servers:
        with Client((host, port), timeout=0.2, tries=2) as client:
            try:
                found[f"{host}:{port}"] = client.membership_count().membership_count
            except ClientError:
                found[f"{host}:{port}"] = None
    return found


def putget(servers: list[tuple[str, int]], tag: str) -> dict[str, object]:
    wrong = []
    for i, (host, port) in enumerate(servers):
        key, value = f"{tag}-{i}".encode(), f"value {tag} {i} via {host}:{port}".encode()
        with Client((host, port), timeout=0.3, tries=3) as client:
            if client.put(key, value).err != 0:
                wrong.append(f"PUT via {host}:{port}")
        reader = servers[(i + 1) % len(servers)]  # read it back through another node
        with Client(reader, timeout=0.3, tries=3) as client:
            if client.get(key).value != value:
                wrong.append(f"GET via {reader[0]}:{reader[1]}")
    return {"keys": len(servers), "wrong": wrong}


if __name__ == "__main__":
    command, servers = sys.argv[1], load_servers(sys.argv[2])
    result = counts(servers) if command == "counts" else putget(servers, sys.argv[3])
    print(json.dumps(result))

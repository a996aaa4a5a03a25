"""The work one node of 10 does per message, for counting instructions.

    python scripts/hot_path.py OPS KIND [--time]     KIND: get | put | forward | replicate

get: a GET it answers as the key's tail; put: a PUT it leads as head, and the
ACK that ends it; forward: a GET it passes on as a front end outside the
chain; replicate: a REPLICATE it applies and passes on as a middle member,
and its ACK. Works on older commits too (run it with PYTHONPATH=THAT_TREE).
scripts/instructions.sh turns it into instructions per message (callgrind);
--time prints the microseconds per message instead (PYTHONPATH=build/native for
the native build).
"""

import sys
import time

from ringkv.core.node import Node, NodeConfig
from ringkv.wire import peer
from ringkv.wire.codec import Command, encode_request

ops, kind = int(sys.argv[1]), sys.argv[2]
servers = tuple(("127.0.0.1", 40000 + i) for i in range(10))
node = Node(NodeConfig(servers=servers, self_index=0))
r = node.replication


def feed(data, src, now):
    """A datagram from `src` (a server-list address, or a client), on the port it
    would reach: peer messages on the peer port, where the node has one."""
    if peer.is_peer(data) and hasattr(node, "on_peer_datagram"):
        from ringkv.servers import peer_addr

        return node.on_peer_datagram(data, peer_addr(src), now)
    return node.on_datagram(data, src, now)

ring = node.ring
alive = frozenset(range(10))


def chain(k):
    return ring.chain(k, alive, 3)


sent = node.on_tick(0.6).data
for _ in range(50):
    new = []
    for data, addr in sent:
        if data[2] == peer.SYNC_REQUEST:
            if hasattr(peer, "decode"):
                rid = peer.decode(data, peer.PeerLimits(10, ring.slots)).request_id
            else:  # before messages were typed
                rid = peer.decode_sync_request(data)[0]
            asked = servers[addr[1] % 1000]  # by its data port, or its peer port
            new += feed(peer.encode_sync_batches(rid, [])[-1], asked, 0.7)
    sent = new
    if not sent:
        break
assert r.unsynced_slots() == 0
keys = [b"k%d" % i for i in range(20000)]
tail = [k for k in keys if chain(k)[-1] == 0][:100]
head = [k for k in keys if chain(k)[0] == 0][:100]
middle = [k for k in keys if chain(k)[1] == 0][:100]
outside = [k for k in keys if 0 not in chain(k)][:100]
client = ("127.0.0.1", 5555)
if kind == "get":
    msgs = [(encode_request(b"g%015d" % i, Command.GET, tail[i % 100]), client) for i in range(ops)]
elif kind == "put":
    msgs = []
    for i in range(ops):
        mid = b"p%015d" % i
        msgs.append((encode_request(mid, Command.PUT, head[i % 100], b"v" * 500), client))
        msgs.append((peer.encode_ack(mid), servers[2]))
elif kind == "forward":
    msgs = [
        (encode_request(b"f%015d" % i, Command.GET, outside[i % 100]), client) for i in range(ops)
    ]
else:
    W = peer.Write
    msgs = []
    for i in range(ops):
        k = middle[i % 100]
        c = chain(k)
        w = W(b"r%015d" % i, client, 0, k, b"v" * 500, 1, (i + 1) << 12 | c[0], (c[0],), c)
        msgs.append((peer.encode_replicate(w), servers[c[0]]))
        msgs.append((peer.encode_ack(b"r%015d" % i), servers[c[2]]))
began = time.perf_counter()
for data, src in msgs:
    feed(data, src, 1.0)
if "--time" in sys.argv[3:]:
    print(f"{kind} {1e6 * (time.perf_counter() - began) / max(ops, 1):.1f} us per message")

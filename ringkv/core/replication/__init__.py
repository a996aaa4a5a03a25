"""Chain replication over the ring, and key transfer when membership changes.

Roles come from each node's own view of the ring (`view.ChainView`): for a
key's chain (head ... tail), the head orders writes, every member applies
them in turn, and the tail answers the client and acknowledges to every node
that applied the write (`chain.ChainWrites`).

Views differ for a moment after every change, and a node that has not yet
seen a change acts on the old chain. These rules keep such a node from
serving a stale read: a write carries every node some member on its path
meant it for; for `linger` seconds after a node returns, the live node it
pushed out of a chain gets every write as well; the tail never leads a
write (it would expose it before the others have it); only a member of the
key's chain serves a read (and one that is not the tail in its view none of
a key with a write still on its way down); and a node whose ticks ran late
serves none as the tail until a member has sent it the current view
(`in_doubt`: the others may have suspected it and routed writes around it).

Key transfer is by ring slot (`transfers.TransferQueue`). What this node
knows of each slot's copy is one `slots.SlotState`, whose phase (SERVING,
PULLING, HELD) decides what it may serve; `slots.py` lists every transition.
A node that becomes a member of a slot's chain pulls the slot from every
other member and, until all have answered, does not serve it: reads go to
its predecessor and writes to its successor, which act for it. A member that
does not yet count the puller in the chain says so, and the slot is pulled
from it again later. A node that held its slots all along and only may have
missed writes (it was paused or suspected) asks just for what was stamped
since, and asks the node that stood in for it as well. The head of a
changed chain asks its new members to pull at once (a HANDOFF hint). After
every view change, once views have had time to agree, each node pulls the
slots whose chain changed once more (the settling pull), and hands off the
keys of slots it is no longer a member of (`handoff.Handoffs`).

A source says which of the requested slots it is not sure of. A node whose
pull got no answer from a source sure of the slot (every copy of it was
away at once) holds the slot: it serves what was written since it took the
slot over, and neither reads nor removes older keys, which get no answer,
so the client times out rather than reading a key as absent or old. It
vouches for the members that left the chain while it was unsure of the
slot when they return: their copy from when they left and its own are whole
together, if theirs was.

Timers and sizes are in `config.ReplicationConfig`.
"""

from ringkv.core.replication.config import ReplicationConfig
from ringkv.core.replication.replica import Replication
from ringkv.core.replication.slots import NO_FLOOR, InvariantError, Phase, SlotState
from ringkv.core.replication.stats import ReplicationStats
from ringkv.core.replication.transfers import Transfer

__all__ = [
    "NO_FLOOR",
    "InvariantError",
    "Phase",
    "Replication",
    "ReplicationConfig",
    "ReplicationStats",
    "SlotState",
    "Transfer",
]

"""A node's data directory: its store kept in LMDB, committed before anything is sent.

The store in memory stays the one the node serves from; the data directory
is its durable copy. After each wake-up (a batch of datagrams, or a tick)
the runtime takes what the store changed (`Node.take_changes`) and commits
it in one LMDB transaction *before* it sends the replies, forwards and
acknowledgements of that wake-up. So a write is on disk at a chain member
before the member passes it on, and at the tail before the client hears OK:
one commit holds every write of a wake-up (group commit).

Durability modes (`--durability`):

- `fsync`: every commit is synced to the disk before the sends. An
  acknowledged write survives the process and the machine (power loss).
- `flush`: every commit reaches the operating system before the sends (a
  killed process loses nothing), and the disk is synced every
  `FLUSH_INTERVAL`: a machine crash loses at most about that much. LMDB
  without sync keeps its transactions atomic on file systems that keep
  write order (ext4's default); on others a power loss may damage the file.

Entries are stored as the store packs them (stamp, version, value; a
tombstone is its stamp alone), under their key. The `meta` table names the
format and the node the directory belongs to: a directory made for another
node, another server list or another format is refused, never served.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from ringkv.core.node import Node
from ringkv.core.storage import CorruptEntry
from ringkv.wire import Addr

FORMAT = b"ringkv-data-1"
FLUSH_INTERVAL = 1.0  # seconds between disk syncs under `flush`
DISK_SHARE = 2  # the store may take 1/DISK_SHARE of --max-disk-bytes: LMDB's pages and
# copy-on-write room take the rest (a PUT beyond it is refused with errCode 2)


class DataDirError(RuntimeError):
    """The data directory cannot be used: foreign, damaged, or not writable."""


@dataclass(frozen=True)
class Identity:
    """Whose directory this is: one node's line of one server list."""

    servers: tuple[Addr, ...]
    index: int

    def fingerprint(self) -> bytes:
        listed = "\n".join(f"{h}:{p}" for h, p in self.servers).encode()
        return hashlib.sha256(listed).hexdigest()[:16].encode()

    def describe(self) -> bytes:
        host, port = self.servers[self.index]
        return b"node %d (%s:%d) of server list %s" % (
            self.index, host.encode(), port, self.fingerprint(),
        )  # fmt: skip


class DataDir:
    """LMDB environment with two tables: `entries` (key -> packed entry) and `meta`."""

    def __init__(self, path: Path, mode: str, identity: Identity, max_bytes: int) -> None:
        if mode not in ("flush", "fsync"):
            raise ValueError(f"durability {mode!r} keeps no data directory")
        self.path = path
        self.mode = mode
        self.max_bytes = max_bytes
        self.commits = 0
        self.committed_keys = 0
        self._synced = time.monotonic()
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._env = lmdb.open(
                str(path), map_size=max_bytes, max_dbs=2, sync=mode == "fsync",
                metasync=mode == "fsync", readahead=False, lock=True,
            )  # fmt: skip
        except (OSError, lmdb.Error) as exc:
            raise DataDirError(f"{path}: cannot open as a data directory ({exc})") from None
        self._entries = self._env.open_db(b"entries")
        self._meta = self._env.open_db(b"meta")
        self._claim(identity)

    def _claim(self, identity: Identity) -> None:
        """Write who this directory belongs to the first time; refuse it to anyone else."""
        wanted = {b"format": FORMAT, b"node": identity.describe()}
        with self._env.begin(write=True, db=self._meta) as txn:
            found = {k: txn.get(k) for k in wanted}
            if all(v is None for v in found.values()):
                if txn.stat(self._entries)["entries"]:
                    raise DataDirError(f"{self.path}: entries without a label: not ours")
                for k, v in wanted.items():
                    txn.put(k, v)
                return
        for k, v in wanted.items():
            if found[k] != v:
                shown = (found[k] or b"nothing").decode(errors="replace")
                raise DataDirError(
                    f"{self.path}: {k.decode()} is {shown!r}, this node is "
                    f"{v.decode()!r}: the directory belongs to another node or cluster "
                    "(give this node an empty --data-dir)"
                )

    def entries(self) -> Iterator[tuple[bytes, bytes]]:
        """Every stored (key, packed entry), in key order."""
        with self._env.begin(db=self._entries, buffers=False) as txn:
            yield from txn.cursor().iternext()

    def commit(self, wiped: bool, changes: dict[bytes, bytes | None]) -> None:
        """Make these changes durable (as the mode has it) in one transaction."""
        if not wiped and not changes:
            return
        try:
            with self._env.begin(write=True, db=self._entries) as txn:
                if wiped:
                    txn.drop(self._entries, delete=False)
                for key, packed in changes.items():
                    if packed is None:
                        txn.delete(key)
                    else:
                        txn.put(key, packed)
        except lmdb.Error as exc:
            raise DataDirError(f"{self.path}: commit failed ({exc})") from None
        self.commits += 1
        self.committed_keys += len(changes)

    def sync_due(self, now: float) -> None:
        """Under `flush`, sync the disk once FLUSH_INTERVAL has passed since the last."""
        if self.mode == "flush" and now - self._synced >= FLUSH_INTERVAL:
            self._synced = now
            self._env.sync(True)

    def used_bytes(self) -> int:
        info, stat = self._env.info(), self._env.stat()
        return int((info["last_pgno"] + 1) * stat["psize"])

    def close(self) -> None:
        self._env.sync(True)
        self._env.close()


def restore_into(node: Node, data_dir: DataDir, now: float) -> str:
    """Load the directory's store into a new node; what was loaded, in words."""
    started = time.monotonic()
    try:
        node.restore(data_dir.entries(), now)
    except CorruptEntry as exc:
        raise DataDirError(f"{data_dir.path}: damaged entry: {exc}") from None
    except MemoryError as exc:
        raise DataDirError(f"{data_dir.path}: does not fit --memory-mb: {exc}") from None
    store = node.storage
    took = time.monotonic() - started
    return (
        f"restored {store.live:,} keys ({store.used:,} bytes with tombstones) from "
        f"{data_dir.path} in {took:.2f} s; durability {data_dir.mode}"
    )

"""Sealed cluster datagrams: MAC, addressing, replay windows, keyrings, and a node behind them."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringkv.core.node import Node, NodeConfig
from ringkv.runtime.cluster import KEY_FILE, LocalCluster
from ringkv.servers import peer_addr
from ringkv.wire import gossip, peer
from ringkv.wire.codec import Command, Err, encode_request
from ringkv.wire.peer import Write
from ringkv.wire.seal import (
    OPERATOR,
    WINDOW,
    Channel,
    Keyring,
    KeyringError,
    Refused,
    Sealer,
    load_keyring,
    save_keyring,
)

KEYS = Keyring((b"A" * 32, b"B" * 32))
DATA, GOSSIP = Channel.DATA, Channel.GOSSIP


def pair(keys: Keyring = KEYS, boot: int = 1) -> tuple[Sealer, Sealer]:
    """Node 0 sealing for node 1."""
    return Sealer(keys, 0, boot), Sealer(keys, 1, 7)


def test_a_sealed_datagram_opens_to_its_sender_and_payload() -> None:
    a, b = pair()
    assert b.open(a.seal(b"RKpayload", 1, DATA), DATA) == (0, b"RKpayload")


@given(st.binary(max_size=200), st.data())
def test_any_changed_byte_is_refused_before_parsing(payload: bytes, data: st.DataObject) -> None:
    a, b = pair()
    sealed = bytearray(a.seal(payload, 1, DATA))
    at = data.draw(st.integers(0, len(sealed) - 1))
    sealed[at] ^= data.draw(st.integers(1, 255))
    assert isinstance(b.open(bytes(sealed), DATA), Refused)


@given(st.binary(max_size=100))
def test_bytes_that_are_not_sealed_are_refused(data: bytes) -> None:
    _, b = pair()
    assert isinstance(b.open(data, DATA), Refused)


def test_a_datagram_sealed_with_another_key_is_refused() -> None:
    stranger = Sealer(Keyring((b"X" * 32,)), 0, 1)
    _, b = pair()
    assert b.open(stranger.seal(b"RK", 1, DATA), DATA) is Refused.UNKNOWN_KEY


def test_a_datagram_for_another_node_or_port_is_refused() -> None:
    a, b = pair()
    assert b.open(a.seal(b"RK", 2, DATA), DATA) is Refused.MISADDRESSED
    assert b.open(a.seal(b"RK", 1, GOSSIP), DATA) is Refused.MISADDRESSED


def test_a_replayed_datagram_is_refused() -> None:
    a, b = pair()
    sealed = a.seal(b"RK", 1, DATA)
    assert b.open(sealed, DATA) == (0, b"RK")
    assert b.open(sealed, DATA) is Refused.REPLAYED
    assert b.refused[Refused.REPLAYED] == 1


def test_late_datagrams_within_the_window_open_once_and_older_ones_never() -> None:
    a, b = pair()
    sent = [a.seal(bytes((i % 256,)), 1, DATA) for i in range(WINDOW + 10)]
    assert b.open(sent[-1], DATA) != Refused.REPLAYED
    # Counter 9 is exactly WINDOW behind the newest: out of the window.
    assert b.open(sent[9], DATA) is Refused.REPLAYED
    assert b.open(sent[10], DATA) == (0, bytes((10,)))
    assert b.open(sent[10], DATA) is Refused.REPLAYED
    assert b.open(sent[500], DATA) == (0, bytes((500 % 256,)))


def test_a_datagram_from_an_earlier_life_of_the_sender_is_refused() -> None:
    old, b = pair(boot=1)
    new = Sealer(KEYS, 0, 2)
    from_old_life = old.seal(b"old", 1, DATA)
    assert b.open(new.seal(b"new", 1, DATA), DATA) == (0, b"new")
    assert b.open(from_old_life, DATA) is Refused.REPLAYED


def test_every_key_of_the_ring_opens_and_the_first_seals() -> None:
    # Rotation: add B everywhere, seal with B, retire A.
    only_a = Keyring((b"A" * 32,))
    both = only_a.with_new_key()
    b_first = both.newest_first()
    assert b_first.keys == (both.keys[1], both.keys[0])
    assert b_first.primary_only().keys == (both.keys[1],)
    sender, receiver = Sealer(only_a, 0, 1), Sealer(both, 1, 1)
    assert receiver.open(sender.seal(b"1", 1, DATA), DATA) == (0, b"1")
    sender.set_keyring(b_first)
    assert receiver.open(sender.seal(b"2", 1, DATA), DATA) == (0, b"2")
    receiver.set_keyring(b_first.primary_only())
    assert receiver.open(Sealer(only_a, 0, 3).seal(b"3", 1, DATA), DATA) is Refused.UNKNOWN_KEY


def test_key_files_round_trip_readable_by_the_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    keyring = Keyring.generate().with_new_key()
    save_keyring(path, keyring)
    assert load_keyring(path) == keyring
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeyringError, match="exists"):
        save_keyring(path, keyring, replace=False)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "no key"), ("zz\n", "line 1: not a hexadecimal key"), ("abcd\n", "32 bytes, not 2")],
)
def test_bad_key_files_name_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "k"
    path.write_text(text)
    with pytest.raises(KeyringError, match=problem):
        load_keyring(path)


# -- a node behind the seal ------------------------------------------------------

SERVERS = (("127.0.0.1", 43100), ("127.0.0.1", 43101), ("127.0.0.1", 43102))
PEERS = tuple(peer_addr(addr) for addr in SERVERS)  # where peer datagrams come from
CLIENT = ("127.0.0.1", 5555)


def sealed_node(index: int = 1, keys: Keyring = KEYS) -> Node:
    return Node(NodeConfig(servers=SERVERS, self_index=index, keyring=keys, boot=5))


def forged_write(key: bytes) -> bytes:
    write = Write(b"m" * 16, CLIENT, Err.OK, key, b"forged", 1, 5 << 12, (0,))
    return peer.encode_replicate(write)


def test_a_keyed_node_drops_unsealed_and_foreign_peer_datagrams() -> None:
    node = sealed_node()
    stranger = Sealer(Keyring((b"X" * 32,)), 0, 1)
    node.on_peer_datagram(forged_write(b"k"), PEERS[0], 0.0)
    node.on_peer_datagram(stranger.seal(forged_write(b"k"), 1, DATA), PEERS[0], 0.0)
    assert node.stats.unauthenticated == 2
    assert node.storage.get(b"k") is None


def test_a_sealed_datagram_from_another_address_than_its_senders_is_dropped() -> None:
    node = sealed_node()
    member = Sealer(KEYS, 0, 1)
    node.on_peer_datagram(member.seal(forged_write(b"k"), 1, DATA), PEERS[2], 0.0)
    assert node.stats.unauthenticated == 1
    assert node.storage.get(b"k") is None
    # From the member's data port, or to this node's data port: not peer traffic.
    node.on_peer_datagram(member.seal(forged_write(b"k"), 1, DATA), SERVERS[0], 0.0)
    node.on_datagram(member.seal(forged_write(b"k"), 1, DATA), PEERS[0], 0.0)
    assert node.stats.unauthenticated == 3
    assert node.storage.get(b"k") is None
    node.on_peer_datagram(member.seal(forged_write(b"k"), 1, DATA), PEERS[0], 0.0)
    assert node.stats.unauthenticated == 3
    assert node.storage.get(b"k") is not None  # the member's own write is applied


def test_gossip_sealed_with_another_key_cannot_change_a_view() -> None:
    node = sealed_node()
    assert node.membership is not None
    verdict = gossip.encode(
        gossip.GossipMsg(gossip.PING, 0, 0, 1, 0, (gossip.Entry(2, gossip.DEAD, 9, 0),))
    )
    stranger = Sealer(Keyring((b"X" * 32,)), 0, 1)
    gossip_of_0 = ("127.0.0.1", 44100)
    node.on_gossip(verdict, gossip_of_0, 0.0)
    node.on_gossip(stranger.seal(verdict, 1, GOSSIP), gossip_of_0, 0.0)
    assert node.membership.state_of(2) == "alive"
    # Sealed by node 0 but naming node 2 as its sender: refused too.
    member_0 = Sealer(KEYS, 0, 1)
    impostor = gossip.encode(
        gossip.GossipMsg(gossip.PING, 2, 0, 1, 0, (gossip.Entry(2, gossip.DEAD, 9, 2),))
    )
    node.on_gossip(member_0.seal(impostor, 1, GOSSIP), gossip_of_0, 0.0)
    assert node.membership.state_of(2) == "alive"
    node.on_gossip(member_0.seal(verdict, 1, GOSSIP), gossip_of_0, 0.0)
    assert node.membership.state_of(2) == "dead"  # the same verdict, from the key's holder


def test_the_operator_may_ask_for_status_and_nothing_else() -> None:
    node = sealed_node()
    tool = Sealer(KEYS, OPERATOR, 1)
    tool_addr = ("127.0.0.1", 6000)
    assert node.on_datagram(peer.encode_status_request(b"tok"), tool_addr, 0.0) == []
    [(reply, to)] = node.on_datagram(
        tool.seal(peer.encode_status_request(b"tok"), 1, DATA), tool_addr, 0.0
    )
    token, status = peer.decode_status_reply(tool.open_reply(reply) or b"")
    assert (to, token, status["index"]) == (tool_addr, b"tok", 1)
    assert node.on_datagram(tool.seal(forged_write(b"k"), 1, DATA), tool_addr, 0.0) == []
    assert node.storage.get(b"k") is None


def test_what_a_keyed_node_sends_to_members_is_sealed_and_clients_get_plain_replies() -> None:
    node = sealed_node(index=0)
    request = encode_request(b"q" * 16, Command.PUT, b"somekey", b"v", 0)
    sends = node.on_tick(0.0).gossip + node.on_datagram(request, CLIENT, 0.0)
    for data, dest in sends:
        if dest == CLIENT:
            assert not data.startswith((peer.MAGIC, b"RS"))
        else:
            assert data.startswith(b"RS"), dest
    assert any(dest != CLIENT for _, dest in sends)


def test_a_multi_node_node_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    servers = tmp_path / "servers.txt"
    servers.write_text("127.0.0.1:43100\n127.0.0.1:43101\n")
    run = subprocess.run(
        [sys.executable, "-m", "ringkv", "node", "--listen", "127.0.0.1:43100",
         "--servers", str(servers)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "--cluster-key" in run.stderr and "--insecure" in run.stderr


def test_keygen_writes_a_private_key_file_and_never_overwrites_one(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    command = [sys.executable, "-m", "ringkv", "keygen", str(path)]
    assert subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    first = load_keyring(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr
    assert load_keyring(path) == first


def test_an_insecure_local_cluster_leaves_no_key_the_tools_would_seal_with(
    tmp_path: Path,
) -> None:
    servers = [("127.0.0.1", 43100), ("127.0.0.1", 43101)]
    keyed = LocalCluster.create(servers, tmp_path)
    assert keyed.key_file is not None and keyed.key_file.exists()
    insecure = LocalCluster.create(servers, tmp_path, insecure=True)
    assert insecure.key_file is None and insecure.keyring is None
    assert not (tmp_path / KEY_FILE).exists()  # `cluster status --dir` finds no stale key

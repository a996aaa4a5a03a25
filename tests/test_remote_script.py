"""scripts/remote-cluster, with `ssh` replaced by a shim that runs the remote command here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ringkv.client.local import free_udp_port
from ringkv.runtime.cluster import query_status
from ringkv.wire.seal import Keyring, load_keyring, save_keyring

ROOT = Path(__file__).resolve().parent.parent


def _run(action: str, env: dict[str, str], *files: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "remote-cluster"), action, *map(str, files)],
        check=True, env=env, timeout=60,
    )  # fmt: skip


def test_start_and_stop_nodes_of_a_server_list(tmp_path: Path) -> None:
    # The "remote" checkout: a folder whose .venv/bin/ringkv is this environment's.
    remote = tmp_path / "remote"
    (remote / ".venv" / "bin").mkdir(parents=True)
    (remote / ".venv" / "bin" / "ringkv").symlink_to(Path(sys.executable).parent / "ringkv")
    shim = tmp_path / "fake-ssh"
    shim.write_text('#!/usr/bin/env bash\nshift\nexec bash -c "$*"\n')  # drop the host
    shim.chmod(0o755)
    port = free_udp_port()
    servers = [("127.0.0.1", port), ("127.0.0.2", port), ("127.0.0.3", port)]
    server_file = tmp_path / "servers.txt"
    server_file.write_text("".join(f"{h}:{p}\n" for h, p in servers))
    key_file = tmp_path / "cluster.key"
    save_keyring(key_file, Keyring.generate())
    keyring = load_keyring(key_file)
    env = {**os.environ, "SSH": str(shim), "RINGKV_DIR": str(remote)}

    _run("start", env, server_file, key_file)
    try:
        deadline = time.monotonic() + 30
        while len(query_status(servers, None, 0.3, keyring)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        statuses = query_status(servers, None, 0.5, keyring)
        assert sorted(statuses) == [0, 1, 2]
        assert query_status(servers, timeout=0.5) == {}  # without the key: no answer
        assert (remote / ".ringkv" / "servers.txt").read_text() == server_file.read_text()
        copied = remote / ".ringkv" / "cluster.key"
        assert load_keyring(copied) == keyring and copied.stat().st_mode & 0o077 == 0
    finally:
        _run("stop", env, server_file)
    deadline = time.monotonic() + 10
    while query_status(servers, None, 0.2, keyring) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert query_status(servers, None, 0.3, keyring) == {}
    assert not list((remote / ".ringkv").glob("node-*.pid"))

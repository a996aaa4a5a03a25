"""Suspending and resuming nodes the way the evaluation does: GET_PID, then SIGSTOP / SIGCONT.

Only the protocol is assumed: the pid comes from the node itself. A node
whose address is a loopback address runs on this host and is signalled
directly; any other node is signalled over ssh (`--ssh`), e.g.
`ssh -o BatchMode=yes {host}` followed by `kill -STOP <pid>`.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import signal
import subprocess

import psutil  # type: ignore[import-untyped]  # psutil ships no type hints

from ringkv.client.client import Client, ClientError, resolve
from ringkv.report.timeline import Timeline
from ringkv.wire import Addr


class NodeControlError(RuntimeError):
    """A node could not be suspended or resumed (no pid, no ssh, the signal failed)."""


def is_local(addr: Addr) -> bool:
    """A node is on this host if its address is a loopback address."""
    try:
        return ipaddress.ip_address(resolve(addr)[0]).is_loopback
    except (ClientError, ValueError):
        return False


def process_gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def ask_pid(addr: Addr) -> int:
    with Client(addr) as client:
        try:
            reply = client.pid()
        except ClientError as exc:
            raise NodeControlError(f"GET_PID to {addr[0]}:{addr[1]}: {exc}") from None
    if not reply.ok or reply.pid <= 0:
        raise NodeControlError(f"GET_PID to {addr[0]}:{addr[1]}: errCode {reply.err}")
    return reply.pid


class NodeControl:
    """Which nodes this run suspended, and the pids to resume them with.

    Each suspension and shutdown is kept in its timeline as a fault window.
    """

    def __init__(self, ssh: str | None = None) -> None:
        self.ssh = ssh
        self.timeline = Timeline()
        self.suspended: dict[Addr, int] = {}  # insertion order: the order they went down
        self.known: dict[Addr, int] = {}  # pids learned while the nodes answered

    def learn(self, pids: dict[Addr, int | None]) -> None:
        """Remember pids asked at the start, as the evaluation does before it suspends."""
        self.known.update({addr: pid for addr, pid in pids.items() if pid})

    def check_reachable(self, servers: list[Addr]) -> None:
        """Fail early when some node could not be signalled at all."""
        if self.ssh:
            return
        remote = [a for a in servers if not is_local(a)]
        if remote:
            names = ", ".join(f"{h}:{p}" for h, p in remote[:3])
            raise NodeControlError(
                f"{len(remote)} node(s) are not on this host ({names} …): "
                "give --ssh to suspend them over ssh"
            )

    def suspend(self, addr: Addr) -> int:
        """Stop a node: its pid is asked now (a restarted node has a new one), else recalled.

        A node too busy to answer GET_PID can still be stopped with the pid it
        gave earlier.
        """
        try:
            pid = self.known[addr] = ask_pid(addr)
        except NodeControlError:
            if addr not in self.known:
                raise
            pid = self.known[addr]
        self._signal(addr, pid, signal.SIGSTOP)
        self.suspended[addr] = pid
        self.timeline.fault_begins(_name(addr), "suspended")
        return pid

    def resume(self, addr: Addr) -> None:
        pid = self.suspended.pop(addr)
        self._signal(addr, pid, signal.SIGCONT)
        self.timeline.fault_ends(_name(addr))

    def shut_down(self, addr: Addr) -> None:
        """Note that the run shut a node down (SHUTDOWN): out of service for good."""
        self.timeline.fault_begins(_name(addr), "shutdown")

    def resume_all(self) -> list[Addr]:
        """Resume every node this run suspended, also after an error (best effort)."""
        resumed = []
        for addr in list(self.suspended):
            try:
                self.resume(addr)
                resumed.append(addr)
            except NodeControlError:
                continue
        return resumed

    def _signal(self, addr: Addr, pid: int, sig: signal.Signals) -> None:
        if is_local(addr):
            try:
                os.kill(pid, sig)
            except OSError as exc:
                raise NodeControlError(f"kill -{sig.name} {pid}: {exc.strerror}") from None
            return
        if not self.ssh:
            raise NodeControlError(f"{addr[0]} is not this host: give --ssh to reach it")
        self._ssh_kill(addr[0], pid, sig)

    def _ssh_kill(self, host: str, pid: int, sig: signal.Signals) -> None:
        prefix = shlex.split((self.ssh or "").format(host=host))
        command = [*prefix, "kill", f"-{sig.name[3:]}", str(pid)]
        try:
            subprocess.run(command, check=True, timeout=15, capture_output=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NodeControlError(f"{shlex.join(command)}: {exc}") from None


def _name(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"

"""Part 1 of the evaluation: one node (`--local`, 127.0.0.1:43100 by default)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial

from ringkv.check.base import Answer, Checklist, Context, Stage, Verdict, ask, show
from ringkv.check.load import Tally, bench_runs, make_value, pool, run_async, timed_request
from ringkv.check.nodes import is_local, process_gone
from ringkv.client.client import AsyncClient, Client, ClientTimeout, client_socket
from ringkv.wire import Addr
from ringkv.wire.codec import Command, Err, KVResponse, Msg, encode_request, new_message_id

# -- liveness ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WireForm:
    """Which always-present fields a raw reply carried (proto2 clients require both)."""

    err_code: bool
    check_sum: bool


def raw_request(addr: Addr, command: int, key: bytes = b"") -> WireForm | None:
    """Send one request and look at the reply's encoding, not only at its values."""
    message_id = new_message_id()
    datagram = encode_request(message_id, command, key)
    with client_socket(addr) as sock:
        for wait in (0.1, 0.2, 0.4):
            sock.sendto(datagram, addr)
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(65535)
                except (TimeoutError, ConnectionError):
                    break
                form = _wire_form(data, message_id)
                if form is not None:
                    return form
    return None


def _wire_form(data: bytes, message_id: bytes) -> WireForm | None:
    msg = Msg()
    try:
        msg.ParseFromString(data)
        response = KVResponse()
        response.ParseFromString(msg.payload)
    except Exception:  # any garbage is simply not our reply
        return None
    if msg.messageID != message_id:
        return None
    return WireForm(response.HasField("errCode"), msg.HasField("checkSum"))


def liveness(ctx: Context) -> Verdict:
    checks = Checklist(ctx.report)
    with Client(ctx.local) as client:
        checks.code("IS_ALIVE", ask(client.is_alive), Err.OK)
        pid = ask(client.pid)
        if checks.code("GET_PID", pid, Err.OK) and pid is not None:
            checks.check("pid", pid.pid > 0, f"{pid.pid}")
            ctx.state["p1_pid"] = pid.pid
        members = ask(client.membership_count)
        count = members.membership_count if members is not None else None
        checks.check("GET_MEMBERSHIP_COUNT", count == 1, f"{show(members)}, count {count}")
        checks.code("WIPEOUT", ask(client.wipeout), Err.OK)
    _check_wire_form(ctx, checks)
    return checks.verdict()


def _check_wire_form(ctx: Context, checks: Checklist) -> None:
    """errCode and checkSum must be encoded even when 0 (PROTOCOL.md, compatibility)."""
    probes = {"IS_ALIVE": Command.IS_ALIVE, "GET_PID": Command.GET_PID}
    missing = []
    for name, command in probes.items():
        form = raw_request(ctx.local, command)
        if form is None:
            missing.append(f"{name}: no reply")
            continue
        if not form.err_code:
            missing.append(f"{name}: errCode 0 left out")
        if not form.check_sum:
            missing.append(f"{name}: checkSum left out")
    detail = "; ".join(missing) or "errCode and checkSum present in replies with errCode 0"
    checks.check("wire form (proto2)", not missing, detail)


# -- the exact-answer stages ----------------------------------------------------------


def basic(ctx: Context) -> Verdict:
    checks = Checklist(ctx.report)
    with Client(ctx.local) as client:
        for size in ctx.params.basic_sizes:
            _round_trip(checks, client, size)
    return checks.verdict()


def _round_trip(checks: Checklist, client: Client, size: int) -> None:
    key, value = os.urandom(16), os.urandom(size)
    if not checks.code(f"PUT {size} B", ask(lambda: client.put(key, value, size)), Err.OK):
        return
    got = ask(lambda: client.get(key))
    right = got is not None and got.ok and (got.value, got.version) == (value, size)
    detail = show(got) if got is None or not got.ok else _value_detail(got.value, got.version)
    checks.check(f"GET {size} B", right, f"{detail} (want {size} B, version {size})")


def _value_detail(value: bytes, version: int) -> str:
    return f"{len(value)} B, version {version}"


def versions(ctx: Context) -> Verdict:
    checks = Checklist(ctx.report)
    key = os.urandom(16)
    with Client(ctx.local) as client:
        for version, value in ((1, b"first value"), (2, b"second value")):
            put = ask(partial(client.put, key, value, version))
            checks.code(f"PUT v{version}", put, Err.OK)
            got = ask(lambda: client.get(key))
            right = got is not None and got.ok and (got.value, got.version) == (value, version)
            seen = show(got) if got is None or not got.ok else f"{got.value!r} v{got.version}"
            checks.check(f"GET after v{version}", right, f"{seen} (want {value!r} v{version})")
    return checks.verdict()


def remove(ctx: Context) -> Verdict:
    checks = Checklist(ctx.report)
    key = os.urandom(16)
    with Client(ctx.local) as client:
        checks.code("PUT", ask(lambda: client.put(key, b"v")), Err.OK)
        checks.code("GET", ask(lambda: client.get(key)), Err.OK)
        checks.code("REM", ask(lambda: client.remove(key)), Err.OK)
        checks.code("GET after REM", ask(lambda: client.get(key)), Err.NO_KEY)
        checks.code("PUT again", ask(lambda: client.put(key, b"v")), Err.OK)
        checks.code("REM", ask(lambda: client.remove(key)), Err.OK)
        checks.code("second REM", ask(lambda: client.remove(key)), Err.NO_KEY)
    return checks.verdict()


def invalid(ctx: Context) -> Verdict:
    checks = Checklist(ctx.report)
    long_key, long_value = b"k" * 33, b"v" * 10_001
    with Client(ctx.local) as client:
        checks.code("command 0x42", ask(lambda: client.request(0x42)), Err.BAD_COMMAND)
        checks.code("PUT 33-byte key", ask(lambda: client.put(long_key, b"v")), Err.BAD_KEY)
        checks.code("GET 33-byte key", ask(lambda: client.get(long_key)), Err.BAD_KEY)
        checks.code("REM 33-byte key", ask(lambda: client.remove(long_key)), Err.BAD_KEY)
        checks.code(
            "PUT 10001-byte value", ask(lambda: client.put(b"k", long_value)), Err.BAD_VALUE
        )
        # Validation order is command, key, value: both wrong is an invalid key.
        both = ask(lambda: client.put(long_key, long_value))
        checks.code("PUT both too long", both, Err.BAD_KEY)
    return checks.verdict()


# -- at-most-once --------------------------------------------------------------------


def at_most_once(ctx: Context) -> Verdict:
    """Each sequence re-sends a request with the same message ID; it must not run again."""
    checks = Checklist(ctx.report)
    with Client(ctx.local) as c:
        _amo_put_rem_rem(checks, c)
        _amo_empty_rem_rem(checks, c)
        _amo_rem_put_rem(checks, c)
        _amo_put_rem_put_retries(checks, c)
        _amo_put1_put2_retry1(checks, c)
    return checks.verdict()


def _retry(c: Client, command: int, key: bytes, message_id: bytes, value: bytes = b"") -> Answer:
    return ask(lambda: c.request(command, key, value, message_id=message_id))


def _amo_put_rem_rem(checks: Checklist, c: Client) -> None:
    key, rem = os.urandom(16), c.new_message_id()
    checks.code("PUT→REM→REM: PUT", ask(lambda: c.put(key, b"v")), Err.OK)
    checks.code("PUT→REM→REM: REM", _retry(c, Command.REMOVE, key, rem), Err.OK)
    checks.code("PUT→REM→REM: REM retry", _retry(c, Command.REMOVE, key, rem), Err.OK)


def _amo_empty_rem_rem(checks: Checklist, c: Client) -> None:
    key, rem = os.urandom(16), c.new_message_id()
    checks.code("EMPTY→REM→REM: REM", _retry(c, Command.REMOVE, key, rem), Err.NO_KEY)
    checks.code("EMPTY→REM→REM: PUT", ask(lambda: c.put(key, b"v")), Err.OK)
    checks.code("EMPTY→REM→REM: REM retry", _retry(c, Command.REMOVE, key, rem), Err.NO_KEY)
    checks.code("EMPTY→REM→REM: GET", ask(lambda: c.get(key)), Err.OK)


def _amo_rem_put_rem(checks: Checklist, c: Client) -> None:
    key, rem = os.urandom(16), c.new_message_id()
    checks.code("REM→PUT→REM: PUT", ask(lambda: c.put(key, b"v")), Err.OK)
    checks.code("REM→PUT→REM: REM", _retry(c, Command.REMOVE, key, rem), Err.OK)
    checks.code("REM→PUT→REM: PUT again", ask(lambda: c.put(key, b"again")), Err.OK)
    checks.code("REM→PUT→REM: REM retry", _retry(c, Command.REMOVE, key, rem), Err.OK)
    got = ask(lambda: c.get(key))
    kept = got is not None and got.ok and got.value == b"again"
    checks.check("REM→PUT→REM: GET", kept, f"{show(got)} (the value must still be there)")


def _amo_put_rem_put_retries(checks: Checklist, c: Client) -> None:
    key, put = os.urandom(16), c.new_message_id()
    checks.code("PUT→REM→PUT*20: PUT", _retry(c, Command.PUT, key, put, b"v"), Err.OK)
    checks.code("PUT→REM→PUT*20: REM", ask(lambda: c.remove(key)), Err.OK)
    answers = [_retry(c, Command.PUT, key, put, b"v") for _ in range(20)]
    codes = sorted({show(a) for a in answers})
    right = all(a is not None and a.ok for a in answers)
    checks.check("PUT→REM→PUT*20: retries", right, ", ".join(codes))
    checks.code("PUT→REM→PUT*20: REM", ask(lambda: c.remove(key)), Err.NO_KEY)


def _amo_put1_put2_retry1(checks: Checklist, c: Client) -> None:
    key, first = os.urandom(16), c.new_message_id()
    checks.code("PUT1→PUT2→PUT1: PUT1", _retry(c, Command.PUT, key, first, b"one"), Err.OK)
    checks.code("PUT1→PUT2→PUT1: PUT2", ask(lambda: c.put(key, b"two")), Err.OK)
    checks.code("PUT1→PUT2→PUT1: PUT1 retry", _retry(c, Command.PUT, key, first, b"one"), Err.OK)
    got = ask(lambda: c.get(key))
    right = got is not None and got.ok and got.value == b"two"
    seen = show(got) if got is None or not got.ok else repr(got.value)
    checks.check("PUT1→PUT2→PUT1: GET", right, f"{seen} (want b'two')")


# -- performance -----------------------------------------------------------------------


def performance(ctx: Context) -> Verdict:
    p = ctx.params
    results = bench_runs(ctx, [ctx.local], p.perf_clients, p.perf_seconds, random_front_end=False)
    perfect = [
        r.requests > 0 and r.timeouts == 0 and r.mismatches == 0 and set(r.errors) == {"0"}
        for r in results
    ]
    rates = " / ".join(f"{r.throughput:,.0f}" for r in results)
    counts = "/".join(str(c) for c in p.perf_clients)
    return Verdict(all(perfect), f"{rates} req/s with {counts} clients")


# -- capacity -----------------------------------------------------------------------------


def capacity(ctx: Context) -> Verdict:
    """One client fills the node, then reads everything back."""
    p = ctx.params
    keys = [ctx.key("cap", i) for i in range(p.capacity_keys)]
    puts, stored, refused = _fill(ctx, keys)
    gets = _read_back(ctx, keys, stored, refused)
    ctx.report.record("PUT", puts.figures(), puts.line("stored"))
    ctx.report.record("out of space", len(refused), _refused_line(keys, refused))
    ctx.report.record("GET", gets.figures(), gets.line("right"))
    survived = _still_there(ctx)
    unexpected = sum(n for code, n in puts.errors.items() if code not in (Err.OK, Err.NO_SPACE))
    timeouts = puts.timeouts + gets.timeouts
    # Time-outs leave a key's state unknown; a few are loss, not a failure of the node.
    tolerated = timeouts <= 0.001 * (puts.requests + gets.requests)
    passed = survived and unexpected == 0 and gets.wrong == 0 and tolerated
    summary = (
        f"{len(stored):,} of {len(keys):,} stored, {len(refused):,} refused with errCode 2, "
        f"{gets.ok:,} read back right, {gets.wrong:,} wrong, "
        f"{timeouts:,} time-outs; node {'up' if survived else 'DOWN'}"
    )
    return Verdict(passed, summary)


def _refused_line(keys: list[bytes], refused: set[bytes]) -> str:
    if not refused:
        return "0 (the budget was not reached)"
    first = min(keys.index(k) for k in refused)
    return f"{len(refused):,} PUTs answered errCode 2, the first at PUT #{first + 1:,}"


def _fill(ctx: Context, keys: list[bytes]) -> tuple[Tally, set[bytes], set[bytes]]:
    size = ctx.params.value_size
    tally, stored, refused = Tally(), set(), set()

    async def put(client: AsyncClient, key: bytes) -> None:
        reply = await timed_request(client, tally, Command.PUT, key, make_value(key, 0, size))
        if reply is None:
            return
        if reply.err == Err.OK:
            tally.ok += 1
            stored.add(key)
        elif reply.err == Err.NO_SPACE:
            refused.add(key)
        else:
            tally.wrong += 1

    text = f"one client PUTs {len(keys):,} values of {size} B"
    with ctx.report.step(text, total=len(keys)) as bar:
        tally.seconds = run_async(pool([ctx.local], keys, 1, put, bar.advance))
    return tally, stored, refused


def _read_back(ctx: Context, keys: list[bytes], stored: set[bytes], refused: set[bytes]) -> Tally:
    """Stored keys must read back exactly; refused ones must not exist (nothing stored)."""
    size = ctx.params.value_size
    tally = Tally()
    judged = [k for k in keys if k in stored or k in refused]

    async def get(client: AsyncClient, key: bytes) -> None:
        reply = await timed_request(client, tally, Command.GET, key)
        if reply is None:
            return
        want_err = Err.OK if key in stored else Err.NO_KEY
        right_value = reply.err != Err.OK or reply.value == make_value(key, 0, size)
        if reply.err == want_err and right_value:
            tally.ok += 1
        else:
            tally.wrong += 1  # a stored key lost, a refused one stored, or a wrong value

    with ctx.report.step(f"reading back {len(judged):,} keys", total=len(judged)) as bar:
        tally.seconds = run_async(pool([ctx.local], judged, 1, get, bar.advance))
    return tally


def _still_there(ctx: Context) -> bool:
    """The node answers and is the same process as at the start (no crash and restart)."""
    with Client(ctx.local) as client:
        pid = ask(client.pid)
    same = pid is not None and pid.ok and ctx.state.get("p1_pid", pid.pid) == pid.pid
    ctx.report.record("node after", "answers, same pid" if same else f"{show(pid)}")
    return same


# -- shutdown -----------------------------------------------------------------------------


def shutdown(ctx: Context) -> Verdict:
    with Client(ctx.local) as client:
        pid = ask(client.pid)
        client.shutdown()
        ctx.control.shut_down(ctx.local)
        gone = _wait_gone(ctx.local, pid.pid if pid is not None and pid.ok else None)
    ctx.report.record("after SHUTDOWN", gone)
    return Verdict(gone == "the process is gone", gone)


def _wait_gone(addr: Addr, pid: int | None, limit: float = 5.0) -> str:
    """Whether the node's process ended; for a remote node, whether it stopped answering."""
    local = pid is not None and is_local(addr)
    deadline = time.monotonic() + limit
    with Client(addr, timeout=0.1, tries=2) as client:
        while time.monotonic() < deadline:
            if local and pid is not None and process_gone(pid):
                return "the process is gone"
            try:
                client.is_alive()
            except ClientTimeout:
                if not local:
                    return "the process is gone"  # all a remote check can tell
                continue
            time.sleep(0.1)
    if local:
        return f"process {pid} still exists after {limit:g} s"
    return f"still answering after {limit:g} s"


STAGES = [
    Stage("1.liveness", "IS_ALIVE, GET_PID, GET_MEMBERSHIP_COUNT = 1, WIPEOUT",
          "all answered; errCode and checkSum encoded even when 0", liveness),
    Stage("1.basic", "PUT→GET with values of {basic_sizes} bytes",
          "value and version round-trip", basic),
    Stage("1.versions", "PUT v1 → GET → PUT v2 → GET", "GET returns the latest version", versions),
    Stage("1.remove", "PUT→GET→REM→GET; PUT→REM→REM", "exact codes (1 for the second GET / REM)",
          remove),
    Stage("1.invalid", "unknown command, 33-byte key, 10001-byte value",
          "exact codes 5 / 6 / 7", invalid),
    Stage("1.at-most-once", "retries with the same message ID (5 sequences)",
          "retries never re-execute", at_most_once),
    Stage("1.performance",
          "closed loop PUT→GET for {perf_seconds} s with {perf_clients} clients, one front end",
          "100 % success for every client count", performance),
    Stage("1.capacity", "one client PUTs {capacity_keys} values of {value_size} B, then reads back",
          "reads right; out of space answered 2; no crash; time-outs ≤ 0.1 %", capacity),
    Stage("1.shutdown", "SHUTDOWN", "the process is gone", shutdown),
]  # fmt: skip

"""`ringkv check`: run the evaluation's stages against a live deployment."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ringkv.cli.options import (
    ADDR,
    procs_option,
    raise_interrupt,
    read_servers,
    seed_option,
    servers_file_option,
)
from ringkv.wire import Addr

if TYPE_CHECKING:
    from ringkv.check.base import Context, Stage
    from ringkv.check.suite import Run

EXIT_FAILED = 1  # some stage failed (click uses 2 for bad usage)
EXIT_INTERRUPTED = 130


def _addr(ctx: click.Context, param: click.Parameter, value: str) -> Addr:
    return ADDR.convert(value, param, ctx)


def _stage_list(quick: bool) -> str:
    """Every stage with the parameters of a run against 40 nodes."""
    from ringkv.check.base import QUICK, REFERENCE_NODES, Params, Scale
    from ringkv.check.suite import STAGES

    params = QUICK if quick else Params()
    scale = Scale.of(REFERENCE_NODES, params)
    return "\n".join(f"{s.id:<22} {s.describe(params, scale)}" for s in STAGES)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@servers_file_option("Server list of the deployment for Part 2 (one HOST:PORT a line).")
@click.option(
    "--local", default="127.0.0.1:43100", show_default=True, callback=_addr,
    help="The one-node deployment for Part 1.",
)  # fmt: skip
@click.option("--part", type=click.Choice(["1", "2"]), help="Run only this part.")
@click.option(
    "--stages", "stage_names", multiple=True, metavar="NAMES",
    help="Only these stages (ids or names, comma-separated or repeated; see --list). "
    "Stages whose state they need run too.",
)  # fmt: skip
@click.option("--quick", is_flag=True, help="Same stages, smaller counts and shorter waits.")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
    help="Write every figure to this file as JSON.",
)  # fmt: skip
@click.option(
    "--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
    help="Write DIR/report.html: throughput, latency, faults and violations over time.",
)  # fmt: skip
@click.option(
    "--ssh", metavar="COMMAND",
    help="How to reach nodes not on this host to suspend them, {host} standing for the "
    "node's address, e.g. 'ssh -o BatchMode=yes {host}'; `kill -STOP PID` is appended.",
)  # fmt: skip
@procs_option(os.cpu_count() or 1, "Processes the throughput stages spread their clients over.")
@seed_option("Seed for the choice of nodes to suspend.")
@click.option("--list", "list_stages", is_flag=True, help="List the stages and exit.")
def check(
    servers_file: Path | None, local: Addr, part: str | None, stage_names: tuple[str, ...],
    quick: bool, json_out: Path | None, report_dir: Path | None, ssh: str | None, procs: int,
    seed: int | None, list_stages: bool,
) -> None:  # fmt: skip
    """Run the evaluation's stages against a live deployment and judge each one.

    Part 1 checks the one node at --local; Part 2 the deployment of --servers
    (both by default; without --servers, Part 1 only). Nodes are suspended the
    way the evaluation does it: GET_PID, then SIGSTOP / SIGCONT for nodes on
    this host (loopback addresses), over --ssh for the others. Part 1's last
    stage shuts its node down.

    Exit code 0 if every stage passed, 1 otherwise.
    """
    if list_stages:
        click.echo(_stage_list(quick))
        return
    parts = _parts(part, servers_file)
    servers = _servers(servers_file) if 2 in parts else []
    run = _prepare(local, servers, parts, stage_names, quick, ssh, procs, seed)
    options: dict[str, object] = {
        "servers": str(servers_file) if servers_file else None,
        "part": part, "stages": list(stage_names), "quick": quick, "procs": procs, "seed": seed,
    }  # fmt: skip
    _execute(run, options, json_out, report_dir)


def _parts(part: str | None, servers_file: Path | None) -> set[int]:
    if part == "2" and servers_file is None:
        raise click.UsageError("Part 2 needs --servers FILE")
    if part is not None:
        return {int(part)}
    if servers_file is None:
        click.echo("no --servers given: Part 1 only", err=True)
        return {1}
    return {1, 2}


def _servers(servers_file: Path | None) -> list[Addr]:
    return read_servers(servers_file) if servers_file else []


def _prepare(
    local: Addr, servers: list[Addr], parts: set[int], stage_names: tuple[str, ...],
    quick: bool, ssh: str | None, procs: int, seed: int | None,
) -> Run:  # fmt: skip
    from ringkv.check.base import QUICK, Context, Params
    from ringkv.check.nodes import NodeControl
    from ringkv.check.report import Reporter
    from ringkv.check.suite import Run, SelectionError, select

    names = [n.strip() for arg in stage_names for n in arg.split(",") if n.strip()]
    try:
        stages = select(names, parts)
    except SelectionError as exc:
        raise click.UsageError(str(exc)) from None
    seed = seed if seed is not None else random.randrange(1 << 32)
    params = QUICK if quick else Params()
    _raise_fd_limit(max((*params.rfe_clients, *params.perf2_clients)) + 512)
    ctx = Context(
        params=params, report=Reporter(), local=local, servers=servers, procs=procs,
        control=NodeControl(ssh), rng=random.Random(seed), run_id=f"{seed & 0xFFFFFF:06x}-",
    )  # fmt: skip
    _header(ctx, stages, quick, seed)
    return Run(ctx, stages)


def _raise_fd_limit(wanted: int) -> None:
    """Each benched client has a socket: thousands of them need more than 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _header(ctx: Context, stages: list[Stage], quick: bool, seed: int) -> None:
    out = ctx.report.out
    mode = "quick" if quick else "full (the evaluation's parameters)"
    out.print(f"[bold]ringkv check[/bold], {mode}: {len(stages)} stages, seed {seed}")
    if any(s.part == 1 for s in stages):
        out.print(f"  Part 1 against {ctx.local[0]}:{ctx.local[1]}")
    if any(s.part == 2 for s in stages):
        s = ctx.scale
        out.print(
            f"  Part 2 against {s.nodes} nodes: suspend {s.suspend} ({s.suspend_batch} at a "
            f"time), resume {s.resume_some}; consistency rounds ±{s.seq_step}, "
            f"≤ {s.seq_max_down} down"
        )


def _execute(
    run: Run, options: dict[str, object], json_out: Path | None, report_dir: Path | None
) -> None:
    from ringkv.check.suite import run_check, to_json

    interrupted = False
    # SIGTERM unwinds like Ctrl-C, so the nodes this run suspended are resumed.
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        run_check(run)
    except KeyboardInterrupt:
        interrupted = True
        run.ctx.report.out.print("\n[yellow]interrupted[/yellow]")
    finally:
        signal.signal(signal.SIGTERM, previous)
    run.ctx.report.summary(run.results, run.seconds)
    if json_out is not None:
        json_out.write_text(json.dumps(to_json(run, options), indent=1) + "\n")
        run.ctx.report.out.print(f"figures written to {json_out}")
    if report_dir is not None:
        _write_report(run, to_json(run, options), report_dir)
    if interrupted:
        raise SystemExit(EXIT_INTERRUPTED)
    if not run.passed:
        raise SystemExit(EXIT_FAILED)


def _write_report(run: Run, figures: dict[str, Any], folder: Path) -> None:
    from ringkv.report.html import write_report

    passed = sum(r.passed for r in run.results if not r.skipped)
    judged = sum(not r.skipped for r in run.results)
    where = f"{len(run.ctx.servers)} nodes" if run.ctx.servers else "one node"
    title = f"ringkv check, {run.began_at}, {where}: {passed} of {judged} stages passed"
    rows = [r.row() for r in run.results]
    path = write_report(folder, title, run.ctx.timeline, rows, figures)
    run.ctx.report.out.print(f"report written to {path}")

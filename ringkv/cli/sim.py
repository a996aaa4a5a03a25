"""`ringkv sim`: run a simulated-cluster scenario from its seed.

Exit status 0 when every run passed, 1 when any run had a failure (a
linearizability violation, a lost acknowledged write, a failed stage or a
node that raised). Every failure is printed with its seed and the one-line
command that replays it exactly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ringkv.cli.options import json_option, nodes_option, seed_option
from ringkv.sim.scenarios import (
    DEFAULT_FAULTS,
    FAULT_KINDS,
    SCENARIOS,
    ParamError,
    Params,
    ScenarioResult,
    run_scenario,
)


def _fault_list(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, ...] | None:
    if value is None:
        return None
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise click.BadParameter(f"unknown {', '.join(unknown)}; known: {', '.join(FAULT_KINDS)}")
    return kinds


@click.command()
@click.argument("scenario", type=click.Choice(sorted(SCENARIOS)))
@nodes_option()
@seed_option(default=1, show_default=True)
@click.option("--loss", type=click.FloatRange(0, 1), help="Datagram loss (random-faults: max).")
@click.option("--keys", type=click.IntRange(min=1), help="Keys (eval-part2: stage 0's count).")
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    help="Virtual seconds: eval-part2 wait per round, random-faults fault period, "
    "scale steady-state window.",
)
@click.option("--clients", type=click.IntRange(min=0), help="Simulated clients.")
@click.option("--rounds", type=click.IntRange(min=0), help="eval-part2 consistency rounds.")
@click.option(
    "--faults",
    callback=_fault_list,
    help=f"random-faults kinds, comma-separated, of {','.join(FAULT_KINDS)} "
    f"[default: {','.join(DEFAULT_FAULTS)}].",
)
@click.option("--full-nodes", is_flag=True, help="scale: whole nodes, not membership only.")
@click.option("--no-check", is_flag=True, help="Skip the linearizability checker.")
@click.option(
    "--durable", is_flag=True,
    help="Nodes keep data directories (commit before send, load on restart); needed by the "
    "power fault (every node killed at once).",
)  # fmt: skip
@click.option("--runs", type=click.IntRange(min=1), default=1, help="Run seeds SEED.. SEED+RUNS-1.")
@json_option("Print the summary as JSON.")
@click.option("--history", type=click.Path(dir_okay=False), help="Save the history (JSON lines).")
@click.option(
    "--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
    help="Write DIR/report.html (DIR/seed-N/ with --runs): requests, latency, outages and "
    "violations over virtual time.",
)  # fmt: skip
def sim(
    scenario: str,
    nodes: int,
    seed: int,
    loss: float | None,
    keys: int | None,
    duration: float | None,
    clients: int | None,
    rounds: int | None,
    faults: tuple[str, ...] | None,
    full_nodes: bool,
    no_check: bool,
    durable: bool,
    runs: int,
    as_json: bool,
    history: str | None,
    report_dir: Path | None,
) -> None:
    """Run SCENARIO (eval-part2, random-faults, scale) in the deterministic simulator."""
    params = Params(
        nodes, loss, keys, duration, clients, rounds, faults, full_nodes, check=not no_check,
        durable=durable,
    )  # fmt: skip
    failed = 0
    for run_seed in range(seed, seed + runs):
        try:
            result = run_scenario(scenario, params, run_seed)
        except ParamError as exc:
            raise click.UsageError(str(exc)) from None
        except Exception:
            # A bug outside the nodes (scenario, checker): still say how to replay it.
            replay = ScenarioResult(scenario, params, run_seed).replay_command()
            click.echo(f"CRASHED with seed {run_seed}; replay with:\n  {replay}", err=True)
            raise
        if history:
            path = history if runs == 1 else f"{history}.{run_seed}"
            result.history.save(path)
        if report_dir is not None:
            _report(result, report_dir if runs == 1 else report_dir / f"seed-{run_seed}", as_json)
        _print(result, as_json, brief=runs > 1)
        failed += not result.ok
    if runs > 1:
        click.echo(f"{runs - failed} of {runs} runs passed")
    if failed:
        sys.exit(1)


def _report(result: ScenarioResult, folder: Path, as_json: bool) -> None:
    from ringkv.report.html import write_report
    from ringkv.sim.report import stage_rows, timeline_of, title_of

    timeline = timeline_of(result)
    path = write_report(folder, title_of(result), timeline, stage_rows(result), result.summary())
    click.echo(f"report written to {path}", err=as_json)


def _print(result: ScenarioResult, as_json: bool, brief: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.summary(), sort_keys=False))
    elif brief and result.ok:
        click.echo(f"seed {result.seed}: ok, {len(result.history)} ops")
    else:
        click.echo(result.text())
    if not result.ok:
        click.echo(f"FAILED with seed {result.seed}; replay with:", err=True)
        click.echo(f"  {result.replay_command()}", err=True)

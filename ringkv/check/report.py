"""What `ringkv check` shows: stage headers, figures, progress bars, the summary table.

Figures go to stdout; progress bars go to stderr and vanish once a step is
done. When stderr is not a terminal (CI logs), each step is printed as a
line instead, so a log still says what the check was waiting for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ringkv.report.text import StageRow, plain


@dataclass
class StageResult:
    id: str
    title: str
    threshold: str
    passed: bool
    summary: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    skipped: bool = False

    def row(self) -> StageRow:
        """This stage as a line of a report's stage table."""
        verdict = "SKIP" if self.skipped else "PASS" if self.passed else "FAIL"
        summary = self.error or self.summary
        return StageRow(self.id, self.title, self.threshold, verdict, summary, self.figures,
                        self.seconds)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "pass_if": self.threshold,
            "passed": self.passed,
            "skipped": self.skipped,
            "summary": self.summary,
            "error": self.error,
            "seconds": round(self.seconds, 2),
            "figures": self.figures,
        }


LABEL_WIDTH = 28
LOG_WIDTH = 140  # rich's 80 columns wrap most figure lines in a log file


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, highlight=False, width=LOG_WIDTH)
    return console


class StepBar:
    """Moves a progress bar; `advance` is called per request, so updates are batched."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self.progress = progress
        self.task = task
        self.pending = 0.0
        self.last = 0.0

    def advance(self, n: float = 1) -> None:
        self.pending += n
        now = time.monotonic()
        if now - self.last > 0.1:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, self.pending)
        self.pending = 0.0
        self.last = now if now is not None else time.monotonic()

    def to(self, completed: float, info: str = "") -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=completed, info=info)


class Reporter:
    """Prints a run as it happens and keeps the figures of the stage in progress."""

    def __init__(self, out: Console | None = None, err: Console | None = None) -> None:
        self.out = out or _console(stderr=False)
        self.err = err or _console(stderr=True)
        self.figures: dict[str, Any] = {}

    # -- stage framing ----------------------------------------------------------

    def begin(self, stage_id: str, title: str, threshold: str) -> None:
        self.figures = {}
        self.out.print()
        self.out.rule(f"[bold]{escape(stage_id)}[/bold]  {escape(title)}", align="left")
        self.out.print(f"  [dim]pass if: {escape(threshold)}[/dim]")

    def end(self, result: StageResult) -> None:
        if result.skipped:
            verdict = "[yellow]SKIP[/yellow]"
        else:
            verdict = "[green]PASS[/green]" if result.passed else "[red bold]FAIL[/red bold]"
        detail = result.error or result.summary
        self.out.print(f"  {verdict}  {escape(detail)}  [dim]({result.seconds:.1f} s)[/dim]")

    # -- figures ------------------------------------------------------------------

    def record(self, name: str, value: Any, line: str | None = None) -> None:
        """Keep a figure for --json and print it (as `line` when given)."""
        self.figures[name] = value
        shown = line if line is not None else plain(value)
        self.out.print(f"  {escape(name):<{LABEL_WIDTH}} {escape(shown)}")

    def note(self, text: str) -> None:
        self.out.print(f"  [dim]{escape(text)}[/dim]")

    # -- progress -----------------------------------------------------------------

    @contextmanager
    def step(self, description: str, total: float | None = None) -> Iterator[StepBar]:
        """A progress bar for one step of a stage; a plain line when stderr is no terminal."""
        if not self.err.is_terminal:
            self.out.print(f"  [dim]· {escape(description)}[/dim]")
            yield StepBar(None, None)
            return
        columns = (
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn() if total and total > 1 else TextColumn(""),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.err, transient=True) as progress:
            task = progress.add_task(escape(description), total=total, info="")
            bar = StepBar(progress, task)
            yield bar
            bar.flush()

    def wait(self, seconds: float, why: str) -> None:
        """Sleep with a bar that says what the wait is for."""
        if seconds <= 0:
            return
        with self.step(f"waiting {seconds:g} s {why}", total=seconds) as bar:
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < seconds:
                bar.to(elapsed)
                time.sleep(min(0.2, seconds - elapsed))

    # -- the end ---------------------------------------------------------------

    def summary(self, results: list[StageResult], seconds: float) -> None:
        table = Table(title="ringkv check: summary", title_justify="left")
        for column in ("stage", "result", "figures", "pass if", "time"):
            table.add_column(column, overflow="fold")
        for r in results:
            verdict = _verdict_markup(r)
            table.add_row(
                escape(r.id),
                verdict,
                escape(r.error or r.summary),
                escape(r.threshold),
                f"{r.seconds:.0f} s",
            )
        self.out.print()
        self.out.print(table)
        judged = [r for r in results if not r.skipped]
        passed = sum(r.passed for r in judged)
        colour = "green" if passed == len(judged) else "red"
        tally = f"{passed} of {len(judged)} stages passed"
        self.out.print(f"[{colour}]{tally}[/{colour}] in {seconds / 60:.1f} min")


def _verdict_markup(result: StageResult) -> str:
    if result.skipped:
        return "[yellow]SKIP[/yellow]"
    return "[green]PASS[/green]" if result.passed else "[red]FAIL[/red]"

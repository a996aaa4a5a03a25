"""`--report DIR`: one self-contained HTML page of a check or bench run.

The page holds a plotly figure over the run's time (throughput, latency,
nodes out of service, violations, stages) with every fault window shaded,
then the stage table, each stage's figures and the violations with their
keys. plotly.js is inlined, so the page opens without a network. The
numbers drawn are also embedded as JSON (`<script id="ringkv-data">`), so a
test or a script can read them back from the page itself.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

import plotly.graph_objects as go  # type: ignore[import-untyped]  # plotly ships no type hints
from plotly.subplots import make_subplots  # type: ignore[import-untyped]

from ringkv.report.text import StageRow, plain
from ringkv.report.timeline import Timeline

REPORT_FILE = "report.html"
DATA_ID = "ringkv-data"
TARGET_BUCKETS = 300  # about this many points across a run, whatever its length
NICE_WIDTHS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
VIOLATIONS_LISTED = 500  # rows of the violations table; the count is always whole
ROWS = ("requests / s", "latency (ms)", "nodes down", "violations", "stages")
FAULT_COLOURS = {  # by kind: SIGSTOP, a process gone, a network cut
    "suspended": "rgba(255, 165, 0, 0.10)",
    "shutdown": "rgba(200, 0, 0, 0.10)",
    "crash": "rgba(200, 0, 0, 0.10)",
    "cut off": "rgba(60, 60, 200, 0.10)",
}


def bucket_width(duration: float) -> float:
    """The smallest of NICE_WIDTHS that keeps a run within about TARGET_BUCKETS points."""
    wanted = duration / TARGET_BUCKETS
    return next((w for w in NICE_WIDTHS if w >= wanted), NICE_WIDTHS[-1])


def write_report(
    folder: Path,
    title: str,
    timeline: Timeline,
    stages: list[StageRow],
    figures: dict[str, Any],
) -> Path:
    """Write folder/report.html; `figures` is the run's JSON (shown, and embedded)."""
    folder.mkdir(parents=True, exist_ok=True)
    width = bucket_width(timeline.duration)
    drawn = timeline.to_dict(width)
    data = {"run": figures, "timeline": drawn}
    page = _page(title, _figure(drawn).to_html(full_html=False, include_plotlyjs=True), stages,
                 drawn, data)  # fmt: skip
    path = folder / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path


def read_data(path: Path) -> dict[str, Any]:
    """The numbers a report embeds (for tests and scripts)."""
    text = path.read_text(encoding="utf-8")
    start = text.index(f'<script type="application/json" id="{DATA_ID}">')
    body = text[text.index(">", start) + 1 : text.index("</script>", start)]
    data: dict[str, Any] = json.loads(body)
    return data


# -- the figure ----------------------------------------------------------------------------


def _figure(drawn: dict[str, Any]) -> go.Figure:
    fig = make_subplots(
        rows=len(ROWS), cols=1, shared_xaxes=True, vertical_spacing=0.03,
        row_heights=[0.3, 0.3, 0.14, 0.14, 0.12], subplot_titles=ROWS,
    )  # fmt: skip
    _throughput(fig, drawn)
    _latency(fig, drawn)
    _nodes_down(fig, drawn)
    _violations(fig, drawn)
    _stages(fig, drawn)
    for fault in drawn["faults"]:
        end = fault["end"] if fault["end"] is not None else drawn["duration_s"]
        fig.add_vrect(
            x0=fault["start"], x1=max(end, fault["start"] + 0.01), line_width=0, layer="below",
            fillcolor=FAULT_COLOURS.get(fault["kind"], "rgba(128, 128, 128, 0.1)"),
            row="all", col=1,
        )  # fmt: skip
    fig.update_layout(
        height=900, hovermode="x unified", barmode="overlay", margin={"t": 40, "b": 40}
    )
    fig.update_xaxes(title_text="seconds since the start", row=len(ROWS), col=1)
    fig.update_yaxes(type="log", row=2, col=1)
    return fig


def _xs(drawn: dict[str, Any]) -> list[float]:
    half = drawn["bucket_seconds"] / 2
    return [b["start"] + half for b in drawn["buckets"]]


def _throughput(fig: go.Figure, drawn: dict[str, Any]) -> None:
    per_second = 1 / drawn["bucket_seconds"]
    for name, field in (("answered", "answered"), ("time-outs", "timeouts"),
                        ("errCode 3", "overloaded")):  # fmt: skip
        ys = [b[field] * per_second for b in drawn["buckets"]]
        fig.add_trace(go.Scatter(x=_xs(drawn), y=ys, name=name, mode="lines"), row=1, col=1)


def _latency(fig: go.Figure, drawn: dict[str, Any]) -> None:
    for name in ("p50_ms", "p99_ms"):
        ys = [b[name] for b in drawn["buckets"]]
        label = name.replace("_ms", "")
        fig.add_trace(go.Scatter(x=_xs(drawn), y=ys, name=label, mode="lines"), row=2, col=1)


def _nodes_down(fig: go.Figure, drawn: dict[str, Any]) -> None:
    steps = drawn["nodes_down"] + [[drawn["duration_s"], drawn["nodes_down"][-1][1]]]
    fig.add_trace(
        go.Scatter(
            x=[s[0] for s in steps], y=[s[1] for s in steps], name="nodes down",
            mode="lines", line_shape="hv", fill="tozeroy",
        ),
        row=3, col=1,
    )  # fmt: skip


def _violations(fig: go.Figure, drawn: dict[str, Any]) -> None:
    found = drawn["violations"]
    fig.add_trace(
        go.Scatter(
            x=[v["at"] for v in found], y=[v["kind"] for v in found], name="violations",
            mode="markers", marker={"symbol": "x", "color": "red", "size": 8},
            text=[f"{v['key']} ({v['stage']})" for v in found], hoverinfo="x+y+text",
        ),
        row=4, col=1,
    )  # fmt: skip


def _stages(fig: go.Figure, drawn: dict[str, Any]) -> None:
    colours = {True: "seagreen", False: "crimson", None: "grey"}
    for span in drawn["spans"]:
        fig.add_trace(
            go.Bar(
                base=[span["start"]], x=[max(span["end"] - span["start"], 0.01)], y=["stage"],
                orientation="h", name=span["name"], text=[span["name"]], textposition="inside",
                marker_color=colours[span["passed"]], hovertext=[span["title"]],
                showlegend=False,
            ),
            row=5, col=1,
        )  # fmt: skip


# -- the page ------------------------------------------------------------------------------


def _page(
    title: str, plot: str, stages: list[StageRow], drawn: dict[str, Any], data: dict[str, Any]
) -> str:
    embedded = json.dumps(data).replace("</", "<\\/")  # no "</script>" inside the JSON
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _overview(drawn),
        plot,
        _stage_table(stages),
        _stage_figures(stages, data["run"]),
        _violation_table(drawn),
        f'<script type="application/json" id="{DATA_ID}">{embedded}</script>',
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
.pass { color: seagreen; font-weight: bold; } .fail { color: crimson; font-weight: bold; }
.skip { color: darkorange; } details { margin: 0.3em 0; } code { font-size: 0.9em; }
"""


def _overview(drawn: dict[str, Any]) -> str:
    kinds = Counter(f["kind"] for f in drawn["faults"])
    outages = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "none"
    return (
        f"<p>{drawn['requests']:,} requests over {drawn['duration_s']:,.1f} s, drawn per "
        f"{drawn['bucket_seconds']:g} s; nodes out of service (shaded): {outages}; "
        f"{drawn['violation_count']:,} consistency violations.</p>"
    )


VERDICT_CLASSES = {"PASS": "pass", "FAIL": "fail", "SKIP": "skip"}


def _verdict(row: StageRow) -> str:
    css = VERDICT_CLASSES.get(row.verdict, "")
    return f'<span class="{css}">{html.escape(row.verdict)}</span>'


def _stage_table(stages: list[StageRow]) -> str:
    if not stages:
        return ""
    rows = "".join(
        f"<tr><td><code>{html.escape(r.id)}</code></td><td>{_verdict(r)}</td>"
        f"<td>{html.escape(r.summary)}</td><td>{html.escape(r.threshold)}</td>"
        f"<td>{'' if r.seconds is None else f'{r.seconds:,.1f} s'}</td></tr>"
        for r in stages
    )
    head = "<tr><th>stage</th><th>result</th><th>figures</th><th>pass if</th><th>time</th></tr>"
    return f"<h2>Stages</h2><table>{head}{rows}</table>"


def _stage_figures(stages: list[StageRow], run: dict[str, Any]) -> str:
    """Each stage's figures; for a bench (no stages), the run's own."""
    blocks = [(f"{r.id}: {r.title}", r.figures) for r in stages]
    if not stages:
        blocks = [("figures", run)]
    out = ["<h2>Figures</h2>"]
    for label, figures in blocks:
        rows = "".join(
            f"<tr><td>{html.escape(str(name))}</td><td>{html.escape(plain(value))}</td></tr>"
            for name, value in figures.items()
        )
        out.append(f"<details><summary>{html.escape(label)}</summary><table>{rows}</table>"
                   "</details>")  # fmt: skip
    return "\n".join(out)


def _violation_table(drawn: dict[str, Any]) -> str:
    found = drawn["violations"]
    if not drawn["violation_count"]:
        return "<h2>Violations</h2><p>None.</p>"
    rows = "".join(
        f"<tr><td>{v['at']:,.2f} s</td><td><code>{html.escape(v['stage'])}</code></td>"
        f"<td>{html.escape(v['kind'])}</td><td><code>{html.escape(v['key'])}</code></td></tr>"
        for v in found[:VIOLATIONS_LISTED]
    )
    shown = min(len(found), VIOLATIONS_LISTED)
    head = "<tr><th>at</th><th>stage</th><th>kind</th><th>key</th></tr>"
    return (
        f"<h2>Violations</h2><p>{drawn['violation_count']:,} in all; the first {shown} "
        f"listed.</p><table>{head}{rows}</table>"
    )

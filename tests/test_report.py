"""`--report DIR`: the timeline a run keeps, and the HTML page drawn from it.

The figures are checked twice: on a timeline of known samples (exact
buckets and percentiles), and on real runs, whose page must hold the
numbers the run itself printed as JSON. One test opens a page in a real
headless Chromium and checks that every plot rendered without an error.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_check import faulty_server

from ringkv.check.report import StageResult
from ringkv.cli.check import check
from ringkv.cli.main import main
from ringkv.cli.sim import sim as sim_command
from ringkv.client.local import free_udp_port
from ringkv.report.html import ROWS, bucket_width, read_data, write_report
from ringkv.report.timeline import TIMED_OUT, Fault, Samples, Span, Timeline

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def known_timeline() -> Timeline:
    """Ten answers in the first second (1..10 ms, one errCode 3), two time-outs in the third."""
    t = Timeline(origin=100.0)
    for i in range(1, 11):
        t.samples.answered(100.0 + i / 20, i / 1000, 3 if i == 5 else 0)
    t.samples.timed_out(102.2)
    t.samples.timed_out(102.7)
    t.faults += [Fault("n1", "suspended", 100.5, 101.5), Fault("n2", "shutdown", 101.0)]
    t.spans.append(Span("2.seq", "a stage", 100.0, 103.0, passed=False))
    t.violation(b"key-</script>-1", "stale")  # recorded now: a perf_counter reading
    return t


def test_buckets_count_answers_time_outs_and_overloads_exactly() -> None:
    buckets = known_timeline().buckets(1.0)
    assert [(b.answered, b.timeouts, b.overloaded) for b in buckets] == [
        (10, 0, 1), (0, 0, 0), (0, 2, 0),
    ]  # fmt: skip
    assert buckets[0].p50_ms == 5.0 and buckets[0].p99_ms == 10.0
    assert buckets[1].p50_ms is None  # nothing answered: no made-up latency


def test_nodes_down_steps_up_at_each_fault_and_down_at_each_resume() -> None:
    assert known_timeline().nodes_down() == [(0.0, 0), (0.5, 1), (1.0, 2), (1.5, 1)]


def test_violations_beyond_the_cap_are_counted_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ringkv.report.timeline.MAX_VIOLATIONS", 3)
    t = Timeline()
    with t.span("3.x", "stage"):
        for i in range(5):
            t.violation(b"k%d" % i, "stale")
    assert t.violation_count == 5
    assert [(v.key, v.stage) for v in t.violations] == [("k0", "3.x"), ("k1", "3.x"), ("k2", "3.x")]


def test_samples_keep_time_outs_apart_from_latencies() -> None:
    s = Samples()
    s.answered(1.0, 0.002, 0)
    s.timed_out(2.0)
    assert s.latencies() == [0.002] and s.err.tolist() == [0, TIMED_OUT]
    assert math.isnan(s.latency[1])


def test_a_bucket_is_a_nice_width_that_keeps_a_run_near_300_points() -> None:
    assert bucket_width(5.0) == 0.1
    assert bucket_width(60.0) == 0.25
    assert bucket_width(24 * 60.0) == 5.0
    assert bucket_width(10 * 3600.0) == 60.0


def test_the_page_embeds_the_numbers_it_draws_and_escapes_keys(tmp_path: Path) -> None:
    stage = StageResult("2.seq", "a stage", "0 violations", passed=False, summary="1 violation")
    stage.figures = {"reads": 10, "verdicts": {"stale": 1}}
    path = write_report(tmp_path, "a <run>", known_timeline(), [stage.row()], {"passed": False})
    text = path.read_text()
    assert "<title>a &lt;run&gt;</title>" in text
    assert "key-&lt;/script&gt;-1" in text  # the violation table, escaped
    data = read_data(path)  # the embedded JSON survived a key holding "</script>"
    drawn = data["timeline"]
    assert data["run"] == {"passed": False}
    assert sum(b["answered"] for b in drawn["buckets"]) == 10
    assert sum(b["timeouts"] for b in drawn["buckets"]) == 2
    assert [f["kind"] for f in drawn["faults"]] == ["suspended", "shutdown"]
    assert drawn["violations"][0]["key"] == "key-</script>-1"
    assert drawn["spans"] == [
        {"name": "2.seq", "title": "a stage", "start": 0.0, "end": 3.0, "passed": False}
    ]


def test_a_bench_report_holds_the_bench_s_own_figures(tmp_path: Path) -> None:
    port = str(free_udp_port())
    args = ["bench", "--echo-server", port, "--clients", "4", "--duration", "1", "--json"]
    result = CliRunner().invoke(main, [*args, "--report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.splitlines()[0])
    drawn = read_data(tmp_path / "report.html")["timeline"]
    assert figures["answered"] > 100
    assert sum(b["answered"] for b in drawn["buckets"]) == figures["answered"]
    assert sum(b["timeouts"] for b in drawn["buckets"]) == figures["timeouts"]
    assert drawn["requests"] == figures["requests"]


def _check_with_report(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
    out, folder = tmp_path / "check.json", tmp_path / "report"
    argv = [*args, "--quick", "--seed", "7", "--json", str(out), "--report", str(folder)]
    result = CliRunner().invoke(check, argv)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, json.loads(out.read_text()), read_data(folder / "report.html")


def test_a_check_report_marks_stale_reads_with_their_keys(tmp_path: Path) -> None:
    """A server that serves every tenth GET from the key's previous value fails the
    consistency stage; the page lists each stale read, key and all, at its moment."""
    with faulty_server("--fault", "stale-reads") as addr:
        servers = tmp_path / "servers.txt"
        servers.write_text(f"{addr[0]}:{addr[1]}\n")
        args = ["--part", "2", "--servers", str(servers), "--stages", "seq-consistency-3"]
        code, figures, data = _check_with_report(tmp_path, *args)
    assert code == 1
    stage = next(s for s in figures["stages"] if s["id"] == "2.seq-consistency-3")
    total = stage["figures"]["total"]
    drawn = data["timeline"]
    assert total["stale"] > 0
    assert drawn["violation_count"] == total["violations"]
    listed = [v for v in drawn["violations"] if v["stage"] == "2.seq-consistency-3"]
    assert len(listed) == total["violations"]
    assert all(v["key"].startswith(figures["run_id"]) for v in listed)
    span = next(s for s in drawn["spans"] if s["name"] == "2.seq-consistency-3")
    assert span["passed"] is False
    assert all(span["start"] <= v["at"] <= span["end"] for v in listed)
    assert data["run"]["stages"] == figures["stages"]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (.ci/run installs Debian's)")
def test_the_page_renders_in_a_real_browser_without_errors(tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    t = known_timeline()
    path = write_report(tmp_path, "rendered", t, [], {})
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20_000)
            traces = page.evaluate("document.querySelector('.js-plotly-plot').data.length")
            shapes = page.locator(".js-plotly-plot .shapelayer path").count()
            titles = page.locator(".js-plotly-plot .annotation-text").all_text_contents()
        finally:
            browser.close()
    assert errors == []
    assert traces == 3 + 2 + 1 + 1 + len(t.spans)  # throughput, latency, down, violations, stages
    assert shapes >= len(t.faults)  # each fault window is shaded
    assert set(ROWS) <= set(titles)  # every subplot was laid out


def test_a_sim_report_marks_each_violation_and_shades_each_cut(tmp_path: Path) -> None:
    """Seed 1 of partitions on 10 nodes is a known failure of the available mode: two
    stale reads in a partition. The page shows both, with their keys, inside a cut."""
    args = ["random-faults", "--nodes", "10", "--faults", "partition", "--seed", "1"]
    result = CliRunner().invoke(sim_command, [*args, "--json", "--report", str(tmp_path)])
    summary = json.loads(result.stdout.splitlines()[0])
    drawn = read_data(tmp_path / "report.html")["timeline"]
    assert summary["violations"] > 0
    assert drawn["violation_count"] == summary["violations"] + summary["violations_excused"]
    assert drawn["requests"] == summary["ops"]["total"]
    timeouts = sum(b["timeouts"] for b in drawn["buckets"])
    assert timeouts == summary["ops"]["timeouts"]
    cuts = [f for f in drawn["faults"] if f["kind"] == "cut off"]
    assert cuts and all(f["end"] is not None for f in cuts)
    for v in drawn["violations"]:
        assert v["key"].startswith("b'key-")
        assert any(c["start"] <= v["at"] <= c["end"] for c in cuts), v

"""The run record, `antnest report` and its page (issue 16), as a person would use them: a real
fleet run with a runner killed under a poison taskunit and a retried one, its report printed,
its page rendered in headless Chromium, looked at through the DOM."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest

from antnest import trace
from antnest.summary import format_summary
from antnest.timeline import browser_command, render_html
from plugins.cli import REPO
from plugins.tools import require

IDS_JOB = REPO / "tests" / "jobs_faults" / "ids.py"


def chromium() -> str:
    found = None
    for name in ("chromium", "chromium-browser"):
        found = found or shutil.which(name) or shutil.which(name, path="/usr/bin")
    return require(found, "chromium not installed; apt-get install chromium")


def test_fleet_run_page_in_headless_chromium(fleet: Any, fleet_inventory: Path, tmp_path: Path,
                                             run_cli: Any, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    browser = chromium()
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("FAULT_N", "600")
    monkeypatch.setenv("FAULT_SLEEP", "0.006")
    monkeypatch.setenv("FAULT_MARKERS", str(markers))
    monkeypatch.setenv("FAULT_POISON", "300")       # kills each runner it runs on
    monkeypatch.setenv("FAULT_FAIL_ONCE", "120")    # raises once, then succeeds on retry
    record = tmp_path / "run.json"
    done = run_cli("run", "-i", fleet_inventory, "--known-hosts", fleet.known_hosts,
                   "--procs", "2", "--retries", "1",
                   "--max-lost", "1", "--keep-going", "--report", record, IDS_JOB)
    assert done.returncode == 1, done.stderr          # the poison taskunit failed for good
    report = json.loads(record.read_text())
    rec = report["trace"]
    runners = {r["runner"] for r in rec["runners"]}
    assert len(runners) == 6                          # 3 hosts x 2 slots
    lost = [(r["runner"], life) for r in rec["runners"] for life in r["lives"] if life["lost"]]
    assert len(lost) == 2 and all("exit status 13" in life["why"] for _, life in lost)
    assert all(len(r["lives"]) >= 2 for r in rec["runners"] if r["runner"] in dict(lost))
    outcomes = {b["outcome"] for b in rec["batches"]}
    assert {"ok", "failed", "lost"} <= outcomes
    failed = [b for b in rec["batches"] if b["outcome"] == "failed"]
    assert any("taskunit 120" in b["error"] for b in failed)
    assert any(b["first"] == 120 and b["n"] == 1 and b["attempt"] == 2 and b["outcome"] == "ok"
               for b in rec["batches"])               # the retry, recorded as attempt 2
    assert sum(b["done"] for b in rec["batches"] if b["outcome"] != "copy-lost") == 599
    worked = {b["host"] for b in rec["batches"]}
    assert worked and all(h["python"] and h["connected"] is not None
                          for h in rec["hosts"] if h["name"] in worked), rec["hosts"]
    assert rec["anchor"] and rec["batches_aggregated"] == 0

    page = tmp_path / "run.html"
    png = tmp_path / "run.png"
    shown = run_cli("report", record, "--html", page, "--png", png)
    assert shown.returncode == 0, shown.stderr
    assert "runners lost:" in shown.stdout and "dominated" in shown.stdout
    text = page.read_text()
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", text)   # nothing fetched: offline
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dom = subprocess.run(browser_command(browser, str(tmp_path / "profile"), "--dump-dom",
                                         page.as_uri()),
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    lanes = re.findall(r'<g class="lane" data-runner="([^"]+)"', dom.stdout)
    assert sorted(lanes) == sorted(runners)           # one lane per runner
    hosts = re.findall(r'<g class="host" data-host="([^"]+)"', dom.stdout)
    assert sorted(hosts) == sorted(h["name"] for h in rec["hosts"])
    losses = re.findall(r'<g class="loss" data-runner="([^"]+)"', dom.stdout)
    assert sorted(losses) == sorted(name for name, _ in lost)   # the marked losses
    assert len(re.findall(r'class="bar failed"', dom.stdout)) == len(failed)
    assert dom.stdout.count('class="host-row"') == 3


def sample_report() -> Dict[str, Any]:
    """A small record with every kind of event, fixed numbers."""
    batches = [
        dict(id=1, host="h1", runner="h1", first=0, n=10, sent=1.0, started=1.0, finished=2.0,
             bytes_out=100, bytes_in=200, outcome="ok", error=None, attempt=1, copy_of=None),
        dict(id=2, host="h1", runner="h1#1", first=10, n=1, sent=1.0, started=1.0,
             finished=1.5, bytes_out=10, bytes_in=0, outcome="failed",
             error="taskunit 10: ValueError: bad", attempt=1, copy_of=None),
        dict(id=3, host="h2", runner="h2", first=10, n=1, sent=1.6, started=1.6, finished=1.8,
             bytes_out=10, bytes_in=20, outcome="ok", error=None, attempt=2, copy_of=None),
        dict(id=4, host="h2", runner="h2", first=11, n=5, sent=2.0, started=2.0, finished=7.0,
             bytes_out=50, bytes_in=0, outcome="copy-lost", error=None, attempt=1,
             copy_of=None),
        dict(id=5, host="h1", runner="h1", first=11, n=5, sent=4.0, started=4.0, finished=5.0,
             bytes_out=50, bytes_in=100, outcome="won", error=None, attempt=1, copy_of=4),
    ]
    record = {
        "trace": 1, "anchor": "2026-12-01T10:00:00+00:00", "ended": 8.0,
        "batches": batches, "aggregated": [], "batches_aggregated": 0,
        "runners": [
            {"runner": "h1", "host": "h1", "lives": [
                {"boot": 0.0, "hello": 0.5, "exit": 7.5, "why": "stopped", "lost": False}]},
            {"runner": "h1#1", "host": "h1", "lives": [
                {"boot": 0.0, "hello": 0.6, "exit": 3.0, "why": "runner exited (exit status 13)",
                 "lost": True},
                {"boot": 3.0, "hello": 3.4, "exit": 7.5, "why": "stopped", "lost": False}]},
            {"runner": "h2", "host": "h2", "lives": [
                {"boot": 0.0, "hello": 1.0, "exit": 7.5, "why": "stopped", "lost": False}]}],
        "hosts": [{"name": "h1", "first_boot": 0.0, "connected": 0.5, "python": "3.11.7",
                   "cpus": 2, "lost": 1, "failed": None},
                  {"name": "h2", "first_boot": 0.0, "connected": 1.0, "python": "3.11.7",
                   "cpus": 1, "lost": 0, "failed": None}],
        "slowest": [{"per_taskunit": 0.2, "first": 10, "runner": "h2", "n": 1},
                    {"per_taskunit": 0.2, "first": 11, "runner": "h1", "n": 5}],
        "phases": {"first_runner_up": 0.5, "first_sent": 1.0, "last_finished": 5.0,
                   "combine_end": 7.9, "input_seconds": 0.25, "combine_seconds": 0.5},
    }
    return {"antnest_report": 1, "job": "jobs/x.py", "started": "2026-12-01T10:00:00+00:00",
            "duration_seconds": 8.0, "exit_code": 0, "error": None,
            "taskunits": {"done": 16, "failed": 0, "retried": 1, "resumed": 0},
            "trace": record}


def test_terminal_summary_as_text() -> None:
    assert format_summary(sample_report()) == """\
run of jobs/x.py: exit 0, 8.00 s, started 2026-12-01T10:00:00+00:00
taskunits: 16 done, 0 failed, 1 retried, 0 resumed

host  runners  done  busy  mean batch  failures  lost  retries  stragglers  connect
h1          2    15   19%    833.3 ms         1     1        0           0   0.50 s
h2          1     1   80%   2600.0 ms         0     0        1           1   1.00 s

runners lost:
  h1#1 at 3.00 s: runner exited (exit status 13)

slowest taskunits (seconds each; a batch's mean when it held several):
  0.200 s  taskunit 10 on h2
  0.200 s  taskunits 11..15 on h1

stragglers (one runner busy, the others idle) dominated: 2.30 s of 8.00 s (29%)
  stragglers 2.30 s, the processors on the hosts 2.20 s, start-up 0.50 s, combine() 0.50 s, \
input 0.25 s"""
    # busy: h1 2.5 s of 2 runners x 6.5 s; h2 5.2 s (its straggler, copied) of 6.5 s;
    # one runner alone busy: 1.5-1.6, 1.8-2.0 and 2.0-4.0 (the straggler before its copy)


def test_page_marks_copies_losses_restarts() -> None:
    page = render_html(sample_report())
    assert page.count("<g class='lane'") == 3
    assert "class='spec-link' data-from='4' data-to='5'" in page
    assert page.count("<g class='loss'") == 1 and page.count("class='restart'") == 1
    assert "class='bar won'" in page and "class='bar copy-lost'" in page


def test_record_stays_small_for_a_huge_run() -> None:
    """250,000 batches of 40 (ten million taskunits): the record keeps MAX_BATCHES of them and
    sums the rest per runner per time bucket; the JSON stays at a few MB."""

    class FakeBatch:
        def __init__(self, i: int) -> None:
            self.id, self.first_seq, self.items = i, i * 40, range(40)
            self.attempts = self.lost = 0
            self.twins = None

    recorder = trace.Recorder()
    clock = [0.0]
    recorder.now = lambda: clock[0]   # type: ignore[method-assign]
    recorder.at = lambda monotonic: monotonic   # type: ignore[method-assign]
    for runner in ("a", "b"):
        recorder.runner_booting(runner, "h")
    for i in range(1, 250_001):
        runner = "ab"[i % 2]
        batch = FakeBatch(i)
        clock[0] = i * 0.01
        recorder.batch_sent(runner, "h", batch, 100)
        recorder.batch_results(i, 50, 40)
        clock[0] = i * 0.01 + 0.02
        recorder.batch_finished(batch, i * 0.01)
    record = recorder.as_dict()
    text = json.dumps(record)
    assert len(record["batches"]) == trace.MAX_BATCHES
    assert record["batches_aggregated"] == 250_000 - trace.MAX_BATCHES
    summed = sum(b["n"] for b in record["aggregated"]) + sum(b["done"] for b in record["batches"])
    assert summed == 10_000_000                        # every taskunit still counted
    assert len(record["aggregated"]) <= 2 * trace.MAX_BUCKETS
    assert len(text) < 3_000_000, len(text)
    page = render_html({"antnest_report": 1, "job": "big", "duration_seconds": 10000.0,
                        "taskunits": {"done": 10_000_000}, "trace": record})
    assert len(page) < 3_000_000 and "summed per runner per time bucket" in page


def test_last_log_line_says_counts_output_and_duration(run_cli: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAULT_N", "50")
    monkeypatch.setenv("FAULT_SLEEP", "0")
    log, out = tmp_path / "run.log", tmp_path / "run.out"
    done = run_cli("run", "--procs", "2", "--log-file", log, "-o", out, IDS_JOB)
    assert done.returncode == 0, done.stderr
    last = log.read_text().splitlines()[-1]
    assert re.search(r"end: exit 0 after [\d.]+ ?m?s: 50 taskunits done, 0 failed, 0 resumed; "
                     rf"output {re.escape(str(out))}$", last), last


def test_report_of_a_file_without_a_record_is_exit_2(run_cli: Any, tmp_path: Path) -> None:
    plain = tmp_path / "old.json"
    plain.write_text(json.dumps({"antnest_report": 1, "job": "x"}))
    done = run_cli("report", plain)
    assert done.returncode == 2 and "holds no run record" in done.stderr
    (tmp_path / "bad.json").write_text("{")
    assert run_cli("report", tmp_path / "bad.json").returncode == 2


def test_input_file_progress_counts_its_bytes(run_cli: Any, tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("".join(f"line {i} of the input\n" for i in range(3000)))
    done = run_cli("run", "--procs", "2", "--input", data, "--progress", "-o",
                   tmp_path / "out", REPO / "jobs" / "reverse.py")
    assert done.returncode == 0, done.stderr
    size = data.stat().st_size
    assert "100%" in done.stderr and "3000 taskunits" in done.stderr, done.stderr[-500:]
    assert f"{size / 1024:.0f}k" in done.stderr or f"{size / 1024:.1f}k" in done.stderr, \
        done.stderr[-500:]

"""The run report: content a monitoring script can rely on, written so no half file is seen."""
from __future__ import annotations

import datetime
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from antnest.errors import JobFailed, TaskError
from antnest.report import build_report, failures_of, write_report
from antnest.worker import HostState


def sample(**changes: object) -> dict:
    fields = dict(
        version="0.1.0", job="jobs/x.py", inventory="hosts.yaml",
        started=datetime.datetime(2026, 11, 26, 22, 40, 1).astimezone(),
        ended=datetime.datetime(2026, 11, 26, 22, 40, 13, 500000).astimezone(),
        exit_code=1,
        hosts=[HostState("node1", "10.0.0.1:22", state="closed", procs=0, python="3.11.7",
                         cpus=4, lost=1, done=10),
               HostState("node2", "10.0.0.2:22", state="failed", error="unreachable")],
        done=10, failed=1, retried=2,
        failures=[TaskError(3, "node1", "ValueError: bad line", data="x")],
        interrupted=False,
    )
    fields.update(changes)
    return build_report(**fields)  # type: ignore[arg-type]


def test_content() -> None:
    report = sample()
    assert report["antnest_report"] == 1
    assert report["version"] == "0.1.0" and report["job"] == "jobs/x.py"
    assert report["inventory"] == "hosts.yaml"
    assert report["started"].startswith("2026-11-26T22:40:01")
    assert report["ended"].startswith("2026-11-26T22:40:13")
    assert report["duration_seconds"] == 12.5
    assert report["exit_code"] == 1 and report["interrupted"] is False and report["error"] is None
    assert report["taskunits"] == {"done": 10, "failed": 1, "retried": 2, "resumed": 0,
                                   "in_flight": 0, "not_started": None}
    assert sample(resumed=4)["taskunits"]["resumed"] == 4
    assert report["hosts"][0] == {"name": "node1", "address": "10.0.0.1:22", "state": "closed",
                                  "procs": 0, "python": "3.11.7", "cpus": 4, "error": None,
                                  "lost": 1, "done": 10, "alive": 0}
    assert report["hosts"][1]["state"] == "failed" and report["hosts"][1]["error"] == "unreachable"
    assert report["failures"] == [{"id": 3, "host": "node1", "error": "ValueError: bad line",
                                   "traceback": None}]
    assert report["failures_not_listed"] == 0
    json.dumps(report)  # JSON-ready as is


def test_epoch_seconds_and_duck_typed_records() -> None:
    @dataclass
    class Host:
        name: str
        address: str
        state: str = "closed"
        procs: int = 0
        python: Optional[str] = None
        cpus: Optional[int] = None
        error: Optional[str] = None
        lost: int = 0
        done: int = 0

    report = sample(started=1000.0, ended=1003.25, hosts=[Host("h", "local")],
                    failures=[], interrupted=True, exit_code=130, error="interrupted")
    assert report["duration_seconds"] == 3.25
    assert report["started"] == datetime.datetime.fromtimestamp(1000.0).astimezone().isoformat(
        timespec="seconds")
    assert report["hosts"][0]["name"] == "h" and report["failures"] == []
    assert report["interrupted"] is True and report["error"] == "interrupted"


def test_many_failures_are_capped() -> None:
    failures = [TaskError(i, "h", "boom") for i in range(1005)]
    report = sample(failures=failures, failed=1005)
    assert len(report["failures"]) == 1000 and report["failures_not_listed"] == 5


def test_failures_of() -> None:
    one = TaskError(1, "h", "boom")
    assert failures_of(None) == [] and failures_of(one) == [one]
    assert failures_of(JobFailed([one, one])) == [one, one]
    assert failures_of(RuntimeError("x")) == []


def test_write_is_atomic(tmp_path: Path) -> None:
    """A reader polling the path never sees a partial file, only whole reports."""
    path = tmp_path / "report.json"
    big = sample(failures=[TaskError(i, "h", "x" * 200) for i in range(800)])
    stop = threading.Event()
    seen = {"reads": 0, "bad": 0}

    def reader() -> None:
        while not stop.is_set():
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            seen["reads"] += 1
            try:
                json.loads(text)
            except ValueError:
                seen["bad"] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            big["exit_code"] = i
            write_report(path, big)
    finally:
        stop.set()
        thread.join()
    assert seen["reads"] > 0 and seen["bad"] == 0
    assert json.loads(path.read_text())["exit_code"] == 39
    assert os.listdir(tmp_path) == ["report.json"]  # no temp files left


def test_mode_follows_umask_and_failure_leaves_no_temp(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_report(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o640
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OSError):
        write_report(tmp_path / "dir.json", {"a": 1})  # cannot replace a directory
    assert sorted(os.listdir(tmp_path)) == ["dir.json", "r.json"]

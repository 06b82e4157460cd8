"""End to end: `antnest run` as cron runs it, over the local default.

Every run here goes through `env -i PATH=/usr/bin:/bin HOME=<empty dir>` with stdin from
/dev/null and no TTY (unless a test gives it a pseudo-TTY on purpose), exactly like a crontab
line; the interpreter is named by its full path. Job files live in tests/jobs_cron/.

Flags under test: --lock, --log-file, --report, --journal, --resume, --progress/--no-progress,
and the exit code table (0 ok, 1 taskunit failure, 2 bad input, 3 no usable host, 4 job
timeout, 75 locked, 130 SIGINT, 143 SIGTERM).
"""
from __future__ import annotations

import collections
import json
import os
import pty
import re
import select
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Counter, Dict, List, Optional, Set

import pytest

import antnest
from plugins.cli import REPO, antnest_command, communicate_within

JOBS = REPO / "tests" / "jobs_cron"
COUNTED = str(JOBS / "counted.py")
SQUARES = "".join(f"{i * i}\n" for i in range(10))  # counted.py on its own input_data
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d")


# -- helpers ------------------------------------------------------------------------------------

def cron_argv(home: Path, args: List[str], env: Optional[Dict[str, str]] = None) -> List[str]:
    """`env -i` with the minimal cron environment; PYTHONPATH only so a source checkout works."""
    extra = [f"{key}={value}" for key, value in (env or {}).items()]
    return ["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}", f"PYTHONPATH={REPO}",
            *extra, *antnest_command("run", *args)]


def _default_sigint() -> None:
    # A shell may start background jobs with SIGINT ignored; the run must see ours.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(tmp_path: Path, *args: str, env: Optional[Dict[str, str]] = None,
          stderr: Any = subprocess.PIPE, raw: bool = False) -> subprocess.Popen:
    """Start a run; `raw` keeps stdout/stderr as bytes (text mode would turn \r into \n)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return subprocess.Popen(cron_argv(home, list(args), env), cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                            text=not raw, preexec_fn=_default_sigint)


def run(tmp_path: Path, *args: str, env: Optional[Dict[str, str]] = None,
        timeout: float = 60, raw: bool = False) -> subprocess.CompletedProcess:
    return communicate_within(start(tmp_path, *args, env=env, raw=raw), timeout,
                              f"antnest run {' '.join(args)}")


def finish(proc: subprocess.Popen, timeout: float = 30) -> subprocess.CompletedProcess:
    return communicate_within(proc, timeout, "the run")


def wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen,
             timeout: float = 20) -> None:
    """Poll until condition(); fail at once (with its stderr) if the run ended meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}\n"
                        f"stdout: {out}\nstderr: {err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def calls(path: Path) -> Counter[str]:
    """Processor calls recorded by counted.py: line -> how many times."""
    if not path.exists():
        return collections.Counter()
    return collections.Counter(path.read_text().splitlines())


def journaled(path: Path) -> Set[int]:
    """Taskunit ids in a journal, as a resumed run would read it (a torn last line is not one)."""
    if not path.exists():
        return set()
    lines = path.read_bytes().split(b"\n")[1:-1]   # header; the last piece lacks its newline
    return {int(line.split(b"\t")[0]) for line in lines if line.count(b"\t") == 2}


def read_report(path: Path) -> Dict[str, Any]:
    assert path.exists(), f"no report at {path}"
    return json.loads(path.read_text())


def write_numbers(path: Path, count: int) -> Path:
    path.write_text("".join(f"{i}\n" for i in range(count)))
    return path


# -- non-interactive by construction ------------------------------------------------------------

def test_cron_environment_runs_quietly(tmp_path: Path) -> None:
    done = run(tmp_path, COUNTED)
    assert done.returncode == 0, done.stderr
    assert done.stdout == SQUARES
    # No TTY and a short job: no progress line, no prompt, nothing on stderr.
    assert done.stderr == ""


def test_no_usable_host_fails_fast_without_prompting(tmp_path: Path) -> None:
    started = time.monotonic()
    done = run(tmp_path, "-H", "127.0.0.1:1", COUNTED, timeout=30)
    assert done.returncode == 3, done.stderr
    assert "127.0.0.1" in done.stderr and "no host could be used" in done.stderr
    assert time.monotonic() - started < 15


def test_bad_input_exits_2(tmp_path: Path) -> None:
    missing = run(tmp_path, str(JOBS / "missing.py"))
    assert missing.returncode == 2 and "missing.py" in missing.stderr
    broken = run(tmp_path, str(JOBS / "no_processor.py"))
    assert broken.returncode == 2 and "processor" in broken.stderr
    no_input = run(tmp_path, "--input", str(tmp_path / "nowhere.txt"), COUNTED)
    assert no_input.returncode == 2 and "nowhere.txt" in no_input.stderr


def test_taskunit_failure_exits_1(tmp_path: Path) -> None:
    done = run(tmp_path, COUNTED, env={"ANTNEST_TEST_FAIL": "3"})
    assert done.returncode == 1
    assert "bad line 3" in done.stderr


def test_job_timeout_exits_4(tmp_path: Path) -> None:
    started = time.monotonic()
    done = run(tmp_path, "--timeout", "1", "--procs", "1", COUNTED,
               env={"ANTNEST_TEST_SLEEP": "5"})
    assert done.returncode == 4, done.stderr
    assert "timed out" in done.stderr
    assert time.monotonic() - started < 10


# -- --lock --------------------------------------------------------------------------------------

def test_overlapping_runs_and_a_crashed_holder(tmp_path: Path) -> None:
    lock = tmp_path / "nightly.lock"
    first = start(tmp_path, "--lock", str(lock), "--procs", "1", COUNTED,
                  env={"ANTNEST_TEST_SLEEP": "30", "ANTNEST_TEST_COUNTER": str(tmp_path / "c1")})
    try:
        wait_for(lambda: lock.exists() and f"pid {first.pid}" in lock.read_text(),
                 "the first run to take the lock", first)
        started = time.monotonic()
        second = run(tmp_path, "--lock", str(lock), COUNTED,
                     env={"ANTNEST_TEST_COUNTER": str(tmp_path / "c2")})
        assert second.returncode == 75, second.stderr
        assert time.monotonic() - started < 5                  # at once, no waiting
        assert f"pid {first.pid} since " in second.stderr      # names the holder and its start
        assert len(second.stderr.strip().splitlines()) == 1    # one line
        assert second.stdout == "" and not (tmp_path / "c2").exists()  # ran nothing

        os.kill(first.pid, signal.SIGKILL)                     # crashed holder
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    third = run(tmp_path, "--lock", str(lock), COUNTED)
    assert third.returncode == 0, third.stderr
    assert third.stdout == SQUARES


# -- --journal and --resume ----------------------------------------------------------------------

def test_sigkilled_run_resumes_without_rerunning_journaled_taskunits(tmp_path: Path) -> None:
    count = 80
    data = write_numbers(tmp_path / "numbers.txt", count)
    journal = tmp_path / "run.journal"
    cron_line = ["--journal", str(journal), "--resume", "--procs", "2", "--input", str(data),
                 COUNTED]

    killed = start(tmp_path, *cron_line, env={"ANTNEST_TEST_SLEEP": "0.05",
                                              "ANTNEST_TEST_COUNTER": str(tmp_path / "calls1")})
    try:
        wait_for(lambda: len(journaled(journal)) >= 20, "20 journaled taskunits", killed)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(10)
    finally:
        if killed.poll() is None:
            killed.kill()
        killed.communicate()
    before = journaled(journal)
    assert 20 <= len(before) < count, "kill the run halfway, not after it finished"

    resumed = run(tmp_path, *cron_line, env={"ANTNEST_TEST_COUNTER": str(tmp_path / "calls2")})
    assert resumed.returncode == 0, resumed.stderr
    second = calls(tmp_path / "calls2")
    rerun = sorted(int(line) for line in second if int(line) in before)
    assert rerun == [], f"journaled taskunits ran again: {rerun}"
    assert {int(line) for line in second} | before == set(range(count))

    whole = run(tmp_path, "--procs", "2", "--input", str(data), COUNTED,
                env={"ANTNEST_TEST_COUNTER": str(tmp_path / "calls3")})
    assert whole.returncode == 0, whole.stderr
    assert set(calls(tmp_path / "calls3")) == {str(i) for i in range(count)}
    assert resumed.stdout == whole.stdout == "".join(f"{i * i}\n" for i in range(count))


def test_resume_refuses_a_changed_input(tmp_path: Path) -> None:
    data = write_numbers(tmp_path / "numbers.txt", 60)
    journal = tmp_path / "run.journal"
    cron_line = ["--journal", str(journal), "--resume", "--procs", "2", "--input", str(data),
                 COUNTED]
    killed = start(tmp_path, *cron_line, env={"ANTNEST_TEST_SLEEP": "0.05"})
    try:
        wait_for(lambda: len(journaled(journal)) >= 5, "5 journaled taskunits", killed)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(10)
    finally:
        if killed.poll() is None:
            killed.kill()
        killed.communicate()
    write_numbers(data, 61)                                    # the input changed
    refused = run(tmp_path, *cron_line, env={"ANTNEST_TEST_COUNTER": str(tmp_path / "calls")})
    assert refused.returncode == 2
    assert str(journal) in refused.stderr and "changed" in refused.stderr
    assert not (tmp_path / "calls").exists()                   # refused before running anything


def test_every_night_the_same_cron_line_does_the_whole_job(tmp_path: Path) -> None:
    """A journal of a finished run must not make the next night's run skip its work."""
    journal = tmp_path / "run.journal"
    for night in (1, 2):
        counter = tmp_path / f"night{night}"
        done = run(tmp_path, "--journal", str(journal), "--resume", COUNTED,
                   env={"ANTNEST_TEST_COUNTER": str(counter)})
        assert done.returncode == 0, done.stderr
        assert done.stdout == SQUARES
        assert set(calls(counter)) == {str(i) for i in range(10)}   # every taskunit ran


# -- --report ------------------------------------------------------------------------------------

def test_report_on_success(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    done = run(tmp_path, "--report", str(report_path), "--procs", "2", COUNTED)
    assert done.returncode == 0, done.stderr
    report = read_report(report_path)
    assert report["version"] == antnest.__version__
    assert report["job"].endswith("counted.py")
    assert report["inventory"] is None
    assert report["exit_code"] == 0 and report["interrupted"] is False
    assert TIMESTAMP.match(report["started"]) and TIMESTAMP.match(report["ended"])
    assert report["started"] <= report["ended"]
    assert 0 <= report["duration_seconds"] < 60
    assert report["taskunits"] == {"done": 10, "failed": 0, "retried": 0, "resumed": 0,
                                   "in_flight": 0, "not_started": 0}
    assert report["failures"] == []
    assert [h["name"] for h in report["hosts"]] == ["local"]
    assert report["hosts"][0]["done"] == 10
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_report_on_taskunit_failure(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    done = run(tmp_path, "--report", str(report_path), "--keep-going", "--retries", "1",
               COUNTED, env={"ANTNEST_TEST_FAIL": "3"})
    assert done.returncode == 1
    report = read_report(report_path)
    assert report["exit_code"] == 1 and report["interrupted"] is False
    assert report["taskunits"] == {"done": 9, "failed": 1, "retried": 1, "resumed": 0,
                                   "in_flight": 0, "not_started": 0}
    assert len(report["failures"]) == 1
    failure = report["failures"][0]
    assert failure["id"] == 3 and failure["host"] == "local"
    assert "bad line 3" in failure["error"]


def test_report_when_no_host_can_be_used(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    done = run(tmp_path, "--report", str(report_path), "-H", "127.0.0.1:1", COUNTED)
    assert done.returncode == 3
    report = read_report(report_path)
    assert report["exit_code"] == 3
    assert "no host could be used" in report["error"]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_report_when_interrupted(tmp_path: Path, signum: int, code: int) -> None:
    report_path = tmp_path / "report.json"
    counter = tmp_path / "calls"
    proc = start(tmp_path, "--report", str(report_path), "--procs", "2", COUNTED,
                 env={"ANTNEST_TEST_SLEEP": "0.5", "ANTNEST_TEST_COUNTER": str(counter)})
    try:
        wait_for(lambda: counter.exists() and counter.read_text().count("\n") >= 2,
                 "the job to be running", proc)
        proc.send_signal(signum)
        done = finish(proc, timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert done.returncode == code, done.stderr
    report = read_report(report_path)
    assert report["exit_code"] == code and report["interrupted"] is True
    assert report["taskunits"]["done"] < 10


# -- --log-file ----------------------------------------------------------------------------------

def test_log_file_has_timestamped_lines_and_remote_output(tmp_path: Path) -> None:
    log_file = tmp_path / "antnest.log"
    # --keep-going: every taskunit runs (fail-fast may stop before the last ones print)
    done = run(tmp_path, "--log-file", str(log_file), "--keep-going", COUNTED,
               env={"ANTNEST_TEST_NOTE": "1", "ANTNEST_TEST_FAIL": "7"})
    assert done.returncode == 1
    lines = [line for line in log_file.read_text().splitlines() if line.strip()]
    assert len(lines) >= 3
    # Records start with their time (a traceback's continuation lines do not).
    assert TIMESTAMP.match(lines[0])
    notes = [line for line in lines if "] note " in line]
    assert len(notes) == 10 and all(TIMESTAMP.match(line) for line in notes)
    text = log_file.read_text()
    assert "counted.py" in text                                 # the start names the job
    assert re.search(r"local(#\d+)? taskunit 3\] note 3", text)  # host and taskunit prefix
    assert "bad line 7" in text                                 # the failure


def test_log_file_appends_across_runs(tmp_path: Path) -> None:
    log_file = tmp_path / "antnest.log"
    for _ in range(2):
        assert run(tmp_path, "--log-file", str(log_file), COUNTED).returncode == 0
    first_lines = [line for line in log_file.read_text().splitlines() if "counted.py" in line]
    assert len(first_lines) >= 2


# -- progress ------------------------------------------------------------------------------------

def run_on_pty(tmp_path: Path, *args: str, env: Optional[Dict[str, str]] = None) -> str:
    """Run with stderr on a pseudo-TTY (stdout stays a pipe); returns what the TTY got."""
    master, slave = pty.openpty()
    chunks: List[bytes] = []

    def read() -> None:
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                return
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc = start(tmp_path, *args, env=env, stderr=slave)
        os.close(slave)
        done = finish(proc)
        assert done.returncode == 0
        reader.join(10)
    finally:
        os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


SLOWISH = {"ANTNEST_TEST_SLEEP": "0.05"}
REDRAW = re.compile(r"\r(?!\n)")   # a carriage return that is not a TTY's newline


def test_progress_bar_on_a_tty(tmp_path: Path) -> None:
    text = run_on_pty(tmp_path, "--procs", "2", COUNTED, env=SLOWISH)
    assert REDRAW.search(text) and "10/10" in text and "hosts busy" in text


def test_no_progress_on_a_tty(tmp_path: Path) -> None:
    text = run_on_pty(tmp_path, "--no-progress", "--procs", "2", COUNTED, env=SLOWISH)
    assert not REDRAW.search(text) and "hosts busy" not in text


def test_progress_forced_into_a_pipe(tmp_path: Path) -> None:
    done = run(tmp_path, "--progress", "--procs", "2", COUNTED, env=SLOWISH, raw=True)
    assert done.returncode == 0
    assert b"\r" in done.stderr and b"10/10" in done.stderr and b"hosts busy" in done.stderr
    assert done.stdout == SQUARES.encode()                      # the bar never touches stdout


def test_no_bar_in_a_pipe(tmp_path: Path) -> None:
    done = run(tmp_path, "--procs", "2", COUNTED, env=SLOWISH, raw=True)
    assert done.returncode == 0
    assert b"\r" not in done.stderr and b"hosts busy" not in done.stderr  # < 30 s: no line

"""Faults, for real: runners SIGKILLed, sshd killed, a host frozen mid-job, poison and hanging
taskunits, retries, --keep-going, job timeouts, signals to the master, stragglers (issue 4).

Over the SSH fleet and, where no host is involved, over local runners too (`place`, in
tests/plugins/targets.py). Every result must reach the caller exactly once, and no runner may
be left anywhere: `guard` finds this test's runners by PID (tests/plugins/processes.py), local
ones by the marker they inherit, remote ones by their fleet host's HOME.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import pytest

import antnest
from antnest.worker import DEAD_AFTER
from plugins.cli import REPO, BackgroundCli, Outcome
from plugins.fleet import fleet_args
from plugins.processes import Frozen, Identity, Leftovers, bounded, identify, running, runners
from plugins.processes import wait_until
from plugins.targets import Target

IDS_JOB = REPO / "tests" / "jobs_faults" / "ids.py"

BIG = 4000          # taskunits in the jobs faults hit mid-way (~2 ms each: a couple of seconds)
GONE_WITHIN = 5.0   # seconds runners get to disappear (issue 4: "no runner left after 5 s")
STOP_WITHIN = 4.0   # seconds from a failure or a signal to the master's exit ("a couple")

pytestmark = pytest.mark.usefixtures("guard")


@pytest.fixture
def antnest_log() -> Iterator[List[str]]:
    """Messages logged by antnest in this process (INFO and up)."""
    messages: List[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(f"{record.levelname} {record.getMessage()}")

    logger = logging.getLogger("antnest")
    handler = Collect(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


# --- the CLI ----------------------------------------------------------------------------------


class IdsJob:
    """`antnest run tests/jobs_faults/ids.py` in the background with FAULT_* settings, and the
    markers the job leaves (one line per attempt of a marked taskunit)."""

    def __init__(self, place: Target, background: BackgroundCli, tmp_path: Path) -> None:
        self.place = place
        self.background = background
        self.markers = tmp_path / "markers"
        self.markers.mkdir(exist_ok=True)

    def start(self, *flags: str, job_env: Optional[Dict[str, Any]] = None,
              cli_args: Optional[List[str]] = None) -> subprocess.Popen:
        args = self.place.args if cli_args is None else cli_args
        return self.background.start("run", IDS_JOB, *args, *flags,
                                     env={"FAULT_MARKERS": self.markers, **(job_env or {})})

    def finish(self, proc: subprocess.Popen, within: float) -> Outcome:
        return self.background.finish(proc, within)

    def run(self, *flags: str, within: float = 60.0, **kwargs: Any) -> Outcome:
        return self.finish(self.start(*flags, **kwargs), within)

    def attempts(self, kind: str, i: int) -> List[Dict[str, Any]]:
        path = self.markers / f"{kind}-{i}.log"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            pid, start, home, when, *extra = line.split()
            rows.append({"pid": int(pid), "start": start, "home": home, "time": float(when),
                         "extra": extra, "runner": (int(pid), start)})
        return rows

    def wait_for_marker(self, kind: str, i: int, proc: subprocess.Popen, within: float) -> None:
        def seen() -> bool:
            return bool(self.attempts(kind, i)) or proc.poll() is not None
        wait_until(seen, within)
        assert proc.poll() is None, f"the job ended before taskunit {i} started (rc {proc.returncode})"
        assert self.attempts(kind, i), f"taskunit {i} did not start within {within:g} s"


@pytest.fixture
def cli(place: Target, background_cli: BackgroundCli, tmp_path: Path) -> IdsJob:
    return IdsJob(place, background_cli, tmp_path)


def ids(n: int, without: Sequence[int] = ()) -> List[str]:
    skip = set(without)
    return [str(i) for i in range(n) if i not in skip]


# --- the Python API: a fault injected after some results arrived -----------------------------


def identity_2ms(i: int) -> int:
    time.sleep(0.002)
    return i


def consume_with_fault(cluster: antnest.Cluster, fault: Callable[[], None], n: int = BIG,
                       at: Optional[int] = None) -> List[int]:
    """Every result of identity_2ms over range(n), as it arrives; fault() runs once `at` of
    them have (a quarter by default), so it hits the job in the middle."""
    at = n // 4 if at is None else at
    got: List[int] = []
    for value in cluster.imap_unordered(identity_2ms, range(n)):
        got.append(value)
        if len(got) == at:
            fault()
    return got


def assert_exactly_once(got: Sequence[int], n: int) -> None:
    counts = collections.Counter(got)
    duplicated = sorted(i for i, c in counts.items() if c > 1)
    missing = sorted(set(range(n)) - set(counts))
    extra = sorted(set(counts) - set(range(n)))
    assert not duplicated and not missing and not extra, (
        f"{len(got)} results for {n} taskunits: duplicated {duplicated[:20]}, "
        f"missing {missing[:20]}, unexpected {extra[:20]}")


def lost_runners(cluster: antnest.Cluster) -> Dict[str, int]:
    return {h.name: h.lost for h in cluster.hosts}


# === a runner, a host, a link lost mid-job =====================================================


def test_runner_sigkilled_mid_job_every_result_once(place: Target, guard: Leftovers) -> None:
    killed: List[Identity] = []

    def kill_one_runner() -> None:
        if place.ssh:
            assert place.fleet is not None
            home = place.fleet.host("fleet2").home
            sessions = set(place.fleet.session_pids("fleet2"))
            candidates = [p for p in runners(homes={str(home)}) if p in sessions]
        else:
            candidates = guard.runners()
        assert candidates, "no runner found to kill"
        killed.extend(identify(candidates[:1]))
        os.kill(candidates[0], signal.SIGKILL)

    cluster = place.cluster()
    try:
        got = bounded(lambda: consume_with_fault(cluster, kill_one_runner), 60, "the job")
        lost = lost_runners(cluster)
    finally:
        bounded(cluster.shutdown, 30, "shutdown")
    assert_exactly_once(got, BIG)
    assert not running(killed)
    if place.ssh:
        assert lost["fleet2"] >= 1, lost
    else:
        assert sum(lost.values()) >= 1, lost
    guard.assert_runners_gone()


def test_host_killed_mid_job_every_result_once(ssh_target: Target, antnest_log: List[str],
                                               guard: Leftovers) -> None:
    fleet = ssh_target.fleet
    assert fleet is not None
    cluster = ssh_target.cluster()
    try:
        got = bounded(lambda: consume_with_fault(cluster, lambda: fleet.kill_host("fleet2")),
                      60, "the job")
        lost = lost_runners(cluster)
        bounded(cluster.shutdown, 30, "shutdown")
    finally:
        bounded(lambda: cluster.shutdown(wait=False), 30, "shutdown")
        fleet.restart_host("fleet2")
    assert_exactly_once(got, BIG)
    assert lost["fleet2"] >= 1, lost
    assert lost["fleet1"] == lost["fleet3"] == 0, lost
    assert any("fleet2" in m and "lost" in m for m in antnest_log), antnest_log
    guard.assert_runners_gone()


def test_host_rebooted_mid_job_is_reconnected(ssh_target: Target, guard: Leftovers) -> None:
    """sshd killed and back at once (a quick reboot): the host's slots reconnect and work on."""
    fleet = ssh_target.fleet
    assert fleet is not None
    n = 2 * BIG
    done_at_restart: List[int] = []

    def reboot() -> None:
        fleet.kill_host("fleet2")
        fleet.restart_host("fleet2")
        done_at_restart.append({h.name: h.done for h in cluster.hosts}["fleet2"])

    cluster = ssh_target.cluster()
    try:
        got = bounded(lambda: consume_with_fault(cluster, reboot, n=n, at=n // 5), 60, "the job")
        hosts = {h.name: h for h in cluster.hosts}
    finally:
        bounded(lambda: cluster.shutdown(wait=False), 30, "shutdown")
        if not fleet.host("fleet2").pid:
            fleet.restart_host("fleet2")
    assert_exactly_once(got, n)
    assert hosts["fleet2"].lost >= 1
    assert hosts["fleet2"].state == "connected", hosts["fleet2"]
    assert hosts["fleet2"].done > done_at_restart[0], "fleet2 did no work after it came back"
    guard.assert_runners_gone()


def test_host_cut_off_mid_job_finishes_within_dead_peer_time(
        ssh_target: Target, frozen: Frozen, antnest_log: List[str], guard: Leftovers) -> None:
    """SIGSTOP fleet3's sshd sessions and runners: nothing is closed, the host just goes
    silent. Its taskunits must come back from the others within DEAD_AFTER (+ slack)."""
    fleet = ssh_target.fleet
    assert fleet is not None
    cut_at: List[float] = []

    def cut_off() -> None:
        pids = fleet.session_pids("fleet3")
        assert pids
        frozen.freeze(pids)
        cut_at.append(time.monotonic())

    # No speculation: copies of the silent host's batches would hide the dead-peer detection.
    cluster = ssh_target.cluster(connect_timeout=3, speculate=False)
    try:
        got = bounded(lambda: consume_with_fault(cluster, cut_off), DEAD_AFTER + 50, "the job")
        took = time.monotonic() - cut_at[0]
        lost = lost_runners(cluster)
        bounded(cluster.shutdown, 30, "shutdown with a host cut off")
    finally:
        bounded(lambda: cluster.shutdown(wait=False), 30, "shutdown")
        frozen.release()
    assert_exactly_once(got, BIG)
    assert took <= DEAD_AFTER + 10, f"the job took {took:.1f} s after the cut (DEAD_AFTER {DEAD_AFTER:g} s)"
    assert lost["fleet3"] >= 1, lost
    assert any("fleet3" in m and "lost" in m for m in antnest_log), antnest_log
    guard.assert_runners_gone()


def test_every_host_lost_exits_3(ssh_target: Target, tmp_path: Path,
                                 background_cli: BackgroundCli, guard: Leftovers) -> None:
    fleet = ssh_target.fleet
    assert fleet is not None
    one_host = fleet.write_inventory(tmp_path / "fleet3.yaml", names=["fleet3"])
    cli = IdsJob(ssh_target, background_cli, tmp_path)
    args = [*fleet_args(fleet, one_host), "--procs", "2"]
    try:
        proc = cli.start(job_env={"FAULT_N": 20000, "FAULT_TOUCH": 300}, cli_args=args)
        cli.wait_for_marker("touch", 300, proc, 30)
        fleet.kill_host("fleet3")
        result = cli.finish(proc, 40)
    finally:
        fleet.restart_host("fleet3")
    assert result.rc == 3, result.err
    assert "no host could be used" in result.err
    assert "taskunits done" in result.err and "not started" in result.err, \
        f"no account of what was done and not done:\n{result.err}"
    guard.assert_runners_gone()


# === poison, hanging and failing taskunits =====================================================


def test_poison_taskunit_with_keep_going_fails_after_max_lost(place: Target, cli: IdsJob,
                                                              guard: Leftovers) -> None:
    n, poison = 300, 137
    result = cli.run("--max-lost", "1", "--keep-going",
                     job_env={"FAULT_N": n, "FAULT_POISON": poison, "FAULT_SLEEP": 0.001})
    assert result.rc == 1, result.err
    assert result.lines == ids(n, without=[poison])
    attempts = cli.attempts("poison", poison)
    assert len(attempts) == 2, attempts  # run once, requeued --max-lost 1 time
    match = re.search(r"taskunit 137\b.*killed (\d+) runners", result.err)
    assert match, result.err
    assert int(match.group(1)) == 2
    assert "1 of 300 taskunits failed" in result.err
    if place.ssh:  # requeued on another host when there is one
        assert attempts[0]["home"] != attempts[1]["home"], attempts
    guard.assert_runners_gone()


def test_poison_taskunit_without_keep_going_stops_the_job(place: Target, cli: IdsJob,
                                                          guard: Leftovers) -> None:
    n, poison, last = 20000, 100, 19999  # ~7 s of work in all: far more than it may take
    result = cli.run("--max-lost", "1", within=30,
                     job_env={"FAULT_N": n, "FAULT_POISON": poison, "FAULT_TOUCH": last})
    assert result.rc == 1, result.err
    assert re.search(r"taskunit 100\b.*killed 2 runners", result.err), result.err
    attempts = cli.attempts("poison", poison)
    assert len(attempts) == 2, attempts
    assert not cli.attempts("touch", last), "the job ran to its end instead of stopping"
    stopping = result.ended - attempts[-1]["time"]
    assert stopping < STOP_WITHIN, f"the master exited {stopping:.1f} s after the failure"
    assert len(result.lines) < n
    guard.assert_runners_gone()


def test_hanging_taskunit_is_stopped_by_task_timeout(place: Target, cli: IdsJob,
                                                     guard: Leftovers) -> None:
    n, hang = 200, 37
    result = cli.run("--task-timeout", "1", within=30,
                     job_env={"FAULT_N": n, "FAULT_HANG": hang})
    assert result.rc == 1, result.err
    assert "taskunit 37" in result.err and "task timeout" in result.err, result.err
    hung = cli.attempts("hang", hang)
    assert hung
    # A speculative copy may have started too (the first attempt straggles): every runner
    # that ran the taskunit must be gone, killed rather than abandoned.
    runners = [attempt["runner"] for attempt in hung]
    assert wait_until(lambda: not running(runners), 2), \
        f"runners that ran the hanging taskunit still run: {running(runners)}"
    stopping = result.ended - hung[0]["time"] - 1
    assert stopping < STOP_WITHIN, f"the master exited {stopping:.1f} s after the timeout"
    guard.assert_runners_gone()


def test_retries_move_a_failed_taskunit_to_another_host(place: Target, cli: IdsJob) -> None:
    # late in the input and not too fast: every host has joined when it fails, so "another
    # host" is possible (a retry while the others still boot may rightly stay where it is)
    n, flaky = 300, 240
    result = cli.run("--retries", "1", job_env={"FAULT_N": n, "FAULT_FAIL_ONCE": flaky,
                                                "FAULT_SLEEP": 0.01})
    assert result.rc == 0, result.err
    assert result.lines == ids(n)
    attempts = cli.attempts("fail_once", flaky)
    assert len(attempts) == 2, attempts
    assert re.search(r"taskunit 240 failed on \S+ .*retry 1 of 1", result.err), result.err
    if place.ssh:
        assert attempts[0]["home"] != attempts[1]["home"], attempts


def test_failing_taskunit_without_retries_fails_fast_with_its_traceback(place: Target,
                                                                          cli: IdsJob,
                                                                          guard: Leftovers) -> None:
    n = 20000
    result = cli.run(within=30, job_env={"FAULT_N": n, "FAULT_FAIL": 5, "FAULT_TOUCH": n - 1})
    assert result.rc == 1, result.err
    host = "fleet" if place.ssh else "local"
    assert re.search(rf"taskunit 5 \(data 5\) failed on {host}", result.err), result.err
    assert "ValueError: taskunit 5 fails on purpose" in result.err
    assert "Traceback" in result.err and "in processor" in result.err
    assert not cli.attempts("touch", n - 1), "the job ran to its end instead of stopping"
    guard.assert_runners_gone()


def test_keep_going_summarises_every_failure(place: Target, cli: IdsJob, guard: Leftovers) -> None:
    n, failing = 300, [11, 22, 233]
    result = cli.run("--keep-going", job_env={"FAULT_N": n,
                                              "FAULT_FAIL": ",".join(map(str, failing))})
    assert result.rc == 1, result.err
    assert result.lines == ids(n, without=failing)
    assert "3 of 300 taskunits failed" in result.err, result.err
    for i in failing:
        assert re.search(rf"taskunit {i} \(data {i}\) failed on .*fails on purpose", result.err), \
            result.err
    guard.assert_runners_gone()


# === the whole job: --timeout and signals =======================================================


def test_job_timeout_exits_4_and_leaves_no_runner(place: Target, cli: IdsJob,
                                                  guard: Leftovers) -> None:
    result = cli.run("--timeout", "1", within=30,
                     job_env={"FAULT_N": 4000, "FAULT_SLEEP": 0.005})  # ~4 s of work
    assert result.rc == 4, result.err
    assert "timed out" in result.err
    assert len(result.lines) < 4000
    guard.assert_runners_gone()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_to_master_stops_every_runner(place: Target, cli: IdsJob, sig: int,
                                             code: int, guard: Leftovers) -> None:
    proc = cli.start(job_env={"FAULT_N": 20000, "FAULT_TOUCH": 300})
    cli.wait_for_marker("touch", 300, proc, 30)
    before = identify(guard.runners())
    assert before, "no runner found while the job runs"
    sent = time.time()
    proc.send_signal(sig)
    result = cli.finish(proc, 30)
    assert result.rc == code, result.err
    assert result.ended - sent < STOP_WITHIN, f"exited {result.ended - sent:.1f} s after the signal"
    assert ("interrupted" if sig == signal.SIGINT else "terminated") in result.err, result.err
    guard.assert_runners_gone(seen=before)


def test_sigkilled_master_runners_exit_on_their_own(place: Target, cli: IdsJob,
                                                    guard: Leftovers) -> None:
    proc = cli.start(job_env={"FAULT_N": 20000, "FAULT_TOUCH": 300})
    cli.wait_for_marker("touch", 300, proc, 30)
    before = identify(guard.runners())
    assert before, "no runner found while the job runs"
    proc.kill()
    proc.wait(10)
    guard.assert_runners_gone(GONE_WITHIN, seen=before)
    if place.ssh:  # nothing written on the hosts either
        assert place.fleet is not None
        assert not [p for h in place.fleet.hosts for p in h.home.iterdir()]


# === stragglers ==================================================================================


SLOW = 4.0  # seconds the straggler's first attempt sleeps


def test_straggler_is_speculated_and_counted_once(place: Target, cli: IdsJob,
                                                  guard: Leftovers) -> None:
    n, slow = 400, 200
    result = cli.run("-v", job_env={"FAULT_N": n, "FAULT_SLOW_ONCE": slow,
                                    "FAULT_SLOW_SECONDS": SLOW})
    assert result.rc == 0, result.err
    assert result.lines == ids(n)
    assert "copying them to" in result.err, result.err
    attempts = cli.attempts("slow", slow)
    first = attempts[0]
    assert result.ended - first["time"] < SLOW, \
        f"finished {result.ended - first['time']:.1f} s after the slow attempt started"
    assert not any("done" in a["extra"] for a in attempts), "the slow attempt was not stopped"
    assert len(attempts) == 2, attempts  # the slow one and its copy
    assert wait_until(lambda: not running([first["runner"]]), 2), "the losing runner still runs"
    guard.assert_runners_gone()


def test_no_speculate_waits_for_the_straggler(place: Target, cli: IdsJob) -> None:
    n, slow = 400, 200
    result = cli.run("-v", "--no-speculate",
                     job_env={"FAULT_N": n, "FAULT_SLOW_ONCE": slow, "FAULT_SLOW_SECONDS": 2})
    assert result.rc == 0, result.err
    assert result.lines == ids(n)
    assert "copying them to" not in result.err
    attempts = cli.attempts("slow", slow)
    assert [a["extra"] for a in attempts] == [[], ["done"]], attempts  # one attempt, finished

"""Faults, for real: runners SIGKILLed, sshd killed, a host frozen mid-job, poison and hanging
taskunits, retries, --keep-going, job timeouts, signals to the master, stragglers (issue 4).

Over the SSH fleet (tests/conftest.py) and, where no host is involved, over local runners too.
Every result must reach the caller exactly once, and no runner may be left anywhere.

Runners are found by PID: "antnest-runner" is on their command line, and their environment
tells ours from anybody else's (HOME is a fleet host's home over SSH, because each fleet sshd
sets it; local runners inherit TAG_VAR from this process or from the CLI it starts).
"""
from __future__ import annotations

import collections
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

import antnest
from antnest.testing import SshdFleet, pid_alive, processes_matching
from antnest.worker import DEAD_AFTER

REPO = Path(__file__).resolve().parents[1]
IDS_JOB = Path(__file__).resolve().parent / "jobs_faults" / "ids.py"

RUNNER_MARK = "antnest-runner"
TAG_VAR = "ANTNEST_FAULT_TEST_TAG"
TAG = f"faults-{os.getpid()}-{uuid.uuid4().hex[:8]}"

BIG = 4000          # taskunits in the jobs faults hit mid-way (~2 ms each: a couple of seconds)
GONE_WITHIN = 5.0   # seconds runners get to disappear (issue 4: "no runner left after 5 s")
STOP_WITHIN = 4.0   # seconds from a failure or a signal to the master's exit ("a couple")
FLEET_HOMES: set = set()  # every fleet host's HOME, once a test has used the fleet


# --- finding our processes ------------------------------------------------------------------


def _environ(pid: int) -> Optional[Dict[str, str]]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env = {}
    for entry in raw.split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def our_runners(homes: Optional[Sequence[Path]] = None) -> List[int]:
    """Runner PIDs of this test run: on the given fleet homes (default: any fleet host), or
    local ones carrying our tag."""
    wanted = {str(h) for h in homes} if homes is not None else FLEET_HOMES
    found = []
    for pid in processes_matching(RUNNER_MARK):
        env = _environ(pid)
        if env is None or not pid_alive(pid):
            continue
        if env.get("HOME") in wanted or (homes is None and env.get(TAG_VAR) == TAG):
            found.append(pid)
    return found


def start_time(pid: int) -> Optional[str]:
    """The process's start time (clock ticks since boot), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


Identity = Tuple[int, Optional[str]]  # pid and start time: PIDs wrap around fast here


def identify(pids: Sequence[int]) -> List[Identity]:
    return [(pid, start_time(pid)) for pid in pids]


def running(identities: Sequence[Identity]) -> List[int]:
    """The PIDs among `identities` that still run (the same processes, not zombies)."""
    return [pid for pid, start in identities
            if start is not None and pid_alive(pid) and start_time(pid) == start]


def wait_until(predicate: Callable[[], Any], seconds: float, step: float = 0.05) -> Any:
    """Poll until predicate() is truthy; its last value either way."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def assert_no_runner_left(within: float = GONE_WITHIN, seen: Sequence[Identity] = ()) -> None:
    """No runner of ours within `within` seconds: none found by mark, and none of those `seen`
    earlier (an exiting process loses its command line before it is gone)."""
    gone = wait_until(lambda: not our_runners() and not running(seen), within)
    assert gone, (f"runners still alive {within:g} s later: "
                  f"{describe(sorted(set(our_runners()) | set(running(seen))))}")


def describe(pids: Sequence[int]) -> str:
    rows = []
    for pid in pids:
        env = _environ(pid) or {}
        rows.append(f"pid {pid} HOME={env.get('HOME')}")
    return "; ".join(rows) or "none"


def bounded(fn: Callable[[], Any], seconds: float, what: str) -> Any:
    """Run fn in a thread; fail (instead of hanging the suite) when it takes longer."""
    box: Dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=work, name=f"bounded {what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{what} did not finish within {seconds:g} s: it hangs")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --- where jobs run ---------------------------------------------------------------------------


@dataclass
class Target:
    """The SSH fleet (3 hosts x 2 runners) or local runners (3)."""

    kind: str
    fleet: Optional[SshdFleet] = None
    inventory: Optional[Path] = None

    @property
    def ssh(self) -> bool:
        return self.kind == "ssh"

    def cli_args(self) -> List[str]:
        if not self.ssh:
            return ["--procs", "3"]
        assert self.fleet is not None
        return ["-i", str(self.inventory), "--known-hosts", str(self.fleet.known_hosts),
                "--procs", "2"]

    def cluster(self, **options: Any) -> antnest.Cluster:
        if not self.ssh:
            return antnest.Cluster(procs=3, **options)
        assert self.fleet is not None
        return antnest.Cluster(self.inventory, known_hosts=[self.fleet.known_hosts], procs=2,
                               **options)


def _use_fleet(fleet: SshdFleet) -> None:
    FLEET_HOMES.update(str(h.home) for h in fleet.hosts)


@pytest.fixture(params=["ssh", "local"])
def place(request: pytest.FixtureRequest) -> Target:
    if request.param == "local":
        return Target("local")
    fleet = request.getfixturevalue("fleet")
    _use_fleet(fleet)
    return Target("ssh", fleet, request.getfixturevalue("fleet_inventory"))


@pytest.fixture
def ssh_target(fleet: SshdFleet, fleet_inventory: Path) -> Target:
    _use_fleet(fleet)
    return Target("ssh", fleet, fleet_inventory)


@dataclass
class Spawned:
    """Processes a test started (CLI masters) and froze (sshd sessions): undone at teardown."""

    procs: List[subprocess.Popen] = field(default_factory=list)
    stopped: List[int] = field(default_factory=list)


@pytest.fixture(autouse=True)
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spawned]:
    """Tag local runners; afterwards kill, by PID, whatever a failed test left running."""
    monkeypatch.setenv(TAG_VAR, TAG)
    record = Spawned()
    yield record
    for pid in record.stopped:
        for sig in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    for proc in record.procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    for pid in our_runners():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


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


@dataclass
class Outcome:
    rc: int
    out: str
    err: str
    ended: float     # time.time() at exit, comparable with the markers' timestamps

    @property
    def lines(self) -> List[str]:
        return self.out.splitlines()


class Cli:
    """`python -m antnest run tests/jobs_faults/ids.py` with FAULT_* settings."""

    def __init__(self, place: Target, tmp_path: Path, spawned: Spawned) -> None:
        self.place = place
        self.tmp = tmp_path
        self.markers = tmp_path / "markers"
        self.markers.mkdir(exist_ok=True)
        self.spawned = spawned
        self._files: Dict[subprocess.Popen, tuple] = {}

    def start(self, *flags: str, job_env: Optional[Dict[str, Any]] = None,
              cli_args: Optional[List[str]] = None) -> subprocess.Popen:
        env = dict(os.environ)
        env.update({"FAULT_MARKERS": str(self.markers), TAG_VAR: TAG})
        env.update({k: str(v) for k, v in (job_env or {}).items()})
        n = len(self._files)
        out = open(self.tmp / f"cli{n}.out", "w+")
        err = open(self.tmp / f"cli{n}.err", "w+")
        args = self.place.cli_args() if cli_args is None else cli_args
        proc = subprocess.Popen(
            [sys.executable, "-m", "antnest", "run", str(IDS_JOB), *args, *flags],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )
        self.spawned.procs.append(proc)
        self._files[proc] = (out, err)
        return proc

    def finish(self, proc: subprocess.Popen, within: float) -> Outcome:
        try:
            rc = proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            out, err = self._read(proc)
            pytest.fail(f"the CLI did not exit within {within:g} s; stderr:\n{err[-3000:]}")
        ended = time.time()
        out, err = self._read(proc)
        return Outcome(rc, out, err, ended)

    def run(self, *flags: str, within: float = 60.0, **kwargs: Any) -> Outcome:
        return self.finish(self.start(*flags, **kwargs), within)

    def _read(self, proc: subprocess.Popen) -> tuple:
        texts = []
        for handle in self._files[proc]:
            with handle:
                handle.seek(0)
                texts.append(handle.read())
        return tuple(texts)

    # markers left by the job (see tests/jobs_faults/ids.py)
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
def cli(place: Target, tmp_path: Path, spawned: Spawned) -> Cli:
    return Cli(place, tmp_path, spawned)


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


def test_runner_sigkilled_mid_job_every_result_once(place: Target) -> None:
    killed: List[Identity] = []

    def kill_one_runner() -> None:
        if place.ssh:
            assert place.fleet is not None
            home = place.fleet.host("fleet2").home
            sessions = set(place.fleet.session_pids("fleet2"))
            candidates = [p for p in our_runners([home]) if p in sessions]
        else:
            candidates = our_runners()
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
    assert_no_runner_left()


def test_host_killed_mid_job_every_result_once(ssh_target: Target,
                                               antnest_log: List[str]) -> None:
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
    assert_no_runner_left()


def test_host_rebooted_mid_job_is_reconnected(ssh_target: Target) -> None:
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
    assert_no_runner_left()


def test_host_cut_off_mid_job_finishes_within_dead_peer_time(
        ssh_target: Target, spawned: Spawned, antnest_log: List[str]) -> None:
    """SIGSTOP fleet3's sshd sessions and runners: nothing is closed, the host just goes
    silent. Its taskunits must come back from the others within DEAD_AFTER (+ slack)."""
    fleet = ssh_target.fleet
    assert fleet is not None
    cut_at: List[float] = []

    def cut_off() -> None:
        pids = fleet.session_pids("fleet3")
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        spawned.stopped.extend(pids)
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
        for pid in spawned.stopped:
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:  # a session that was exiting already
                    pass
        spawned.stopped.clear()
    assert_exactly_once(got, BIG)
    assert took <= DEAD_AFTER + 10, f"the job took {took:.1f} s after the cut (DEAD_AFTER {DEAD_AFTER:g} s)"
    assert lost["fleet3"] >= 1, lost
    assert any("fleet3" in m and "lost" in m for m in antnest_log), antnest_log
    assert_no_runner_left()


def test_every_host_lost_exits_3(ssh_target: Target, tmp_path: Path, spawned: Spawned) -> None:
    fleet = ssh_target.fleet
    assert fleet is not None
    one_host = fleet.write_inventory(tmp_path / "fleet3.yaml", names=["fleet3"])
    cli = Cli(ssh_target, tmp_path, spawned)
    args = ["-i", str(one_host), "--known-hosts", str(fleet.known_hosts), "--procs", "2"]
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
    assert_no_runner_left()


# === poison, hanging and failing taskunits =====================================================


def test_poison_taskunit_with_keep_going_fails_after_max_lost(place: Target, cli: Cli) -> None:
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
    assert_no_runner_left()


def test_poison_taskunit_without_keep_going_stops_the_job(place: Target, cli: Cli) -> None:
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
    assert_no_runner_left()


def test_hanging_taskunit_is_stopped_by_task_timeout(place: Target, cli: Cli) -> None:
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
    assert_no_runner_left()


def test_retries_move_a_failed_taskunit_to_another_host(place: Target, cli: Cli) -> None:
    n, flaky = 300, 42
    result = cli.run("--retries", "1", job_env={"FAULT_N": n, "FAULT_FAIL_ONCE": flaky})
    assert result.rc == 0, result.err
    assert result.lines == ids(n)
    attempts = cli.attempts("fail_once", flaky)
    assert len(attempts) == 2, attempts
    assert re.search(r"taskunit 42 failed on \S+ .*retry 1 of 1", result.err), result.err
    if place.ssh:
        assert attempts[0]["home"] != attempts[1]["home"], attempts


def test_failing_taskunit_without_retries_fails_fast_with_its_traceback(place: Target,
                                                                          cli: Cli) -> None:
    n = 20000
    result = cli.run(within=30, job_env={"FAULT_N": n, "FAULT_FAIL": 5, "FAULT_TOUCH": n - 1})
    assert result.rc == 1, result.err
    host = "fleet" if place.ssh else "local"
    assert re.search(rf"taskunit 5 \(data 5\) failed on {host}", result.err), result.err
    assert "ValueError: taskunit 5 fails on purpose" in result.err
    assert "Traceback" in result.err and "in processor" in result.err
    assert not cli.attempts("touch", n - 1), "the job ran to its end instead of stopping"
    assert_no_runner_left()


def test_keep_going_summarises_every_failure(place: Target, cli: Cli) -> None:
    n, failing = 300, [11, 22, 233]
    result = cli.run("--keep-going", job_env={"FAULT_N": n,
                                              "FAULT_FAIL": ",".join(map(str, failing))})
    assert result.rc == 1, result.err
    assert result.lines == ids(n, without=failing)
    assert "3 of 300 taskunits failed" in result.err, result.err
    for i in failing:
        assert re.search(rf"taskunit {i} \(data {i}\) failed on .*fails on purpose", result.err), \
            result.err
    assert_no_runner_left()


# === the whole job: --timeout and signals =======================================================


def test_job_timeout_exits_4_and_leaves_no_runner(place: Target, cli: Cli) -> None:
    result = cli.run("--timeout", "1", within=30,
                     job_env={"FAULT_N": 4000, "FAULT_SLEEP": 0.005})  # ~4 s of work
    assert result.rc == 4, result.err
    assert "timed out" in result.err
    assert len(result.lines) < 4000
    assert_no_runner_left()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_to_master_stops_every_runner(place: Target, cli: Cli, sig: int,
                                             code: int) -> None:
    proc = cli.start(job_env={"FAULT_N": 20000, "FAULT_TOUCH": 300})
    cli.wait_for_marker("touch", 300, proc, 30)
    before = identify(our_runners())
    assert before, "no runner found while the job runs"
    sent = time.time()
    proc.send_signal(sig)
    result = cli.finish(proc, 30)
    assert result.rc == code, result.err
    assert result.ended - sent < STOP_WITHIN, f"exited {result.ended - sent:.1f} s after the signal"
    assert ("interrupted" if sig == signal.SIGINT else "terminated") in result.err, result.err
    assert_no_runner_left(seen=before)


def test_sigkilled_master_runners_exit_on_their_own(place: Target, cli: Cli) -> None:
    proc = cli.start(job_env={"FAULT_N": 20000, "FAULT_TOUCH": 300})
    cli.wait_for_marker("touch", 300, proc, 30)
    before = identify(our_runners())
    assert before, "no runner found while the job runs"
    proc.kill()
    proc.wait(10)
    assert_no_runner_left(GONE_WITHIN, seen=before)
    if place.ssh:  # nothing written on the hosts either
        assert place.fleet is not None
        assert not [p for h in place.fleet.hosts for p in h.home.iterdir()]


# === stragglers ==================================================================================


SLOW = 4.0  # seconds the straggler's first attempt sleeps


def test_straggler_is_speculated_and_counted_once(place: Target, cli: Cli) -> None:
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
    assert_no_runner_left()


def test_no_speculate_waits_for_the_straggler(place: Target, cli: Cli) -> None:
    n, slow = 400, 200
    result = cli.run("-v", "--no-speculate",
                     job_env={"FAULT_N": n, "FAULT_SLOW_ONCE": slow, "FAULT_SLOW_SECONDS": 2})
    assert result.rc == 0, result.err
    assert result.lines == ids(n)
    assert "copying them to" not in result.err
    attempts = cli.attempts("slow", slow)
    assert [a["extra"] for a in attempts] == [[], ["done"]], attempts  # one attempt, finished

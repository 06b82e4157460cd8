"""This test's processes: its runners (found by PID, never by name alone), the leftover guard
that fails a test when a runner or a file outlives its run, and waits that cannot hang.

A runner has "antnest-runner" on its command line (bootstrap.STAGE1). Which runners are this
test's is told by where they run: local runners inherit MARK_VARIABLE (set per test by
`mark_runners`) from this process or the CLI it starts; remote ones run in sessions of the
fleet's daemons, or with a fleet host's HOME (each fleet sshd gives its sessions their own,
so a runner orphaned by a killed daemon is still found).
"""
from __future__ import annotations

import os
import pwd
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Collection, Dict, Iterator, List, Optional, Sequence, Set
from typing import Tuple

import pytest

from antnest.testing import SshdFleet, pid_alive, processes_matching

RUNNER_MARK = "antnest-runner"      # in every runner's command line (bootstrap.STAGE1)
MARK_VARIABLE = "ANTNEST_TEST_RUN"  # env marker: tells this test's local runners from others'
GRACE = 5.0                         # seconds a runner may take to go after its master

# Homes of the fleet hosts the fault tests have run on (their guards look for runners there).
FLEET_HOMES: Set[str] = set()


def remember_fleet(fleet: SshdFleet) -> None:
    """Count runners with any of `fleet`'s homes as ours from now on (fault tests' guards)."""
    FLEET_HOMES.update(str(h.home) for h in fleet.hosts)


# --- finding processes --------------------------------------------------------------------------


def environ(pid: int) -> Optional[Dict[str, str]]:
    """The process's environment, or None once it is gone (or not ours to read)."""
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


def runners(mark: Optional[str] = None, sessions: Collection[int] = (),
            homes: Collection[str] = ()) -> List[int]:
    """Live runner PIDs that are ours: among `sessions`, carrying `mark`, or with HOME in
    `homes`."""
    found = []
    for pid in processes_matching(RUNNER_MARK):
        if pid in sessions:
            if pid_alive(pid):
                found.append(pid)
            continue
        env = environ(pid)
        if env is None or not pid_alive(pid):
            continue
        if (mark is not None and env.get(MARK_VARIABLE) == mark) or env.get("HOME") in homes:
            found.append(pid)
    return found


def remote_runners(fleet: SshdFleet, name: str) -> List[int]:
    """The runner interpreters (python, not the shell that starts one) under a fleet daemon."""
    found = []
    for pid in runners(sessions=set(fleet.session_pids(name))):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text()
        except OSError:
            continue
        if comm.startswith("python"):
            found.append(pid)
    return found


def ssh_processes(marker: str) -> List[int]:
    """ssh client processes (or the shells that run one) whose command line carries `marker`,
    e.g. the path of this test's own ssh_config."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and os.path.basename(cmdline[0]) in (b"ssh", b"sh") and \
                marker.encode() in b" ".join(cmdline):
            found.append(int(entry))
    return found


def describe(pids: Sequence[int]) -> str:
    """One line a process: PID, HOME and the start of its command line."""
    rows = []
    for pid in pids:
        env = environ(pid) or {}
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") \
                .decode(errors="replace")[:120]
        except OSError:
            cmdline = "(gone)"
        rows.append(f"{pid} HOME={env.get('HOME')}: {cmdline}")
    return "\n  ".join(rows) or "none"


Identity = Tuple[int, Optional[str]]  # pid and start time: PIDs wrap around fast here


def start_time(pid: int) -> Optional[str]:
    """The process's start time (clock ticks since boot), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def identify(pids: Sequence[int]) -> List[Identity]:
    return [(pid, start_time(pid)) for pid in pids]


def running(identities: Sequence[Identity]) -> List[int]:
    """The PIDs among `identities` that still run (the same processes, not zombies)."""
    return [pid for pid, start in identities
            if start is not None and pid_alive(pid) and start_time(pid) == start]


def kill(pids: Sequence[int], *signals: int) -> None:
    """Send each signal (default SIGKILL) to each PID; one that is gone already is fine."""
    for pid in pids:
        for sig in signals or (signal.SIGKILL,):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


# --- waits with a bound ---------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], seconds: float, step: float = 0.05) -> Any:
    """Poll until predicate() is truthy or `seconds` pass; its last value either way."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def wait_gone(pids: Sequence[int], seconds: float) -> List[int]:
    """The PIDs still alive (not zombies) after waiting up to `seconds` for them to go."""
    last: List[int] = list(pids)

    def gone() -> bool:
        last[:] = [p for p in pids if pid_alive(p)]
        return not last
    wait_until(gone, seconds)
    return last


def bounded(fn: Callable[[], Any], seconds: float, what: str) -> Any:
    """fn() on a daemon thread; its result, or a test failure (not a hang) past `seconds`."""
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


# --- the leftover guard ---------------------------------------------------------------------------


class Leftovers:
    """Snapshots before a test; after it, waits GRACE for runners to go, then lists what stayed.

    Runners counted are this test's own: local ones carry its environment marker, remote ones
    are children of the fleet's daemons (the fleet belongs to this pytest session alone) or
    run with one of `homes`. With a fleet, files are looked for where the fleet's sessions
    write: the hosts' home directories and their private $TMPDIRs (both the fleet's own, so
    no other program's files show up), and the top of the login directory sessions start in.
    /tmp itself is not watched: on a shared machine anything may write there, and a remote
    session's temporary files go to its $TMPDIR; that the runner never names /tmp is checked
    on its source (test_everyday).
    """

    def __init__(self, mark: str, fleet: Optional[SshdFleet],
                 homes: Collection[str] = ()) -> None:
        self.mark = mark
        self.fleet = fleet
        self.homes = homes
        # sshd starts sessions in the user's login directory (the fleet only changes $HOME)
        self.login_dir = Path(pwd.getpwuid(os.getuid()).pw_dir)
        self.login_before = self._login() if fleet is not None else set()
        self.homes_before = self._homes()

    def runners(self) -> List[int]:
        sessions: Set[int] = set()
        if self.fleet is not None:
            for host in self.fleet.hosts:
                sessions.update(self.fleet.session_pids(host.name))
        return runners(self.mark, sessions, self.homes)

    def wait_for_runners_to_go(self, grace: float = GRACE,
                               seen: Sequence[Identity] = ()) -> List[int]:
        """Runners still there after `grace` seconds: found now, or among those `seen` earlier
        (an exiting process loses its command line before it is gone)."""
        last: List[int] = []

        def gone() -> bool:
            last[:] = sorted(set(self.runners()) | set(running(seen)))
            return not last
        wait_until(gone, grace)
        return last

    def assert_runners_gone(self, within: float = GRACE, seen: Sequence[Identity] = ()) -> None:
        left = self.wait_for_runners_to_go(within, seen)
        if left:
            pytest.fail(f"runner processes outlived the run ({within:g} s later):\n  "
                        + describe(left))

    def new_files(self) -> List[str]:
        if self.fleet is None:  # local runs: only processes are checked
            return []
        new = [str(self.login_dir / name) for name in sorted(self._login() - self.login_before)]
        after = self._homes()
        for name, paths in self.homes_before.items():
            new += [f"{name}:{p}" for p in sorted(after.get(name, set()) - paths)]
        return new

    def check(self) -> None:
        self.assert_runners_gone()
        new = self.new_files()
        if new:
            pytest.fail("files appeared during the run: " + ", ".join(new))

    def kill_runners(self) -> None:
        """SIGKILL, by PID, every runner of this test still there (after a failed test)."""
        kill(self.runners())

    def _login(self) -> Set[str]:
        try:
            return set(os.listdir(self.login_dir))
        except OSError:
            return set()

    def _homes(self) -> Dict[str, Set[str]]:
        if self.fleet is None:
            return {}
        listing = {}
        for host in self.fleet.hosts:
            paths = set()
            for label, top in (("~", host.home), ("$TMPDIR", host.tmp)):
                if top is None:
                    continue
                for root, dirs, files in os.walk(top):
                    for entry in dirs + files:
                        paths.add(f"{label}/" + os.path.relpath(os.path.join(root, entry), top))
            listing[host.name] = paths
        return listing


def mark_runners(monkeypatch: pytest.MonkeyPatch, fleet: Optional[SshdFleet] = None,
                 homes: Collection[str] = ()) -> Leftovers:
    """A guard for this test; marks the environment its local runners and CLIs inherit."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK_VARIABLE, mark)
    return Leftovers(mark, fleet, homes)


@pytest.fixture
def leftovers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Leftovers]:
    """No-fleet guard: this test's local runners must all be gone after it."""
    guard = mark_runners(monkeypatch)
    yield guard
    guard.check()


@pytest.fixture
def fleet_leftovers(fleet: SshdFleet, monkeypatch: pytest.MonkeyPatch) -> Iterator[Leftovers]:
    """Fleet guard: no runner under the fleet's daemons, no new file in their homes or /tmp."""
    guard = mark_runners(monkeypatch, fleet)
    yield guard
    guard.check()


class Frozen:
    """Processes a test SIGSTOPped (a host gone silent): killed and continued by `release`."""

    def __init__(self) -> None:
        self.pids: List[int] = []

    def freeze(self, pids: Sequence[int]) -> None:
        kill(pids, signal.SIGSTOP)
        self.pids.extend(pids)

    def release(self) -> None:
        kill(self.pids, signal.SIGKILL, signal.SIGCONT)  # one that was exiting already is fine
        self.pids.clear()


@pytest.fixture
def frozen() -> Iterator[Frozen]:
    """Freeze processes for a test; whatever it leaves frozen is killed afterwards."""
    record = Frozen()
    yield record
    record.release()

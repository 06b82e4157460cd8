"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from antnest.testing import SshdFleet, find_sshd


# === SSH test fleet ==========================================================================
# Real OpenSSH daemons on 127.0.0.x (see antnest.testing), and a guard that keeps the
# developer's own ~/.ssh and ssh-agent out of every test.


@pytest.fixture(scope="session", autouse=True)
def _hide_user_ssh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point HOME at an empty directory and drop the agent, so only fleet keys can work."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.delenv("SSH_AUTH_SOCK", raising=False)
        yield home


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdFleet]:
    """Three started sshd daemons (fleet1..fleet3) shared by the whole session."""
    if find_sshd() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("sshd not installed on CI; .ci/run should have installed openssh-server")
        pytest.skip("sshd not installed; apt-get install openssh-server")
    with SshdFleet(tmp_path_factory.mktemp("fleet"), count=3) as started:
        yield started


@pytest.fixture
def fleet_inventory(fleet: SshdFleet, tmp_path: Path) -> Path:
    """A native antnest inventory listing every fleet host."""
    return fleet.write_inventory(tmp_path / "hosts.yaml")


# === end of SSH test fleet ===================================================================


# === antnest end-to-end helpers ==============================================================
# Used by test_conformance, test_cli, test_ssh, test_runner and test_job: one `target` fixture
# parametrised over the local transport and the SSH fleet, a CLI runner with a fresh HOME, and a
# guard that fails the test when a runner process or a file outlives a run.

import dataclasses as _dataclasses
import pwd as _pwd
import subprocess as _subprocess
import sys as _sys
import time as _time
import uuid as _uuid
from typing import Any as _Any, Callable as _Callable, Dict as _Dict, List as _List
from typing import Optional as _Optional, Sequence as _Sequence, Set as _Set

from antnest.testing import processes_matching as _processes_matching

REPO = Path(__file__).resolve().parent.parent
JOBS = REPO / "jobs"
TEST_JOBS = Path(__file__).resolve().parent / "jobs"
RUNNER_MARK = "antnest-runner"      # in every runner's command line (bootstrap.STAGE1)
MARK_VARIABLE = "ANTNEST_TEST_RUN"  # env marker: tells this test's local runners from others'
CLI_TIMEOUT = 90.0
GRACE = 5.0                         # seconds a runner may take to go after its master


@_dataclasses.dataclass
class Target:
    """Where a conformance test runs its jobs: the local transport or the SSH fleet."""

    name: str                        # "local" or "ssh"
    args: _List[str]                 # CLI arguments selecting the hosts
    cluster_kwargs: _Dict[str, _Any]  # the same for antnest.Cluster(...)
    hosts: _Sequence[str]            # host names that may appear in messages and log prefixes
    fleet: _Optional[SshdFleet] = None
    leftovers: _Optional["Leftovers"] = None


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of this test's own (no ~/.ssh), for the CLI subprocesses and in-process clusters."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


class Leftovers:
    """Snapshots before a test; after it, waits GRACE for runners to go, then lists what stayed.

    Runners counted are this test's own: local ones carry its environment marker, remote ones
    are children of the fleet's daemons (the fleet belongs to this pytest session alone). With a
    fleet, files are looked for where the fleet's sessions write: the hosts' home directories
    and their private $TMPDIRs (both the fleet's own, so no other program's files show up),
    and the top of the login directory sessions start in. /tmp itself is not watched: on a
    shared machine anything may write there, and a remote session's temporary files go to its
    $TMPDIR; that the runner never names /tmp is checked on its source (test_everyday).
    """

    def __init__(self, mark: str, fleet: _Optional[SshdFleet]) -> None:
        self.mark = mark
        self.fleet = fleet
        # sshd starts sessions in the user's login directory (the fleet only changes $HOME)
        self.login_dir = Path(_pwd.getpwuid(os.getuid()).pw_dir)
        self.login_before = self._login() if fleet is not None else set()
        self.homes_before = self._homes()

    def runners(self) -> _List[int]:
        found = []
        fleet_pids: _Set[int] = set()
        if self.fleet is not None:
            for host in self.fleet.hosts:
                fleet_pids.update(self.fleet.session_pids(host.name))
        needle = f"{MARK_VARIABLE}={self.mark}".encode()
        for pid in _processes_matching(RUNNER_MARK):
            if pid in fleet_pids:
                found.append(pid)
                continue
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if needle in environ:
                found.append(pid)
        return found

    def wait_for_runners_to_go(self, grace: float = GRACE) -> _List[int]:
        deadline = _time.monotonic() + grace
        while True:
            left = self.runners()
            if not left or _time.monotonic() >= deadline:
                return left
            _time.sleep(0.05)

    def new_files(self) -> _List[str]:
        if self.fleet is None:  # local runs: only processes are checked
            return []
        new = [str(self.login_dir / name) for name in sorted(self._login() - self.login_before)]
        after = self._homes()
        for name, paths in self.homes_before.items():
            new += [f"{name}:{p}" for p in sorted(after.get(name, set()) - paths)]
        return new

    def check(self) -> None:
        left = self.wait_for_runners_to_go()
        if left:
            described = []
            for pid in left:
                try:
                    described.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes()
                                     .replace(b"\0", b" ").decode(errors="replace")[:120])
                except OSError:
                    described.append(str(pid))
            pytest.fail("runner processes outlived the run:\n  " + "\n  ".join(described))
        new = self.new_files()
        if new:
            pytest.fail("files appeared during the run: " + ", ".join(new))

    def _login(self) -> _Set[str]:
        try:
            return set(os.listdir(self.login_dir))
        except OSError:
            return set()

    def _homes(self) -> _Dict[str, _Set[str]]:
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


def _make_leftovers(monkeypatch: pytest.MonkeyPatch, fleet: _Optional[SshdFleet]) -> Leftovers:
    mark = _uuid.uuid4().hex
    monkeypatch.setenv(MARK_VARIABLE, mark)  # inherited by local runners and CLI subprocesses
    return Leftovers(mark, fleet)


@pytest.fixture
def leftovers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Leftovers]:
    """No-fleet guard: this test's local runners must all be gone after it."""
    guard = _make_leftovers(monkeypatch, None)
    yield guard
    guard.check()


@pytest.fixture
def fleet_leftovers(fleet: SshdFleet, monkeypatch: pytest.MonkeyPatch) -> Iterator[Leftovers]:
    """Fleet guard: no runner under the fleet's daemons, no new file in their homes or /tmp."""
    guard = _make_leftovers(monkeypatch, fleet)
    yield guard
    guard.check()


@pytest.fixture(params=["local", "ssh", "openssh"])
def target(request: pytest.FixtureRequest, tmp_path: Path, fresh_home: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    """The conformance suite's transport; checks for leftovers after every test."""
    if request.param == "local":
        guard = _make_leftovers(monkeypatch, None)
        yield Target("local", [], {}, ("local",), None, guard)
    else:
        fleet: SshdFleet = request.getfixturevalue("fleet")
        guard = _make_leftovers(monkeypatch, fleet)
        inventory = fleet.write_inventory(tmp_path / "hosts.yaml", procs=2)
        client = "openssh" if request.param == "openssh" else "paramiko"
        yield Target(
            request.param,
            ["-i", str(inventory), "--known-hosts", str(fleet.known_hosts),
             "--ssh-client", client],
            {"inventory": inventory, "known_hosts": [fleet.known_hosts], "ssh_client": client},
            tuple(h.name for h in fleet.hosts),
            fleet,
            guard,
        )
    guard.check()


@pytest.fixture
def run_cli(fresh_home: Path) -> _Callable[..., "_subprocess.CompletedProcess[str]"]:
    """Run `python -m antnest ARGS` with this test's HOME; returns the completed process."""

    def run(*args: "str | os.PathLike[str]", input: _Optional[str] = None,
            cwd: "Path | str | None" = None, timeout: float = CLI_TIMEOUT,
            ) -> "_subprocess.CompletedProcess[str]":
        env = dict(os.environ, HOME=str(fresh_home))
        env.pop("SSH_AUTH_SOCK", None)
        return _subprocess.run(
            [_sys.executable, "-m", "antnest", *map(os.fspath, args)],
            input=input,
            stdin=None if input is not None else _subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=str(cwd or REPO),
            env=env,
            timeout=timeout,
        )

    return run


# === end of antnest end-to-end helpers =======================================================


# === ops/api fixtures ===========================================================================
# Used by test_ops (issue 3: inventories, --limit, ProxyJump, ssh-agent, check, many hosts) and
# test_api (issue 5). Every process or thread started here is stopped here, by its own PID.

import re as _re
import signal as _signal
import socket as _socket
import threading as _threading

from antnest.testing import pid_alive as _pid_alive

BIG_FLEET_SIZE = 32
BIG_FLEET_FIRST_OCTET = 100   # 127.0.0.100 .. 127.0.0.131, clear of the session fleet (11..13)
BLACKHOLE_ADDRESS = "127.0.0.200"


@pytest.fixture(scope="module")
def big_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdFleet]:
    """32 sshd daemons on 127.0.0.100..131 for one test module; stopped after it."""
    if find_sshd() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("sshd not installed on CI; .ci/run should have installed openssh-server")
        pytest.skip("sshd not installed; apt-get install openssh-server")
    with SshdFleet(tmp_path_factory.mktemp("bigfleet"), count=BIG_FLEET_SIZE,
                   first_octet=BIG_FLEET_FIRST_OCTET) as started:
        yield started


@_dataclasses.dataclass
class Agent:
    """A running ssh-agent: its socket, its PID, and the environment that reaches it."""

    sock: str
    pid: int

    def env(self, **extra: str) -> _Dict[str, str]:
        return dict(os.environ, SSH_AUTH_SOCK=self.sock, SSH_AGENT_PID=str(self.pid), **extra)

    def add(self, key: "os.PathLike[str] | str") -> None:
        result = _subprocess.run(["ssh-add", os.fspath(key)], env=self.env(), capture_output=True,
                                 text=True, stdin=_subprocess.DEVNULL, timeout=30)
        assert result.returncode == 0, f"ssh-add failed: {result.stderr}"

    def listed(self) -> str:
        return _subprocess.run(["ssh-add", "-l"], env=self.env(), capture_output=True, text=True,
                               stdin=_subprocess.DEVNULL, timeout=30).stdout


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[Agent]:
    """`ssh-agent -s` with its socket in this test's directory; killed by its PID afterwards."""
    if _subprocess.run(["sh", "-c", "command -v ssh-agent && command -v ssh-add"],
                       capture_output=True).returncode != 0:
        pytest.skip("ssh-agent / ssh-add not installed")
    sock = tmp_path / "agent.sock"
    started = _subprocess.run(["ssh-agent", "-s", "-a", str(sock)], capture_output=True,
                              text=True, stdin=_subprocess.DEVNULL, timeout=30)
    assert started.returncode == 0, started.stderr
    sock_match = _re.search(r"SSH_AUTH_SOCK=([^;\s]+)", started.stdout)
    pid_match = _re.search(r"SSH_AGENT_PID=(\d+)", started.stdout)
    assert sock_match and pid_match, f"unexpected ssh-agent output: {started.stdout!r}"
    agent = Agent(sock_match.group(1), int(pid_match.group(1)))
    try:
        yield agent
    finally:
        try:
            os.kill(agent.pid, _signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = _time.monotonic() + GRACE
        while _pid_alive(agent.pid) and _time.monotonic() < deadline:
            _time.sleep(0.02)
        if _pid_alive(agent.pid):
            os.kill(agent.pid, _signal.SIGKILL)


@_dataclasses.dataclass
class Blackhole:
    """A TCP listener that accepts connections and never says a word."""

    address: str
    port: int
    accepted: _List["_socket.socket"]


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    """Accepts TCP on 127.0.0.200 and stays silent, like a host whose sshd froze."""
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.bind((BLACKHOLE_ADDRESS, 0))
    listener.listen(64)
    listener.settimeout(0.1)
    hole = Blackhole(BLACKHOLE_ADDRESS, listener.getsockname()[1], [])
    stop = _threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except _socket.timeout:
                continue
            except OSError:
                return
            hole.accepted.append(conn)  # held open, never written to

    thread = _threading.Thread(target=serve, name="blackhole", daemon=True)
    thread.start()
    try:
        yield hole
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in hole.accepted:
            conn.close()


# === end of ops/api fixtures ====================================================================


# === no test can hang (issue 13) =================================================================
# Every test without its own pytest-timeout mark gets this bound: a stuck wait fails the test
# (with the stacks of every thread) instead of stalling the suite.

DEFAULT_TEST_TIMEOUT = 900


def pytest_collection_modifyitems(config: pytest.Config, items: _List[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("timeout"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT))

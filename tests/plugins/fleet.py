"""The SSH test fleet as fixtures: real OpenSSH daemons on 127.0.0.x (antnest.testing), a guard
that keeps the developer's own ~/.ssh and ssh-agent out of every test, and what tests make
from a fleet: inventories, edited copies of its ssh_config and known_hosts, keys it does not
accept, an ssh-agent holding its key, and a host that accepts TCP and never says a word.

Every process or thread started here is stopped here, by its own PID.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from antnest.testing import SshdFleet, find_sshd, pid_alive

from plugins.processes import GRACE
from plugins.tools import require

BIG_FLEET_SIZE = 32
BIG_FLEET_FIRST_OCTET = 100   # 127.0.0.100 .. 127.0.0.131, clear of the session fleet (11..13)
BLACKHOLE_ADDRESS = "127.0.0.200"


# --- the fleets ----------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _hide_user_ssh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point HOME at an empty directory and drop the agent, so only fleet keys can work."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.delenv("SSH_AUTH_SOCK", raising=False)
        yield home


def started_fleet(workdir: Path, **kwargs: Any) -> SshdFleet:
    """An SshdFleet to start with `with`; sshd missing fails the test on CI, skips it elsewhere."""
    require(find_sshd(), "sshd not installed; apt-get install openssh-server")
    return SshdFleet(workdir, **kwargs)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdFleet]:
    """Three started sshd daemons (fleet1..fleet3) shared by the whole session."""
    with started_fleet(tmp_path_factory.mktemp("fleet"), count=3) as started:
        yield started


@pytest.fixture(scope="module")
def big_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdFleet]:
    """32 sshd daemons on 127.0.0.100..131 for one test module; stopped after it."""
    with started_fleet(tmp_path_factory.mktemp("bigfleet"), count=BIG_FLEET_SIZE,
                       first_octet=BIG_FLEET_FIRST_OCTET) as started:
        yield started


@pytest.fixture
def fleet_inventory(fleet: SshdFleet, tmp_path: Path) -> Path:
    """A native antnest inventory listing every fleet host."""
    return fleet.write_inventory(tmp_path / "hosts.yaml")


def fleet_args(fleet: SshdFleet, inventory: Path) -> List[str]:
    """CLI arguments that run on the hosts of `inventory`, checked against the fleet's keys."""
    return ["-i", str(inventory), "--known-hosts", str(fleet.known_hosts)]


# --- edited copies of the fleet's client files ---------------------------------------------------


def ssh_config_copy(fleet: SshdFleet, path: Path, **replace: str) -> Path:
    """The fleet's ssh_config with keywords replaced (``UserKnownHostsFile="..."``); an empty
    value drops the keyword's lines."""
    lines = []
    for line in fleet.ssh_config.read_text().splitlines():
        key = line.strip().split(" ", 1)[0]
        if key in replace:
            line = f"    {key} {replace[key]}" if replace[key] else ""
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path


def with_known_hosts(fleet: SshdFleet, directory: Path, *lines: str, keep: bool = False,
                     **replace: str) -> Tuple[Path, Path]:
    """(ssh_config, known_hosts) in `directory`: a copy of the fleet's ssh_config (keywords
    replaced as in ssh_config_copy) whose UserKnownHostsFile is a new file of `lines`,
    followed by the fleet's own known_hosts when `keep`."""
    known = directory / "known"
    known.write_text("".join(line + "\n" for line in lines)
                     + (fleet.known_hosts.read_text() if keep else ""))
    config = ssh_config_copy(fleet, directory / "config", UserKnownHostsFile=str(known),
                             **replace)
    return config, known


def known_hosts_line(fleet: SshdFleet, name: str) -> str:
    """Host `name`'s line in the fleet's known_hosts file."""
    host = fleet.host(name)
    for line in fleet.known_hosts.read_text().splitlines():
        if line.startswith(f"[{host.address}]:{host.port} "):
            return line
    raise AssertionError(f"{name} not in the fleet's known_hosts")


def keygen(path: Path, passphrase: str = "") -> Path:
    """A new ed25519 key pair at `path` (and `path`.pub)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(path)],
                   check=True, timeout=30, stdin=subprocess.DEVNULL)
    return path


@pytest.fixture
def stranger_key(tmp_path: Path) -> Path:
    """A private key no fleet host accepts."""
    return keygen(tmp_path / "stranger")


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on (a host that refuses connections)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


# --- an ssh-agent --------------------------------------------------------------------------------


@dataclasses.dataclass
class Agent:
    """A running ssh-agent: its socket, its PID, and the environment that reaches it."""

    sock: str
    pid: int

    def env(self, **extra: str) -> Dict[str, str]:
        return dict(os.environ, SSH_AUTH_SOCK=self.sock, SSH_AGENT_PID=str(self.pid), **extra)

    def add(self, key: "os.PathLike[str] | str") -> None:
        result = subprocess.run(["ssh-add", os.fspath(key)], env=self.env(), capture_output=True,
                                text=True, stdin=subprocess.DEVNULL, timeout=30)
        assert result.returncode == 0, f"ssh-add failed: {result.stderr}"

    def listed(self) -> str:
        return subprocess.run(["ssh-add", "-l"], env=self.env(), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=30).stdout


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[Agent]:
    """`ssh-agent -s` with its socket in this test's directory; killed by its PID afterwards."""
    if subprocess.run(["sh", "-c", "command -v ssh-agent && command -v ssh-add"],
                      capture_output=True).returncode != 0:
        pytest.skip("ssh-agent / ssh-add not installed")
    sock = tmp_path / "agent.sock"
    started = subprocess.run(["ssh-agent", "-s", "-a", str(sock)], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert started.returncode == 0, started.stderr
    sock_match = re.search(r"SSH_AUTH_SOCK=([^;\s]+)", started.stdout)
    pid_match = re.search(r"SSH_AGENT_PID=(\d+)", started.stdout)
    assert sock_match and pid_match, f"unexpected ssh-agent output: {started.stdout!r}"
    agent = Agent(sock_match.group(1), int(pid_match.group(1)))
    try:
        yield agent
    finally:
        try:
            os.kill(agent.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + GRACE
        while pid_alive(agent.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(agent.pid):
            os.kill(agent.pid, signal.SIGKILL)


# --- hosts that are no SSH servers ----------------------------------------------------------------


@dataclasses.dataclass
class Blackhole:
    """A TCP listener that accepts connections and never says a word."""

    address: str
    port: int
    accepted: List[socket.socket]


@contextlib.contextmanager
def tcp_server(address: str, answer: Optional[bytes] = None) -> Iterator[Blackhole]:
    """Accepts TCP on `address` (a free port); sends `answer` and hangs up, or with no answer
    holds every connection open without a word. Stopped, and its connections closed, on exit."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((address, 0))
    listener.listen(64)
    listener.settimeout(0.1)
    server = Blackhole(address, listener.getsockname()[1], [])
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if answer is None:
                server.accepted.append(conn)  # held open, never written to
                continue
            with conn:
                try:
                    conn.sendall(answer)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, name=f"tcp server {address}", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for conn in server.accepted:
            conn.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    """Accepts TCP on 127.0.0.200 and stays silent, like a host whose sshd froze."""
    with tcp_server(BLACKHOLE_ADDRESS) as hole:
        yield hole


@pytest.fixture
def garbage_banner_server() -> Iterator[Tuple[str, int]]:
    """A TCP server answering every connection with a line that is no SSH banner."""
    with tcp_server("127.0.0.1", b"this is not ssh\r\n" * 4) as server:
        yield server.address, server.port

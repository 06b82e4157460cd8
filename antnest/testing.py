"""A fleet of real OpenSSH daemons on loopback addresses, for tests and benchmarks.

Mocks get exactly the interesting parts of SSH wrong (host keys, exit 255, half-closed channels,
a daemon dying mid-session), so antnest is tested against real ``sshd`` processes::

    with SshdFleet(tmp_path, count=3) as fleet:
        fleet.write_inventory(tmp_path / "hosts.yaml")
        fleet.kill_host("fleet2")        # a dead machine, mid-job
        fleet.restart_host("fleet2")     # back, same address, port and host key

Host ``fleetN`` listens on 127.0.0.(first_octet + N - 1) with its own ed25519 host key. One
throwaway client key is authorised everywhere; ``known_hosts`` and ``ssh_config`` let both
paramiko and the OpenSSH client connect with strict host key checking. Nothing outside
``workdir`` is written except ``/run/sshd`` (sshd's privilege-separation directory), and only
processes this fleet started are ever signalled, identified by PID and start time.

Stdlib only (PyYAML is imported by ``write_inventory`` alone), so benchmarks can use it without
pytest. Linux only: processes are found through ``/proc``.
"""
from __future__ import annotations

import base64
import ctypes
import ctypes.util
import dataclasses
import hashlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Type

__all__ = [
    "FleetError",
    "FleetHost",
    "SshdFleet",
    "find_sshd",
    "pid_alive",
    "processes_matching",
]

log = logging.getLogger(__name__)

PRIVSEP_DIR = Path("/run/sshd")
BANNER_TIMEOUT = 10.0  # seconds for a daemon to start answering
TERM_GRACE = 5.0       # seconds between SIGTERM and SIGKILL in stop()
_START_ATTEMPTS = 3    # a probed free port can be taken before sshd binds it; retry with another


class FleetError(RuntimeError):
    """The fleet could not be set up or driven (a test-infrastructure problem, not antnest's)."""


@dataclasses.dataclass(frozen=True)
class FleetHost:
    """One running daemon; replaced by a new record (new pid) on restart."""

    name: str
    address: str
    port: int
    host_key_path: Path
    pid: int
    fingerprint: str  # "SHA256:...", as ssh-keygen -l and ssh print it
    home: Path        # the sessions' $HOME: starts empty, so "nothing left behind" is checkable
    # the sessions' $TMPDIR, private to this daemon: what a remote session writes to "the temp
    # directory" lands here, apart from whatever else the machine's programs put in /tmp
    tmp: Optional[Path] = None


def find_sshd() -> Optional[str]:
    """Absolute path of sshd (it refuses to run from a relative path), or None if missing."""
    found = shutil.which("sshd")
    if found:
        return os.path.abspath(found)
    for candidate in ("/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def processes_matching(substring: str) -> List[int]:
    """PIDs whose command line contains ``substring`` (not this process), e.g. leftover runners."""
    me = os.getpid()
    found = []
    for pid in _all_pids():
        if pid == me:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if substring in cmdline.replace(b"\0", b" ").decode("utf-8", "replace"):
            found.append(pid)
    return found


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited child nobody reaped yet)."""
    stat = _read_stat(pid)
    return stat is not None and stat[0] != "Z"


# --- /proc helpers ---------------------------------------------------------------------------


class _Proc(NamedTuple):
    """A process identity that survives PID reuse: the start time tells two holders apart."""

    pid: int
    start: int


def _all_pids() -> Iterable[int]:
    return (int(entry) for entry in os.listdir("/proc") if entry.isdigit())


def _read_stat(pid: int) -> Optional[List[str]]:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, ...]; None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rpartition(")")[2].split()  # the name may itself contain spaces and ")"


def _identify(pid: int) -> Optional[_Proc]:
    stat = _read_stat(pid)
    if stat is None or stat[0] == "Z":
        return None
    return _Proc(pid, int(stat[19]))  # field 22 of stat: start time in clock ticks


def _descendants(root: int) -> List[_Proc]:
    """Every live process below ``root``, by a parent-pointer scan of /proc.

    /proc/<pid>/task/*/children needs CONFIG_PROC_CHILDREN, which many kernels lack.
    """
    children: Dict[int, List[int]] = {}
    for pid in _all_pids():
        stat = _read_stat(pid)
        if stat is not None and stat[0] != "Z":
            children.setdefault(int(stat[1]), []).append(pid)
    found: List[_Proc] = []
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        proc = _identify(pid)
        if proc is not None:
            found.append(proc)
            todo.extend(children.get(pid, ()))
    return found


def _signal(proc: _Proc, signum: int) -> None:
    """Signal ``proc`` only if the PID still belongs to the process we saw."""
    if _identify(proc.pid) != proc:
        return
    try:
        os.kill(proc.pid, signum)
    except ProcessLookupError:
        pass


def _freeze_tree(root: _Proc) -> List[_Proc]:
    """SIGSTOP ``root`` and everything below it, rescanning until no new process appears.

    A stopped sshd cannot fork another session, and a stopped session cannot exit and have its
    children reparented away from us before we signal them, so the returned list is complete.
    """
    frozen = {root}
    _signal(root, signal.SIGSTOP)
    while True:
        new = [p for p in _descendants(root.pid) if p not in frozen]
        if not new:
            return [root] + sorted(frozen - {root})
        for proc in new:
            _signal(proc, signal.SIGSTOP)
            frozen.add(proc)


def _wait_gone(procs: Sequence[_Proc], timeout: float) -> List[_Proc]:
    """Wait until every process has exited; return those still running at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if _identify(p.pid) == p]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


# --- parent-death signal ---------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_libc: Optional[Any] = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - not glibc/musl Linux
    _libc = None


def _die_with_parent() -> None:
    """preexec_fn: a daemon must not outlive a test run that was itself SIGKILLed.

    Linux ties this to the *thread* that started the daemon, so SshdFleet starts every daemon
    from a thread of its own that lives as long as the fleet (see SshdFleet._spawn).
    """
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# --- the fleet -------------------------------------------------------------------------------


@dataclasses.dataclass
class _Daemon:
    """Mutable bookkeeping behind one FleetHost."""

    name: str
    address: str
    port: int
    dir: Path
    host_key_path: Path
    fingerprint: str
    process: Optional["subprocess.Popen[bytes]"] = None

    @property
    def config_path(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def home(self) -> Path:
        return self.dir / "home"

    @property
    def tmp(self) -> Path:
        return self.dir / "tmp"

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / "sshd.pid"


class SshdFleet:
    """``count`` real sshd daemons on 127.0.0.x, with client key, known_hosts and ssh_config."""

    def __init__(self, workdir: Path, count: int = 3, first_octet: int = 11) -> None:
        if count < 1 or first_octet < 2 or first_octet + count - 1 > 254:
            raise ValueError(f"cannot place {count} hosts from 127.0.0.{first_octet}")
        self.workdir = Path(workdir).resolve()
        self.count = count
        self.first_octet = first_octet
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.client_key = self.workdir / "client_key"
        self.known_hosts = self.workdir / "known_hosts"
        self.ssh_config = self.workdir / "ssh_config"
        self.authorized_keys = self.workdir / "authorized_keys"
        self._daemons: Dict[str, _Daemon] = {}
        self._sshd: Optional[str] = None
        self._spawner: Optional[ThreadPoolExecutor] = None  # the daemons' parent thread

    # -- lifecycle

    def start(self) -> "SshdFleet":
        """Generate keys and configs, start every daemon, and wait until each one answers."""
        if self._daemons:
            raise FleetError("fleet already started")
        sshd = find_sshd()
        if sshd is None:
            raise FleetError("sshd not found; apt-get install openssh-server")
        self._sshd = sshd
        self.workdir.mkdir(parents=True, exist_ok=True)
        _ensure_privsep_dir()
        _keygen(self.client_key, comment=f"antnest-fleet-client@{self.workdir}")
        shutil.copyfile(_pub(self.client_key), self.authorized_keys)
        try:
            for i in range(self.count):
                name = f"fleet{i + 1}"
                address = f"127.0.0.{self.first_octet + i}"
                ddir = self.workdir / name
                ddir.mkdir(exist_ok=True)
                key = ddir / "ssh_host_ed25519_key"
                _keygen(key, comment=name)
                daemon = _Daemon(name, address, _free_port(address), ddir, key, _fingerprint(key))
                daemon.home.mkdir(exist_ok=True)
                daemon.tmp.mkdir(exist_ok=True)
                self._daemons[name] = daemon
                self._spawn(daemon)
            for daemon in self._daemons.values():
                self._await_with_retry(daemon)
            self._write_client_files()
        except BaseException:
            self.stop()
            raise
        log.debug("fleet up: %s", ", ".join(f"{h.name}={h.address}:{h.port}" for h in self.hosts))
        return self

    def stop(self) -> None:
        """Stop every daemon this fleet started, and their sessions: SIGTERM, then SIGKILL."""
        running = [d for d in self._daemons.values() if d.process is not None]
        trees: List[_Proc] = []
        for daemon in running:
            root = self._root(daemon)
            if root is not None:
                trees.extend(_freeze_tree(root))
        for proc in trees:
            _signal(proc, signal.SIGTERM)
            _signal(proc, signal.SIGCONT)  # a stopped process only acts on SIGTERM once resumed
        for proc in _wait_gone(trees, TERM_GRACE):
            log.warning("pid %d ignored SIGTERM for %.0fs; killing it", proc.pid, TERM_GRACE)
            _signal(proc, signal.SIGKILL)
        for daemon in running:
            self._reap(daemon)
        if self._spawner is not None:
            self._spawner.shutdown(wait=True)
            self._spawner = None

    def __enter__(self) -> "SshdFleet":
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    # -- queries

    @property
    def hosts(self) -> List[FleetHost]:
        """Current records, in fleet order; a stopped daemon has pid 0."""
        return [self._record(d) for d in self._daemons.values()]

    def host(self, name: str) -> FleetHost:
        """The record for ``name`` (``fleet1`` ... ``fleetN``)."""
        return self._record(self._daemon(name))

    def session_pids(self, name: str) -> List[int]:
        """PIDs of the daemon's per-connection sshd processes and everything they started."""
        root = self._root(self._daemon(name))
        return [] if root is None else sorted(p.pid for p in _descendants(root.pid))

    # -- faults

    def kill_host(self, name: str) -> None:
        """SIGKILL the daemon and every session below it, like a machine losing power.

        Returns once they are all gone, so a test can assert on the aftermath at once.
        """
        daemon = self._daemon(name)
        root = self._root(daemon)
        if root is not None:
            tree = _freeze_tree(root)
            for proc in tree:
                _signal(proc, signal.SIGKILL)
            for proc in _wait_gone(tree, TERM_GRACE):
                log.warning("%s: pid %d survived SIGKILL for %.0fs", name, proc.pid, TERM_GRACE)
        self._reap(daemon)

    def restart_host(self, name: str) -> FleetHost:
        """Start the daemon again on the same address, port and host key (stopping it first)."""
        daemon = self._daemon(name)
        if self._root(daemon) is not None:
            self.kill_host(name)
        self._spawn(daemon)
        self._await_banner(daemon)
        return self._record(daemon)

    # -- inventory

    def write_inventory(
        self, path: Path, names: Optional[Sequence[str]] = None, **defaults: Any
    ) -> Path:
        """Write a native antnest YAML inventory for ``names`` (default: every host).

        ``defaults`` adds to or overrides the ``defaults:`` section (user, identity_file).
        """
        import yaml  # only this helper needs PyYAML

        chosen = [self._daemon(n) for n in names] if names is not None else self._daemons.values()
        document = {
            "defaults": {"user": self.user, "identity_file": str(self.client_key), **defaults},
            "hosts": [{"name": d.name, "address": d.address, "port": d.port} for d in chosen],
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(document, sort_keys=False, default_flow_style=False))
        return path

    # -- internals

    def _daemon(self, name: str) -> _Daemon:
        try:
            return self._daemons[name]
        except KeyError:
            raise KeyError(f"no fleet host {name!r}; have {sorted(self._daemons)}") from None

    def _record(self, daemon: _Daemon) -> FleetHost:
        root = self._root(daemon)
        return FleetHost(
            name=daemon.name,
            address=daemon.address,
            port=daemon.port,
            host_key_path=daemon.host_key_path,
            pid=root.pid if root is not None else 0,
            fingerprint=daemon.fingerprint,
            home=daemon.home,
            tmp=daemon.tmp,
        )

    def _root(self, daemon: _Daemon) -> Optional[_Proc]:
        """The daemon's own process, if it is still running."""
        if daemon.process is None or daemon.process.poll() is not None:
            return None
        return _identify(daemon.process.pid)

    def _reap(self, daemon: _Daemon) -> None:
        if daemon.process is not None:
            try:
                daemon.process.wait(timeout=TERM_GRACE)
            except subprocess.TimeoutExpired:
                log.warning("%s: sshd pid %d did not exit", daemon.name, daemon.process.pid)
            daemon.process = None

    def _spawn(self, daemon: _Daemon) -> None:
        """Start the daemon from the fleet's own thread: the parent-death signal follows the
        thread that forked it, and a host restarted from a short-lived thread (a fault
        injected mid-job) must not be killed when that thread ends."""
        if self._spawner is None:
            self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sshd-fleet")
        self._spawner.submit(self._popen, daemon).result()

    def _popen(self, daemon: _Daemon) -> None:
        assert self._sshd is not None
        daemon.config_path.write_text(self._sshd_config(daemon))
        with open(daemon.log_path, "ab") as log_file:
            daemon.process = subprocess.Popen(
                [self._sshd, "-D", "-e", "-f", str(daemon.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,  # a terminal's Ctrl-C goes to pytest, which then stops us
                preexec_fn=_die_with_parent,
            )

    def _await_with_retry(self, daemon: _Daemon) -> None:
        """First start only: if another process took the probed port, try a fresh one."""
        for attempt in range(_START_ATTEMPTS):
            try:
                self._await_banner(daemon)
                return
            except FleetError:
                if attempt + 1 == _START_ATTEMPTS or "already in use" not in self._log(daemon):
                    raise
            self._reap(daemon)
            daemon.port = _free_port(daemon.address)
            self._spawn(daemon)

    def _await_banner(self, daemon: _Daemon) -> None:
        """Poll until the daemon accepts a connection and sends its SSH identification line."""
        deadline = time.monotonic() + BANNER_TIMEOUT
        problem = "no answer"
        while time.monotonic() < deadline:
            assert daemon.process is not None
            if daemon.process.poll() is not None:
                problem = f"sshd exited with status {daemon.process.returncode}"
                break
            try:
                with socket.create_connection((daemon.address, daemon.port), timeout=1.0) as s:
                    if s.makefile("rb").readline(256).startswith(b"SSH-"):
                        s.sendall(b"SSH-2.0-antnest_fleet_probe\r\n")  # a quiet hang-up for the log
                        return
                    problem = "connected, but no SSH banner"
            except OSError as exc:
                problem = f"connect: {exc}"
            time.sleep(0.05)
        raise FleetError(
            f"{daemon.name} ({daemon.address}:{daemon.port}) did not start: {problem}\n"
            f"--- {daemon.log_path} ---\n{self._log(daemon)}"
        )

    def _log(self, daemon: _Daemon) -> str:
        try:
            return daemon.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def _sshd_config(self, daemon: _Daemon) -> str:
        # No AcceptEnv and no Subsystem lines: nothing from the client's environment, no sftp.
        # A fresh $HOME keeps the local user's shell rc files (pyenv, venvs) out of sessions, so
        # the remote python3 is the system one, as on a machine nobody prepared.
        return "\n".join(
            [
                f'SetEnv "HOME={daemon.home}" "TMPDIR={daemon.tmp}"',
                f"ListenAddress {daemon.address}:{daemon.port}",
                f"HostKey {daemon.host_key_path}",
                f"PidFile {daemon.pid_path}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "HostbasedAuthentication no",
                "StrictModes no",
                "PermitUserRC no",           # the user's real ~/.ssh/rc stays out of tests
                "PermitUserEnvironment no",
                "MaxStartups 100:30:200",
                "MaxSessions 64",
                "AllowTcpForwarding yes",    # ProxyJump through a fleet host
                "X11Forwarding no",
                "UseDNS no",
                "PrintMotd no",
                "PrintLastLog no",
                "LogLevel ERROR",
                "",
            ]
        )

    def _write_client_files(self) -> None:
        known = []
        blocks = []
        for d in self._daemons.values():
            keytype, blob = _pub(d.host_key_path).read_text().split()[:2]
            known.append(f"[{d.address}]:{d.port} {keytype} {blob}\n")
            blocks.append(
                f"Host {d.name}\n"
                f"    HostName {d.address}\n"
                f"    Port {d.port}\n"
                f"    User {self.user}\n"
                f"    IdentityFile {self.client_key}\n"
                f"    IdentitiesOnly yes\n"
                f"    UserKnownHostsFile {self.known_hosts}\n"
                f"    StrictHostKeyChecking yes\n"
                f"    BatchMode yes\n"
            )
        self.known_hosts.write_text("".join(known))
        self.ssh_config.write_text("\n".join(blocks))


# --- keys and ports --------------------------------------------------------------------------


def _ensure_privsep_dir() -> None:
    """sshd refuses to start without its (root-owned, not group-writable) privsep directory."""
    if not PRIVSEP_DIR.is_dir():
        try:
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True)
        except OSError as exc:
            raise FleetError(f"sshd needs {PRIVSEP_DIR} and it cannot be created: {exc}") from exc


def _keygen(path: Path, comment: str) -> None:
    for stale in (path, _pub(path)):
        stale.unlink(missing_ok=True)  # ssh-keygen would ask before overwriting
    result = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise FleetError(f"ssh-keygen for {path} failed: {result.stderr.strip()}")


def _pub(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


def _fingerprint(key: Path) -> str:
    """SHA256 fingerprint exactly as OpenSSH prints it: unpadded base64 of the key blob hash."""
    blob = base64.b64decode(_pub(key).read_text().split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _free_port(address: str) -> int:
    """A port nothing listens on at ``address`` right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])

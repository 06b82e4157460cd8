"""The ``openssh`` client: the user's own ``ssh`` binary, one antnest-owned master per host.

Per host one ``ssh -M -N -S <sock>`` master (no ControlPersist: it is antnest's child and dies
with it, on SIGKILL too, through the parent-death signal), its control socket in a private
0700 directory removed at the end; each runner is ``ssh -S <sock> host 'python3 -B -c ...'``, a
session multiplexed over the master. ssh does the crypto in C, reads ssh_config itself, and
verifies host keys exactly as ``ssh`` does (certificates, @revoked, FIDO keys, GSSAPI ...).

antnest's options map onto ssh's: ``-F`` for --ssh-config, ``BatchMode=yes`` (never a prompt),
``StrictHostKeyChecking=yes`` or ``accept-new``, ``UserKnownHostsFile`` = the host's files plus
every --known-hosts, ``ConnectTimeout``, ``ServerAliveInterval``/``CountMax``, identity files.
ssh's failures (exit 255 and its stderr) become the same typed errors and statuses as the
paramiko client's.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import ctypes.util
import dataclasses
import fcntl
import itertools
import logging
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any, List, Optional

from antnest import bootstrap
from antnest.inventory.ssh_options import ssh_user
from antnest.transport import CommandExit, OutputSink
from antnest.errors import AuthError, ConnectError, HostError, HostKeyError
from antnest.host import Host
from antnest.inventory.ssh_options import (DEFAULT_GLOBAL_KNOWN_HOSTS,
                                           DEFAULT_USER_KNOWN_HOSTS, default_ciphers)
from antnest.transport import SshOptions, describe_exit, file_tail, outgoing
from antnest.transport.pipes import ChildStdout

log = logging.getLogger(__name__)

SERVER_ALIVE_COUNT = 3      # missed keepalives before ssh declares the peer dead
STOP_GRACE = 2.0            # seconds a master gets to exit after -O exit / SIGTERM


# --------------------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1
try:
    _libc: Optional[Any] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                                       use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _libc = None


def _die_with_antnest() -> None:
    """preexec_fn: the ssh process gets SIGKILL when antnest dies, even by SIGKILL."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# util-linux's setpriv sets the parent-death signal and execs ssh: Popen then needs no
# preexec_fn, so it can vfork instead of forking the whole interpreter and running Python in
# the child (measured ~3 ms instead of ~18 ms a spawn here, and every spawn of the run goes
# through the one thread below). Without setpriv, the preexec_fn does the same, slower.
_SETPRIV = shutil.which("setpriv") if _libc is not None else None


# Linux ties the parent-death signal to the *thread* that forked: every ssh is started from
# this one thread, which lives as long as the process (a worker thread that ends would take
# its masters with it).
_spawner = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                 thread_name_prefix="antnest-ssh-spawn")


def _spawn(argv: List[str], die_with_antnest: bool = True, **kwargs: Any
           ) -> "subprocess.Popen[bytes]":
    preexec = None
    if die_with_antnest:
        if _SETPRIV is not None:
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--"] + argv
        else:
            preexec = _die_with_antnest

    def start() -> "subprocess.Popen[bytes]":
        return subprocess.Popen(argv, preexec_fn=preexec, **kwargs)  # noqa: PLW1509
    return _spawner.submit(start).result()


PIPE_SIZE = 1 << 20   # bytes; Linux's default limit for an unprivileged process


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe to the ssh process instead of 64 KiB: a bulk frame crosses in a few
    wake-ups of ssh rather than one per 64 KiB (the W4 profile: ssh's and sshd's CPU per MiB
    fell by about a third with the runner doing the same on its side). Best effort."""
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except OSError:   # not Linux, or over /proc/sys/fs/pipe-max-size
        pass


class _ControlDir:
    """The private directory of control sockets: made when the first master starts, removed
    when the last one stops. A janitor (``sh`` reading a pipe only antnest holds) removes it
    should antnest die without cleaning up, SIGKILL included: the pipe closes, ``read`` returns.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()   # held by callers around socket() / release()
        self._path: Optional[str] = None
        self._janitor: Optional["subprocess.Popen[bytes]"] = None
        self._count = itertools.count()
        self.users: "set[OpenSshConnection]" = set()

    def socket(self, user: "OpenSshConnection") -> str:
        if self._path is None or not os.path.isdir(self._path):
            base = tempfile.gettempdir()
            if len(base) > 50:   # a socket path must fit in 108 bytes, with ssh's suffix
                base = "/tmp"
            self._path = tempfile.mkdtemp(prefix="antnest-ssh-", dir=base)   # mode 0700
            os.chmod(self._path, 0o700)
            self._janitor = _spawn(["/bin/sh", "-c", 'read _; rm -rf "$0"', self._path],
                                   die_with_antnest=False,   # it must outlive a SIGKILL
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        self.users.add(user)
        return os.path.join(self._path, f"m{next(self._count)}")

    def release(self, user: "OpenSshConnection") -> None:
        self.users.discard(user)
        if not self.users:
            self.remove()

    def remove(self) -> None:
        path, janitor = self._path, self._janitor
        self._path, self._janitor = None, None
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        if janitor is not None:
            try:
                janitor.stdin.close()  # type: ignore[union-attr]
                janitor.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                janitor.kill()


_control = _ControlDir()


def _stop_all() -> None:
    with _control.lock:
        masters = list(_control.users)
    for conn in masters:
        conn.close()
    with _control.lock:
        _control.remove()


atexit.register(_stop_all)


def ssh_available() -> bool:
    return shutil.which("ssh") is not None


# --------------------------------------------------------------------------- ssh options

def _known_hosts_files(host: Host, options: SshOptions) -> List[str]:
    files = [os.path.expanduser(p) for p in (host.user_known_hosts or DEFAULT_USER_KNOWN_HOSTS)]
    files += [os.path.expanduser(p) for p in options.known_hosts]
    return list(dict.fromkeys(files))


def _quote_option(path: str) -> str:
    """A file name inside an ssh -o value: quoted when it has spaces, % doubled (a token)."""
    path = path.replace("%", "%%")
    return f'"{path}"' if " " in path else path


def host_key_policy(host: Host, options: SshOptions) -> "tuple[str, List[str]]":
    """(StrictHostKeyChecking, UserKnownHostsFile list) for ``host``; refuses ``no`` unless
    the run opted in."""
    checking = host.host_key_checking
    if checking == "no" and not options.allow_unchecked_host_keys:
        raise HostKeyError(
            host.name,
            "ssh_config sets StrictHostKeyChecking no for this host: antnest does not connect "
            "without checking the host key (anyone on the path could read and change the job); "
            "use accept-new, or rerun with --allow-unchecked-host-keys",
            status="host key unchecked")
    known = _known_hosts_files(host, options)
    if checking == "no":
        # The opt-in means what it means with paramiko: an unknown key is accepted for this
        # run and not recorded, a changed key is still refused. ssh's own "no" would record
        # the key and connect despite a changed one; accept-new with /dev/null as the file it
        # records into does exactly the former.
        checking = "accept-new"
        known = [os.devnull] + known
    else:
        checking = "accept-new" if (options.accept_new_host_keys
                                    or checking == "accept-new") else "yes"
    return checking, known


def checked_session_args(host: Host, options: SshOptions, checking: str,
                         known: List[str]) -> List[str]:
    """The options every antnest ssh process carries: never a prompt, host keys checked
    against `known`, the connect timeout and dead-peer detection (here, and on a relay)."""
    timeout = host.connect_timeout or options.connect_timeout
    interval = host.server_alive_interval or options.keepalive
    return [
        "-o", "BatchMode=yes",
        "-o", f"StrictHostKeyChecking={checking}",
        "-o", "UserKnownHostsFile=" + " ".join(_quote_option(p) for p in known),
        "-o", f"ConnectTimeout={max(1, int(round(timeout)))}",
        "-o", f"ServerAliveInterval={max(1, int(round(interval)))}",
        "-o", f"ServerAliveCountMax={SERVER_ALIVE_COUNT}",
    ]


def ssh_args(host: Host, options: SshOptions) -> List[str]:
    """Options for every ssh process of ``host`` (master and sessions alike)."""
    checking, known = host_key_policy(host, options)
    args: List[str] = []
    if host.ssh_config:
        args += ["-F", host.ssh_config]
    args += checked_session_args(host, options, checking, known)
    args += [
        "-o", f"HostName={host.address}",
        "-p", str(host.port),
    ]
    if host.global_known_hosts and host.global_known_hosts != DEFAULT_GLOBAL_KNOWN_HOSTS:
        args += ["-o", "GlobalKnownHostsFile=" + " ".join(_quote_option(p)
                                                          for p in host.global_known_hosts)]
    if host.ciphers is None:
        preferred = preferred_ciphers()
        if preferred:
            args += ["-o", f"Ciphers={preferred}"]
    if options.compress:
        args += ["-C"]
    if options.forward_agent:
        args += ["-o", "ForwardAgent=" + _quote_option(options.forward_agent)]
    if host.user:
        args += ["-l", host.user]
    for path in host.identity_files:
        args += ["-i", os.path.expanduser(path)]
    if host.identities_only:
        args += ["-o", "IdentitiesOnly=yes"]
    if host.jump:
        args += ["-o", "ProxyCommand=" + _jump_command(host, options).replace("%", "%%")]
    elif host.proxy_command:
        args += ["-o", "ProxyCommand=" + host.proxy_command.replace("%", "%%")]
    return args


def preferred_ciphers() -> str:
    """ssh's own default Ciphers with AES-GCM first, or "" (then ssh's order stands).

    For a host whose ssh_config sets no Ciphers: the same set ssh would offer, only reordered,
    so nothing is enabled that ssh would not enable. AES-GCM (AES-NI) costs ssh and sshd about
    a quarter less CPU per MiB than chacha20-poly1305 here and ~10 us less per round trip
    (benchmarks/README.md); the paramiko client prefers AES-GCM too."""
    default = default_ciphers()
    gcm = [c for c in default if c.endswith("-gcm@openssh.com")]
    if not gcm or list(default[:len(gcm)]) == gcm:
        return ""
    return ",".join(gcm + [c for c in default if c not in gcm])


def _jump_command(host: Host, options: SshOptions) -> str:
    """The hop chain as nested ``ssh -W`` ProxyCommands, each hop with antnest's options (ssh's
    own -J would drop them: BatchMode, known_hosts files, timeouts)."""
    *before, last = host.jump
    hop = dataclasses.replace(last, jump=tuple(before))
    argv = ["ssh"] + ssh_args(hop, options) + ["-W", f"{_bracket(host.address)}:{host.port}",
                                               hop.name]
    return shlex.join(argv)


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# --------------------------------------------------------------------------- errors

def classify(host: Host, stderr: str, options: SshOptions) -> HostError:
    """ssh's exit 255 and stderr as the typed error and status the paramiko client raises."""
    text = stderr.replace("\r", "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()
             and not ln.startswith(("Warning: Permanently added", "Pseudo-terminal"))]
    last = lines[-1] if lines else "ssh exited with status 255 and said nothing"
    where = f"{host.address} port {host.port}"
    if "REVOKED HOST KEY" in text or "revoked key" in text.lower():
        fp = _fingerprint_in(text)
        return HostKeyError(host.name, f"host key for {where} ({fp or 'its key'}) is marked "
                            "@revoked in known_hosts: refusing to connect, as ssh does",
                            status="host key revoked")
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        presented = _fingerprint_in(text)
        offending = re.search(r"Offending \S+ key in (\S+):(\d+)", text)
        known = _known_fingerprint(offending.group(1), int(offending.group(2))) \
            if offending else None
        fix = offending.group(1) if offending else "known_hosts"
        return HostKeyError(
            host.name,
            f"host key for {where} has CHANGED: it presented {presented or '?'}, known_hosts "
            f"has {known or '?'}. This may be an attack; if the host was reinstalled, remove "
            f"the old line from {fix} (ssh-keygen -R '{_known_name(host)}')",
            status="host key changed")
    if "Host key verification failed" in text or "No " in text and "host key is known" in text:
        where_file = (options.known_hosts[-1] if options.known_hosts else
                      (host.user_known_hosts or DEFAULT_USER_KNOWN_HOSTS)[0])
        scanned = _scan_fingerprint(host)
        return HostKeyError(
            host.name,
            f"host key for {_known_name(host)} is not known ({scanned or 'fingerprint: run '}"
            f"{'' if scanned else 'ssh-keyscan'}); check it, then add it to "
            f"{os.path.expanduser(where_file)} (for example with ssh-keyscan) or rerun with "
            "--accept-new-host-keys", status="host key unknown")
    if "Permission denied" in text or "Too many authentication failures" in text:
        return AuthError(host.name, f"authentication failed for user {host.user or 'the local'} "
                         f"user: {last}; is the public key in the host's authorized_keys?")
    if "Could not resolve hostname" in text:
        return ConnectError(host.name, f"cannot resolve {host.address!r}: {last}",
                            status="unreachable")
    if "Connection refused" in text:
        return ConnectError(host.name, f"cannot connect to {where}: connection refused",
                            status="refused")
    if "timed out" in text or "Connection timed out" in text:
        return ConnectError(host.name, f"no answer from {where} within the connect timeout "
                            f"({last})", status="timeout")
    if "No route to host" in text or "Network is unreachable" in text:
        return ConnectError(host.name, f"cannot connect to {where}: {last}",
                            status="unreachable")
    return ConnectError(host.name, f"ssh to {where} failed: {last}", status="handshake failed")


def _known_name(host: Host) -> str:
    return host.address if host.port == 22 else f"[{host.address}]:{host.port}"


def _fingerprint_in(text: str) -> Optional[str]:
    match = re.search(r"(SHA256:[A-Za-z0-9+/=]+)", text)
    kind = re.search(r"The fingerprint for the (\S+) key", text)
    if not match:
        return None
    return f"{kind.group(1).lower()} {match.group(1)}" if kind else match.group(1)


def _known_fingerprint(path: str, line: int) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            entry = f.read().splitlines()[line - 1]
    except (OSError, IndexError):
        return None
    return _keygen_fingerprint(entry.split(None, 1)[1] if " " in entry else entry)


def _keygen_fingerprint(key_line: str) -> Optional[str]:
    try:
        done = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=key_line.encode(),
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"(SHA256:\S+).*\((\S+)\)", done.stdout.decode("utf-8", "replace"))
    return f"{match.group(2).lower()} {match.group(1)}" if match else None


def _scan_fingerprint(host: Host) -> Optional[str]:
    """The unknown key's fingerprint, for the message (ssh with strict checking omits it)."""
    if host.jump or host.proxy_command or host.relay is not None:
        return None   # the master may not reach it directly
    try:
        done = subprocess.run(["ssh-keyscan", "-p", str(host.port), "-T", "5", host.address],
                              capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    prints = []
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#") and " " in line:
            found = _keygen_fingerprint(line.split(None, 1)[1])
            if found:
                prints.append(found)
    return ", ".join(prints) or None


# --------------------------------------------------------------------------- readiness

_IN_CREATE, _IN_MOVED_TO, _IN_NONBLOCK, _IN_CLOEXEC = 0x100, 0x80, 0o4000, 0o2000000


def _wait_for_socket(sock: str, master: "subprocess.Popen[bytes]", timeout: float) -> bool:
    """Wait until the master's control socket exists or the master exits; False on timeout.

    ssh makes the socket once it is authenticated and listening for sessions, and says nothing
    then. Rather than polling with sleeps (on average half a sleep lost per host), this sleeps
    in select() on an inotify watch of the socket directory and a pidfd of the master, so it
    wakes the moment either happens; where either is missing (not Linux), it polls every 2 ms.
    """
    deadline = time.monotonic() + timeout
    fds: List[int] = []
    try:
        if _libc is not None:
            watch = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if watch >= 0:
                fds.append(watch)
                if _libc.inotify_add_watch(watch, os.fsencode(os.path.dirname(sock)),
                                           _IN_CREATE | _IN_MOVED_TO) < 0:
                    fds.clear()
                    os.close(watch)
        if fds and hasattr(os, "pidfd_open"):
            try:
                fds.append(os.pidfd_open(master.pid))
            except OSError:   # an old kernel, or it already ended and was reaped
                pass
        exact = len(fds) == 2
        while not os.path.exists(sock):
            if master.poll() is not None:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select(fds, [], [], min(left, 1.0) if exact
                                        else min(left, 0.002))
            if fds and fds[0] in ready:
                try:
                    os.read(fds[0], 65536)   # the events themselves do not matter
                except BlockingIOError:
                    pass
        return True
    finally:
        for fd in fds:
            os.close(fd)


# --------------------------------------------------------------------------- the connection

class OpenSshConnection:
    """One host through the ssh binary: a master we own, runners as sessions over it."""

    def __init__(self, host: Host, options: SshOptions) -> None:
        self.host = host
        self.address = f"{host.address}:{host.port}"  # for tables and logs (Connection)
        self.options = options
        self._master: Optional["subprocess.Popen[bytes]"] = None
        self._socket: Optional[str] = None
        self._lock = threading.Lock()
        self._stderr: Optional[Any] = None   # the master's stderr: an unlinked file

    def connect(self) -> None:
        """Start the master and wait until its control socket answers (or ssh says why not)."""
        with self._lock:
            if self.is_alive():
                return
            self._stop_master()
            if not ssh_available():
                raise ConnectError(self.host.name, "the openssh client needs an ssh binary on "
                                   "PATH (apt-get install openssh-client), or use "
                                   "--ssh-client paramiko", status="unreachable")
            options = ssh_args(self.host, self.options)   # may refuse: before any process
            with _control.lock:
                sock = _control.socket(self)
            self._socket = sock
            argv = (["ssh", "-M", "-N", "-S", sock, "-o", "ControlPersist=no",
                     "-o", "ControlMaster=yes"] + options + ["--", self.host.name])
            # ssh's words go to a file read when they matter (a failure, an unchecked key):
            # no thread per host drains a pipe
            stderr_file = tempfile.TemporaryFile()
            if self._stderr is not None:
                self._stderr.close()
            self._stderr = stderr_file
            try:
                master = _spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr_file, start_new_session=True)
            except OSError as exc:
                self._forget()
                raise ConnectError(self.host.name, f"cannot start ssh: {exc.strerror or exc}",
                                   status="unreachable") from None
            self._master = master
            timeout = (self.host.connect_timeout or self.options.connect_timeout) * (
                1 + len(self.host.jump)) + 5
            if not _wait_for_socket(sock, master, timeout):
                self._stop_master()
                raise ConnectError(self.host.name, f"ssh did not connect within "
                                   f"{timeout:g} s", status="timeout")
            if master.poll() is not None and not os.path.exists(sock):
                master.wait()
                stderr = file_tail(stderr_file)
                self._forget()
                raise classify(self.host, stderr, self.options)
            self._warn_unchecked(file_tail(stderr_file))

    def _warn_unchecked(self, stderr: str) -> None:
        if self.host.host_key_checking != "no":
            return
        for text in stderr.splitlines():
            if text.startswith("Warning: Permanently added"):
                # recorded in /dev/null (see ssh_args): the key was not checked
                log.warning("%s: host key NOT checked (StrictHostKeyChecking no, "
                            "--allow-unchecked-host-keys): %s", self.host.name,
                            text.strip().replace("Permanently added", "accepted", 1))

    def is_alive(self) -> bool:
        return (self._master is not None and self._master.poll() is None
                and self._socket is not None and os.path.exists(self._socket))

    def open_runner(self, label: str, stage2: Optional[bytes] = None) -> "OpenSshProcess":
        if not self.is_alive():
            self.connect()
        assert self._socket is not None
        argv = (["ssh", "-S", self._socket, "-o", "ControlMaster=no", "-T"]
                + ssh_args(self.host, self.options)
                + ["--", self.host.name, bootstrap.command(self.host.python)])
        return OpenSshProcess(label, argv, self, stage2)

    def run_command(self, command: str, output: OutputSink, timeout: Optional[float],
                    stop: threading.Event) -> CommandExit:
        """A session over the master: its ssh client's pipes are the command's (ssh exits
        with the command's status, 255 for its own errors)."""
        from antnest.transport.command import stream_process

        if not self.is_alive():
            self.connect()
        assert self._socket is not None
        argv = (["ssh", "-S", self._socket, "-o", "ControlMaster=no", "-T"]
                + ssh_args(self.host, self.options) + ["--", self.host.name, command])
        try:
            proc = _spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise ConnectError(self.host.name, f"cannot start ssh: {exc.strerror or exc}",
                               status="unreachable") from None
        return stream_process(proc, output, timeout, stop)

    def where(self) -> str:
        user = self.host.user or ssh_user()
        return f"{user}@{self.host.address}:{self.host.port} (openssh)"

    def close(self) -> None:
        with self._lock:
            self._stop_master()

    def _stop_master(self) -> None:
        master, sock = self._master, self._socket
        if master is not None and master.poll() is None:
            master.terminate()   # ssh closes its sessions and removes the socket
            try:
                master.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait(timeout=STOP_GRACE)
        if sock is not None:
            try:
                os.unlink(sock)
            except OSError:
                pass
        self._forget()

    def _forget(self) -> None:
        had = self._socket is not None
        self._master, self._socket = None, None
        if had:
            with _control.lock:
                _control.release(self)


class OpenSshProcess(ChildStdout):
    """A runner as an ssh session over the master: pipes to and from the ssh process."""

    def __init__(self, label: str, argv: List[str], conn: OpenSshConnection,
                 stage2: Optional[bytes] = None) -> None:
        self.label = label
        self._conn = conn
        # ssh's stderr (its own errors, the runner's fatal words) goes to an unlinked file
        # that diagnose() reads: no thread per runner to drain it
        self._stderr = tempfile.TemporaryFile()
        self._proc = _spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=self._stderr, bufsize=0, start_new_session=True)
        assert self._proc.stdin and self._proc.stdout
        self._attach_stdout()
        for fd in (self._proc.stdin.fileno(), self.fileno()):
            _grow_pipe(fd)
        self._out = outgoing.pipe_writer(label, self._proc.stdin, lambda exc: self.kill())
        try:
            self.send(stage2 or bootstrap.stage2())
        except OSError:   # ssh or the command already ended: recv sees EOF, diagnose says why
            pass

    def send(self, *chunks: bytes) -> None:
        self._out.send(*chunks)

    def close(self) -> None:
        self._out.close()

    def kill(self) -> None:
        self.close()
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def diagnose(self) -> str:
        try:
            code: Optional[int] = self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        stderr = file_tail(self._stderr)
        if code == 255:
            error = classify(self._conn.host, stderr, self._conn.options)
            return describe_exit(None, stderr, f"ssh failed ({error.problem})")
        return describe_exit(code, stderr)


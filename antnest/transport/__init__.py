"""The transport seam: how a host is reached and a runner process started and talked to.

A `Connection` is one host's link (connect, open a runner, alive?, close; and for `antnest exec`
and `--dry-run`, run a plain shell command and say where it leads); each runner it opens
is a `RunnerProcess` (bytes in, bytes out, a receive timeout, close, kill, and what the process
said on its real stderr when it died). `Host.transport` names the connection in `TRANSPORTS`:

    "local"  antnest.transport.local   runners as subprocesses of the master
    "ssh"    antnest.transport.ssh     paramiko: one connection per host, an exec channel per runner
             antnest.transport.openssh the ssh binary: one ControlMaster per host (Host.ssh_client)
    "memory" antnest.transport.memory  scripted runners inside the master (fast core tests)

Adding a transport is one module with a function `(host, options) -> Connection` plus its
"module:function" line in `TRANSPORTS`; nothing else branches on the transport ("ssh" picks
its client in `ssh_connection`). Modules load only when a host uses them (paramiko stays out of
local runs).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple, Type

from antnest.host import Host, HostStatus

TRANSPORTS: Dict[str, str] = {  # Host.transport -> "module:function" returning its Connection
    "local": "antnest.transport.local:open_connection",
    "ssh": "antnest.transport:ssh_connection",  # paramiko or openssh, by Host.ssh_client
    "memory": "antnest.transport.memory:open_connection",  # scripted runners, for tests
}


class RunnerProcess(Protocol):
    """One runner: the frames of runner.py travel over send() and the reads.

    Two ways to read: `recv()` blocks (the boot reads HELLO with it, under `set_timeout`);
    after HELLO the dispatcher (antnest.dispatch) selects on `fileno()` and calls
    `read_nowait()`. The read side is closed by `release()` alone, once nobody selects on it,
    so its fd number is never another runner's while it is watched."""

    label: str

    def set_timeout(self, seconds: Optional[float]) -> None:
        """recv() raises socket.timeout after this long without a byte; None waits forever."""

    def send(self, *chunks: bytes) -> None:
        """Queue every chunk for the runner's stdin, in order, without blocking the caller
        for long: what the pipe or window cannot take now is written by a short-lived thread
        (antnest.transport.outgoing). A broken link raises here or ends the read side."""

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes of the runner's stdout; b'' at EOF."""

    def fileno(self) -> int:
        """A fd that is readable when read_nowait() has something: bytes or the EOF."""

    def read_nowait(self, size: int) -> Optional[bytes]:
        """Up to `size` bytes that are there now; b'' at EOF; None when nothing is (yet)."""

    def close(self) -> None:
        """Close the runner's stdin: it exits at once, even mid-task."""

    def kill(self) -> None:
        """Tear the process down without waiting for it; the read side stays open until
        release() (the reader sees the EOF)."""

    def release(self) -> None:
        """Close the read side; called once, by whoever read it last."""

    def diagnose(self) -> str:
        """After EOF: exit status and the tail of stderr, for error messages."""


class Connection(Protocol):
    """One host's link; every runner slot of the host shares it."""

    address: str  # where, for tables and logs: "local", "10.0.0.1:22"

    def connect(self) -> None:
        """Establish the link (again, after is_alive() went False); raises a HostError saying
        why it cannot."""

    def open_runner(self, label: str, stage2: Optional[bytes] = None) -> RunnerProcess:
        """Start one runner (booted by bootstrap.py) on the host; raises a HostError.
        `stage2` replaces the runner's stage 2 (a relay's: bootstrap.relay_stage2)."""

    def is_alive(self) -> bool:
        """False once the link is gone: runners cannot be opened, and a runner that just
        ended was not the task's fault."""

    def close(self) -> None:
        """Drop the link; runners still open on it end."""

    def run_command(self, command: str, output: "OutputSink", timeout: Optional[float],
                    stop: threading.Event) -> "CommandExit":
        """Run a plain shell command on the host (`antnest exec`): no runner, no pty, stdin
        closed at once so nothing can wait for input; connects first when not connected.
        Its output goes to `output` as it arrives (called from one thread per stream at most).
        Returns when the command exits, once `timeout` seconds passed, or within STOP_CHECK
        of `stop` being set; then the command is killed or its channel closed. Raises a
        HostError when the command cannot be started."""

    def where(self) -> str:
        """Where the host's runners would run, said without connecting (`antnest run
        --dry-run`): "local processes", "alice@10.0.0.1:22 (paramiko)"."""


OutputSink = Callable[[str, bytes], None]   # ("stdout" or "stderr", bytes as they arrive)
STOP_CHECK = 0.1   # seconds a running plain command may take to notice its `stop` event


@dataclass(frozen=True)
class CommandExit:
    """How a plain command (Connection.run_command) ended."""

    status: Optional[int]     # its exit status; negative: killed by that signal; None: none came
    timed_out: bool = False   # ended by the timeout
    stopped: bool = False     # ended by `stop`


def open_connection(host: Host, options: "SshOptions") -> "Connection":
    """The connection `host.transport` names (not connected yet); its module loads now."""
    try:
        module = TRANSPORTS[host.transport]
    except KeyError:
        from antnest.errors import ConnectError

        raise ConnectError(host.name, f"unknown transport {host.transport!r} (known: "
                           f"{', '.join(sorted(TRANSPORTS))})", status=HostStatus.ERROR) from None
    module_name, _, function = module.partition(":")
    factory = getattr(importlib.import_module(module_name), function)
    connection: Connection = factory(host, options)
    return connection


@dataclass(frozen=True)
class SshOptions:
    """How to connect; the same for every host of a run."""

    known_hosts: Tuple[str, ...] = ()      # --known-hosts, read after the host's own files
    accept_new_host_keys: bool = False
    allow_unchecked_host_keys: bool = False  # let StrictHostKeyChecking no through
    ssh_client: str = "paramiko"           # for hosts that name none: paramiko, openssh, auto
    connect_timeout: float = 10.0
    keepalive: float = 5.0                 # ServerAliveInterval when the host sets none
    compress: bool = False
    forward_agent: Optional[str] = None    # an agent socket to forward (a relay's link only)

    def known_hosts_files(self) -> List[str]:
        files = [os.path.expanduser("~/.ssh/known_hosts")]
        files += [os.path.expanduser(path) for path in self.known_hosts]
        return list(dict.fromkeys(files))

    def writable_known_hosts(self) -> str:
        """Where accept-new records keys: the file named on the command line, else the user's."""
        return os.path.expanduser(self.known_hosts[-1] if self.known_hosts else "~/.ssh/known_hosts")


SSH_CLIENTS = ("paramiko", "openssh", "auto")


def ssh_client_for(host: "Host", options: SshOptions) -> str:
    """``paramiko`` or ``openssh``: the host's choice, else the run's; ``auto`` is openssh when
    an ``ssh`` binary is on PATH."""
    client = host.ssh_client or options.ssh_client
    if client == "auto":
        import shutil

        client = "openssh" if shutil.which("ssh") else "paramiko"
    return client


def ssh_connection(host: Host, options: "SshOptions") -> Connection:
    """The connection of the chosen client (paramiko's or the ssh binary's, or the ssh binary
    of the host's relay); paramiko loads only when a host uses it."""
    if host.relay is not None:
        from antnest.transport.relay import RelayedConnection

        return RelayedConnection(host, options)
    if ssh_client_for(host, options) == "openssh":
        from antnest.transport.openssh import OpenSshConnection

        return OpenSshConnection(host, options)
    from antnest.transport.ssh import SshConnection

    return SshConnection(host, options)


class _NoInvokeHere:
    """A meta path entry that makes ``import invoke`` fail in one thread only."""

    def __init__(self, thread: int) -> None:
        self.thread = thread

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "invoke" and threading.get_ident() == self.thread:
            raise ImportError("invoke is imported on demand (antnest)", name=name)
        return None


class _InvokeOnDemand:
    """Stands in for invoke inside paramiko.config, whose only use of it is ``Match exec``."""

    def __getattr__(self, name: str) -> Any:
        import invoke

        return getattr(invoke, name)


@contextlib.contextmanager
def paramiko_without_invoke() -> Iterator[None]:
    """Import paramiko without invoke: paramiko.config imports invoke (when installed) for
    ``Match exec`` in its own ssh_config reader, which antnest never uses, and invoke brings
    unittest.mock, asyncio and ssl: about 100 ms of a cold start, half of paramiko's import.
    Afterwards paramiko.config gets invoke on first use, so paramiko behaves as before for
    anyone else in the process. Only this thread's import of invoke is refused meanwhile."""
    if "paramiko" in sys.modules or "invoke" in sys.modules:
        yield
        return
    guard = _NoInvokeHere(threading.get_ident())
    sys.meta_path.insert(0, guard)  # type: ignore[arg-type]
    try:
        yield
    finally:
        sys.meta_path.remove(guard)  # type: ignore[arg-type]
        config = sys.modules.get("paramiko.config")
        if config is not None and getattr(config, "invoke", None) is None:
            config.invoke = _InvokeOnDemand()  # type: ignore[attr-defined]
            config.invoke_import_error = None  # type: ignore[attr-defined]


def link_errors() -> Tuple[Type[BaseException], ...]:
    """What a broken runner link raises: OS errors, EOF, and paramiko's errors once paramiko is
    in use (it is imported only for SSH hosts, so local runs start without it)."""
    paramiko = sys.modules.get("paramiko")
    return (OSError, EOFError) + ((paramiko.SSHException,) if paramiko is not None else ())


def describe_exit(code: Optional[int], stderr: str, status: Optional[str] = None) -> str:
    """A dead runner's exit, for error messages: status, then the tail of its stderr."""
    if status is None:
        if code is None:
            status = "still running"
        elif code >= 0:
            status = f"exit status {code}"
        else:
            try:
                status = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                status = f"killed by signal {-code}"
    tail = stderr.strip()
    return f"{status}; stderr: {tail[-2000:]}" if tail else status


def file_tail(stream: Any, size: int = 8192) -> str:
    """The last `size` bytes of a stderr file, as text."""
    try:
        end = stream.seek(0, os.SEEK_END)
        stream.seek(max(0, end - size))
        return stream.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""

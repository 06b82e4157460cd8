"""The embedded default: runners as local subprocesses, booted exactly as a remote one is."""
from __future__ import annotations

import collections
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import Optional

from antnest import bootstrap
from antnest.transport import CommandExit, Connection, OutputSink
from antnest.errors import BootstrapError
from antnest.host import Host, HostStatus
from antnest.transport import SshOptions, describe_exit


class LocalConnection:
    """No link at all: the master starts its runners itself, so it is always alive."""

    address = "local"

    def __init__(self, host: Host) -> None:
        self.host = host
        self._python = host.python if host.python != "python3" else None  # default: this Python

    def connect(self) -> None:
        pass

    def open_runner(self, label: str) -> "LocalProcess":
        return LocalProcess(label, self._python)

    def is_alive(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def run_command(self, command: str, output: OutputSink, timeout: Optional[float],
                    stop: threading.Event) -> CommandExit:
        """The command under /bin/sh, a child of the master in a session of its own."""
        from antnest.transport.command import stream_process

        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as exc:
            raise BootstrapError(self.host.name, f"cannot start /bin/sh: "
                                 f"{exc.strerror or exc}", status=HostStatus.ERROR) from None
        return stream_process(proc, output, timeout, stop)

    def where(self) -> str:
        return "local processes"


def open_connection(host: Host, options: SshOptions) -> Connection:
    return LocalConnection(host)


KILL_GRACE = 1.0   # seconds a runner gets to stop its descendants after stdin closes


class LocalProcess:
    """One runner in a child process; stage 2 goes over its stdin like over SSH."""

    def __init__(self, label: str = "local", python: Optional[str] = None) -> None:
        self.label = label
        interpreter = python or sys.executable
        try:
            self._proc = subprocess.Popen(
                bootstrap.argv(interpreter),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,  # Ctrl-C reaches the master only; it stops the runners
            )
        except OSError as exc:
            raise BootstrapError(label, f"cannot start the interpreter {interpreter!r}: "
                                 f"{exc.strerror or exc}", status=HostStatus.NO_PYTHON) from None
        self.pid = self._proc.pid
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr  # PIPE, all three
        # Raw fd numbers are only used while their pipe is open: a closed fd's number is soon
        # another runner's pipe, and a late send or read on it would cross the streams. stdin
        # is closed under the send lock; stdout and stderr only by the thread reading them, at EOF.
        self._stdin: Optional[int] = self._proc.stdin.fileno()
        self._stdout: Optional[int] = self._proc.stdout.fileno()
        self._send_lock = threading.Lock()
        self._timeout: Optional[float] = None
        self._stderr_tail: collections.deque = collections.deque(maxlen=64)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.send(bootstrap.stage2())

    def _drain_stderr(self) -> None:
        stream = self._proc.stderr
        assert stream is not None
        try:
            for line in stream:
                self._stderr_tail.append(line.decode("utf-8", "replace"))
        except (OSError, ValueError):  # pragma: no cover - closed under us: nothing more to read
            pass
        finally:
            stream.close()

    def send(self, *chunks: bytes) -> None:
        with self._send_lock:
            if self._stdin is None:
                raise BrokenPipeError(f"{self.label}: the runner's stdin is closed")
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._stdin, view):]

    def set_timeout(self, seconds: Optional[float]) -> None:
        self._timeout = seconds

    def recv(self, size: int) -> bytes:
        """Called by one reader thread; b'' at EOF (and the pipe is closed then). With a
        timeout set, socket.timeout after that long without a byte, as an SSH channel does."""
        if self._stdout is None:
            return b""
        if self._timeout is not None:
            ready, _, _ = select.select([self._stdout], [], [], self._timeout)
            if not ready:
                raise socket.timeout(f"no output for {self._timeout:g} s")
        data = os.read(self._stdout, size)
        if not data:
            self._stdout = None
            assert self._proc.stdout is not None
            self._proc.stdout.close()
        return data

    def close(self) -> None:
        """EOF on the runner's stdin: it exits. A send blocked on a full pipe keeps the lock;
        then kill() closes it."""
        if self._send_lock.acquire(timeout=0.5):
            try:
                self._close_stdin()
            finally:
                self._send_lock.release()

    def _close_stdin(self) -> None:
        self._stdin = None
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        except OSError:
            pass

    def kill(self) -> None:
        self.close()
        try:  # stdin closed: the runner stops what the job started, then exits
            self._proc.wait(timeout=KILL_GRACE)
        except subprocess.TimeoutExpired:
            pass
        if self._proc.poll() is None:
            try:  # its own session: the group is the runner and what it started
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        with self._send_lock:  # a send blocked on the dead runner's pipe has failed by now
            self._close_stdin()

    def diagnose(self) -> str:
        try:
            code = self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        return describe_exit(code, "".join(self._stderr_tail))

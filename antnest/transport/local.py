"""The embedded default: runners as local subprocesses, booted exactly as a remote one is."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Optional

from antnest import bootstrap
from antnest.transport import CommandExit, Connection, OutputSink
from antnest.errors import BootstrapError
from antnest.host import Host, HostStatus
from antnest.transport import SshOptions, describe_exit, file_tail, outgoing
from antnest.transport.pipes import ChildStdout


class LocalConnection:
    """No link at all: the master starts its runners itself, so it is always alive."""

    address = "local"

    def __init__(self, host: Host) -> None:
        self.host = host
        self._python = host.python if host.python != "python3" else None  # default: this Python

    def connect(self) -> None:
        pass

    def open_runner(self, label: str, stage2: Optional[bytes] = None) -> "LocalProcess":
        return LocalProcess(label, self._python, stage2)

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


class LocalProcess(ChildStdout):
    """One runner in a child process; stage 2 goes over its stdin like over SSH."""

    def __init__(self, label: str = "local", python: Optional[str] = None,
                 stage2: Optional[bytes] = None) -> None:
        self.label = label
        interpreter = python or sys.executable
        # stderr (only what kills a runner: a bad interpreter, a crash) goes to an unlinked
        # file, read back by diagnose(): no thread per runner to drain it
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                bootstrap.argv(interpreter),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                bufsize=0,
                start_new_session=True,  # Ctrl-C reaches the master only; it stops the runners
            )
        except OSError as exc:
            self._stderr.close()
            raise BootstrapError(label, f"cannot start the interpreter {interpreter!r}: "
                                 f"{exc.strerror or exc}", status=HostStatus.NO_PYTHON) from None
        self.pid = self._proc.pid
        assert self._proc.stdin and self._proc.stdout  # PIPE, both
        self._attach_stdout()
        self._out = outgoing.pipe_writer(label, self._proc.stdin, lambda exc: self.kill())
        self.send(stage2 or bootstrap.stage2())

    def send(self, *chunks: bytes) -> None:
        self._out.send(*chunks)

    def close(self) -> None:
        """EOF on the runner's stdin: it exits; queued input is dropped."""
        self._out.close()

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

    def diagnose(self) -> str:
        try:
            code = self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        return describe_exit(code, file_tail(self._stderr))


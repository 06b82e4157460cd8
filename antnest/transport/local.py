"""The embedded default: runners as local subprocesses, booted exactly as a remote one is."""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
from typing import Optional

from antnest import bootstrap
from antnest.errors import BootstrapError
from antnest.transport import describe_exit


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
                                 f"{exc.strerror or exc}", status="no python") from None
        self.pid = self._proc.pid
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr  # PIPE, all three
        self._pipes = (self._proc.stdin, self._proc.stdout, self._proc.stderr)
        self._stdin = self._proc.stdin.fileno()
        self._stdout = self._proc.stdout.fileno()
        self._stderr_tail: collections.deque = collections.deque(maxlen=64)
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.send(bootstrap.stage2())

    def _drain_stderr(self) -> None:
        for line in self._pipes[2]:
            self._stderr_tail.append(line.decode("utf-8", "replace"))

    def send(self, *chunks: bytes) -> None:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._stdin, view):]

    def recv(self, size: int) -> bytes:
        return os.read(self._stdout, size)

    def close(self) -> None:
        try:
            self._pipes[0].close()
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
        for stream in self._pipes[1:]:
            try:
                stream.close()
            except OSError:
                pass

    def diagnose(self) -> str:
        try:
            code = self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        return describe_exit(code, "".join(self._stderr_tail))

"""The read side of a runner that is a child process (local runners, `ssh` sessions): its
stdout pipe, read blocking during the boot and without blocking by the dispatcher after."""
from __future__ import annotations

import os
import select
import socket
import subprocess
from typing import Optional


class ChildStdout:
    """Mixed into a RunnerProcess whose runner talks over `self._proc.stdout`. The fd is
    closed by release() alone, once nobody selects on it or reads it: a closed fd's number is
    soon another runner's pipe."""

    label: str
    _proc: "subprocess.Popen[bytes]"
    _stdout: Optional[int] = None
    _timeout: Optional[float] = None

    def _attach_stdout(self) -> None:
        assert self._proc.stdout is not None
        self._stdout = self._proc.stdout.fileno()

    def set_timeout(self, seconds: Optional[float]) -> None:
        """recv() raises socket.timeout after this long without a byte, as an SSH channel."""
        self._timeout = seconds

    def recv(self, size: int) -> bytes:
        """Blocking, for the boot; b'' at EOF."""
        fd = self._stdout
        if fd is None:
            return b""
        if self._timeout is not None:
            ready, _, _ = select.select([fd], [], [], self._timeout)
            if not ready:
                raise socket.timeout(f"no output from the runner for {self._timeout:g} s")
        return os.read(fd, size)

    def fileno(self) -> int:
        if self._stdout is None:
            raise ValueError(f"{self.label}: the runner's stdout is closed")
        return self._stdout

    def read_nowait(self, size: int) -> Optional[bytes]:
        fd = self._stdout
        if fd is None:
            return b""
        try:
            return os.read(fd, size)
        except BlockingIOError:
            return None

    def release(self) -> None:
        self._stdout = None
        try:
            if self._proc.stdout is not None:
                self._proc.stdout.close()
        except OSError:
            pass

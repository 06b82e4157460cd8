"""How a runner process is started and talked to: local subprocesses or SSH exec channels.

Both hand the scheduler a `RunnerProcess`: bytes in, bytes out, close, kill, and what the
process said on its real stderr when it died.
"""
from __future__ import annotations

from typing import Protocol


class RunnerProcess(Protocol):
    label: str

    def send(self, *chunks: bytes) -> None:
        """Write every chunk to the runner's stdin, in order (blocks while the pipe or window
        is full). Several chunks save joining a header to a large payload."""

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes of the runner's stdout; b'' at EOF."""

    def close(self) -> None:
        """Close the runner's stdin: it exits at once, even mid-task."""

    def kill(self) -> None:
        """Tear the process down without waiting for it."""

    def diagnose(self) -> str:
        """After EOF: exit status and the tail of stderr, for error messages."""

"""RunLock: one run at a time per lock file (`antnest run --lock FILE`), safe for cron.

The lock is an flock(2) on the file, not the file's existence: the kernel drops it when the
holder exits for any reason, SIGKILL included, so a crashed run never leaves a stale lock behind.
The file's content (the holder's PID and start time) is only there to name the holder in the
refusal message; it is never trusted to decide who holds the lock.

The file is never deleted: unlinking a flock file lets a late starter lock the old inode while
another locks a new one, and both would run.
"""
from __future__ import annotations

import datetime
import fcntl
import os
from typing import Any, Optional, Union

from antnest.errors import LockedError, UsageError

PathLike = Union[str, "os.PathLike[str]"]


def now_iso() -> str:
    """Local time with its UTC offset, to the second: what a person reading a cron log expects."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class RunLock:
    """An exclusive, non-blocking lock held for the life of a run.

    >>> with RunLock("/var/lock/nightly.lock"):
    ...     run_the_job()

    A second run raises LockedError at once ("pid 1234 since 2026-11-26T22:40:01+01:00").
    The descriptor is close-on-exec, so runner subprocesses never inherit (and keep) the lock.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self._fd: Optional[int] = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write our PID and start time into the file, or raise LockedError."""
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this RunLock")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UsageError(f"lock {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockedError(self.path, holder) from None
        except OSError as exc:  # e.g. a file system without flock support
            os.close(fd)
            raise UsageError(f"lock {self.path}: cannot lock it: {exc.strerror or exc}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {now_iso()}\n".encode(), 0)
        except OSError:
            # The lock itself is what matters; a holder line we cannot write only makes a
            # competing run's message vaguer.
            pass
        self._fd = fd

    def release(self) -> None:
        """Empty the file (nobody holds it now) and drop the lock. Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({self.path!r}, locked={self.locked})"


def _read_holder(fd: int) -> str:
    """The holder line, e.g. "pid 1234 since 2026-11-26T22:40:01+01:00".

    Empty when the holder has locked but not yet written (a race of microseconds) or could not
    write; say so rather than guess.
    """
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    line = text.splitlines()[0] if text else ""
    return line or "another process (it has not written its PID yet)"

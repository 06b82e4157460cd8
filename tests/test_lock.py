"""RunLock: one run at a time, a refusal that names the holder, no stale lock after a crash."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from antnest.errors import LockedError, UsageError
from antnest.lock import RunLock

HOLDER = """
import sys, time
from antnest.lock import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A real second process that holds tmp_path/run.lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run.lock")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stdout.close()


def test_holder_line_written_and_emptied_on_release(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    with RunLock(path) as lock:
        assert lock.locked
        text = path.read_text()
        assert text.startswith(f"pid {os.getpid()} since 20")
        assert text.endswith("\n") and "T" in text
    assert not lock.locked
    assert path.exists() and path.read_text() == ""  # never deleted, only emptied
    lock.release()  # twice is fine


def test_second_holder_in_same_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.lock"
    with RunLock(path):
        with pytest.raises(LockedError) as info:
            RunLock(path).acquire()
    assert f"pid {os.getpid()} since" in str(info.value)
    with RunLock(path):  # free again
        pass


def test_other_process_holds_it(tmp_path: Path, holder: subprocess.Popen) -> None:
    started = time.monotonic()
    with pytest.raises(LockedError) as info:
        RunLock(tmp_path / "run.lock").acquire()
    assert time.monotonic() - started < 1.0  # at once, no waiting
    error = info.value
    assert error.path == str(tmp_path / "run.lock")
    assert error.holder.startswith(f"pid {holder.pid} since ")
    assert f"held by pid {holder.pid} since" in str(error)


def test_sigkilled_holder_leaves_no_stale_lock(tmp_path: Path, holder: subprocess.Popen) -> None:
    with pytest.raises(LockedError):
        RunLock(tmp_path / "run.lock").acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    # The dead holder's line is still in the file: it must not matter.
    assert f"pid {holder.pid}" in (tmp_path / "run.lock").read_text()
    with RunLock(tmp_path / "run.lock"):
        assert (tmp_path / "run.lock").read_text().startswith(f"pid {os.getpid()} ")


def test_children_do_not_inherit_the_lock(tmp_path: Path) -> None:
    """Runner subprocesses outliving the run must not keep the lock."""
    path = tmp_path / "run.lock"
    lock = RunLock(path)
    lock.acquire()
    child = subprocess.Popen(["sleep", "30"], close_fds=False)
    try:
        lock.release()
        with RunLock(path):
            pass
    finally:
        child.kill()
        child.wait()


def test_holder_that_has_not_written_yet(tmp_path: Path) -> None:
    import fcntl

    path = tmp_path / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LockedError, match="has not written its PID yet"):
            RunLock(path).acquire()
    finally:
        os.close(fd)


def test_unusable_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no/such/dir/run.lock"):
        RunLock(tmp_path / "no" / "such" / "dir" / "run.lock").acquire()

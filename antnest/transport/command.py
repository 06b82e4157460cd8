"""Plain shell commands over a child process's pipes (Connection.run_command): the local
transport runs `/bin/sh -c`, the openssh one an `ssh` session over its master. Both stream the
two pipes as they fill and stop the child's whole process group at the timeout or on `stop`."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import IO, List, Optional

from antnest.transport import STOP_CHECK, CommandExit, OutputSink

READ_SIZE = 65536
DRAIN_BOUND = 2.0   # seconds the pipes get to deliver their last bytes after the child ended


def stream_process(proc: "subprocess.Popen[bytes]", output: OutputSink,
                   timeout: Optional[float], stop: threading.Event) -> CommandExit:
    """Feed `proc`'s stdout and stderr to `output` until it exits; past `timeout` or once
    `stop` is set, SIGKILL its process group (it was started in a session of its own)."""
    readers: List[threading.Thread] = []
    for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        assert pipe is not None, "stream_process needs both pipes"
        reader = threading.Thread(target=_pump, args=(pipe, stream, output), daemon=True,
                                  name=f"antnest-command-{stream}")
        reader.start()
        readers.append(reader)
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = stopped = False
    while True:
        wait = STOP_CHECK if deadline is None else min(STOP_CHECK, deadline - time.monotonic())
        try:
            proc.wait(max(0.0, wait))
            break
        except subprocess.TimeoutExpired:
            pass
        stopped = stop.is_set()
        timed_out = not stopped and deadline is not None and time.monotonic() >= deadline
        if stopped or timed_out:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
    code = proc.wait()
    for reader in readers:
        reader.join(DRAIN_BOUND)
    return CommandExit(code, timed_out=timed_out, stopped=stopped)


def _pump(pipe: IO[bytes], stream: str, output: OutputSink) -> None:
    try:
        read = getattr(pipe, "read1", pipe.read)
        for chunk in iter(lambda: read(READ_SIZE), b""):
            output(stream, chunk)
    finally:
        pipe.close()


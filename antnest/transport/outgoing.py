"""A runner's input, written without blocking whoever sends.

The dispatcher thread sends to every host (a result from one host frees a window slot for
another), so a send must never wait for a slow host's pipe or SSH window. `Outgoing.send`
writes what the link takes at once; the rest goes to a queue that a thread of this runner
writes out in order and that ends when the queue is empty. A host that keeps up costs no
thread; one that falls behind costs one while it does.
"""
from __future__ import annotations

import collections
import logging
import os
import select
import threading
from typing import Any, Callable, Deque, List, Optional

log = logging.getLogger(__name__)

WAIT_SLICE = 1.0   # a blocked writer looks at close() this often


class Outgoing:
    """The ordered byte queue to one runner's stdin. `try_write` is called with the io lock
    held, and so is `shut` (closing the stdin): a writer never writes to a fd number that
    was closed and handed to another runner meanwhile."""

    def __init__(self, label: str, try_write: Callable[[memoryview], int],
                 wait: Callable[[float], None], shut: Callable[[], None],
                 on_broken: Callable[[BaseException], None]) -> None:
        self.label = label
        self._try_write = try_write    # non-blocking: bytes taken (0 when none fit now)
        self._wait = wait              # until the link may take more (bounded by its argument)
        self._shut = shut              # close the runner's stdin
        self._on_broken = on_broken    # a write failed on the writer thread
        self._lock = threading.Lock()  # the queue and the flags
        self._io = threading.Lock()    # the stdin itself
        self._queue: Deque[memoryview] = collections.deque()
        self._writing = False
        self._closed = False
        self._error: Optional[BaseException] = None

    def send(self, *chunks: bytes) -> None:
        with self._lock:
            if self._error is not None:
                raise BrokenPipeError(f"{self.label}: {self._error}")
            if self._closed:
                raise BrokenPipeError(f"{self.label}: the runner's stdin is closed")
            if self._writing:
                self._queue.extend(memoryview(c) for c in chunks)
                return
            with self._io:
                for i, chunk in enumerate(chunks):
                    view = memoryview(chunk)
                    while view:
                        taken = self._try_write(view)
                        if not taken:
                            break
                        view = view[taken:]
                    if view:
                        self._queue.append(view)
                        self._queue.extend(memoryview(c) for c in chunks[i + 1:])
                        self._writing = True
                        threading.Thread(target=self._drain, name=f"antnest-send-{self.label}",
                                         daemon=True).start()
                        return

    def pending(self) -> int:
        """Bytes queued and not written yet."""
        with self._lock:
            return sum(len(v) for v in self._queue)

    def close(self) -> None:
        """Close the stdin; what is queued is dropped (the runner is being stopped)."""
        with self._lock:
            self._closed = True
            self._queue.clear()
        with self._io:
            self._shut()

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue or self._closed:
                    self._writing = False
                    return
                view = self._queue[0]
            try:
                while view:
                    with self._io:
                        if self._closed:
                            break
                        taken = self._try_write(view)
                    if taken:
                        view = view[taken:]
                    else:
                        self._wait(WAIT_SLICE)
            except Exception as exc:  # a broken pipe or link: the reader sees the end too
                with self._lock:
                    self._error = exc
                    self._queue.clear()
                    self._writing = False
                log.debug("%s: send failed: %s", self.label, exc)
                try:
                    self._on_broken(exc)
                except Exception:
                    log.debug("%s: stopping after a failed send failed", self.label, exc_info=True)
                return
            with self._lock:
                if self._queue:
                    self._queue.popleft()


def pipe_writer(label: str, stream: Any, on_broken: Callable[[BaseException], None]) -> Outgoing:
    """An Outgoing for the stdin pipe of a child process (its file object `stream`); the fd
    is made non-blocking and closed by Outgoing.close()."""
    fd = stream.fileno()
    os.set_blocking(fd, False)
    closed: List[bool] = []

    def try_write(view: memoryview) -> int:
        if closed:
            raise BrokenPipeError(f"{label}: the runner's stdin is closed")
        try:
            return os.write(fd, view)
        except BlockingIOError:
            return 0

    def wait(seconds: float) -> None:
        if not closed:
            try:
                select.select([], [fd], [], seconds)
            except (OSError, ValueError):  # closed meanwhile: the next try says so
                pass

    def shut() -> None:
        if not closed:
            closed.append(True)
            try:
                stream.close()
            except OSError:
                pass

    return Outgoing(label, try_write, wait, shut, on_broken)

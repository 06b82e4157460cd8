"""The dispatcher: one thread and one selector read every runner's frames and run their handlers.

Runner slots do not own a reader thread each. Once a runner has said HELLO its stream is
`watch()`ed here: when its fd is readable the dispatcher reads what is there, cuts frames and
calls the slot's handler for each, on this one thread, so the scheduler's state changes in
one place and in the order the frames arrived. A slot that hears nothing for its silence
bound is told so (a runner heartbeats every 2 s); an EOF or a broken link ends it too. What
other threads need done here (a new watch, a stop) goes through `call_soon()`, which wakes
the selector through a pipe (the models: CPython's `_ThreadWakeup` in concurrent.futures'
process pool, Mitogen's `Broker.defer`).

Handlers must not block: sends to runners are queued by the transports (see
`antnest.transport.outgoing`), and whatever waits (killing a process, booting a new runner)
runs on the slot's own short-lived thread.

    transport fd readable -> Dispatcher -> Watch.on_data(bytes) / on_end(why)   (this thread)
    any thread -> call_soon(fn)         -> fn()                                 (this thread)
"""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import selectors
import socket
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20


class Watch:
    """One stream the dispatcher reads for a slot: the hooks it calls, on its thread."""

    def __init__(self, label: str, fileno: int, read: Callable[[int], Optional[bytes]],
                 on_data: Callable[[bytes], bool], on_end: Callable[[str, Optional[BaseException]], None],
                 silence: float) -> None:
        self.label = label
        self.fileno = fileno
        self.read = read          # non-blocking: bytes, b"" at EOF, None when nothing is there
        self.on_data = on_data    # returns False when the slot is done (its handler said so)
        self.on_end = on_end      # (why, error): EOF, silence, a link error; called once
        self.silence = silence
        self.last_heard = time.monotonic()
        self.ended = False


class Dispatcher:
    """The one reading thread of a Cluster; started on the first watch, stopped by close()."""

    def __init__(self, name: str = "antnest-dispatch") -> None:
        self._name = name
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._soon: Deque[Callable[[], None]] = collections.deque()
        self._woken = False
        self._deadlines: List[Tuple[float, int, Watch]] = []  # silence bounds, checked lazily
        self._order = itertools.count()
        self._watches: Dict[int, Watch] = {}
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    # -- any thread ---------------------------------------------------------------------------
    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run fn on the dispatcher thread; wakes the selector."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the dispatcher is closed")
            self._soon.append(fn)
            wake = not self._woken
            self._woken = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        if wake:
            try:
                os.write(self._wake_w, b"!")
            except BlockingIOError:  # the pipe is full of wake-ups already
                pass

    def watch(self, watch: Watch) -> None:
        """Start reading `watch.fileno`; its hooks run on the dispatcher thread from now on."""
        self.call_soon(lambda: self._add(watch))

    def unwatch(self, watch: Watch) -> None:
        """Stop reading it (its on_end is not called); safe from any thread."""
        try:
            self.call_soon(lambda: self._remove(watch))
        except RuntimeError:
            pass

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (after what was posted before); watches left end with "closed"."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    # -- the dispatcher thread ----------------------------------------------------------------
    def _add(self, watch: Watch) -> None:
        if watch.ended:
            return
        stale = self._watches.get(watch.fileno)
        if stale is not None:  # its fd was closed under us and the number handed out again
            self._end(stale, "connection broken: its stream was closed", OSError())
        try:
            self._selector.register(watch.fileno, selectors.EVENT_READ, watch)
        except (ValueError, OSError, KeyError) as exc:  # closed under us: the runner is gone
            self._end(watch, f"connection broken: {exc}", exc, registered=False)
            return
        self._watches[watch.fileno] = watch
        watch.last_heard = time.monotonic()
        heapq.heappush(self._deadlines, (watch.last_heard + watch.silence, next(self._order), watch))
        # bytes read before the watch began (after HELLO) may hold whole frames already
        self._deliver(watch, b"")

    def _remove(self, watch: Watch) -> None:
        if self._watches.get(watch.fileno) is watch:
            del self._watches[watch.fileno]
            try:
                self._selector.unregister(watch.fileno)
            except (KeyError, ValueError, OSError):
                pass
        watch.ended = True

    def _end(self, watch: Watch, why: str, error: Optional[BaseException],
             registered: bool = True) -> None:
        if watch.ended:
            return
        if registered:
            self._remove(watch)
        watch.ended = True
        try:
            watch.on_end(why, error)
        except Exception:  # a slot's bug must not stop every other slot's reading
            log.exception("%s: ending its runner failed", watch.label)

    def _deliver(self, watch: Watch, data: bytes) -> None:
        try:
            going = watch.on_data(data)
        except Exception as exc:
            log.exception("%s: a frame handler failed", watch.label)
            self._end(watch, f"internal error: {type(exc).__name__}: {exc}", exc)
            return
        if not going:
            self._end(watch, "", None)

    def _run(self) -> None:
        select = self._selector.select
        while True:
            timeout = self._next_timeout()
            try:
                events = select(timeout)
            except (OSError, ValueError):  # a fd closed under the selector: find which
                self._drop_closed()
                continue
            for key, _ in events:
                watch = key.data
                if watch is None:
                    self._drain_wakeups()
                    continue
                self._read(watch)
            if self._soon:
                self._run_soon()
            if self._deadlines:
                self._check_silence()
            if self._closed and not self._soon:
                for watch in list(self._watches.values()):
                    self._end(watch, "closed", None)
                return

    def _read(self, watch: Watch) -> None:
        if watch.ended:
            return
        try:
            data = watch.read(READ_CHUNK)
        except socket.timeout:   # the transport knows the peer went silent for good
            self._end(watch, "silent", socket.timeout())
            return
        except (OSError, EOFError, ValueError) as exc:
            self._end(watch, f"connection broken: {exc}", exc)
            return
        except Exception as exc:  # a transport library's own error (paramiko's SSHException)
            self._end(watch, f"connection broken: {exc}", exc)
            return
        if data is None:
            return
        if not data:
            self._end(watch, "eof", None)
            return
        watch.last_heard = time.monotonic()
        self._deliver(watch, data)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_soon(self) -> None:
        with self._lock:
            todo, self._soon = self._soon, collections.deque()
            self._woken = False
        for fn in todo:
            try:
                fn()
            except Exception:
                log.exception("dispatcher: a posted call failed")

    def _next_timeout(self) -> Optional[float]:
        if self._soon:
            return 0
        if not self._deadlines:
            return None if not self._closed else 0
        return max(0.0, self._deadlines[0][0] - time.monotonic())

    def _check_silence(self) -> None:
        """Deadlines are pushed once and moved lazily: a watch heard since goes back in with
        its new bound, so a busy stream costs nothing per frame."""
        now = time.monotonic()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, watch = heapq.heappop(heap)
            if watch.ended:
                continue
            bound = watch.last_heard + watch.silence
            if bound > now:
                heapq.heappush(heap, (bound, next(self._order), watch))
                continue
            self._end(watch, "silent", socket.timeout())

    def _drop_closed(self) -> None:
        for fileno, watch in list(self._watches.items()):
            try:
                os.fstat(fileno)
            except OSError as exc:
                self._end(watch, f"connection broken: {exc}", exc)

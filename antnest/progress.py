"""Progress: a live bar for a person at a terminal, sparse plain lines for cron logs.

    mode=None (auto)  stream is a TTY -> tqdm bar; otherwise a plain line at most every
                      `interval_plain` seconds (30 by default)
    mode=True         the bar even without a TTY (`--progress`)
    mode=False        nothing at all (`--no-progress`)

Plain lines read `antnest: 12000/50000 taskunits (24%), 3100/s, 4/4 hosts busy`; the rate is
the one since the previous line. A job that ends before the first interval prints none; one that
printed any ends with a last line at close(), its rate the whole run's.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from typing import IO, Any, Callable, Optional, Tuple

log = logging.getLogger(__name__)

Snapshot = Tuple[int, int, int]   # (taskunits done, hosts busy, hosts usable)


class Progress:
    """Shows (done, busy, hosts) counts; feed it update() or let poll() do it."""

    def __init__(self, total: Optional[int], stream: Optional[IO[str]] = None,
                 mode: Optional[bool] = None, interval_plain: float = 30.0,
                 on_line: Optional[Callable[[str], None]] = None) -> None:
        """`on_line`, when given, also receives each plain line (same cadence) whatever the
        mode: a log file can get progress while the terminal shows the bar."""
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        if mode is None:
            self.kind = "bar" if _isatty(self.stream) else "plain"
        else:
            self.kind = "bar" if mode else "off"
        self.interval_plain = interval_plain
        self.on_line = on_line
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._snapshot: Optional[Callable[[], Snapshot]] = None
        self._closed = False
        self._last: Snapshot = (0, 0, 0)
        now = time.monotonic()
        self._started = now
        self._line_at = now        # when the last plain line went out (or the start)
        self._line_done = 0        # `done` at that moment, for the rate
        self.lines = 0             # plain lines written so far
        self._bar: Any = None
        if self.kind == "bar":
            from tqdm import tqdm

            # A terminal that reports no size (a bare pty, some CI runners) would get an
            # empty bar, or none at all (tqdm reads 0 rows as "no room"): draw it 80 wide
            # there, and follow resizes everywhere else.
            sized = _terminal_size(self.stream) is not None
            self._bar = tqdm(total=total, file=self.stream, unit="taskunit",
                             dynamic_ncols=sized, ncols=None if sized else 80,
                             nrows=None if sized else 24,
                             mininterval=0.2, leave=True, desc="antnest", smoothing=0.1)

    def update(self, done: int, busy: int, hosts: int) -> None:
        """Absolute counts: taskunits done so far, hosts with work in flight, usable hosts."""
        with self._lock:
            if self._closed:
                return
            self._last = (done, busy, hosts)
            if self._bar is not None:
                self._bar.set_postfix_str(f"hosts busy {busy}/{hosts}", refresh=False)
                if done != self._bar.n:
                    self._bar.update(done - self._bar.n)   # refreshes at most every mininterval
            now = time.monotonic()
            if now - self._line_at >= self.interval_plain:
                self._plain_line(now)

    def _plain_line(self, now: float, whole_run: bool = False) -> None:
        done, busy, hosts = self._last
        since, before = (self._started, 0) if whole_run else (self._line_at, self._line_done)
        elapsed = now - since
        rate = (done - before) / elapsed if elapsed > 0 else 0.0
        self._line_at = now
        self._line_done = done
        line = format_line(done, self.total, rate, busy, hosts)
        if self.kind == "plain":
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed (cron with 2>&-): stop drawing
                self.kind = "off"
            else:
                self.lines += 1
        if self.on_line is not None:
            self.on_line(line)

    # -- polling ---------------------------------------------------------------------------
    def poll(self, snapshot_fn: Callable[[], Snapshot], every: float = 0.2) -> None:
        """Call snapshot_fn() -> (done, busy, hosts) every `every` seconds in a daemon thread,
        until close(), which takes one last snapshot so the bar ends on the final count."""
        if self._thread is not None:
            raise RuntimeError("Progress.poll() is already running")
        self._snapshot = snapshot_fn

        def loop() -> None:
            while not self._stop.wait(every):
                self._poll_once()

        self._thread = threading.Thread(target=loop, name="antnest-progress", daemon=True)
        self._thread.start()

    def _poll_once(self) -> None:
        if self._snapshot is None:
            return
        try:
            done, busy, hosts = self._snapshot()
            self.update(done, busy, hosts)
        except Exception:  # progress must never take a run down
            log.debug("progress update failed", exc_info=True)

    def close(self) -> None:
        """Stop polling, draw the final state, release the terminal line. Safe to call twice."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        if not self._closed:
            self._poll_once()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.kind == "plain" and self.lines:
                self._plain_line(time.monotonic(), whole_run=True)   # end on the final count
            if self._bar is not None:
                self._bar.refresh()
                self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def format_line(done: int, total: Optional[int], rate: float, busy: int, hosts: int) -> str:
    """`antnest: 12000/50000 taskunits (24%), 3100/s, 4/4 hosts busy`."""
    if total:
        count = f"{done}/{total} taskunits ({100 * done // total}%)"
    else:
        count = f"{done} taskunits"
    return f"antnest: {count}, {_rate(rate)}/s, {busy}/{hosts} hosts busy"


def _rate(rate: float) -> str:
    if rate >= 100:
        return f"{rate:.0f}"
    if rate >= 10:
        return f"{rate:.1f}"
    return f"{rate:.2f}"


def _terminal_size(stream: Any) -> Optional[os.terminal_size]:
    """The stream's terminal size, or None when it has none or reports 0 columns or rows."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return None
    return size if size.columns > 0 and size.lines > 0 else None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False

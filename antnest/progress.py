"""Progress: a live bar for a person at a terminal, sparse plain lines for cron logs.

    mode=None (auto)  stream is a TTY -> tqdm bar; otherwise a plain line at most every
                      `interval_plain` seconds (30 by default)
    mode=True         the bar even without a TTY (`--progress`)
    mode=False        nothing at all (`--no-progress`)

Plain lines read `antnest: 12000/50000 taskunits (24%), 3100/s, 4/4 hosts busy, ETA 0:00:12`
(with --input FILE: `antnest: 12000 taskunits, 31.0/120 MB (25%), ...`; failures, retries and
lost runners are added when there are any); the rate is the one since the previous line.
While the bar is up, the job's prints (combine() to a terminal) and antnest's own log lines are
written above it, never glued onto it. A job that ends before the first interval prints none; one that
printed any ends with a last line at close(), its rate the whole run's.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

Snapshot = Tuple[int, ...]   # (taskunits done, hosts busy, hosts usable[, extras dict])


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
        self._lock = threading.RLock()   # a log line written above the bar may come from inside
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._snapshot: Optional[Callable[[], Snapshot]] = None
        self._closed = False
        self._last: Tuple[int, int, int] = (0, 0, 0)
        self.extras: Dict[str, int] = {}   # failed, retried, lost, bytes_done, bytes_total
        self._wrapped: List[Tuple[Any, Any]] = []   # (logging handler, its own stream)
        self._saved_stdout: Any = None
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
            self._route_above()

    # -- other output while the bar is up -----------------------------------------------------
    def _route_above(self) -> None:
        """antnest's log lines on the bar's stream, and prints to the same terminal, are
        written above the bar (cleared first, redrawn after)."""
        for handler in logging.getLogger("antnest").handlers:
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and _same_terminal(stream, self.stream):
                self._wrapped.append((handler, stream))
                handler.setStream(Above(self, stream))   # type: ignore[arg-type]
        if _same_terminal(sys.stdout, self.stream):
            self._saved_stdout = sys.stdout
            sys.stdout = Above(self, sys.stdout)   # type: ignore[assignment]

    def _unroute(self) -> None:
        for handler, stream in self._wrapped:
            handler.setStream(stream)
        self._wrapped = []
        if self._saved_stdout is not None:
            here = sys.stdout
            sys.stdout = self._saved_stdout
            if isinstance(here, Above):
                here.flush_partial()
            self._saved_stdout = None

    def write_above(self, stream: Any, text: str) -> None:
        """Clear the bar, write `text` (whole lines) to `stream`, redraw the bar."""
        with self._lock:
            bar = self._bar
            if bar is not None and not self._closed:
                bar.clear()
            stream.write(text)
            stream.flush()
            if bar is not None and not self._closed:
                bar.refresh()

    def set_input_size(self, size: Optional[int]) -> None:
        """The input file's size in bytes: the bar then counts bytes consumed, with % and ETA."""
        if not size:
            return
        with self._lock:
            self.extras["bytes_total"] = size
            if self._bar is not None:
                self._bar.unit = "B"
                self._bar.unit_scale = True
                self._bar.unit_divisor = 1024
                self._bar.reset(total=size)

    def update(self, done: int, busy: int, hosts: int, **extras: int) -> None:
        """Absolute counts: taskunits done so far, hosts with work in flight, usable hosts;
        `extras` may add failed, retried, lost (runners) and bytes_done (of the input)."""
        with self._lock:
            if self._closed:
                return
            self._last = (done, busy, hosts)
            self.extras.update(extras)
            if self._bar is not None:
                bytes_total = self.extras.get("bytes_total")
                postfix = _troubles(self.extras)[2:]   # what went wrong first: it matters
                postfix = (postfix + ", " if postfix else "") + f"hosts busy {busy}/{hosts}"
                if bytes_total:
                    postfix = f"{done} taskunits, " + postfix
                    position = min(self.extras.get("bytes_done", 0), bytes_total)
                else:
                    position = done
                self._bar.set_postfix_str(postfix, refresh=False)
                if position != self._bar.n:
                    self._bar.update(position - self._bar.n)  # refreshes every mininterval
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
        eta = _eta(done, self.total, self.extras, now - self._started)
        line = format_line(done, self.total, rate, busy, hosts, extras=self.extras, eta=eta)
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
            snapshot = self._snapshot()
            extras: Dict[str, int] = snapshot[3] if len(snapshot) > 3 else {}  # type: ignore[assignment]
            self.update(snapshot[0], snapshot[1], snapshot[2], **extras)  # type: ignore[arg-type]
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
        self._unroute()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def format_line(done: int, total: Optional[int], rate: float, busy: int, hosts: int,
                extras: Optional[Dict[str, int]] = None, eta: Optional[float] = None) -> str:
    """`antnest: 12000/50000 taskunits (24%), 3100/s, 4/4 hosts busy, ETA 0:00:12`."""
    extras = extras or {}
    bytes_total = extras.get("bytes_total")
    if total:
        count = f"{done}/{total} taskunits ({100 * done // total}%)"
    elif bytes_total:
        got = min(extras.get("bytes_done", 0), bytes_total)
        count = (f"{done} taskunits, {_size(got)}/{_size(bytes_total)} of the input "
                 f"({100 * got // bytes_total}%)")
    else:
        count = f"{done} taskunits"
    line = f"antnest: {count}, {_rate(rate)}/s, {busy}/{hosts} hosts busy" + _troubles(extras)
    if eta is not None:
        line += f", ETA {_clock(eta)}"
    return line


def _troubles(extras: Dict[str, int]) -> str:
    """`, 2 failed, 1 retried, 1 runner lost`, only what is not zero."""
    parts = []
    if extras.get("failed"):
        parts.append(f"{extras['failed']} failed")
    if extras.get("retried"):
        parts.append(f"{extras['retried']} retried")
    lost = extras.get("lost", 0)
    if lost:
        parts.append(f"{lost} runner{'s' if lost != 1 else ''} lost")
    return "".join(", " + p for p in parts)


def _eta(done: int, total: Optional[int], extras: Dict[str, int],
         elapsed: float) -> Optional[float]:
    """Seconds left at the whole run's pace: by count when the total is known, else by the
    input's bytes; None when neither is known or nothing is done yet."""
    if elapsed <= 0:
        return None
    if total and done:
        return max(0.0, (total - done) * elapsed / done)
    bytes_total = extras.get("bytes_total")
    got = extras.get("bytes_done", 0)
    if bytes_total and got:
        return max(0.0, (bytes_total - min(got, bytes_total)) * elapsed / got)
    return None


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


class Above:
    """A text stream that writes whole lines above a live bar (partial lines wait for their
    newline, so the bar never shares a line with them)."""

    def __init__(self, progress: Progress, stream: Any) -> None:
        self._progress = progress
        self._stream = stream
        self._partial = ""

    def write(self, text: str) -> int:
        data = self._partial + text
        cut = data.rfind("\n") + 1
        self._partial = data[cut:]
        if cut:
            self._progress.write_above(self._stream, data[:cut])
        return len(text)

    def flush_partial(self) -> None:
        if self._partial:
            self._stream.write(self._partial)
            self._partial = ""
        self._stream.flush()

    def flush(self) -> None:
        pass  # whole lines are flushed as they are written

    def __getattr__(self, name: str) -> Any:   # fileno, isatty, encoding, ...
        return getattr(self._stream, name)


def _same_terminal(stream: Any, other: Any) -> bool:
    """Both are terminals, the same one (a pty's two fds compare by device and inode)."""
    if stream is None or not _isatty(stream) or not _isatty(other):
        return False
    try:
        a = os.fstat(stream.fileno())
        b = os.fstat(other.fileno())
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return False
    return (a.st_dev, a.st_ino, a.st_rdev) == (b.st_dev, b.st_ino, b.st_rdev)


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

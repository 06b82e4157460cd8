"""Progress: a tqdm bar on a terminal (a real pseudo-TTY), sparse plain lines into a pipe."""
from __future__ import annotations

import io
import os
import pty
import re
import select
import threading
import time
from typing import IO, Iterator, List, Tuple

import pytest

from antnest.progress import Progress, format_line

PLAIN = re.compile(r"^antnest: \d+/200 taskunits \(\d+%\), [\d.]+/s, 2/3 hosts busy(, ETA \d+:\d\d:\d\d)?$")


def drain(fd: int, until_quiet: float = 0.3) -> bytes:
    """Read what is buffered on fd (pty master or pipe reader) until it goes quiet."""
    chunks: List[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], until_quiet)
        if not ready:
            return b"".join(chunks)
        try:
            data = os.read(fd, 65536)
        except OSError:  # a pty master reads EIO once the slave is closed
            return b"".join(chunks)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def drive(progress: Progress, seconds: float = 0.6, total: int = 200) -> None:
    for step in range(total + 1):
        progress.update(step, 2, 3)
        time.sleep(seconds / total)
    progress.close()


@pytest.fixture
def terminal() -> Iterator[Tuple[IO[str], int]]:
    master, slave = pty.openpty()
    stream = os.fdopen(slave, "w", encoding="utf-8")
    yield stream, master
    stream.close()
    os.close(master)


@pytest.fixture
def pipe() -> Iterator[Tuple[IO[str], int]]:
    reader, writer = os.pipe()
    stream = os.fdopen(writer, "w", encoding="utf-8")
    yield stream, reader
    stream.close()
    os.close(reader)


def test_bar_on_a_pseudo_tty(terminal: Tuple[IO[str], int]) -> None:
    stream, master = terminal
    assert stream.isatty()
    output: List[bytes] = []
    reader = threading.Thread(target=lambda: output.append(drain(master, 0.3)))
    reader.start()
    progress = Progress(200, stream=stream, interval_plain=0.05)
    assert progress.kind == "bar"
    drive(progress)
    reader.join()
    text = output[0].decode()
    assert "\r" in text                       # redrawn in place
    assert "200/200" in text and "hosts busy 2/3" in text
    assert "taskunit/s" in text or "s/taskunit" in text
    assert "taskunits (" not in text          # no plain lines in between


def test_plain_lines_into_a_pipe(pipe: Tuple[IO[str], int]) -> None:
    stream, reader = pipe
    progress = Progress(200, stream=stream, interval_plain=0.1)
    assert progress.kind == "plain"
    drive(progress, seconds=0.6)
    text = drain(reader).decode()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert 3 <= len(lines) <= 8               # at most one per interval, plus the last
    assert all(PLAIN.match(line) for line in lines), lines
    assert lines[-1].startswith("antnest: 200/200 taskunits (100%)")


def test_short_job_into_a_pipe_prints_nothing(pipe: Tuple[IO[str], int]) -> None:
    stream, reader = pipe
    drive(Progress(200, stream=stream), seconds=0.1)   # default interval: 30 s
    assert drain(reader, 0.1) == b""


def test_no_progress_prints_nothing_even_on_a_tty(terminal: Tuple[IO[str], int]) -> None:
    stream, master = terminal
    progress = Progress(200, stream=stream, mode=False, interval_plain=0.01)
    assert progress.kind == "off"
    drive(progress, seconds=0.2)
    assert drain(master, 0.2) == b""


def test_progress_forces_the_bar_into_a_pipe(pipe: Tuple[IO[str], int]) -> None:
    stream, reader = pipe
    progress = Progress(None, stream=stream, mode=True)
    assert progress.kind == "bar"
    drive(progress, seconds=0.3)
    text = drain(reader).decode()
    assert "\r" in text and "200taskunit" in text.replace(" ", "") and "hosts busy 2/3" in text


def test_on_line_gets_plain_lines_in_every_mode(pipe: Tuple[IO[str], int]) -> None:
    stream, reader = pipe
    got: List[str] = []
    progress = Progress(200, stream=stream, mode=False, interval_plain=0.1, on_line=got.append)
    drive(progress, seconds=0.4)
    assert drain(reader, 0.1) == b""
    assert got and all(PLAIN.match(line) for line in got)


def test_poll_drives_updates_and_close_takes_the_last_snapshot() -> None:
    stream = io.StringIO()
    counts = {"done": 0}
    progress = Progress(None, stream=stream, interval_plain=0.05)
    progress.poll(lambda: (counts["done"], 1, 1), every=0.01)
    for _ in range(30):
        counts["done"] += 7
        time.sleep(0.01)
    counts["done"] = 1234
    progress.close()
    progress.close()                           # twice is fine
    lines = stream.getvalue().splitlines()
    assert lines and lines[-1].startswith("antnest: 1234 taskunits, ")
    assert lines[-1].endswith(", 1/1 hosts busy")
    with pytest.raises(RuntimeError):
        progress.poll(lambda: (0, 0, 0))


def test_a_failing_snapshot_does_not_stop_polling() -> None:
    calls = {"n": 0}

    def snapshot() -> Tuple[int, int, int]:
        calls["n"] += 1
        if calls["n"] % 2:
            raise RuntimeError("racy read")
        return calls["n"], 1, 1

    progress = Progress(10, stream=io.StringIO(), mode=False)
    progress.poll(snapshot, every=0.01)
    time.sleep(0.1)
    progress.close()
    assert calls["n"] >= 4


def test_format_line() -> None:
    assert format_line(12000, 50000, 3100.4, 4, 4) == \
        "antnest: 12000/50000 taskunits (24%), 3100/s, 4/4 hosts busy"
    assert format_line(5, None, 1.234, 0, 2) == "antnest: 5 taskunits, 1.23/s, 0/2 hosts busy"
    assert format_line(0, 0, 0.0, 0, 0) == "antnest: 0 taskunits, 0.00/s, 0/0 hosts busy"


def test_bar_follows_the_terminal_width(terminal: Tuple[IO[str], int]) -> None:
    import fcntl
    import struct
    import termios

    stream, master = terminal
    fcntl.ioctl(stream.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    output: List[bytes] = []
    reader = threading.Thread(target=lambda: output.append(drain(master, 0.3)))
    reader.start()
    drive(Progress(200, stream=stream), seconds=0.3)
    reader.join()
    frames = [f for f in re.split(r"[\r\n]+", output[0].decode()) if f.strip()]
    assert frames and all(len(f) <= 60 for f in frames), frames
    assert any("200/200" in f for f in frames)


CHILD = """
import sys, time
from antnest.progress import Progress
progress = Progress(10)            # the default stream: this process's own stderr
print(progress.kind, flush=True)
for done in range(11):
    progress.update(done, 1, 2)
    time.sleep(0.02)
progress.close()
"""


def test_bar_on_a_process_whose_stderr_is_a_bare_pty() -> None:
    """tqdm reads a 0x0 terminal as "no rows" and would draw nothing on sys.stderr."""
    import subprocess
    import sys

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        text = drain(master, 2.0).decode()
        out, _ = proc.communicate(timeout=10)
    finally:
        os.close(master)
    assert out.strip() == "bar"
    assert "10/10" in text and "hosts busy 1/2" in text


def test_a_closed_stream_silences_progress_instead_of_failing() -> None:
    reader, writer = os.pipe()
    stream = os.fdopen(writer, "w", encoding="utf-8")
    os.close(reader)                      # nobody reads stderr any more: writes get EPIPE
    progress = Progress(10, stream=stream, interval_plain=0.0)
    progress.update(1, 1, 1)
    assert progress.kind == "off"
    progress.update(2, 1, 1)
    progress.close()
    try:
        stream.close()
    except OSError:                       # flushing into the closed pipe
        pass


# --- issue 16: progress that tells the truth ----------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def test_prints_while_the_bar_is_up_are_never_glued_onto_it(
        terminal: Tuple[IO[str], int], monkeypatch: pytest.MonkeyPatch) -> None:
    """combine() printing to the bar's terminal: each printed line stands alone (issue 18
    item 10: `antnest: 158taskunit [00:29, ...]3858982 w0` before)."""
    stream, master = terminal
    monkeypatch.setattr("sys.stdout", stream)
    output: List[bytes] = []
    reader = threading.Thread(target=lambda: output.append(drain(master, 0.5)))
    reader.start()
    progress = Progress(200, stream=stream, interval_plain=0.05)
    import sys
    assert sys.stdout is not stream            # routed above the bar while it is up
    for step in range(201):
        progress.update(step, 2, 3)
        if step % 40 == 20:
            print(f"3858982 w{step}")
            print("part", end="")              # a partial line waits for its newline
            print(" two")
        time.sleep(0.002)
    progress.close()
    assert sys.stdout is stream                # given back
    reader.join()
    segments = [ANSI.sub("", s).strip() for s in re.split(r"[\r\n]", output[0].decode())]
    printed = [s for s in segments if "3858982" in s or "part" in s]
    assert printed, segments
    assert sorted(set(printed)) == sorted({f"3858982 w{s}" for s in range(20, 201, 40)}
                                          | {"part two"}), printed


def test_bar_counts_bytes_of_the_input_and_shows_troubles(
        terminal: Tuple[IO[str], int]) -> None:
    import fcntl
    import struct
    import termios

    stream, master = terminal
    fcntl.ioctl(stream.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    output: List[bytes] = []
    reader = threading.Thread(target=lambda: output.append(drain(master, 0.5)))
    reader.start()
    progress = Progress(None, stream=stream)
    progress.set_input_size(10_000_000)
    for step in range(0, 101, 10):
        progress.update(step, 1, 2, failed=1, retried=2, lost=1, bytes_done=step * 50_000)
        time.sleep(0.03)
    progress.close()
    reader.join()
    text = output[0].decode()
    assert "50%" in text and "100 taskunits" in text          # bytes of the input, with %
    assert "1 failed, 2 retried, 1 runner lost" in text
    assert "4.77M/9.54M" in text or "4.77MB/9.54MB" in text   # tqdm's binary units


def test_plain_line_has_eta_bytes_and_troubles() -> None:
    line = format_line(250, None, 12.5, 3, 4,
                       extras={"bytes_total": 4_000_000, "bytes_done": 1_000_000, "failed": 2,
                               "lost": 2}, eta=75.2)
    assert line == ("antnest: 250 taskunits, 1.0 MB/4.0 MB of the input (25%), 12.5/s, "
                    "3/4 hosts busy, 2 failed, 2 runners lost, ETA 0:01:15")
    assert format_line(10, 40, 2.0, 1, 1, eta=15).endswith("1/1 hosts busy, ETA 0:00:15")


def test_plain_lines_into_a_pipe_gain_an_eta(pipe: Tuple[IO[str], int]) -> None:
    stream, reader = pipe
    progress = Progress(200, stream=stream, interval_plain=0.1)
    drive(progress, seconds=0.6)
    lines = drain(reader).decode().splitlines()
    assert any(", ETA 0:00:0" in line for line in lines[:-1]), lines

"""The runner and its wire: framing units, then a real runner in a local subprocess.

The runner is booted exactly as over SSH (stage 1 on the command line, stage 2 on stdin) by
LocalProcess; frames are read on a thread so that no test can block forever.
"""
from __future__ import annotations

import os
import pickle
import queue
import shlex
import socket
import struct
import sys
import threading
import time
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import cloudpickle
import pytest

from antnest import bootstrap
from antnest.runner import (
    decode_log,
    decode_timeout,
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    FrameReader,
    Kind,
    decode_hello,
    encode,
)
from antnest.testing import pid_alive
from antnest.transport.local import LocalProcess

WAIT = 20.0  # seconds any single frame may take before the test gives up

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the runner cannot import us


# --- framing ---------------------------------------------------------------------------------


class Chunked:
    """A byte stream handed out in the given chunk sizes (cycled), never more than asked."""

    def __init__(self, data: bytes, sizes: List[int]) -> None:
        self.data = data
        self.sizes = sizes
        self.pos = 0
        self.calls = 0

    def read(self, n: int) -> bytes:
        size = min(n, self.sizes[self.calls % len(self.sizes)])
        self.calls += 1
        chunk = self.data[self.pos:self.pos + size]
        self.pos += len(chunk)
        return chunk


FRAMES = [
    (Kind.HELLO, b'{"magic": "ANTNEST1"}'),
    (Kind.PING, b""),
    (Kind.TASKS, pickle.dumps((1, 2, list(range(1000))))),
    (Kind.LOG, "ünïcode\n".encode()),
    (Kind.RESULTS, bytes(range(256)) * 300),   # bigger than a small chunk
    (Kind.BYE, b""),
]


def test_header_is_length_then_kind_big_endian() -> None:
    assert HEADER.size == 9
    assert encode(Kind.LOG, b"abc") == struct.pack(">QB", 3, int(Kind.LOG)) + b"abc"
    assert encode(Kind.PING, b"") == b"\0" * 8 + bytes([int(Kind.PING)])


def test_kinds_are_distinct_small_integers() -> None:
    kinds = Kind.all()
    values = list(kinds.values())
    assert len(set(values)) == len(values)
    assert all(isinstance(v, int) and 0 < v < 256 for v in values)
    assert {"HELLO", "JOB", "TASKS", "RESULTS", "LOG", "BYE"} <= set(kinds)
    assert all(Kind.name(value) == name for name, value in kinds.items())


@pytest.mark.parametrize("sizes", [[1], [2], [3, 1, 7], [9], [10], [4096], [1 << 20]],
                         ids=lambda s: "chunks-" + "-".join(map(str, s)))
def test_frame_reader_reassembles_split_chunks(sizes: List[int]) -> None:
    stream = Chunked(b"".join(encode(k, p) for k, p in FRAMES), sizes)
    reader = FrameReader(stream.read, chunk=64)
    got = []
    while True:
        frame = reader.next()
        if frame is None:
            break
        got.append(frame)
    assert got == [(int(k), p) for k, p in FRAMES]
    assert reader.next() is None  # EOF stays EOF


def test_frame_reader_default_chunk_and_round_trip_of_payloads() -> None:
    records = [(7, 0, [1, "two", 3.0], {1: ("x", "y")}, 0.5), {"a": [b"b"] * 3}, None]
    stream = Chunked(b"".join(encode(Kind.RESULTS, pickle.dumps(r, protocol=5))
                              for r in records), [5, 11])
    reader = FrameReader(stream.read)
    for record in records:
        kind, payload = reader.next()
        assert kind == Kind.RESULTS
        assert pickle.loads(payload) == record
    assert reader.next() is None


def test_frame_reader_eof_inside_a_header() -> None:
    data = encode(Kind.LOG, b"hello")[:5]
    reader = FrameReader(Chunked(data, [2]).read)
    with pytest.raises(EOFError):
        reader.next()


def test_frame_reader_eof_inside_a_payload() -> None:
    data = encode(Kind.PING, b"") + encode(Kind.LOG, b"hello")[:-2]
    reader = FrameReader(Chunked(data, [3]).read)
    assert reader.next() == (int(Kind.PING), b"")
    with pytest.raises(EOFError):
        reader.next()


def test_frame_reader_empty_stream() -> None:
    assert FrameReader(Chunked(b"", [1]).read).next() is None


# --- bootstrap -------------------------------------------------------------------------------


def test_stage1_is_short_and_marked() -> None:
    assert "antnest-runner" in bootstrap.STAGE1
    assert len(bootstrap.STAGE1) < 200
    argv = bootstrap.argv("python3")
    assert (argv[0], argv[-2:]) == ("python3", ["-c", bootstrap.STAGE1])
    command = bootstrap.command("python3")
    assert command.startswith("python3 ") and command.endswith(shlex.quote(bootstrap.STAGE1))


def test_stage2_is_a_length_line_and_compressed_runner_source() -> None:
    payload = bootstrap.stage2()
    length, _, body = payload.partition(b"\n")
    assert int(length) == len(body)
    source = zlib.decompress(body).decode()
    assert "class FrameReader" in source and "def main(" in source


# --- a live runner ---------------------------------------------------------------------------


class LiveRunner:
    """A runner in a local subprocess, with its frames collected on a thread."""

    def __init__(self) -> None:
        self.proc = LocalProcess("test")
        self.frames: "queue.Queue[Optional[Tuple[int, bytes]]]" = queue.Queue()
        self._reader = FrameReader(self.proc.recv)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                frame = self._reader.next()
                self.frames.put(frame)
                if frame is None:
                    return
        except (OSError, EOFError, ValueError):
            self.frames.put(None)

    def next(self, timeout: float = WAIT) -> Optional[Tuple[int, bytes]]:
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no frame from the runner within {timeout:g} s")

    def hello(self) -> Dict[str, Any]:
        frame = self.next()
        assert frame is not None and frame[0] == Kind.HELLO, frame
        return decode_hello(frame[1])

    def send_job(self, fn_id: int, fn: Any, **options: Any) -> None:
        self.proc.send(encode(Kind.JOB, pickle.dumps((fn_id, cloudpickle.dumps(fn), options))))

    def send_tasks(self, batch_id: int, fn_id: int, items: list) -> None:
        self.proc.send(encode(Kind.TASKS, pickle.dumps((batch_id, fn_id, items))))

    def collect(self, batch_id: int, count: int) -> Tuple[list, dict, List[tuple]]:
        """RESULTS of one batch until `count` items came back; LOG frames on the way."""
        values: list = []
        errors: dict = {}
        logs: List[tuple] = []
        while len(values) < count:
            frame = self.next()
            assert frame is not None, "the runner went away"
            kind, payload = frame
            if kind == Kind.LOG:
                logs.append(decode_log(payload))
            elif kind == Kind.RESULTS:
                got_batch, offset, batch_values, batch_errors, elapsed = pickle.loads(payload)
                assert got_batch == batch_id
                assert offset == len(values), "results must come back as contiguous prefixes"
                assert elapsed >= 0
                errors.update(batch_errors)
                values.extend(batch_values)
            else:
                assert kind == Kind.PING, f"unexpected frame kind {kind}"
        assert len(values) == count
        return values, errors, logs

    def logs_until(self, text: str) -> List[tuple]:
        logs = []
        while True:
            frame = self.next()
            assert frame is not None, f"runner gone before logging {text!r}"
            if frame[0] == Kind.LOG:
                logs.append(decode_log(frame[1]))
                if text in logs[-1][2]:
                    return logs

    def wait_exit(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while pid_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        return not pid_alive(self.proc.pid)


@pytest.fixture
def runner(leftovers) -> Iterator[LiveRunner]:
    live = LiveRunner()
    yield live
    live.proc.kill()


def test_hello_describes_the_host(runner: LiveRunner) -> None:
    hello = runner.hello()
    assert hello["magic"] == MAGIC.decode()
    assert hello["protocol"] == PROTOCOL_VERSION
    assert hello["python"] == list(sys.version_info[:3])
    assert hello["hostname"] == socket.gethostname()
    assert hello["pid"] == runner.proc.pid
    assert isinstance(hello["cpus"], int) and hello["cpus"] >= 1
    assert hello["pickle_protocol"] >= 5
    assert hello["cloudpickle"] in ("found", "shipped")


def test_a_batch_of_tasks(runner: LiveRunner) -> None:
    runner.hello()
    runner.send_job(1, lambda x: x * 2)
    runner.send_tasks(10, 1, list(range(500)))
    values, errors, logs = runner.collect(10, 500)
    assert values == [x * 2 for x in range(500)]
    assert errors == {} and logs == []


def test_batches_and_functions_are_kept_apart(runner: LiveRunner) -> None:
    runner.hello()
    runner.send_job(1, str.upper)
    runner.send_job(2, len)
    runner.send_tasks(20, 1, ["ab", "c"])
    runner.send_tasks(21, 2, ["ab", "c", ""])
    assert runner.collect(20, 2)[0] == ["AB", "C"]
    assert runner.collect(21, 3)[0] == [2, 1, 0]


def make_counter():
    calls = []

    def count(item):
        calls.append(item)
        return len(calls)

    return count


def test_processor_is_unpickled_once_per_job(runner: LiveRunner) -> None:
    runner.hello()
    runner.send_job(1, make_counter())
    runner.send_tasks(30, 1, ["a", "b", "c"])
    assert runner.collect(30, 3)[0] == [1, 2, 3]
    runner.send_tasks(31, 1, ["d", "e"])
    assert runner.collect(31, 2)[0] == [4, 5]   # the same function object: its state lives on


def explode_on_two(x):
    if x == 2:
        raise ValueError(f"bad item {x}")
    return x


def test_an_exception_comes_back_with_its_traceback(runner: LiveRunner) -> None:
    runner.hello()
    runner.send_job(1, explode_on_two)
    runner.send_tasks(40, 1, [0, 1, 2, 3])
    values, errors, _ = runner.collect(40, 4)
    assert [values[i] for i in (0, 1, 3)] == [0, 1, 3]
    assert list(errors) == [2]
    blob, type_name, message, text = errors[2]
    assert type_name == "builtins.ValueError"
    assert message == "bad item 2"
    assert "Traceback (most recent call last)" in text
    assert "explode_on_two" in text and "ValueError: bad item 2" in text
    error = pickle.loads(blob)
    assert type(error) is ValueError and error.args == ("bad item 2",)


def unpicklable_on_one(x):
    return threading.Lock() if x == 1 else x


def test_an_unpicklable_result_fails_only_its_taskunit(runner: LiveRunner) -> None:
    runner.hello()
    runner.send_job(1, unpicklable_on_one)
    runner.send_tasks(50, 1, [0, 1, 2])
    values, errors, _ = runner.collect(50, 3)
    assert (values[0], values[2]) == (0, 2)
    assert list(errors) == [1]
    assert "pickle" in errors[1][2]


def noisy(x):
    print(f"printed {x}")
    print(f"to stderr {x}", file=sys.stderr)
    os.write(1, f"fd1 {x}\n".encode())
    os.write(2, f"fd2 {x}\n".encode())
    return x + 100


def test_output_of_the_processor_becomes_log_frames(runner: LiveRunner) -> None:
    runner.hello()
    runner.send_job(1, noisy)
    runner.send_tasks(60, 1, [0, 1])
    values, errors, logs = runner.collect(60, 2)
    assert values == [100, 101] and errors == {}
    # fd writes go through a pipe, forwarded by a thread and drained before RESULTS
    texts = [text for _, _, text in logs]
    wanted = {f"{what} {x}" for x in (0, 1) for what in ("printed", "to stderr", "fd1", "fd2")}
    lines = "\n".join(texts).splitlines()
    assert sorted(line for line in lines if line in wanted) == sorted(wanted)  # each once
    # print() is attributed exactly to its taskunit
    by_text = {text: (batch, index) for batch, index, text in logs}
    assert by_text["printed 0"] == (60, 0)
    assert by_text["printed 1"] == (60, 1)


def child_writes(x):
    """A child process writes a line and a line without its newline, then the task returns."""
    import subprocess

    subprocess.run(["sh", "-c", f"echo child line {x}; printf 'child partial {x}' >&2"])
    return x


def test_what_a_child_wrote_arrives_before_the_result_of_its_taskunit(runner: LiveRunner) -> None:
    runner.hello()
    runner.send_job(1, child_writes)
    for batch in range(100, 130):
        runner.send_tasks(batch, 1, [batch])
        values, errors, logs = runner.collect(batch, 1)
        assert values == [batch] and errors == {}
        lines = [(b, i, line) for b, i, text in logs for line in text.splitlines()]
        for text in (f"child line {batch}", f"child partial {batch}"):
            assert (batch, 0, text) in lines, (text, logs)


def child_writes_then_hangs(x):
    import subprocess

    subprocess.run(["printf", "no newline yet"])
    time.sleep(60)
    return x


def test_what_a_child_wrote_arrives_before_timeout(runner: LiveRunner) -> None:
    runner.hello()
    runner.send_job(1, child_writes_then_hangs, task_timeout=0.5)
    runner.send_tasks(90, 1, ["slow"])
    logs = []
    while True:
        frame = runner.next()
        assert frame is not None, "the runner left without a TIMEOUT frame"
        if frame[0] == Kind.TIMEOUT:
            break
        if frame[0] == Kind.LOG:
            logs.append(decode_log(frame[1]))
    assert (90, 0, "no newline yet") in logs
    assert runner.wait_exit()


def sleeper(x):
    os.write(1, b"started\n")
    time.sleep(60)
    return x


def test_closing_stdin_stops_the_runner_mid_task(runner: LiveRunner) -> None:
    runner.hello()
    runner.send_job(1, sleeper)
    runner.send_tasks(70, 1, [1])
    runner.logs_until("started")
    runner.proc.close()
    assert runner.wait_exit(), "the runner kept running after its stdin closed"
    assert runner.next() is None          # clean EOF, no half frame
    assert "exit status 0" in runner.proc.diagnose()


def test_bye_stops_an_idle_runner(runner: LiveRunner) -> None:
    runner.hello()
    runner.proc.send(encode(Kind.BYE, b""))
    assert runner.wait_exit()
    assert runner.next() is None


def test_task_timeout_is_reported_and_the_runner_leaves(runner: LiveRunner) -> None:
    runner.hello()
    runner.send_job(1, sleeper, task_timeout=0.2)
    runner.send_tasks(80, 1, ["slow"])
    while True:
        frame = runner.next()
        assert frame is not None, "the runner left without a TIMEOUT frame"
        if frame[0] == Kind.TIMEOUT:
            break
    batch, index, elapsed = decode_timeout(frame[1])
    assert (batch, index) == (80, 0) and elapsed >= 0.2
    assert runner.wait_exit()


def test_a_forwarded_package_finds_its_own_distribution_metadata() -> None:
    """A package that reads its version from its distribution (invoke 3 does, at import) works
    on a host that got only its source: the master's MODULE answer carries the headers."""
    import sys
    from importlib import metadata

    from antnest import codeship
    from antnest import runner as wire

    name, headers = codeship.distribution_metadata("pytest") or ("", "")
    assert name.lower() == "pytest" and f"Version: {metadata.version('pytest')}" in headers
    assert "\n\n" not in headers.rstrip("\n")   # the long description stays on the master
    assert codeship.distribution_metadata("json") is None          # stdlib: no distribution
    assert codeship.distribution_metadata("pytest.mark") is None   # only top-level names

    forwarder = wire._Forwarder(writer=None)
    forwarder.answer(wire.encode_module(
        "fakepkg_only_master", ("fakepkg_only_master", True, "<fake>", b""), "",
        ("Fake.Pkg-Only_Master", "Metadata-Version: 2.1\nName: Fake.Pkg-Only_Master\n"
                                 "Version: 7.8.9\n")))
    sys.meta_path.append(forwarder)
    try:
        assert metadata.version("fake-pkg-only-master") == "7.8.9"
        assert metadata.version("Fake.Pkg-Only_Master") == "7.8.9"
        with pytest.raises(metadata.PackageNotFoundError):
            metadata.version("not-forwarded-anywhere")
    finally:
        sys.meta_path.remove(forwarder)

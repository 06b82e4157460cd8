"""The dispatcher (antnest.dispatch) and the non-blocking sends (antnest.transport.outgoing) on
plain pipes: every byte delivered in order on the one thread, ends said once, silence noticed,
a broken handler isolated, and a sender never held up by a reader that does not read."""
from __future__ import annotations

import os
import socket
import threading
from typing import List, Optional, Tuple

import pytest

from antnest.dispatch import Dispatcher, Watch
from antnest.transport import outgoing

BOUND = 30  # seconds any wait here may take at most (they take milliseconds)


class Stream:
    """A pipe the test writes into and a Watch over its read end that records what it got."""

    def __init__(self, dispatcher: Dispatcher, label: str = "s", silence: float = 60.0,
                 fail_on: Optional[bytes] = None) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.got = bytearray()
        self.threads: List[str] = []
        self.ended: List[Tuple[str, Optional[BaseException]]] = []
        self.done = threading.Event()
        self.fail_on = fail_on
        self.watch = Watch(label, self.r, self.read, self.on_data, self.on_end, silence)
        dispatcher.watch(self.watch)

    def read(self, size: int) -> Optional[bytes]:
        try:
            return os.read(self.r, size)
        except BlockingIOError:
            return None

    def on_data(self, data: bytes) -> bool:
        self.threads.append(threading.current_thread().name)
        if self.fail_on is not None and self.fail_on in data:
            raise RuntimeError("a handler bug")
        self.got += data
        return b"STOP" not in data

    def on_end(self, why: str, error: Optional[BaseException]) -> None:
        self.ended.append((why, error))
        self.done.set()

    def close(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def dispatcher():
    made = Dispatcher("antnest-dispatch-test")
    yield made
    made.close()


def test_bytes_arrive_in_order_on_the_dispatcher_thread_and_eof_ends_once(dispatcher) -> None:
    streams = [Stream(dispatcher, f"s{i}") for i in range(8)]
    for n in range(50):
        for i, s in enumerate(streams):
            os.write(s.w, f"{i}:{n};".encode())
    for s in streams:
        os.close(s.w)
    for i, s in enumerate(streams):
        assert s.done.wait(BOUND)
        assert s.got.decode() == "".join(f"{i}:{n};" for n in range(50))
        assert s.ended == [("eof", None)]
        assert set(s.threads) == {"antnest-dispatch-test"}
        os.close(s.r)


def test_a_handler_that_says_stop_ends_its_stream_only(dispatcher) -> None:
    a, b = Stream(dispatcher, "a"), Stream(dispatcher, "b")
    os.write(a.w, b"STOP")
    assert a.done.wait(BOUND) and a.ended == [("", None)]
    os.write(b.w, b"still read")
    os.close(b.w)
    assert b.done.wait(BOUND) and bytes(b.got) == b"still read"
    a.close()
    b.close()


def test_silence_past_the_bound_ends_the_stream_with_a_timeout(dispatcher) -> None:
    quiet, talking = Stream(dispatcher, "quiet", silence=0.2), Stream(dispatcher, "talk")
    assert quiet.done.wait(BOUND)
    why, error = quiet.ended[0]
    assert why == "silent" and isinstance(error, socket.timeout)
    assert not talking.done.is_set()
    quiet.close()
    talking.close()


def test_a_handler_bug_ends_that_stream_and_the_others_go_on(dispatcher) -> None:
    broken, fine = Stream(dispatcher, "broken", fail_on=b"boom"), Stream(dispatcher, "fine")
    os.write(broken.w, b"boom")
    assert broken.done.wait(BOUND)
    assert broken.ended[0][0].startswith("internal error: RuntimeError")
    os.write(fine.w, b"ok")
    os.close(fine.w)
    assert fine.done.wait(BOUND) and bytes(fine.got) == b"ok"
    broken.close()
    fine.close()


def test_an_unwatched_fd_number_reused_by_a_new_stream_reads_the_new_one(dispatcher) -> None:
    first = Stream(dispatcher, "first")
    dispatcher.unwatch(first.watch)
    ran = threading.Event()
    dispatcher.call_soon(ran.set)   # after the unwatch, on the same thread
    assert ran.wait(BOUND)
    first.close()
    second = Stream(dispatcher, "second")   # most likely the numbers just freed
    os.write(second.w, b"second's")
    os.close(second.w)
    assert second.done.wait(BOUND) and bytes(second.got) == b"second's"
    assert first.ended == [] and not first.got
    os.close(second.r)


def test_call_soon_runs_on_the_dispatcher_and_close_ends_what_is_left() -> None:
    dispatcher = Dispatcher("antnest-dispatch-test")
    where: List[str] = []
    ran = threading.Event()
    dispatcher.call_soon(lambda: (where.append(threading.current_thread().name), ran.set()))
    assert ran.wait(BOUND) and where == ["antnest-dispatch-test"]
    left = Stream(dispatcher, "left")
    dispatcher.close()
    assert left.done.wait(BOUND) and left.ended == [("closed", None)]
    with pytest.raises(RuntimeError):
        dispatcher.call_soon(lambda: None)
    left.close()


def test_a_send_to_a_reader_that_does_not_read_returns_at_once_and_keeps_order() -> None:
    """The dispatcher sends to every host: a host whose pipe is full must not hold it up.
    What does not fit is written later, in order, by a thread of its own."""
    r, w = os.pipe()
    broken: List[BaseException] = []
    sender = outgoing.pipe_writer("slow", os.fdopen(w, "wb", buffering=0), broken.append)
    chunks = [bytes([65 + i % 26]) * 100_000 for i in range(20)]   # ~30 pipe buffers
    for chunk in chunks:
        sender.send(chunk)          # none of these may block: nobody reads yet
    assert sender.pending() > 0
    got = bytearray()
    with os.fdopen(r, "rb", buffering=0) as reader:
        while len(got) < sum(map(len, chunks)):
            got += reader.read(1 << 20)
        sender.close()
    assert bytes(got) == b"".join(chunks) and not broken


def test_a_send_after_the_reader_went_away_fails_and_says_so() -> None:
    r, w = os.pipe()
    broken: List[BaseException] = []
    sender = outgoing.pipe_writer("gone", os.fdopen(w, "wb", buffering=0), broken.append)
    os.close(r)
    with pytest.raises(BrokenPipeError):
        sender.send(b"x")
    sender.close()
    with pytest.raises(BrokenPipeError):
        sender.send(b"y")

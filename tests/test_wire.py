"""The wire is defined once (runner.WIRE) and the transports behind one seam (transport.TRANSPORTS).
No processes: codecs round-trip, every kind has a codec and a handler, names are shared."""
import importlib
import struct
import re
from pathlib import Path

import pytest

from antnest import runner
from antnest.errors import AuthError, BootstrapError, ConnectError, HostError, HostKeyError
from antnest.host import Host, HostStatus, State
from antnest.runner import WIRE, Kind
from antnest.transport import TRANSPORTS, open_connection, SshOptions
from antnest.transport.local import LocalConnection

README = Path(__file__).resolve().parents[1] / "README.md"

SAMPLES = {
    Kind.HELLO: ({"magic": "ANTNEST1", "python": [3, 11, 2], "cpus": 4},),
    Kind.JOB: (7, b"blob", {"task_timeout": 1.5}),
    Kind.TASKS: (3, 7, 4, runner.encode_items([1, "two", b"three", None])),
    Kind.UNDECODABLE: (3, (None, "builtins.ModuleNotFoundError", "no module x", "tb")),
    Kind.RESULTS: (3, 2, [4, None], {3: (None, "builtins.ValueError", "bad", "tb")}, 0.25),
    Kind.LOG: (3, 1, "ünïcode line"),
    Kind.TIMEOUT: (3, 0, 12.5),
    Kind.FATAL: ("Traceback ...\nRuntimeError: broken",),
    Kind.SETUP_FAILED: ("the initializer", "Traceback ...\nValueError: no"),
    Kind.SOURCES: ([("jobmod", "X = 1\n")],),
    Kind.MODULE_REQUEST: ("helpers.text",),
    Kind.MODULE: ("helpers.text", (False, "Y = 2\n", "source"), None,
                  ("helpers", "Name: helpers\nVersion: 1.0\n")),
    Kind.PING: (),
    Kind.BYE: (),
    Kind.RELAY_SETUP: (b"12\nstage2", b"[10.0.0.5]:22 ssh-ed25519 AAAA\n"),
    Kind.RELAY_OPEN: (7, ["ssh", "-p", "22", "--", "10.0.0.5", "python3 -B -c 'x y'"], True),
    Kind.RELAY_DATA: (7, b"\x00frame bytes"),
    Kind.RELAY_CLOSE: (7,),
    Kind.RELAY_KILL: (2 ** 32 - 1,),
    Kind.RELAY_EXIT: (7, 255, "Host key verification failed."),
}


def test_every_kind_has_one_codec_pair() -> None:
    assert set(WIRE) == set(Kind.all().values())
    assert set(SAMPLES) == set(WIRE)


@pytest.mark.parametrize("kind", sorted(SAMPLES), ids=lambda k: Kind.name(k))
def test_codecs_round_trip(kind: int) -> None:
    encode, decode = WIRE[kind]
    args = SAMPLES[kind]
    payload = encode(*args)
    assert isinstance(payload, bytes)
    decoded = decode(payload)
    if not args:
        assert decoded is None and payload == b""
    elif len(args) == 1:
        assert decoded == args[0]
    else:
        assert decoded == args
    # a reader may hand over a bytearray or a memoryview of its buffer
    for view in (bytearray(payload), memoryview(payload)):
        assert decode(view) == decoded, type(view)
    # and through a frame and the reader, as on a real stream
    data = runner.encode(kind, payload)
    reader = runner.FrameReader(_chunks(data))
    assert reader.next() == (kind, payload)


def _chunks(data: bytes):
    parts = [data[i:i + 3] for i in range(0, len(data), 3)]

    def read(_n: int) -> bytes:
        return parts.pop(0) if parts else b""
    return read


def test_results_fall_back_to_cloudpickle_then_to_an_error() -> None:
    made_here = lambda x: x  # noqa: E731 - the stdlib pickle refuses a lambda
    payload = runner.encode_results(1, 0, [made_here], {}, 0.0)
    batch_id, offset, values, errors, elapsed = runner.decode_results(payload)
    assert values[0](5) == 5 and errors == {}

    class Unpicklable:
        def __reduce__(self):
            raise TypeError("not this one")

    payload = runner.encode_results(1, 4, [1, Unpicklable()], {}, 0.0)
    batch_id, offset, values, errors, elapsed = runner.decode_results(payload)
    assert values == [1, None]
    assert set(errors) == {5} and errors[5][1:3] == ("builtins.TypeError", "not this one")


def test_hello_decoder_refuses_anything_but_literals() -> None:
    assert runner.decode_hello(b"__import__('os').system('true')") is None
    assert runner.decode_hello(b"[1, 2]") is None


def test_runner_handles_job_tasks_and_sources() -> None:
    """The runner's main thread table; PING, BYE and MODULE stop at its reader thread."""
    handlers = runner._Runner(0, None, runner._Current(), None).handlers
    assert set(handlers) == {Kind.JOB, Kind.TASKS, Kind.SOURCES}


def test_master_handles_every_runner_to_master_kind() -> None:
    from antnest.worker import Worker

    assert {Kind.name(k) for k in Worker.HANDLERS} == {"RESULTS", "LOG", "TIMEOUT", "FATAL",
                                                          "SETUP_FAILED", "UNDECODABLE",
                                                          "MODULE_REQUEST"}


def test_every_transport_is_one_module_with_open_connection() -> None:
    assert set(TRANSPORTS) >= {"local", "ssh"}
    for name, where in TRANSPORTS.items():
        module, _, function = where.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_local_connection_is_always_alive_and_named_local() -> None:
    conn = open_connection(Host(name="here", address="localhost", transport="local"), SshOptions())
    assert isinstance(conn, LocalConnection)
    assert conn.is_alive() and conn.address == "local"


def test_unknown_transport_is_a_host_error_naming_it() -> None:
    with pytest.raises(ConnectError, match="unknown transport 'carrier-pigeon'"):
        open_connection(Host(name="h", address="h", transport="carrier-pigeon"), SshOptions())


def test_statuses_are_one_list_shared_by_errors_and_readme() -> None:
    for cls in (HostError, ConnectError, AuthError, HostKeyError, BootstrapError):
        assert cls.status in HostStatus.all(), cls
    text = README.read_text()
    start = text.index("Statuses: `ok`")
    listed = re.findall(r"`([a-z ]+)`", text[start:text.index("\n\n", start)])
    assert listed[:len(HostStatus.all())] == HostStatus.all()
    assert set(State.all()) <= set(listed)


RUNNER_TO_MASTER = (Kind.HELLO, Kind.LOG, Kind.PING, Kind.TIMEOUT, Kind.FATAL, Kind.SETUP_FAILED,
                    Kind.UNDECODABLE, Kind.MODULE_REQUEST, Kind.RELAY_DATA, Kind.RELAY_EXIT)
EXECUTED: list = []


def _ran(what: str) -> None:
    EXECUTED.append(what)


class _Hostile:
    """A pickle that runs code when unpickled: what a broken or hostile host could send."""

    def __reduce__(self):
        return (_ran, ("code ran on the master",))


def test_only_results_is_a_pickle_the_master_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every frame a runner sends but RESULTS decodes with pickle gone (README, trust model)."""
    assert set(RUNNER_TO_MASTER) | {Kind.RESULTS} >= set(
        __import__("antnest.worker", fromlist=["Worker"]).Worker.HANDLERS)
    import pickle

    def refused(*_args, **_kwargs):
        raise AssertionError("a control frame was unpickled")
    monkeypatch.setattr(pickle, "loads", refused)
    monkeypatch.setattr(pickle, "Unpickler", refused)
    monkeypatch.setattr(runner.pickle, "loads", refused)
    for kind in RUNNER_TO_MASTER:
        encode, decode = WIRE[kind]
        args = SAMPLES[kind]
        decoded = decode(encode(*args))
        assert decoded == (args if len(args) > 1 else args[0] if args else None), Kind.name(kind)


@pytest.mark.parametrize("kind", RUNNER_TO_MASTER, ids=lambda k: Kind.name(k))
def test_a_hostile_pickle_in_a_control_frame_runs_nothing(kind: int) -> None:
    import pickle

    del EXECUTED[:]
    for protocol in (2, 4, 5):
        payload = pickle.dumps(_Hostile(), protocol=protocol)
        try:
            WIRE[kind][1](payload)
        except (ValueError, TypeError, IndexError, struct.error, UnicodeDecodeError):
            pass  # refused is fine; running it is not
    assert EXECUTED == []


def test_undecodable_and_setup_failed_keep_every_field() -> None:
    error = (b"\x80\x05opaque", "mod.Error", "n\u00e9e", "Traceback\n  line\n")
    assert runner.decode_undecodable(runner.encode_undecodable(2 ** 40, error)) == (2 ** 40, error)
    assert runner.decode_setup_failed(runner.encode_setup_failed("workdir", "")) == ("workdir", "")
    with pytest.raises(ValueError):
        runner.decode_setup_failed(runner.encode_setup_failed("workdir", "text")[:-1])


class _OwnBuffer:
    """An object whose pickle offers its own protocol 5 buffer (as numpy arrays do)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: int):
        import pickle

        return (_OwnBuffer, (pickle.PickleBuffer(self.data),)) if protocol >= 5 else \
            (_OwnBuffer, (self.data,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _OwnBuffer) and bytes(other.data) == bytes(self.data)


def test_a_big_bytes_result_travels_after_the_pickle_and_comes_back_as_bytes() -> None:
    big = bytes(range(256)) * (runner.OUT_OF_BAND // 256 + 1)
    values = [big, 1, b"small", bytearray(b"b" * runner.OUT_OF_BAND), _OwnBuffer(b"o" * 100), big]
    parts = runner.results_parts(7, 2, values, {3: (None, "builtins.E", "m", "tb")}, 0.5)
    # the big bytes are the very objects given, not copies in a pickle
    assert sum(1 for p in parts if isinstance(p, memoryview) and p.obj is big) == 2
    payload = b"".join(parts)
    assert payload == runner.encode_results(7, 2, values, {3: (None, "builtins.E", "m", "tb")}, 0.5)
    assert len(payload) < 2 * len(big) + 2 * runner.OUT_OF_BAND
    for given in (payload, bytearray(payload), memoryview(payload)):
        batch, offset, got, errors, elapsed = runner.decode_results(given)
        assert (batch, offset, got, errors, elapsed) == (7, 2, values, {3: (None, "builtins.E", "m", "tb")}, 0.5)
        assert [type(v) for v in got] == [type(v) for v in values]
    # small results (and hosts on Python < 3.8, or protocol 4) stay one plain pickle
    assert runner.encode_results(1, 0, [b"x"], {}, 0.0)[-1:] == b"."
    assert runner.encode_results(1, 0, [big], {}, 0.0, protocol=4)[-1:] == b"."
    assert runner.decode_results(runner.encode_results(1, 0, [big], {}, 0.0, protocol=4))[2] == [big]
    many = [big] + list(range(runner.OUT_OF_BAND_SCAN))   # not scanned: tiny results cost less
    assert runner.encode_results(1, 0, many, {}, 0.0)[-1:] == b"."


def test_the_writer_sends_parts_as_one_frame_without_joining_them() -> None:
    import os
    import threading

    read_fd, write_fd = os.pipe()
    try:
        writer = runner._Writer(write_fd)
        big = b"z" * (3 << 20)   # far more than a pipe holds
        parts = [b"head", memoryview(big), b"", b"tail"]
        sender = threading.Thread(target=lambda: (writer.send_parts(Kind.RESULTS, parts),
                                                  writer.send(Kind.PING, b"")))
        sender.start()
        reader = runner.FrameReader(lambda n: os.read(read_fd, n))
        assert reader.next() == (Kind.RESULTS, b"head" + big + b"tail")
        assert reader.next() == (Kind.PING, b"")
        sender.join(10)
    finally:
        os.close(read_fd)
        os.close(write_fd)

"""The remote side: one self-contained, stdlib-only module, shipped as source (Python 3.6+).

The master sends this file's source as stage 2 (see bootstrap.py) and imports the wire from
here too, so there is exactly one definition of it: the `Kind` numbers, one encode/decode pair
per kind (the "wire" section below, listed in `WIRE`), and a {kind: handler} table on each
side (`_Runner.handlers` here, `Worker` handlers on the master).

    master                                     runner (this module, on the host)
    ------                                     ---------------------------------
    stage 1: python3 -c '<loader>'   ───────▶  reads stage 2 from stdin, exec()s it in memory
                                     ◀───────  HELLO   {magic, protocol, python, hostname, pid,
                                                        cpus, pickle_protocol, cloudpickle, ...}
    JOB     (None, None, {options})  ───────▶  options only: heartbeat, idle timeout, env,
                                               workdir, initializer (the first JOB)
                                     ◀───────  SETUP_FAILED (what, traceback)  then it exits:
                                               a bad workdir, an initializer or setup() raised
    JOB     (fn id, cloudpickled fn, {options})  unpickled once, kept by id
    JOB     (fn id, None, {})        ───────▶  forget that function (its call ended)
    TASKS   (batch, fn id, n, pickled [data]) ▶  queued; run in order by the main thread
                                     ◀───────  RESULTS (batch, offset, [value], {i: error}, secs)
                                     ◀───────  UNDECODABLE (batch, error)  its data did not unpickle
                                     ◀───────  LOG     batch, index, UTF-8 text (not a pickle)
                                     ◀───────  TIMEOUT (batch, index, secs)  then the runner exits
                                     ◀───────  PING    (empty)  heartbeat, every `heartbeat` s
                                     ◀───────  FATAL   traceback text  the runner itself broke
    PING                             ───────▶  keeps the idle watchdog quiet
    SOURCES [(module, source), ...]  ───────▶  the job's own modules, imported from memory
                                     ◀───────  MODULE_REQUEST name   an import the host lacks
    MODULE  (name, source | why not) ───────▶  answer; each module crosses once per runner
    BYE / stdin EOF                  ───────▶  the runner exits at once, even mid-task

A frame is an 9-byte header (payload length: u64 big-endian, kind: u8) and a payload. Payloads
are pickled with the stdlib pickle, at the highest protocol both ends know. Code travels as
source, never as bytecode across versions: functions and classes are pickled by reference
(module and qualified name) to modules the master ships as source (SOURCES, or MODULE on
demand); lambdas and closures by their source text (_rebuild_function); only what has no
source left travels by value (cloudpickle), to hosts of the master's minor version alone.

Of what the runner sends, only RESULTS is a pickle (user data): HELLO is a dict of literals
(repr/ast.literal_eval), LOG, FATAL and MODULE_REQUEST UTF-8 text, TIMEOUT a struct, SETUP_FAILED
and UNDECODABLE length-prefixed fields, PING empty; the master unpickles nothing else.

Adding a frame kind: a number in `Kind`, an encode/decode pair and its `WIRE` entry here, and
one handler on the receiving side (`_Runner.handlers`, or `Worker.HANDLERS` in worker.py).

The protocol lives on private file descriptors: fd 0 becomes /dev/null and fds 1 and 2 a pipe
that a thread forwards as LOG frames, so neither print() nor a C library writing to stdout can
corrupt a frame.
"""
import io
import os
import pickle
import re
import struct
import sys
import threading
import time

try:  # the C queue: one fewer lock per batch than queue.Queue
    from _queue import SimpleQueue
except ImportError:  # pragma: no cover - other interpreters
    from queue import Queue as SimpleQueue  # type: ignore[assignment]

# Imports are kept to what every runner needs: each costs every host CPU at every start
# (traceback, json, socket, platform and enum would add ~15 ms). traceback is imported when an
# error needs it.

PROTOCOL_VERSION = 1
MAGIC = b"ANTNEST1"
HEADER = struct.Struct(">QB")
FLUSH_AFTER = 0.05  # seconds: a long batch sends partial results this often
PICKLE_PROTOCOL = min(5, pickle.HIGHEST_PROTOCOL)  # results: the master (3.9+) reads 5
MAIN_ALIAS = "__antnest_main__"  # the master's __main__ script, imported here under this name
MODULE_WAIT = 60.0  # seconds an import waits for the master's answer


class Kind(object):
    """Frame kinds. Plain ints, not an IntEnum: enum costs each runner ~4 ms to import."""

    HELLO = 1
    JOB = 2
    TASKS = 3
    RESULTS = 4
    LOG = 5
    BYE = 6
    PING = 7
    TIMEOUT = 8
    FATAL = 9
    SETUP_FAILED = 10
    UNDECODABLE = 11
    SOURCES = 12
    MODULE_REQUEST = 13
    MODULE = 14
    RELAY_SETUP = 15   # relay mode (relay_main): what every stream it opens needs
    RELAY_OPEN = 16
    RELAY_DATA = 17
    RELAY_CLOSE = 18
    RELAY_KILL = 19
    RELAY_EXIT = 20

    @classmethod
    def all(cls):
        """{name: value} of every kind."""
        return {name: value for name, value in vars(cls).items() if name.isupper()}

    @classmethod
    def name(cls, kind):
        for name, value in cls.all().items():
            if value == kind:
                return name
        return "kind %d" % kind


def encode(kind, payload):
    """One frame as bytes, for small payloads."""
    return HEADER.pack(len(payload), kind) + payload


def frame(kind, payload):
    """One frame as (header, payload): large payloads are sent without a copy."""
    return HEADER.pack(len(payload), kind), payload


# -- the wire: one encode/decode pair per kind ------------------------------------------------
# encode_x(...) -> payload bytes; decode_x(payload) -> what encode_x was given (a tuple when it
# was given several values). `protocol` is the pickle protocol the receiver said it reads.


def _proto(protocol):
    return PICKLE_PROTOCOL if protocol is None else protocol


LOG_HEADER = struct.Struct(">qq")   # batch id (-1: none), taskunit index (-1: between tasks)


def encode_log(batch_id, index, text):
    """LOG is text, not a pickle: the master never unpickles what a runner merely printed.
    UTF-8 after the two ids; surrogatepass, so no str the job prints can fail to encode."""
    return LOG_HEADER.pack(-1 if batch_id is None else batch_id, index) + text.encode(
        "utf-8", "surrogatepass")


def decode_log(payload):
    """(batch_id or None, index, text); bytes that are not UTF-8 show as U+FFFD."""
    batch_id, index = LOG_HEADER.unpack_from(payload)
    text = str(payload[LOG_HEADER.size:], "utf-8", "replace")  # any bytes-like payload
    return (None if batch_id < 0 else batch_id), index, text


_ID = struct.Struct(">q")
_FIELD = struct.Struct(">I")   # a field's length; NO_FIELD: the field is None
NO_FIELD = 0xFFFFFFFF


def _pack_fields(*fields):
    """Fields (str as UTF-8, bytes as they are, or None), each after its u32 length: the
    text codecs of frames the master reads, so none of them is a pickle."""
    out = []
    for field in fields:
        if field is None:
            out.append(_FIELD.pack(NO_FIELD))
            continue
        if not isinstance(field, bytes):
            field = str(field).encode("utf-8", "surrogatepass")
        out.append(_FIELD.pack(len(field)))
        out.append(field)
    return b"".join(out)


def _unpack_fields(payload, start, count):
    """`count` fields from payload[start:], as bytes or None; ValueError if it is cut short."""
    fields = []
    at = start
    for _ in range(count):
        if at + _FIELD.size > len(payload):
            raise ValueError("frame cut short")
        (size,) = _FIELD.unpack_from(payload, at)
        at += _FIELD.size
        if size == NO_FIELD:
            fields.append(None)
            continue
        if at + size > len(payload):
            raise ValueError("frame cut short")
        fields.append(bytes(payload[at:at + size]))
        at += size
    return fields


def _str(field):
    return None if field is None else field.decode("utf-8", "replace")


def encode_hello(info):
    """HELLO is a dict of literals: written with repr, so the runner needs no json."""
    return repr(info).encode()


# One thread at a time builds AST objects on the master: CPython 3.11 keeps the conversion's
# recursion depth in shared state, and two runners' HELLOs parsed at once (or a HELLO and a
# function's source) can fail with "SystemError: AST constructor recursion depth mismatch".
AST_LOCK = threading.Lock()


def decode_hello(payload):
    """The master's side: ast.literal_eval, so a HELLO can never execute anything. Returns
    None for anything that is not a dict of literals."""
    import ast

    try:
        with AST_LOCK:
            info = ast.literal_eval(str(payload, "utf-8"))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        return None
    return info if isinstance(info, dict) else None


def encode_job(fn_id, blob, options, protocol=None):
    """A function (cloudpickled `blob`) under `fn_id`, and runner options; fn_id None: options only."""
    return pickle.dumps((fn_id, blob, options), protocol=_proto(protocol))


def decode_job(payload):
    """(fn_id, blob, options)"""
    fn_id, blob, options = pickle.loads(payload)
    return fn_id, blob, options


def encode_tasks(batch_id, fn_id, count, blob, protocol=None):
    """A batch: run fn_id on each of `count` items, in order. `blob` is the items pickled on
    their own (encode_items), so items that do not unpickle on the host name their batch."""
    return pickle.dumps((batch_id, fn_id, count, blob), protocol=_proto(protocol))


def decode_tasks(payload):
    """(batch_id, fn_id, count, blob); plain ints and bytes, so this cannot fail on user data.
    A (batch_id, fn_id, [items]) frame from an older master is taken too (blob is the list)."""
    task = pickle.loads(payload)
    if len(task) == 3:
        batch_id, fn_id, items = task
        return batch_id, fn_id, len(items), items
    batch_id, fn_id, count, blob = task
    return batch_id, fn_id, count, blob


def encode_items(items, protocol=None):
    """The items of a batch, pickled on their own for encode_tasks (the master may use a
    by-value pickler instead; the runner only ever unpickles)."""
    return pickle.dumps(items, protocol=_proto(protocol))


def decode_items(blob):
    """The items of a TASKS frame; raises whatever unpickling the user's data raises."""
    return blob if isinstance(blob, list) else loads(blob)


def encode_undecodable(batch_id, error, protocol=None):
    """The runner could not unpickle batch `batch_id`'s data: error is _describe_error().
    Not a pickle: the batch id, then the description's fields as length-prefixed bytes (the
    pickled exception travels as opaque bytes; the master never unpickles it)."""
    blob, type_name, message, text = error
    return _ID.pack(batch_id) + _pack_fields(blob, type_name, message, text)


def decode_undecodable(payload):
    """(batch_id, (blob or None, type name, message, traceback text))"""
    (batch_id,) = _ID.unpack_from(payload)
    blob, type_name, message, text = _unpack_fields(payload, _ID.size, 4)
    return batch_id, (blob, _str(type_name), _str(message), _str(text))


OUT_OF_BAND = 1 << 20   # a result that is a bytes this big travels after the pickle, uncopied
OUT_OF_BAND_SCAN = 32   # ...when its RESULTS frame has at most this many: the scan costs
#                         more than pickling tiny results, and results of a MiB come a few a frame
JOIN_BELOW = 1 << 16    # frames smaller than this are joined and written at once
OOB_TRAILER = struct.Struct(">IB")   # how many such buffers, OOB_MARK (a pickle ends with ".")
OOB_MARK = 0x42
# Python 3.8+; None on 3.6 and 3.7 hosts, where every result stays in the pickle
_PickleBuffer = getattr(pickle, "PickleBuffer", None)


def encode_results(batch_id, offset, values, errors, elapsed, protocol=None):
    """values[i] is the result of item offset+i of the batch; errors {offset+i: _describe_error}.
    A value the stdlib pickle refuses goes through cloudpickle; one nothing pickles becomes
    that item's error instead of losing the batch."""
    return b"".join(results_parts(batch_id, offset, values, errors, elapsed, protocol))


def results_parts(batch_id, offset, values, errors, elapsed, protocol=None):
    """encode_results' payload as a list of buffers, for _Writer.send_parts. A result that is a
    bytes of OUT_OF_BAND or more (in a frame of at most OUT_OF_BAND_SCAN results) is a pickle
    protocol 5 out-of-band buffer placed after the pickle (then each buffer's u64 length, then
    OOB_TRAILER): the runner never copies it into the pickle nor into the frame, and the master
    copies it once, into the result."""
    protocol = _proto(protocol)
    big = ()
    if protocol >= 5 and _PickleBuffer is not None and len(values) <= OUT_OF_BAND_SCAN:
        big = [i for i, value in enumerate(values)
               if type(value) is bytes and len(value) >= OUT_OF_BAND]
    record = (batch_id, offset, values, errors, elapsed)
    if not big:
        try:
            return [pickle.dumps(record, protocol=protocol)]
        except BaseException:  # even SystemExit from a __reduce__: the fallback sorts it out
            return [_pickle_with_fallback(record, protocol)]
    shown = list(values)
    ours = set()
    for i in big:
        shown[i] = _PickleBuffer(values[i])
        ours.add(id(shown[i]))
    buffers = []

    def out_of_band(buffer):  # only ours: other objects' buffers (numpy...) stay in the pickle
        if id(buffer) in ours:
            buffers.append(buffer.raw())
            return False
        return True
    try:
        head = pickle.dumps((batch_id, offset, shown, errors, elapsed), protocol=protocol,
                            buffer_callback=out_of_band)
    except BaseException:
        return [_pickle_with_fallback(record, protocol)]
    del shown
    trailer = struct.pack(">%dQ" % len(buffers), *[b.nbytes for b in buffers])
    return [head] + buffers + [trailer + OOB_TRAILER.pack(len(buffers), OOB_MARK)]


def decode_results(payload):
    """(batch_id, offset, values, errors, elapsed); payload is any bytes-like object."""
    if payload[-1:] == b".":   # the whole record in the pickle
        batch_id, offset, values, errors, elapsed = pickle.loads(payload)
        return batch_id, offset, values, errors, elapsed
    view = memoryview(payload)
    try:
        count, mark = OOB_TRAILER.unpack_from(view, len(view) - OOB_TRAILER.size)
        if mark != OOB_MARK:
            raise ValueError("not a RESULTS record")
        lengths_at = len(view) - OOB_TRAILER.size - 8 * count
        lengths = struct.unpack_from(">%dQ" % count, view, lengths_at)
        at = lengths_at - sum(lengths)
        if at < 0:
            raise ValueError("RESULTS record cut short")
        buffers = []
        for size in lengths:
            buffers.append(view[at:at + size])
            at += size
        batch_id, offset, values, errors, elapsed = pickle.loads(view, buffers=buffers)
        for i, value in enumerate(values):
            if type(value) is memoryview:   # one of ours: nothing else unpickles as one
                values[i] = value.tobytes()
                value.release()
        for buffer in buffers:
            buffer.release()
    finally:
        view.release()
    return batch_id, offset, values, errors, elapsed


TIMEOUT_RECORD = struct.Struct(">qqd")   # batch id, taskunit index, seconds it ran


def encode_timeout(batch_id, index, elapsed):
    """Taskunit `index` of `batch_id` ran `elapsed` s, past the task timeout (a struct)."""
    return TIMEOUT_RECORD.pack(batch_id, index, elapsed)


def decode_timeout(payload):
    """(batch_id, index, elapsed)"""
    batch_id, index, elapsed = TIMEOUT_RECORD.unpack(payload)
    return batch_id, index, elapsed


def encode_fatal(text):
    """The runner's own traceback, as text."""
    return text.encode("utf-8", "replace")


def decode_fatal(payload):
    return str(payload, "utf-8", "replace")


def encode_setup_failed(what, text):
    """`what` ("the initializer", "the job's setup()", ...) failed with traceback `text`:
    two UTF-8 fields, not a pickle."""
    return _pack_fields(what, text)


def decode_setup_failed(payload):
    """(what, text)"""
    what, text = _unpack_fields(payload, 0, 2)
    return _str(what), _str(text)


def encode_sources(modules, protocol=None):
    """The job's own modules [(name, source), ...], compressed: imported from memory there."""
    import zlib

    return zlib.compress(pickle.dumps(modules, protocol=_proto(protocol)), 1)


def decode_sources(payload):
    import zlib

    return pickle.loads(zlib.decompress(payload))


def encode_module_request(name):
    """The runner asks for a module its host lacks."""
    return name.encode("utf-8")


def decode_module_request(payload):
    return str(payload, "utf-8", "replace")


def encode_module(name, record, reason, distribution=None, protocol=None):
    """The master's answer: the module's record (see codeship.module_answer), or why not;
    for a top-level package, its distribution's (name, METADATA headers) when the master
    has them, so `importlib.metadata.version(...)` inside the package works on the host."""
    return pickle.dumps((name, record, reason, distribution), protocol=_proto(protocol))


def decode_module(payload):
    """(name, record, reason, distribution)"""
    name, record, reason, distribution = pickle.loads(payload)
    return name, record, reason, distribution


_STREAM = struct.Struct(">I")        # a relayed stream's id
_EXIT = struct.Struct(">Ii")          # stream id, exit status (negative: killed by signal)
KNOWN_HOSTS_TOKEN = "@antnest-known-hosts@"   # in a relayed argv: the relay's known_hosts file


def encode_relay_setup(stage2, known_hosts):
    """Once per relay: the runners' stage 2 (written to every stream opened with it, so it
    crosses the relay's channel once) and the master's known_hosts lines (kept in memory
    there, never in a file on the relay's disk)."""
    return _pack_fields(stage2, known_hosts)


def decode_relay_setup(payload):
    """(stage2, known_hosts) as bytes"""
    stage2, known_hosts = _unpack_fields(payload, 0, 2)
    return stage2 or b"", known_hosts or b""


def encode_relay_open(stream, argv, with_stage2):
    """Start `argv` (an ssh command line) on the relay as stream `stream`."""
    return _STREAM.pack(stream) + _pack_fields(b"1" if with_stage2 else b"0", "\0".join(argv))


def decode_relay_open(payload):
    """(stream, argv, with_stage2)"""
    (stream,) = _STREAM.unpack_from(payload)
    flag, argv = _unpack_fields(payload, _STREAM.size, 2)
    return stream, _str(argv).split("\0"), flag == b"1"


def relay_data_header(stream, size):
    """The frame header and stream id before `size` bytes of a stream's data: the data
    itself is sent after it uncopied. Empty data from the relay is the stream's EOF."""
    return HEADER.pack(_STREAM.size + size, Kind.RELAY_DATA) + _STREAM.pack(stream)


def encode_relay_data(stream, data):
    return _STREAM.pack(stream) + bytes(data)


def decode_relay_data(payload):
    """(stream, data): data is a memoryview into the payload"""
    (stream,) = _STREAM.unpack_from(payload)
    return stream, memoryview(payload)[_STREAM.size:]


def encode_relay_stream(stream):
    """RELAY_CLOSE (EOF on its stdin, after what was sent) and RELAY_KILL carry the id."""
    return _STREAM.pack(stream)


def decode_relay_stream(payload):
    return _STREAM.unpack(payload)[0]


def encode_relay_exit(stream, status, stderr):
    """A relayed process ended: its exit status and the tail of its stderr."""
    if not isinstance(stderr, (bytes, bytearray)):
        stderr = stderr.encode("utf-8", "replace")
    return _EXIT.pack(stream, status) + bytes(stderr)


def decode_relay_exit(payload):
    """(stream, status, stderr text)"""
    stream, status = _EXIT.unpack_from(payload)
    return stream, status, str(payload[_EXIT.size:], "utf-8", "replace")


def encode_empty():
    """PING and BYE carry nothing."""
    return b""


def decode_empty(payload):
    return None


WIRE = {  # kind: (encode, decode), one pair per kind; tests check every Kind is here
    Kind.HELLO: (encode_hello, decode_hello),
    Kind.JOB: (encode_job, decode_job),
    Kind.TASKS: (encode_tasks, decode_tasks),
    Kind.RESULTS: (encode_results, decode_results),
    Kind.LOG: (encode_log, decode_log),
    Kind.BYE: (encode_empty, decode_empty),
    Kind.PING: (encode_empty, decode_empty),
    Kind.TIMEOUT: (encode_timeout, decode_timeout),
    Kind.FATAL: (encode_fatal, decode_fatal),
    Kind.SETUP_FAILED: (encode_setup_failed, decode_setup_failed),
    Kind.UNDECODABLE: (encode_undecodable, decode_undecodable),
    Kind.SOURCES: (encode_sources, decode_sources),
    Kind.MODULE_REQUEST: (encode_module_request, decode_module_request),
    Kind.MODULE: (encode_module, decode_module),
    Kind.RELAY_SETUP: (encode_relay_setup, decode_relay_setup),
    Kind.RELAY_OPEN: (encode_relay_open, decode_relay_open),
    Kind.RELAY_DATA: (encode_relay_data, decode_relay_data),
    Kind.RELAY_CLOSE: (encode_relay_stream, decode_relay_stream),
    Kind.RELAY_KILL: (encode_relay_stream, decode_relay_stream),
    Kind.RELAY_EXIT: (encode_relay_exit, decode_relay_exit),
}


class FrameReader(object):
    """Splits a byte stream into (kind, payload) frames. Two ways to drive it: `next()` pulls
    with the blocking `read(n)` it was given (b'' at EOF); `feed(data)` pushes what a selector
    read and `pop()` takes the frames that are complete. A large frame's payload is read into
    one buffer of its exact size (a bytearray), so it costs its size once, not three times.

    Each read asks for `want()`: what the frame still lacks, at least SMALL_READ and at most
    `chunk`. Asking for `chunk` (1 MiB) every time made each small frame cost an mmap, mremap
    and munmap of a 1 MiB buffer (malloc serves that size by mmap), about a third of a
    runner's CPU per one-task round trip; a large frame still arrives in large reads."""

    SMALL_READ = 65536   # below malloc's mmap threshold (128 KiB)
    LARGE = 1 << 20      # payloads above this get a buffer of their own

    def __init__(self, read=None, chunk=1 << 20):
        self._read = read
        self._chunk = chunk
        self._buf = bytearray()
        self._large = None     # (kind, bytearray of the payload's size, bytes filled so far)

    def feed(self, data):
        """Add bytes read from the stream; returns whether a frame may be complete now."""
        large = self._large
        if large is None:
            self._buf += data
            return True
        kind, payload, filled = large
        view = memoryview(data)
        take = min(len(view), len(payload) - filled)
        payload[filled:filled + take] = view[:take]
        filled += take
        self._large = (kind, payload, filled)
        if take < len(view):
            self._buf += view[take:]
        return filled == len(payload)

    def pop(self):
        """The next complete frame, or None when more bytes are needed."""
        large = self._large
        if large is not None:
            kind, payload, filled = large
            if filled < len(payload):
                return None
            self._large = None
            return kind, payload
        buf = self._buf
        if len(buf) < HEADER.size:
            return None
        size, kind = HEADER.unpack_from(buf)
        need = HEADER.size + size
        if len(buf) >= need:
            payload = bytes(buf[HEADER.size:need])
            del buf[:need]
            return kind, payload
        if size <= self.LARGE:
            return None
        payload = bytearray(size)
        have = len(buf) - HEADER.size
        payload[:have] = memoryview(buf)[HEADER.size:]
        del buf[:]
        self._large = (kind, payload, have)
        return None

    def partial(self):
        """Whether the stream stopped inside a frame (EOF now would cut one)."""
        return bool(self._buf) or self._large is not None

    def want(self):
        """How many bytes to ask the stream for next."""
        large = self._large
        if large is not None:
            lack = len(large[1]) - large[2]
        elif len(self._buf) >= HEADER.size:
            lack = HEADER.size + HEADER.unpack_from(self._buf)[0] - len(self._buf)
        else:
            lack = HEADER.size - len(self._buf)
        return min(self._chunk, max(lack, self.SMALL_READ))

    def next(self):
        """The next frame, or None at a clean EOF between frames."""
        while True:
            found = self.pop()
            if found is not None:
                return found
            data = self._read(self.want())
            if not data:
                if self._large is not None or len(self._buf) >= HEADER.size:
                    raise EOFError("stream closed inside a frame")
                if self._buf:
                    raise EOFError("stream closed inside a frame header")
                return None
            self.feed(data)


# ---------------------------------------------------------------------------------------------
# Everything below runs only on the host.


class _Writer(object):
    """Frames out on the private protocol fd; shared by the main thread and the log thread."""

    def __init__(self, fd):
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, kind, payload):
        if len(payload) >= JOIN_BELOW:
            return self.send_parts(kind, [payload])
        data = HEADER.pack(len(payload), kind) + payload  # small: a copy costs less than writev
        with self._lock:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]

    def send_parts(self, kind, parts):
        """One frame whose payload is `parts` (bytes or flat byte memoryviews) joined, written
        with writev instead: a big result is never copied into a frame."""
        size = 0
        for part in parts:
            size += len(part)
        parts = [HEADER.pack(size, kind)] + [part for part in parts if len(part)]
        with self._lock:
            while parts:
                written = os.writev(self._fd, parts)
                while written:
                    first = len(parts[0])
                    if written < first:
                        parts[0] = memoryview(parts[0])[written:]
                        break
                    written -= first
                    del parts[0]


class _Current(object):
    """Which taskunit the main thread runs, for LOG attribution and the timeout watchdog."""

    batch = None
    index = -1
    started = 0.0
    # (offset, values, errors, perf_counter start) of the batch's results not sent yet: the
    # watchdog sends them before TIMEOUT, so finished taskunits do not die with the runner
    unsent = None


class _TextToLog(io.TextIOBase):
    """sys.stdout/sys.stderr replacement: each line becomes a LOG frame tagged with its task."""

    def __init__(self, writer, current, name):
        self._writer = writer
        self._current = current
        self._buf = ""
        self.name = name

    def writable(self):
        return True

    def write(self, text):
        self._buf += text
        if "\n" in self._buf:
            lines, _, self._buf = self._buf.rpartition("\n")
            self._emit(lines)
        return len(text)

    def flush(self):
        if self._buf:
            text, self._buf = self._buf, ""
            self._emit(text)

    def fileno(self):
        return 1 if self.name == "stdout" else 2

    def _emit(self, text):
        self._writer.send(Kind.LOG, encode_log(self._current.batch, self._current.index, text))


class _FdOutput(object):
    """Bytes written straight to fds 1/2 (os.write, C code, child processes) become LOG frames.

    A thread forwards them as they come. drain() forwards, on the calling thread, whatever is in
    the pipe now, partial last line included; the main thread calls it before RESULTS (and the
    watchdog before TIMEOUT), so a taskunit's output always reaches the master before its
    result, and never after the run ended. Reading and sending happen under one lock, so the
    two readers cannot reorder lines. With nothing written, drain() costs one poll(0): an
    empty pipe, then the lock free and no partial line held, means everything written before
    the call has been sent (a read in progress holds the lock until its bytes are sent).
    """

    CHUNK = 65536
    DRAIN_LIMIT = 1 << 20   # what fits in a pipe (Linux's largest default): "written so far"
    DRAIN_WAIT = 5.0        # seconds drain() waits for the thread to finish a send

    def __init__(self, fd, writer, current):
        self.fd = fd
        self.writer = writer
        self.current = current
        self.lock = threading.Lock()
        self.pending = b""
        os.set_blocking(fd, False)
        import select

        self._poll = select.poll()     # drain()'s; a poll object is not shared between threads
        self._poll.register(fd, select.POLLIN)
        self._thread_poll = select.poll()
        self._thread_poll.register(fd, select.POLLIN)

    def run(self):
        """The forwarding thread: wait until the pipe is readable, then forward what is there."""
        while True:
            try:
                self._thread_poll.poll()
            except (OSError, ValueError):
                return
            with self.lock:
                if not self._forward(self.DRAIN_LIMIT, partial=False):
                    return

    def drain(self):
        """Forward everything written to fds 1/2 so far; bounded by DRAIN_WAIT and DRAIN_LIMIT."""
        if not self._poll.poll(0) and not self.lock.locked() and not self.pending:
            return   # in this order: see the class docstring
        if self.lock.acquire(True, self.DRAIN_WAIT):
            try:
                self._forward(self.DRAIN_LIMIT, partial=True)
            finally:
                self.lock.release()

    def _forward(self, limit, partial):
        """Read up to `limit` bytes that are there (lock held); False at EOF or a dead fd."""
        alive = True
        got = 0
        while got < limit:
            try:
                chunk = os.read(self.fd, self.CHUNK)
            except BlockingIOError:
                break
            except OSError:
                alive = False
                break
            if not chunk:
                alive = False
                break
            got += len(chunk)
            self.pending += chunk
            if b"\n" in chunk or len(self.pending) >= self.CHUNK:
                lines, newline, rest = self.pending.rpartition(b"\n")
                if newline:
                    self._send(lines)
                    self.pending = rest
                else:  # a long run without a newline
                    self._send(self.pending)
                    self.pending = b""
        if self.pending and (partial or not alive):
            self._send(self.pending)
            self.pending = b""
        return alive

    def _send(self, data):
        current = self.current
        self.writer.send(Kind.LOG, encode_log(current.batch, current.index,
                                              data.decode("utf-8", "replace")))


def _read_exact(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class _ShippedModules(object):
    """A meta path finder serving modules held in memory (nothing touches disk): bytecode when
    the master's Python has this host's bytecode magic, else source compiled here."""

    def __init__(self, shipped):
        self._modules = shipped["modules"]  # {"pkg.mod": (is_package, source, marshalled code)}
        self._magic = shipped.get("magic")

    def find_spec(self, name, path=None, target=None):
        if name not in self._modules:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(name, self, is_package=self._modules[name][0])

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        is_package, source, code = self._modules[module.__name__]
        if is_package:
            module.__path__ = []
        if code is not None and self._magic == _bytecode_magic():
            import marshal

            code = marshal.loads(code)
        else:
            code = compile(source, "<antnest shipped %s>" % module.__name__, "exec")
        exec(code, module.__dict__)


def _bytecode_magic():
    bootstrap = sys.modules.get("_frozen_importlib_external")
    if bootstrap is None:  # pragma: no cover - other interpreters
        from importlib.util import MAGIC_NUMBER

        return MAGIC_NUMBER
    return bootstrap.MAGIC_NUMBER


def _ensure_cloudpickle(shipped, wanted_version):
    """Use the host's cloudpickle when it is the master's version, else serve ours from memory.
    Only looked for, not imported: importing it costs a start-up that may never need it."""
    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec("cloudpickle")
    if spec is not None and spec.origin:
        try:
            version_file = os.path.join(os.path.dirname(spec.origin), "__init__.py")
            with open(version_file) as handle:
                text = handle.read()
            found_same = any(("__version__ = %s%s%s" % (q, wanted_version, q)) in text
                             for q in ("'", '"'))
        except OSError:
            found_same = False
        if found_same or not shipped:
            return "found"
    elif not shipped:
        return "missing"
    sys.meta_path.insert(0, _ShippedModules(shipped))
    return "shipped"


# -- code that travels as source ---------------------------------------------------------------


class _Sources(object):
    """The master's modules held here as source, served by a sys.meta_path finder.

    SOURCES (the job's own modules, sent before the first JOB that needs them) go first in
    sys.meta_path: the job's modules are the master's, whatever the host has. Modules the host
    lacks altogether are asked of the master on import (MODULE_REQUEST) by the finder placed
    last, so the host's own installed modules always win. Each module is compiled here from its
    text under its real file name (never bytecode from another version), and its lines go into
    linecache, so tracebacks show file, line and source. Nothing is written to disk.
    """

    def __init__(self):
        self.modules = {}  # name: (is_package, filename, source bytes)

    def add(self, records):
        for name, is_package, filename, source in records:
            self.modules[name] = (is_package, filename, source)

    def find_spec(self, name, path=None, target=None):
        record = self.modules.get(name)
        return None if record is None else _spec(name, self, record)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        _exec_source(module, self.modules[module.__name__])

    def get_source(self, name):
        record = self.modules.get(name)
        return None if record is None else _text(record[2])


_SOURCES = _Sources()


def _spec(name, loader, record):
    from importlib.machinery import ModuleSpec

    is_package, filename, _ = record
    spec = ModuleSpec(name, loader, origin=filename, is_package=is_package)
    spec.has_location = True  # __file__ names the master's file: inspect and tracebacks use it
    return spec


def _text(source):
    return source.decode("utf-8", "replace") if isinstance(source, bytes) else source


def _remember_lines(filename, text, first_line=1):
    """Put source into linecache (mtime None: checkcache leaves it alone), unless there."""
    import linecache

    if filename in linecache.cache and first_line != 1:
        return
    lines = [""] * (first_line - 1) + text.splitlines(True)
    linecache.cache[filename] = (len(text), None, lines, filename)


def _exec_source(module, record):
    is_package, filename, source = record
    code = compile(source, filename, "exec", dont_inherit=True)
    _remember_lines(filename, _text(source))
    exec(code, module.__dict__)


class _Forwarder(object):
    """Last in sys.meta_path: asks the master for a module neither the host nor SOURCES have.
    The answer (pure-Python source, or why not) is kept: each module crosses once per runner."""

    def __init__(self, writer):
        self.writer = writer
        self.enabled = False  # until the master's first JOB says forwarding is on
        self.answers = {}     # name: (record or None, reason)
        self.distributions = {}  # normalized distribution name: METADATA headers
        self.cond = threading.Condition()

    def find_spec(self, name, path=None, target=None):
        if not self.enabled:
            return None
        parent = name.rpartition(".")[0]
        if parent and parent != "antnest" and \
                getattr(sys.modules.get(parent), "__loader__", None) not in (self, _SOURCES):
            return None  # a submodule of the host's own package: the host's business
        if parent == "antnest" and _init_package() and name in sys.modules:
            from importlib.machinery import ModuleSpec

            return ModuleSpec(name, _Existing(sys.modules[name]))
        record, reason = self._ask(name)
        if record is None:
            raise ModuleNotFoundError(reason, name=name)
        return _spec(name, self, record)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        try:
            _exec_source(module, self.answers[module.__name__][0])
        except SyntaxError as exc:
            # The master's copy is written for a newer Python than this host's: to importers
            # that is "not available" (many fall back on ImportError), never a crash.
            raise ImportError(
                "cannot forward %s to this host: the master's copy (%s) does not compile on "
                "Python %d.%d here (%s, line %s); install a version of it on the host that "
                "supports this Python (antnest exec -- python3 -m pip install --user ...)"
                % (module.__name__, exc.filename, sys.version_info[0], sys.version_info[1],
                   exc.msg, exc.lineno), name=module.__name__) from None

    def get_source(self, name):
        answer = self.answers.get(name)
        return None if answer is None or answer[0] is None else _text(answer[0][2])

    def _ask(self, name):
        with self.cond:
            if name not in self.answers:
                self.answers[name] = None  # asked, not answered yet
                self.writer.send(Kind.MODULE_REQUEST, encode_module_request(name))
            deadline = time.monotonic() + MODULE_WAIT
            while self.answers[name] is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    del self.answers[name]
                    return None, ("No module named %r on this host, and the master did not "
                                  "answer within %g s" % (name, MODULE_WAIT))
                self.cond.wait(left)
            return self.answers[name]

    def answer(self, payload):
        """The reader thread's part: a MODULE frame arrived."""
        name, record, reason, distribution = decode_module(payload)
        with self.cond:
            if distribution is not None:
                self.distributions[_dist_key(distribution[0])] = distribution[1]
            self.answers[name] = (tuple(record[1:]) if record else None, reason)
            self.cond.notify_all()

    def find_distributions(self, context=None):
        """importlib.metadata asks every sys.meta_path finder: the forwarded packages'
        distributions are found here (3.8+ hosts)."""
        name = getattr(context, "name", None)
        with self.cond:
            found = [text for key, text in self.distributions.items()
                     if name is None or key == _dist_key(name)]
        try:
            return iter([_forwarded_distribution(text) for text in found])
        except ImportError:  # 3.6/3.7: no importlib.metadata to answer
            return iter(())


def _dist_key(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def _forwarded_distribution(text):
    """A distribution known only by the METADATA headers the master sent."""
    from importlib.metadata import Distribution

    class Forwarded(Distribution):
        def read_text(self, filename):
            return text if filename in ("METADATA", "PKG-INFO") else None

        def locate_file(self, path):
            return path

    return Forwarded()


def _init_package():
    """The host's `antnest` is only this runner's package: the first time shipped code uses
    more of it (`from antnest import Cluster`, `import antnest.worker`), the master's
    antnest/__init__.py is forwarded and run in it, as Python runs a package's __init__ before
    its submodules. True when it ran just now."""
    package = sys.modules.get("antnest")
    if package is None or package.__dict__.get("_antnest_forwarded") or _FORWARDER is None:
        return False
    package._antnest_forwarded = True
    record, reason = _FORWARDER._ask("antnest")
    if record is not None:
        exec(compile(record[2], record[1], "exec", dont_inherit=True), package.__dict__)
    return True


class _Existing(object):
    """Loader of a module that an __init__ run meanwhile has already imported."""

    def __init__(self, module):
        self.module = module

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        pass


def _package_getattr(name):
    """`from antnest import Cluster` in a shipped __main__ script (see _init_package)."""
    package = sys.modules["antnest"]
    _init_package()
    try:
        return package.__dict__[name]
    except KeyError:
        raise AttributeError("module 'antnest' has no attribute %r" % name)


_FORWARDER = None


class _Unpickler(pickle.Unpickler):
    """The master's `__main__` is imported here as MAIN_ALIAS (the runner owns `__main__`),
    as multiprocessing's spawn does with `__mp_main__`."""

    def find_class(self, module, name):
        if module == "__main__" and MAIN_ALIAS in _SOURCES.modules:
            module = MAIN_ALIAS
        return pickle.Unpickler.find_class(self, module, name)


def loads(data):
    """Unpickle what the master sent (functions by reference to shipped modules, data)."""
    return _Unpickler(io.BytesIO(data)).load()


class CodeShippingError(RuntimeError):
    """A function that cannot run on this host: no source to rebuild it from, and bytecode
    from another Python version. The message names the function, its file:line and the fix."""


class Star(object):
    """fn(*args): what Cluster.map calls, by reference to fn on every host."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, args):
        return self.fn(*args)

    def __reduce__(self):
        return (type(self), (self.fn,))


class StarShared(object):
    """fn(*args, shared): Cluster.map with shared=, the shared value pickled once per call."""

    def __init__(self, fn, shared):
        self.fn = fn
        self.shared = shared

    def __call__(self, args):
        return self.fn(*(tuple(args) + (self.shared,)))

    def __reduce__(self):
        return (type(self), (self.fn, self.shared))


class WithShared(StarShared):
    """fn(item, shared): imap / imap_unordered with shared=."""

    def __call__(self, item):
        return self.fn(item, self.shared)


class Apply(Star):
    """fn(*args, **kwargs): what Cluster.submit calls."""

    def __call__(self, item):
        args, kwargs = item
        return self.fn(*args, **kwargs)


class WithSelf(Star):
    """An original-form processor(self, data) as a one-argument callable."""

    def __call__(self, data):
        import types

        return self.fn(types.SimpleNamespace(data=data), data)


def _rebuild_function(kind, source, filename, line, column, name, qualname, module):
    """A lambda or nested function compiled here from its source text, so it never depends on
    the master's bytecode. Its closure values and globals arrive next (_set_function_state):
    free variables become globals of its own namespace, which holds the values they had."""
    import types

    # At its own line and column (tracebacks point into it): inside `if 1:` any indentation
    # is valid.
    if kind == "lambda":
        nested = column >= 2 and line >= 2
        source = " " * (column - 1) + "(" + source + ")" if nested else "(" + source + ")"
    else:
        nested = column >= 1 and line >= 2
    text = "\n" * (line - 2 if nested else line - 1) + ("if 1:\n" if nested else "") + source
    code = compile(text, filename, "exec", dont_inherit=True)
    if nested:  # the function's code sits in the `if` block's constants
        code = code
    found = [c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == name]
    if not found:
        raise CodeShippingError("cannot rebuild %s from its source (%s:%d)" % (qualname, filename,
                                                                               line))
    _remember_lines(filename, source, first_line=line)
    import builtins

    namespace = {"__builtins__": builtins, "__name__": module}
    fn = types.FunctionType(found[0], namespace, name)
    fn.__qualname__ = qualname
    return fn


def _set_function_state(fn, state):
    values, defaults, kwdefaults, attributes = state
    fn.__globals__.update(values)
    fn.__defaults__ = defaults
    fn.__kwdefaults__ = kwdefaults
    fn.__dict__.update(attributes)


def _first_that_loads(first, second):
    """By reference (importing the function's module here), else rebuilt from source when
    that module's own imports fail on this host."""
    try:
        return loads(first)
    except Exception as exc:
        try:
            return loads(second)
        except Exception:
            raise exc


def _load_by_value(blob, what, master_python):
    """A function with no recoverable source, pickled by value: bytecode of the master's
    Python, which only loads (safely) on the same minor version."""
    if tuple(sys.version_info[:2]) != tuple(master_python[:2]):
        raise CodeShippingError(
            "%s cannot run on this Python %s host: its source cannot be recovered, so it "
            "travels as bytecode, which loads only on Python %d.%d (the master's). Fix: define "
            "it in a .py file (a module-level def, or a lambda or closure written in a file)"
            % (what, ".".join(map(str, sys.version_info[:3])), master_python[0],
               master_python[1]))
    return loads(blob)


def _hello_info(cloudpickle_state):
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return {
        "magic": MAGIC.decode(),
        "protocol": PROTOCOL_VERSION,
        "python": list(sys.version_info[:3]),
        "implementation": sys.implementation.name,
        "executable": sys.executable,
        "hostname": os.uname().nodename,
        "pid": os.getpid(),
        "cpus": cpus,
        "pickle_protocol": pickle.HIGHEST_PROTOCOL,
        "cloudpickle": cloudpickle_state,
    }


class _Runner(object):
    def __init__(self, proto_in, writer, current, forwarder):
        self.writer = writer
        self.forwarder = forwarder
        self.current = current
        self.inbox = SimpleQueue()
        self.functions = {}
        self.task_timeout = None
        self.idle_timeout = None
        self.heartbeat = None
        self.master_python = "?"
        self.set_by_init = {}  # {module name: {global: value}} an initializer/setup() set
        self.last_heard = time.monotonic()
        self._in = proto_in
        self.owning = None
        self.fd_output = None  # _FdOutput: fds 1/2 forwarded as LOG frames
        # What the main thread does with each kind; PING and BYE stop at the reader thread.
        self.handlers = {Kind.JOB: self._load_job, Kind.TASKS: self._on_tasks,
                         Kind.SOURCES: self._on_sources}

    # The reader thread: frames in; EOF means the master is gone, so leave at once.
    def read_loop(self):
        def read(n):
            data = os.read(self._in, n)
            self.last_heard = time.monotonic()  # a long frame still counts as word from home
            return data

        reader = FrameReader(read)
        try:
            while True:
                frame = reader.next()
                if frame is None:
                    break
                self.last_heard = time.monotonic()
                kind, payload = frame
                if kind == Kind.PING:
                    continue
                if kind == Kind.BYE:
                    break
                if kind == Kind.MODULE:  # the main thread waits for it inside an import
                    self.forwarder.answer(payload)
                    continue
                self.inbox.put(frame)
        except (OSError, EOFError):
            pass
        _exit_now(0)

    def watchdog(self):
        """Stop a task past its timeout, and leave when the master has been silent too long."""
        last_beat = time.monotonic()
        while True:
            time.sleep(0.05)
            now = time.monotonic()
            if self.heartbeat and now - last_beat >= self.heartbeat:
                last_beat = now
                self.writer.send(Kind.PING, encode_empty())
            cur = self.current
            if self.task_timeout and cur.batch is not None and cur.index >= 0:
                elapsed = now - cur.started
                batch, index, unsent = cur.batch, cur.index, cur.unsent
                if unsent is not None and len(unsent[1]) > index - unsent[0]:
                    pass  # that taskunit has returned: the main thread is flushing its output
                elif elapsed > self.task_timeout:
                    try:
                        if self.fd_output is not None:  # its output before its TIMEOUT
                            self.fd_output.drain()
                        if unsent is not None:
                            offset, values, errors, start = unsent
                            done = values[:index - offset]  # the main thread is stuck in fn
                            if done:
                                self._send_results(batch, offset, done,
                                                   dict((i, e) for i, e in errors.items()
                                                        if i < index),
                                                   time.perf_counter() - start)
                        self.writer.send(Kind.TIMEOUT, encode_timeout(batch, index, elapsed))
                    finally:
                        _exit_now(3)
            if self.idle_timeout and now - self.last_heard > self.idle_timeout:
                _exit_now(4)

    def serve(self):
        """The main thread: frames the reader queued, each to its handler (others are ignored)."""
        handlers = self.handlers
        while True:
            kind, payload = self.inbox.get()
            handler = handlers.get(kind)
            if handler is not None:
                handler(payload)

    def _on_tasks(self, payload):
        owning = self.owning
        if owning is not None:   # the job's children must be ours from its first task
            owning.join(5)
            self.owning = None
        self._run_batch(payload)

    def _on_sources(self, payload):
        _SOURCES.add(decode_sources(payload))

    def _load_job(self, payload):
        fn_id, blob, options = decode_job(payload)
        for name in ("task_timeout", "idle_timeout", "heartbeat", "master_python"):
            if name in options:
                setattr(self, name, options[name])
        if "forward" in options:
            self.forwarder.enabled = options["forward"]
        if fn_id is None:
            self._prepare(options)
            return
        if blob is None:  # the master forgot this function: so does the runner
            self.functions.pop(fn_id, None)
            return
        try:
            loaded = loads(blob)
        except BaseException as exc:
            import traceback

            text = str(exc) if isinstance(exc, CodeShippingError) else traceback.format_exc()
            self.functions[fn_id] = _Unloadable(text, self.master_python, exc)
            return
        if options.get("setup"):  # (processor, setup, args), pickled together: shared globals
            loaded, setup, args = loaded
            self._initialize("the job's setup()", setup, args)
        self._adopt_globals(loaded)
        self.functions[fn_id] = loaded

    def _prepare(self, options):
        """The runner's own options, before any user code: environment, directory, initializer."""
        for name, value in options.get("env") or ():
            os.environ[name] = value
        workdir = options.get("workdir")
        if workdir:
            path = os.path.expanduser(workdir)
            try:
                os.chdir(path)
            except OSError as exc:
                self._setup_failed("workdir", "cannot change to the working directory %r: %s"
                                   % (workdir, exc.strerror or exc))
        init = options.get("initializer")
        if init is not None:
            try:
                initializer, args = loads(init)
            except BaseException:
                import traceback

                self._setup_failed("initializer", "the initializer could not be loaded on "
                                   "this host:\n" + traceback.format_exc())
            self._initialize("the initializer", initializer, args)

    def _initialize(self, what, fn, args):
        """Run an initializer once; the globals it sets reach functions loaded later."""
        space = getattr(fn, "__globals__", None)
        before = dict(space) if space is not None else {}
        try:
            fn(*args)
        except BaseException as exc:
            self._setup_failed(what, "%s raised:\n%s" % (what, _describe_error(exc, 1)[3]))
        if space is not None:
            changed = {k: v for k, v in space.items() if k not in before or before[k] is not v}
            self.set_by_init.setdefault(space.get("__name__"), {}).update(changed)

    def _adopt_globals(self, fn, depth=0):
        """Functions pickled by value get fresh globals; give them (and the functions their
        closures hold: antnest's wrappers) what an initializer set in their module."""
        if isinstance(fn, (Star, StarShared)):  # antnest's wrappers hold the user's function
            fn = fn.fn
        space = getattr(fn, "__globals__", None)
        if space is None or not self.set_by_init or depth > 4:
            return
        values = self.set_by_init.get(space.get("__name__"))
        if values:
            space.update(values)
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                inner = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if inner is not fn:
                self._adopt_globals(inner, depth + 1)

    def _setup_failed(self, what, text):
        self._flush_output()
        self.writer.send(Kind.SETUP_FAILED, encode_setup_failed(what, text))
        _exit_now(5)

    def _run_batch(self, payload):
        batch_id, fn_id, _count, blob = decode_tasks(payload)
        try:
            items = decode_items(blob)
        except BaseException as exc:  # even SystemExit: it is that batch's error, not ours
            self.writer.send(Kind.UNDECODABLE,
                             encode_undecodable(batch_id, _describe_error(exc, skip_frames=1)))
            return
        del blob
        fn = self.functions.get(fn_id)
        cur = self.current
        values = []
        errors = {}
        offset = 0
        clock = time.perf_counter
        start = clock()
        cur.unsent = (offset, values, errors, start)
        cur.batch = batch_id
        for index, item in enumerate(items):
            cur.index = index
            cur.started = time.monotonic()
            try:
                values.append(fn(item))
            except BaseException as exc:  # the task's failure travels home, whatever it is
                errors[index] = _describe_error(exc, skip_frames=1)
                values.append(None)
            now = clock()
            if now - start > FLUSH_AFTER and index + 1 < len(items):
                self._flush_output()
                self._send_results(batch_id, offset, values, errors, now - start)
                offset = index + 1
                values = []
                errors = {}
                start = now
                cur.unsent = (offset, values, errors, start)
        self._flush_output()   # while cur.index still names the last taskunit
        cur.index = -1
        cur.unsent = None
        self._send_results(batch_id, offset, values, errors, clock() - start)
        cur.batch = None

    def _flush_output(self):
        """Everything the task printed or wrote to fds 1/2 goes out before what follows."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a user replaced sys.stdout with something odd
                pass
        if self.fd_output is not None:
            self.fd_output.drain()

    def _send_results(self, batch_id, offset, values, errors, elapsed):
        parts = results_parts(batch_id, offset, values, errors, elapsed)
        if len(parts) == 1:
            self.writer.send(Kind.RESULTS, parts[0])
        else:
            self.writer.send_parts(Kind.RESULTS, parts)


def _pickle_with_fallback(record, protocol=None):
    """Some value needs cloudpickle (a lambda, a class made here); one that no pickler
    takes gets the pickler's own exception as that taskunit's error (as ProcessPoolExecutor
    does) instead of losing the batch."""
    import cloudpickle

    try:
        return cloudpickle.dumps(record, protocol=_proto(protocol))
    except BaseException:
        pass
    batch_id, offset, values, errors, elapsed = record
    for index, value in enumerate(values):
        try:
            cloudpickle.dumps(value, protocol=_proto(protocol))
        except BaseException as exc:
            errors[offset + index] = _describe_error(exc)
            values[index] = None
    try:
        return cloudpickle.dumps((batch_id, offset, values, errors, elapsed), protocol=_proto(protocol))
    except BaseException:  # an error report that itself does not pickle: its text still goes
        errors = {i: (None,) + tuple(desc[1:]) for i, desc in errors.items()}
        return pickle.dumps((batch_id, offset, values, errors, elapsed), protocol=_proto(protocol))


class _Unloadable(object):
    """Stands in for a function that failed to unpickle here; every call reports why."""

    def __init__(self, text, master_python, error=None):
        self.text = text
        self.master_python = master_python
        self.error = error

    def __call__(self, item):
        if isinstance(self.error, (CodeShippingError, ImportError)):
            raise self.error
        raise RuntimeError(
            "the processor could not be loaded on this host (Python %s; the master runs "
            "Python %s):\n%s" % (".".join(map(str, sys.version_info[:3])), self.master_python,
                                self.text)
        )


def _describe_error(exc, skip_frames=0):
    """(pickled exception or None, type name, message, traceback text) for the master."""
    import traceback

    tb = exc.__traceback__
    for _ in range(skip_frames):  # the runner's own frames say nothing about the task
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    blob = None
    try:
        blob = pickle.dumps(exc, protocol=PICKLE_PROTOCOL)
        pickle.loads(blob)
    except BaseException:
        blob = None
        try:
            import cloudpickle

            blob = cloudpickle.dumps(exc, protocol=PICKLE_PROTOCOL)
        except BaseException:
            blob = None
    try:
        message = str(exc)
    except BaseException:
        message = "<unprintable>"
    return (blob, type(exc).__module__ + "." + type(exc).__qualname__, message, text)


SIGHUP, SIGKILL, SIGTERM = 1, 9, 15   # POSIX numbers: the signal module would import enum


def _own_descendants():
    """Make every process the job starts ours to stop: the runner leads its own process group
    (children inherit it), and on Linux it is a child subreaper, so a grandchild whose parent
    exits (a daemon that forked away, even into its own session) is re-parented to the runner
    instead of init. Runs on a thread after HELLO: ctypes costs ~20 ms to import."""
    if os.getpgid(0) != os.getpid():
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER
        except (OSError, AttributeError, ImportError):
            pass


def _descendants(root):
    """Pids of every living process below `root` or in its process group, from /proc."""
    parents = {}
    group = []
    own_group = os.getpgid(0)
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) < 3 or fields[0] == b"Z":
            continue
        pid = int(name)
        parents[pid] = int(fields[1])
        if own_group == root and int(fields[2]) == own_group:  # never a group we do not lead
            group.append(pid)
    found = set(pid for pid in group if pid != root)
    for pid in parents:
        seen = set()
        ancestor = parents.get(pid)
        while ancestor is not None and ancestor not in seen and ancestor > 1:
            if ancestor == root:
                found.add(pid)
                break
            seen.add(ancestor)
            ancestor = parents.get(ancestor)
    found.discard(root)
    return sorted(found)


def _kill_descendants():
    """Stop every process the job started, however the runner leaves: nothing stays behind."""
    me = os.getpid()
    if os.path.isdir("/proc/%d" % me):
        for _ in range(5):   # a process forking meanwhile: look again
            found = _descendants(me)
            if not found:
                return
            for pid in found:
                try:
                    os.kill(pid, SIGKILL)
                except OSError:
                    pass
        return
    try:  # no /proc: the process group, with the runner deaf to its own signal
        import _signal

        _signal.signal(SIGTERM, _signal.SIG_IGN)
        os.killpg(os.getpgid(0), SIGTERM)
    except (OSError, ImportError, AttributeError):
        pass


def _exit_now(code):
    """Leave without running user atexit hooks or joining threads: the master is gone. Every
    process the job started goes too."""
    try:
        sys.stdout.flush()
    except Exception:
        pass
    try:
        _kill_descendants()
    finally:
        os._exit(code)


def _on_signal(signum, frame):
    _exit_now(128 + signum)


def _exit_on_signals():
    """sshd or the master stopping us (SIGHUP, SIGTERM): clean up first, then exit."""
    try:
        import _signal

        for signum in (SIGHUP, SIGTERM):
            _signal.signal(signum, _on_signal)
    except (ImportError, AttributeError, ValueError, OSError):
        pass


def _grow_pipes(*fds):
    """Protocol pipes of 1 MiB instead of 64 KiB (Linux): a bulk frame crosses in a few
    wake-ups of the sshd in front of us instead of one per 64 KiB. Not a pipe, or not allowed:
    left as it is."""
    try:
        import fcntl
    except ImportError:
        return
    for fd in fds:
        try:
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except (OSError, ValueError):
            pass


# -- relay mode -------------------------------------------------------------------------------
# A relay is this module started with relay_main() instead of main(): it runs no task. It
# opens ssh sessions to the hosts behind it (the relay host's own ssh client, with the keys of
# the master's agent, forwarded) and carries each session's stdin and stdout over its own
# channel, tagged with a stream id; the runners' frames inside are the master's business.
# Exactly-once and loss handling stay on the master: when the relay goes, its streams go.

RELAY_READ = 1 << 18       # bytes read from a relayed stdout at once
RELAY_STDERR = 8192        # bytes of a relayed stderr kept (the tail), for the master's errors
RELAY_HEARTBEAT = 2.0      # seconds without a frame to the master before a PING


class _RelayStream(object):
    """One ssh process the relay runs: its pipes, what waits for its stdin, its stderr tail."""

    def __init__(self, stream, proc):
        self.stream = stream
        self.proc = proc
        self.pending = []          # bytes for its stdin, in order
        self.closing = False       # RELAY_CLOSE came: EOF once pending is written
        self.stdout_open = True
        self.stderr_open = True
        self.stderr = bytearray()


class _Relay(object):
    """The relay's one loop: a selector over the master's channel and every child's pipes."""

    def __init__(self, proto_in, writer):
        import selectors

        self._selectors = selectors
        self._in = proto_in
        self._writer = writer
        self._sel = selectors.DefaultSelector()
        self._reader = FrameReader()
        self._streams = {}
        self._ended = set()      # streams whose pipes are closed: RELAY_EXIT once reaped
        self._stage2 = b""
        self._known_hosts_fd = None
        self._last_sent = time.time()
        self._running = True
        # proto_in is read only when the selector says so (it may share its file with
        # proto_out, which must stay blocking)
        self._sel.register(proto_in, selectors.EVENT_READ, ("master", None))
        _load_prctl()

    # -- frames from the master -------------------------------------------------------------
    def _on_master(self):
        data = os.read(self._in, 1 << 20)
        if not data:
            self._running = False
            return
        self._reader.feed(data)
        while True:
            found = self._reader.pop()
            if found is None:
                return
            kind, payload = found
            if kind == Kind.RELAY_DATA:
                stream, chunk = decode_relay_data(payload)
                child = self._streams.get(stream)
                if child is not None and not child.closing:
                    child.pending.append(bytes(chunk))
                    self._flush(child)
            elif kind == Kind.RELAY_OPEN:
                self._open(*decode_relay_open(payload))
            elif kind == Kind.RELAY_CLOSE:
                child = self._streams.get(decode_relay_stream(payload))
                if child is not None:
                    child.closing = True
                    self._flush(child)
            elif kind == Kind.RELAY_KILL:
                child = self._streams.get(decode_relay_stream(payload))
                if child is not None:
                    self._kill(child)
            elif kind == Kind.RELAY_SETUP:
                self._setup(*decode_relay_setup(payload))
            elif kind == Kind.BYE:
                self._running = False
                return
            # PING and anything newer: nothing to do

    def _setup(self, stage2, known_hosts):
        self._stage2 = stage2
        if self._known_hosts_fd is not None:
            os.close(self._known_hosts_fd)
        fd = _memfd("antnest-known-hosts")
        while known_hosts:
            known_hosts = known_hosts[os.write(fd, known_hosts):]
        self._known_hosts_fd = fd

    def _open(self, stream, argv, with_stage2):
        import subprocess

        if self._known_hosts_fd is not None:
            # through the relay's own fd table: ssh closes every fd it inherits at start
            path = "/proc/%d/fd/%d" % (os.getpid(), self._known_hosts_fd)
            argv = [arg.replace(KNOWN_HOSTS_TOKEN, path) for arg in argv]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, bufsize=0,
                                    preexec_fn=_die_with_parent)
        except OSError as exc:
            self._send_data(stream, b"")
            self._send(Kind.RELAY_EXIT, encode_relay_exit(
                stream, 127, ("relay: cannot start %s: %s" % (argv[0], exc)).encode()))
            return
        child = _RelayStream(stream, proc)
        self._streams[stream] = child
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            os.set_blocking(pipe.fileno(), False)
        _grow_pipes(proc.stdin.fileno(), proc.stdout.fileno())
        EVENT_READ = self._selectors.EVENT_READ
        self._sel.register(proc.stdout.fileno(), EVENT_READ, ("stdout", child))
        self._sel.register(proc.stderr.fileno(), EVENT_READ, ("stderr", child))
        if with_stage2 and self._stage2:
            child.pending.append(self._stage2)
        self._flush(child)

    # -- a child's stdin ----------------------------------------------------------------------
    def _flush(self, child):
        stdin = child.proc.stdin
        if stdin is None or stdin.closed:
            child.pending = []
            return
        fd = stdin.fileno()
        while child.pending:
            chunk = child.pending[0]
            try:
                written = os.write(fd, chunk)
            except BlockingIOError:
                written = 0
            except OSError:  # it is gone: its stdout says so
                child.pending = []
                self._close_stdin(child)
                return
            if written < len(chunk):
                child.pending[0] = chunk[written:]
                self._want_write(child, True)
                return
            del child.pending[0]
        self._want_write(child, False)
        if child.closing:
            self._close_stdin(child)

    def _want_write(self, child, wanted):
        stdin = child.proc.stdin
        if stdin is None or stdin.closed:
            return
        fd = stdin.fileno()
        registered = fd in self._sel.get_map()
        if wanted and not registered:
            self._sel.register(fd, self._selectors.EVENT_WRITE, ("stdin", child))
        elif not wanted and registered:
            self._sel.unregister(fd)

    def _close_stdin(self, child):
        stdin = child.proc.stdin
        if stdin is not None and not stdin.closed:
            self._want_write(child, False)
            try:
                stdin.close()
            except OSError:
                pass

    # -- a child's output ---------------------------------------------------------------------
    def _on_output(self, which, child):
        pipe = child.proc.stdout if which == "stdout" else child.proc.stderr
        try:
            data = os.read(pipe.fileno(), RELAY_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if which == "stdout":
            self._send_data(child.stream, data)
            if data:
                return
            child.stdout_open = False
        elif data:
            child.stderr += data
            del child.stderr[:-RELAY_STDERR]
            return
        else:
            child.stderr_open = False
        self._sel.unregister(pipe.fileno())
        pipe.close()
        if not (child.stdout_open or child.stderr_open):
            self._ended.add(child.stream)

    def _reap(self):
        """Say how every child whose pipes are closed ended, once it has."""
        for stream in list(self._ended):
            child = self._streams[stream]
            status = child.proc.poll()
            if status is None:
                continue
            self._close_stdin(child)
            del self._streams[stream]
            self._ended.discard(stream)
            self._send(Kind.RELAY_EXIT, encode_relay_exit(stream, status, child.stderr))

    def _kill(self, child):
        child.pending = []
        self._close_stdin(child)
        if child.proc.poll() is None:
            try:
                child.proc.kill()
            except OSError:
                pass

    # -- to the master ------------------------------------------------------------------------
    def _send(self, kind, payload):
        self._writer.send(kind, payload)
        self._last_sent = time.time()

    def _send_data(self, stream, data):
        self._writer.send_parts(Kind.RELAY_DATA, [_STREAM.pack(stream), data])
        self._last_sent = time.time()

    def serve(self):
        while self._running:
            waiting = bool(self._ended)
            timeout = 0.05 if waiting else max(0.0, self._last_sent + RELAY_HEARTBEAT - time.time())
            for key, _ in self._sel.select(timeout):
                which, child = key.data
                if which == "master":
                    self._on_master()
                elif which == "stdin":
                    self._flush(child)
                else:
                    self._on_output(which, child)
            if waiting:
                self._reap()
            if time.time() - self._last_sent >= RELAY_HEARTBEAT:
                self._send(Kind.PING, b"")
        for child in list(self._streams.values()):
            self._kill(child)


def _memfd(name):
    """A file in memory only (Linux): os.memfd_create, or libc's on Python < 3.8."""
    create = getattr(os, "memfd_create", None)
    if create is not None:
        return create(name, 0)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.memfd_create(name.encode(), 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "memfd_create failed: a relay needs Linux 3.17+")
    return fd


_PRCTL = []  # type: list  # libc's prctl, loaded before the first fork (not in the child)


def _load_prctl():
    if not _PRCTL and sys.platform.startswith("linux"):
        try:
            import ctypes

            _PRCTL.append(ctypes.CDLL(None).prctl)
        except (OSError, AttributeError, ImportError):
            pass


def _die_with_parent():
    """preexec_fn of a relayed ssh: SIGKILL when the relay dies, however it dies (Linux)."""
    if _PRCTL:
        _PRCTL[0](1, SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG


def relay_main():
    """Entry point of a relay's stage 2 (bootstrap.relay_stage2): HELLO, then carry streams."""
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    fatal_fd = os.dup(2)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    for fd in (proto_in, proto_out, fatal_fd):
        os.set_inheritable(fd, False)
    _grow_pipes(proto_in, proto_out)
    writer = _Writer(proto_out)
    hello = _hello_info("missing")
    hello["role"] = "relay"
    writer.send(Kind.HELLO, encode_hello(hello))
    _exit_on_signals()
    try:
        _Relay(proto_in, writer).serve()
    except BaseException:
        import traceback

        text = traceback.format_exc()
        try:
            writer.send(Kind.FATAL, encode_fatal(text))
        finally:
            os.write(fatal_fd, text.encode())
            _exit_now(2)
    _exit_now(0)


def main(shipped=None, cloudpickle_version=None):
    """Entry point of stage 2: take the protocol fds private, say HELLO, then serve."""
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    fatal_fd = os.dup(2)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    for fd in (proto_in, proto_out, fatal_fd, read_fd):
        os.set_inheritable(fd, False)
    _grow_pipes(proto_in, proto_out)

    writer = _Writer(proto_out)
    current = _Current()
    sys.stdout = _TextToLog(writer, current, "stdout")
    sys.stderr = _TextToLog(writer, current, "stderr")
    sys.stdin = open(os.devnull)
    try:
        cloudpickle_state = _ensure_cloudpickle(shipped or {}, cloudpickle_version)
        hello = _hello_info(cloudpickle_state)
    except BaseException:
        import traceback

        os.write(fatal_fd, traceback.format_exc().encode())
        _exit_now(2)
    writer.send(Kind.HELLO, encode_hello(hello))
    owning = threading.Thread(target=_own_descendants, daemon=True)
    owning.start()
    _exit_on_signals()

    global _FORWARDER
    forwarder = _FORWARDER = _Forwarder(writer)
    package = sys.modules.get("antnest")
    if package is not None and getattr(package, "__path__", None) == []:  # bootstrap's stub
        package.__getattr__ = _package_getattr
    sys.meta_path.insert(0, _SOURCES)
    sys.meta_path.append(forwarder)
    runner = _Runner(proto_in, writer, current, forwarder)
    fd_output = runner.fd_output = _FdOutput(read_fd, writer, current)
    runner.owning = owning
    for target in (runner.read_loop, runner.watchdog):
        threading.Thread(target=target, daemon=True).start()
    threading.Thread(target=fd_output.run, daemon=True).start()
    try:
        runner.serve()
    except BaseException:
        import traceback

        text = traceback.format_exc()
        try:
            fd_output.drain()
            writer.send(Kind.FATAL, encode_fatal(text))
        finally:
            os.write(fatal_fd, text.encode())
            _exit_now(2)

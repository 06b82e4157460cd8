"""Journal: finished taskunits on disk, so a killed run can be resumed (`--journal`, `--resume`).

The file is text, one record per line, appended and flushed as results arrive:

    {"antnest_journal": 2, "job": "<sha256 of the job file>", "input": "<input id>", "created": "..."}
    <seq>\\t<data digest>\\tz:<base64 of the zlib-compressed pickle of the result>
    <seq>\\t<data digest>\\t<base64 pickle of the result>       (small results: not compressed)
    ...

Results are compressed (zlib level 1: fast, and a word count's Counter shrinks 4-5x) when they
pickle to more than COMPRESS_OVER bytes; base64 keeps the file line-oriented, so a torn write
is a line without its newline. Format 1 journals (no compression) are still read.

`seq` is the taskunit id: its position in split() order, stable across runs of the same job on
the same input. The data digest lets a resumed run check that the taskunit at each position is
still the same one. Only successes are journaled: a failed taskunit runs again on resume.

Lines are flushed to the kernel (they survive SIGKILL of the run), not fsynced (a power cut may
lose the last ones; those taskunits simply run again). A run killed mid-write leaves a torn last
line without its newline: resume ignores it and truncates it away before appending.

A JournalFeed puts a journal between split() and an ordered call: it hands out only the
taskunits still to do, journals results as the call accepts them, and merges old and new
results back into split() order for combine().
"""
from __future__ import annotations

import base64
import binascii
import collections
import fcntl
import hashlib
import json
import logging
import os
import pickle
import threading
import zlib
from typing import IO, Any, Deque, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from antnest.errors import LockedError, UsageError
from antnest.lock import now_iso

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
COMPRESS_OVER = 256      # bytes of pickle below which compression is not worth a try
COMPRESS_LEVEL = 1
PICKLE_PROTOCOL = 4   # results and digests: readable by every Python antnest supports
DIGEST_CHARS = 16

PathLike = Union[str, "os.PathLike[str]"]


def data_digest(data: Any) -> str:
    """sha256 of the pickled data, 16 hex chars: change detection, NOT security.

    Anyone who can write the journal can make it say anything; this only notices that the
    taskunit at a position is no longer the one that was run. Data whose pickle is not
    deterministic (a set of str under hash randomisation) reads as changed: resume refuses
    rather than mix results up.
    """
    return hashlib.sha256(pickle.dumps(data, protocol=PICKLE_PROTOCOL)).hexdigest()[:DIGEST_CHARS]


def input_id(input: Any) -> str:
    """What a journal records about the input, so resume can refuse a changed one early.

    None (the job's own input_data, covered by the job digest) -> "input_data"; '-' -> "stdin"
    (not checkable up front: the per-taskunit digests still are); a path -> a hash of the file's
    content (read once, in 1 MiB blocks). Anything else (an open file) -> "stream".
    """
    if input is None:
        return "input_data"
    if input == "-":
        return "stdin"
    if isinstance(input, (str, os.PathLike)):
        digest = hashlib.sha256()
        try:
            with open(input, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise UsageError(f"input {os.fspath(input)}: {exc.strerror or exc}") from None
        return "sha256:" + digest.hexdigest()[:32]
    return "stream"


class Journal:
    """An open journal. Use Journal.open(); `done` holds what earlier runs finished.

    `done` maps seq -> (data digest, result). record()/record_many() are thread-safe.
    """

    def __init__(self, path: str, handle: IO[bytes], header: Dict[str, Any],
                 done: Dict[int, Tuple[str, Any]]) -> None:
        self.path = path
        self.header = header
        self.done = done
        self._handle: Optional[IO[bytes]] = handle
        self._lock = threading.Lock()
        self.recorded = 0         # records appended by this run
        self.unpicklable = 0      # results that could not be journaled (they rerun on resume)
        self.error: Optional[OSError] = None   # set when a write failed: journaling stopped

    @classmethod
    def open(cls, path: PathLike, job_digest: str, input_id: str, resume: bool) -> "Journal":
        """Open for appending.

        resume=True: load the entries of an existing journal for the same job and input
        (UsageError if either changed); a missing or empty journal just starts one, so a cron
        line can always say `--journal F --resume`.
        resume=False: start a new journal, truncating whatever the file held.
        The job must already be loaded: results of classes defined in the job file unpickle
        against its module.
        """
        path = os.fspath(path)
        header = {"antnest_journal": FORMAT_VERSION, "job": job_digest, "input": input_id,
                  "created": now_iso()}
        try:
            handle = open(path, "a+b")
        except OSError as exc:
            raise UsageError(f"journal {path}: {exc.strerror or exc}") from None
        try:
            # Two runs appending to one journal would interleave records: the second stops.
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockedError(path, "another run writing this journal") from None
            done: Dict[int, Tuple[str, Any]] = {}
            old_header = None
            if resume:
                handle.seek(0)
                old_header, done, good_end = _load(path, handle)
            if old_header is None:
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(header, sort_keys=True).encode() + b"\n")
                handle.flush()
            else:
                if old_header.get("job") != job_digest or old_header.get("input") != input_id:
                    raise UsageError(
                        f"journal {path}: the job file or input changed since the journal was "
                        "written; delete it or run without --resume")
                header = old_header
                handle.truncate(good_end)   # drop a torn last line before appending
                handle.seek(good_end)
        except BaseException:
            handle.close()
            raise
        if done:
            log.info("journal %s: %d taskunits already done", path, len(done))
        return cls(path, handle, header, done)

    # -- writing ---------------------------------------------------------------------------
    def record(self, seq: int, data: Any, result: Any) -> None:
        """Append one finished taskunit and flush."""
        self.record_items(((seq, data, result),))

    def record_many(self, first_seq: int, datas: Iterable[Any], results: Iterable[Any]) -> None:
        """Append a contiguous run of finished taskunits in one write."""
        self.record_items((first_seq + i, d, r) for i, (d, r) in enumerate(zip(datas, results)))

    def record_items(self, entries: Iterable[Tuple[int, Any, Any]]) -> None:
        """Append (seq, data, result) records, any seqs, in one write and one flush.

        A result that cannot be pickled is not journaled (logged once): it runs again on
        resume, which is slower but never wrong.
        """
        lines = []
        for seq, data, result in entries:
            try:
                blob = _encode_result(pickle.dumps(result, protocol=PICKLE_PROTOCOL))
                digest = data_digest(data)
            except Exception as exc:
                if not self.unpicklable:
                    log.warning("journal %s: taskunit %d cannot be journaled (%s: %s); it and "
                                "others like it will run again on resume", self.path, seq,
                                type(exc).__name__, exc)
                self.unpicklable += 1
                continue
            lines.append(b"%d\t%s\t%s\n" % (seq, digest.encode(), blob))
        if not lines:
            return
        payload = b"".join(lines)
        with self._lock:
            if self._handle is None:
                raise ValueError(f"journal {self.path} is closed")
            if self.error is not None:
                return
            try:
                self._handle.write(payload)
                self._handle.flush()
            except OSError as exc:
                # A full disk must not take the run down (this runs on a worker thread). Stop
                # writing for good: appending after a partial line would damage the journal;
                # as it is, resume sees a torn last line and reruns what is missing.
                self.error = exc
                log.error("journal %s: cannot write (%s); journaling stops, the run goes on",
                          self.path, exc.strerror or exc)
                return
            self.recorded += len(lines)

    # -- checking --------------------------------------------------------------------------
    def check(self, seq: int, data: Any) -> None:
        """Raise UsageError if the taskunit at `seq` is not the one the journal recorded."""
        entry = self.done.get(seq)
        if entry is not None and entry[0] != data_digest(data):
            raise UsageError(
                f"journal {self.path}: taskunit {seq} is not the one journaled (its data "
                "changed), so taskunit ids no longer match; delete the journal or run without "
                "--resume")

    # -- ending ----------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()

    def remove(self) -> None:
        """Close and delete: the run finished, nothing is left to resume."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Journal({self.path!r}, done={len(self.done)}, recorded={self.recorded})"


def peek(path: PathLike, job_digest: str, input_id: str) -> Optional[Dict[int, Tuple[str, Any]]]:
    """What `--resume` would find, read without writing or locking (for `--dry-run`): the
    finished taskunits, or None when there is no journal yet. UsageError when it would refuse."""
    path = os.fspath(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"journal {path}: {exc.strerror or exc}") from None
    with handle:
        header, done, _ = _load(path, handle)
    if header is None:
        return None
    if header.get("job") != job_digest or header.get("input") != input_id:
        raise UsageError(f"journal {path}: the job file or input changed since the journal was "
                         "written; delete it or run without --resume")
    return done


def _encode_result(pickled: bytes) -> bytes:
    """The result column: "z:" + base64 of the compressed pickle when that is smaller."""
    if len(pickled) > COMPRESS_OVER:
        packed = zlib.compress(pickled, COMPRESS_LEVEL)
        if len(packed) < len(pickled):
            return b"z:" + base64.b64encode(packed)
    return base64.b64encode(pickled)


def _decode_result(column: bytes) -> bytes:
    if column.startswith(b"z:"):   # ':' is not a base64 character: no plain column starts so
        return zlib.decompress(base64.b64decode(column[2:], validate=True))
    return base64.b64decode(column, validate=True)


def _load(path: str, handle: IO[bytes]) -> Tuple[Optional[Dict[str, Any]], Dict[int, Tuple[str, Any]], int]:
    """(header or None when there is none yet, entries, offset after the last good line)."""
    done: Dict[int, Tuple[str, Any]] = {}
    first = handle.readline()
    if not first.endswith(b"\n"):       # empty, or killed while writing the header
        return None, done, 0
    try:
        header = json.loads(first)
    except ValueError:
        header = None
    if not isinstance(header, dict) or "antnest_journal" not in header:
        raise UsageError(f"journal {path}: not an antnest journal; delete it or choose another "
                         "file")
    if header["antnest_journal"] not in READABLE_VERSIONS:
        raise UsageError(f"journal {path}: format {header['antnest_journal']!r} is not "
                         f"{FORMAT_VERSION}; it was written by another antnest version; delete "
                         "it or run without --resume")
    good_end = handle.tell()
    number = 1
    for line in iter(handle.readline, b""):
        number += 1
        if not line.endswith(b"\n"):    # torn by a kill mid-write: ignored, truncated later
            log.info("journal %s: ignoring a torn last line", path)
            break
        try:
            seq_text, digest, blob = line.rstrip(b"\n").split(b"\t")
            done[int(seq_text)] = (digest.decode("ascii"), pickle.loads(_decode_result(blob)))
        except (ValueError, binascii.Error, pickle.UnpicklingError, EOFError, zlib.error) as exc:
            raise UsageError(f"journal {path}: line {number} is damaged ({exc}); delete the "
                             "journal or run without --resume") from None
        except Exception as exc:        # a result whose class is gone from the job file
            raise UsageError(f"journal {path}: line {number}: cannot load the result "
                             f"({type(exc).__name__}: {exc}); delete the journal or run "
                             "without --resume") from None
        good_end = handle.tell()
    return header, done, good_end


class JournalFeed:
    """Glue between a Journal and an ordered call, free of any scheduler knowledge.

    The call runs `pending()` (split() minus what is journaled); the call's own positions
    ("call seqs") therefore differ from taskunit ids once something is skipped, and the feed
    maps one to the other:

        feed = JournalFeed(journal, plan.items)
        call = ordered_call(scheduler, plan.processor, feed.pending(), journal=feed)
        # the call, as it accepts results (lock held):  feed.accepted(call_seq, values)
        # ... and as a taskunit fails for good:          error.taskunit_id = feed.failed(call_seq)
        combine(feed.results(call.results(with_failures=...)))

    `results()` must see every value the call yields, Failure placeholders included, so that
    the k-th value is the k-th pending taskunit.
    """

    def __init__(self, journal: Journal, items: Iterable[Any]) -> None:
        self.journal = journal
        self._items = items
        self._sent: Dict[int, Tuple[int, Any]] = {}   # call seq -> (taskunit id, data)
        self._order: Deque[int] = collections.deque()  # taskunit ids handed out, in call order
        self._lock = threading.Lock()
        self._handed = 0              # call seqs handed out
        self.total: Optional[int] = None   # taskunits in split(), once it is exhausted
        self.skipped = 0              # journaled taskunits not run again

    def pending(self) -> Iterator[Any]:
        """The data of taskunits not yet journaled; journaled ones are checked and skipped."""
        done = self.journal.done
        seq = -1
        for seq, data in enumerate(self._items):
            if seq in done:
                self.journal.check(seq, data)
                self.skipped += 1
                continue
            with self._lock:
                self._sent[self._handed] = (seq, data)
                self._handed += 1
                self._order.append(seq)
            yield data
        self.total = seq + 1
        beyond = [s for s in done if s >= self.total]
        if beyond:
            raise UsageError(f"journal {self.journal.path}: it holds taskunit {min(beyond)} but "
                             f"the input now has only {self.total}; delete the journal or run "
                             "without --resume")

    def accepted(self, call_seq: int, values: List[Any]) -> None:
        """Journal a contiguous run of results the call accepted, starting at `call_seq`."""
        with self._lock:
            entries = [(*self._sent.pop(call_seq + i), value) for i, value in enumerate(values)]
        self.journal.record_items(entries)

    def failed(self, call_seq: int) -> int:
        """Forget a taskunit that failed for good; returns its taskunit id."""
        with self._lock:
            entry = self._sent.pop(call_seq, None)
        return entry[0] if entry is not None else call_seq

    def taskunit_id(self, call_seq: int) -> int:
        """The taskunit id of a call seq still in flight (for log lines); itself otherwise."""
        with self._lock:
            entry = self._sent.get(call_seq)
        return entry[0] if entry is not None else call_seq

    def results(self, new: Iterable[Any]) -> Iterator[Any]:
        """Journaled and new results merged back into split() order."""
        done = self.journal.done
        position = 0
        for value in new:
            seq = self._order.popleft()   # pending() handed it out before its result came
            while position < seq:
                yield done[position][1]
                position += 1
            yield value
            position = seq + 1
        # The call is done, so pending() ran to the end and checked every journaled taskunit.
        total = self.total if self.total is not None else position
        while position < total:
            yield done[position][1]
            position += 1

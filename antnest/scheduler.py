"""Dispatch: calls are cut into batches, batches go to worker windows, results go back to calls.

    Call (job run, map, imap_unordered, submit)   lazily pulled, bounded by max_ahead
      └─ take(n) ─▶ Batch(first_seq, items) ─▶ Worker window (≤ `window` batches in flight)
                                                   │ RESULTS (partial prefixes of a batch)
      ◀─ accept(seq, values) ◀─ filled-bitmap check ◀┘  (each taskunit accepted exactly once)

A call is one class composed of the parts that differ by kind: a Source (Feed: an iterator
read on its own thread; Futures: submits) and a Delivery (Stream: in order or as they arrive,
to one reader; Futures: one future per taskunit). ordered_call, unordered_call and
future_call put them together.

A worker that vanishes gives back the unfinished suffix of every batch it held. The first of them
was running: its items are suspects, counted against --max-lost; the others are requeued as they
were. Batch sizes adapt per call so a batch takes about `target_batch_seconds` on a runner.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import pickle
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Protocol, Tuple

from antnest import codeship
from antnest.errors import (
    JobTimeout,
    NoHostsError,
    RemoteError,
    TaskError,
    TaskLost,
    TaskTimeout,
    UndecodableData,
    UnpicklableData,
    format_seconds,
)
from antnest.trace import Recorder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    """Failure and pacing knobs; the CLI flags and Cluster keyword arguments map onto these."""

    retries: int = 0                 # re-runs of a taskunit whose processor raised
    max_lost: int = 2                # re-runs of a taskunit that took its runner down
    task_timeout: Optional[float] = None
    keep_going: bool = False
    window: int = 2                  # batches in flight per worker
    speculate: bool = True           # copy stragglers onto idle workers; first result wins
    straggler_factor: float = 3.0    # "much longer" = this many times the median batch
    straggler_min_seconds: float = 1.0
    target_batch_seconds: float = 0.02
    max_batch_items: int = 8192
    max_batch_bytes: int = 4 << 20
    max_ahead: int = 1 << 18         # taskunits taken but not yet consumed, per call
    max_ahead_bytes: int = 64 << 20  # ... and their pickled size


_ids = itertools.count(1)
OUTPUT_BOUND = 8 << 10    # characters per second a running batch prints: output-bound, not copied


class Batch:
    """A contiguous run of a call's taskunits. Requeued parts share the root's `filled` map."""

    __slots__ = ("id", "call", "first_seq", "items", "filled", "base", "attempts", "lost",
                 "avoid", "started", "twins")

    def __init__(self, call: "Call", first_seq: int, items: list, filled: Optional[bytearray] = None,
                 base: int = 0, attempts: int = 0, lost: int = 0, avoid: frozenset = frozenset()):
        self.id = next(_ids)
        self.call = call
        self.first_seq = first_seq
        self.items = items
        self.filled = filled if filled is not None else bytearray(len(items))
        self.base = base            # where this batch starts inside `filled`
        self.attempts = attempts    # times its taskunit(s) raised already (single-item retries)
        self.lost = lost            # runners lost while running it
        self.avoid = avoid          # hosts to avoid (retry elsewhere when possible)
        self.started = 0.0          # when it reached the head of its worker's window
        self.twins: Optional[List["Batch"]] = None  # speculative copies, the original first

    def part(self, start: int, stop: Optional[int] = None, fresh: bool = False,
             **changes: Any) -> "Batch":
        """Items [start:stop] as a new batch; it shares this batch's exactly-once map unless
        `fresh` (then the caller marks the slots here as handed over)."""
        stop = len(self.items) if stop is None else stop
        fields: Dict[str, Any] = dict(attempts=self.attempts, lost=self.lost, avoid=self.avoid)
        fields.update(changes)
        if fresh:
            return Batch(self.call, self.first_seq + start, self.items[start:stop], **fields)
        return Batch(self.call, self.first_seq + start, self.items[start:stop], self.filled,
                     self.base + start, **fields)

    def unfinished(self) -> List[int]:
        """Indexes of items not yet accepted."""
        window = self.filled[self.base:self.base + len(self.items)]
        return [i for i, done in enumerate(window) if not done]

    def unfinished_parts(self) -> List["Batch"]:
        """The unfinished items as parts of contiguous runs: a taskunit already settled (a
        timed-out one failed or handed to its retry) is never sent again with its neighbours."""
        parts = []
        start = None
        for i in range(len(self.items) + 1):
            open_slot = i < len(self.items) and not self.filled[self.base + i]
            if open_slot and start is None:
                start = i
            elif not open_slot and start is not None:
                parts.append(self.part(start, i))
                start = None
        return parts


class _Feeder:
    """Reads a call's input on its own thread: a slow split() or a trickling stdin never
    holds the scheduler lock, and reading overlaps with dispatch. Bounded by max_ahead."""

    CHECK_EVERY = 1024

    def __init__(self, call: "Call", iterator: Iterator) -> None:
        self.call = call
        self.buffer: Deque[Any] = collections.deque()
        self.done = False
        self.error: Optional[BaseException] = None
        self.hungry = False
        self.read = 0       # items split() has produced so far
        self._iterator = iterator
        threading.Thread(target=self._run, name=f"antnest-input-{call.name}", daemon=True).start()

    def _run(self) -> None:
        call = self.call
        sched = call.scheduler
        append = self.buffer.append
        next_check = 1
        began = time.monotonic()
        held = 0.0   # time spent waiting for room, not reading: input_seconds leaves it out
        try:
            for count, item in enumerate(self._iterator, 1):
                append(item)
                self.read = count
                if self.hungry:
                    self.hungry = False
                    sched.pump()
                if count >= next_check:
                    if count - call.consumed >= call.ahead_limit():
                        waited = time.monotonic()
                        with sched.cond:  # results() notifies when it consumes (feeder_waiting)
                            while count - call.consumed >= call.ahead_limit() and \
                                    call.error is None and not call.stop_reading:
                                call.feeder_waiting = True
                                sched.cond.wait(1.0)
                            call.feeder_waiting = False
                        held += time.monotonic() - waited
                    if call.error is not None or call.stop_reading:
                        return
                    # big items (MiB chunks) are checked one by one, small ones in blocks
                    big = type(item) in (bytes, bytearray, str) and len(item) > 65536
                    next_check = count + (1 if big or call.sent_bytes_per_item > 65536
                                          else self.CHECK_EVERY)
        except Exception as exc:  # the job's split() or the caller's iterable raised
            self.error = exc
        finally:
            call.input_seconds = time.monotonic() - began - held
            self.done = True
            sched.pump()


@dataclass(frozen=True)
class Tally:
    """Where a call's taskunits are: the one count every summary, report and error uses.

    done + failed + running + waiting = read; `total` is the input's size when known (a sized
    split(), or the input ran out), else None (the rest of the input not read yet).
    """

    done: int          # results accepted (given or ready to give to the consumer)
    failed: int        # failed for good
    running: int       # sent (or requeued) and not finished
    waiting: int       # read from the input, not sent yet
    total: Optional[int]
    resumed: int = 0   # of `done`: taken from a journal, not run

    @property
    def not_started(self) -> Optional[int]:
        """Taskunits never sent: read and waiting, plus those not read, when that is known."""
        if self.total is None:
            return None
        return max(0, self.total - self.done - self.failed - self.running)

    def describe(self) -> str:
        """"75 taskunits done, 16 sent and not finished, 309 not started" (zeros left out)."""
        parts = [f"{self.done} taskunits done" + (f" ({self.resumed} from the journal)"
                                                  if self.resumed else "")]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.running:
            parts.append(f"{self.running} sent and not finished")
        if self.not_started is not None:
            if self.not_started:
                parts.append(f"{self.not_started} not started")
        else:
            if self.waiting:
                parts.append(f"{self.waiting} read and not started")
            parts.append("the rest of the input not read yet")
        return ", ".join(parts)


class Failure:
    """A taskunit that failed for good, kept in order for keep-going combines."""

    __slots__ = ("error",)

    def __init__(self, error: TaskError) -> None:
        self.error = error


class Journaling(Protocol):
    """What a job call tells its journal (antnest.journal.JournalFeed), scheduler lock held."""

    def accepted(self, seq: int, values: list) -> None: ...

    def failed(self, seq: int) -> int: ...   # the taskunit id in split() order


class Call:
    """One stream of taskunits sharing a function: a job run, a map, or a set of submits.

    A call is the machinery every kind shares (the function, batch sizes, counts, failure
    policy), composed with the two parts that differ by kind: its `source` (where taskunits
    come from: a Feed over an iterator, or the Futures of submits) and its `delivery` (where
    results go: a Stream read in input order or as they arrive, or the Futures). Build one
    with ordered_call, unordered_call or future_call.
    """

    def __init__(self, scheduler: "Scheduler", fn: Callable, source: "Source",
                 delivery: "Delivery", policy: Optional[Policy] = None, name: str = "",
                 setup: Optional[Callable[[], Any]] = None,
                 journal: Optional[Journaling] = None) -> None:
        self.scheduler = scheduler
        self.policy = policy or scheduler.policy
        self.source = source
        self.delivery = delivery
        self.journal = journal   # a job run's journal: results noted as they are accepted
        self.fn_id = next(_ids)
        # A job's setup() travels in the same pickle as its processor: they share globals.
        self.setup = setup is not None
        travels = fn if setup is None else (fn, setup, ())
        self.sources = codeship.local_sources()   # shipped to each runner before the first JOB
        # Pickled now at both protocols a host may read (3.6 and 3.7 stop at 4), and fn is not
        # kept: a call must not hold the submitted callable (and what a bound method's object
        # holds) alive after its futures are gone. Fails here when fn cannot travel.
        self._blobs = {protocol: codeship.dumps_function(travels, protocol)
                       for protocol in (5, 4)}
        self.name = name or getattr(fn, "__qualname__", repr(fn))
        self.next_seq = 0            # next taskunit id to hand out
        self.taken = 0
        self.consumed = 0
        self.feeder_waiting = False   # the input reader waits for consumed to move
        self.exhausted = False
        self.error: Optional[BaseException] = None   # ends the call (fail fast, cancel, no hosts)
        self.failures: List[TaskError] = []
        self.retried = 0
        self.seconds_per_item = 0.0
        self.bytes_per_item = 0.0        # pickled result size
        self.sent_bytes_per_item = 0.0   # pickled input size
        self.inflight = 0            # items in batches not yet fully accepted
        self.input_error: Optional[BaseException] = None
        self.host: Optional[str] = None  # set: only that host's runners take its taskunits
        self.raise_in_order = False  # map: a failure is raised in its place, after earlier results
        self.stop_reading = False
        self.input_seconds = 0.0     # spent reading the input (split()), for the run record
        self.durations: Deque[float] = collections.deque(maxlen=64)  # finished batches, s

    @property
    def futures(self) -> Optional["Futures"]:
        """The submits' futures when this is a submit call (Cluster.submit, on_each_host)."""
        delivery = self.delivery
        return delivery if isinstance(delivery, Futures) else None

    def tally(self, total: Optional[int] = None, resumed: int = 0) -> Tally:
        """The call's counts (scheduler lock held, or a consistent-enough read for progress).
        `total`, `resumed`: the job's input size and journaled taskunits, when the caller
        knows them."""
        failed = len(self.failures)
        running = max(0, self.inflight)
        done = max(0, self.taken - running - failed)
        read, input_done = self.source.progress(self)
        if total is None and (input_done or self.exhausted and self.error is None):
            total = read + resumed
        return Tally(done=done + resumed, failed=failed, running=running,
                     waiting=max(0, read - self.taken), total=total, resumed=resumed)

    def fn_blob(self, protocol: int) -> bytes:
        """The function pickled at a protocol the host reads (3.6 and 3.7 stop at 4)."""
        return self._blobs[min(5, max(4, protocol))]

    def median_batch_seconds(self) -> float:
        if len(self.durations) < 3:
            return 0.0
        ordered = sorted(self.durations)
        return ordered[len(ordered) // 2]

    # -- input side (scheduler lock held) ------------------------------------------------
    def batch_size(self) -> int:
        p = self.policy
        if self.seconds_per_item <= 0:
            size = 1  # nothing known yet: a slow task must not take a crowd with it
        else:
            size = int(p.target_batch_seconds / self.seconds_per_item) or 1
        per_item = max(self.bytes_per_item, self.sent_bytes_per_item)
        if per_item > 0:
            size = min(size, int(p.max_batch_bytes / per_item) or 1)
        return max(1, min(size, p.max_batch_items))

    def take(self) -> Optional[Batch]:
        """The next batch from the source, or None (nothing ready, or the call ended)."""
        if self.error is not None:
            return None
        items = self.source.take(self)
        if not items:
            return None
        batch = Batch(self, self.next_seq, items)
        self.next_seq += len(items)
        self.inflight += len(items)
        return batch

    def add(self, item: Any) -> Future:
        """A submit call: queue one taskunit; its future."""
        futures = self.futures
        if futures is None:
            raise TypeError(f"{self.name}: only a submit call takes taskunits one by one")
        future = futures.add(item)
        self.exhausted = False
        return future

    def ahead_limit(self) -> int:
        """How many taskunits may be read but not yet consumed: by count and by bytes."""
        per_item = max(self.bytes_per_item, self.sent_bytes_per_item)
        if per_item <= 0:
            return self.policy.max_ahead
        return max(1, min(self.policy.max_ahead, int(self.policy.max_ahead_bytes / per_item)))

    def learn_sent(self, items: int, payload_bytes: int) -> None:
        if items:
            per = payload_bytes / items
            old = self.sent_bytes_per_item
            self.sent_bytes_per_item = per if old <= 0 else 0.7 * old + 0.3 * per

    def learn(self, items: int, seconds: float, payload_bytes: int = 0) -> None:
        """Adapt the batch size from what a runner reported."""
        if items <= 0:
            return
        per_item = seconds / items
        self.seconds_per_item = per_item if self.seconds_per_item <= 0 else (
            0.7 * self.seconds_per_item + 0.3 * per_item)
        if payload_bytes:
            per = payload_bytes / items
            self.bytes_per_item = per if self.bytes_per_item <= 0 else 0.7 * self.bytes_per_item + 0.3 * per

    # -- output side (scheduler lock held) -----------------------------------------------
    def accept(self, seq: int, values: list) -> None:
        """Results of taskunits seq, seq+1, ..., each accepted once (the scheduler's check)."""
        if self.journal is not None:
            self.journal.accepted(seq, values)
        self.inflight -= len(values)
        self.delivery.accept(self, seq, values)

    def reject(self, seq: int, error: TaskError) -> None:
        """A taskunit failed for good."""
        if self.journal is not None:
            error.taskunit_id = self.journal.failed(seq)   # the id in split() order
        self.inflight -= 1
        self.failures.append(error)
        if self.raise_in_order:  # nothing more is read; what came before still arrives
            self.stop_reading = self.exhausted = True
            self.delivery.accept_failure(self, seq, error)
        elif not self.policy.keep_going:
            self.fail(error)
        else:
            self.delivery.accept_failure(self, seq, error)

    def fail(self, error: BaseException) -> None:
        """End the call's work with `error` (fail fast, cancel, no hosts): what that means is
        the delivery's (a stream ends; submits fail their futures and take new ones)."""
        self.delivery.fail(self, error)

    def end(self, error: BaseException) -> None:
        """End the call: nothing more is taken, readers see `error`."""
        if self.error is None:
            self.error = error
            self.exhausted = True
            self.source.close()
            self.scheduler.cond.notify_all()
            self.scheduler.abandon(self)
            self.scheduler.forget(self)

    def maybe_done(self) -> None:
        """Every taskunit read and settled: the delivery says what follows."""
        if self.exhausted and self.inflight == 0 and self.error is None:
            self.scheduler.cond.notify_all()
            self.delivery.finished(self)

    @property
    def done(self) -> bool:
        return self.error is not None or (self.exhausted and self.inflight == 0)

    def results(self, with_failures: bool = False, raise_failures: bool = False) -> Iterator[Any]:
        """A stream call's values, as its Stream gives them (see Stream.results)."""
        delivery = self.delivery
        if not isinstance(delivery, Stream):
            raise TypeError(f"{self.name}: a submit call's results are its futures")
        return delivery.results(self, with_failures, raise_failures)


class Source(Protocol):
    """Where a call's taskunits come from (scheduler lock held)."""

    def take(self, call: Call) -> Optional[list]:
        """Up to call.batch_size() items to send now; None or [] when none is ready."""

    def progress(self, call: Call) -> Tuple[int, bool]:
        """(items read so far, the input has ended), for the call's tally."""

    def close(self) -> None:
        """The call ended: let go of the input."""


class Delivery(Protocol):
    """Where a call's results go (scheduler lock held); inflight is counted by the call."""

    def accept(self, call: Call, seq: int, values: list) -> None: ...

    def accept_failure(self, call: Call, seq: int, error: TaskError) -> None: ...

    def fail(self, call: Call, error: BaseException) -> None: ...

    def finished(self, call: Call) -> None:
        """Every taskunit read and settled, no error."""


class Feed:
    """Source: an iterator (split(), a map's iterables), read on a _Feeder thread of its own
    once the call first asks, and bounded by the call's max_ahead."""

    def __init__(self, items: Iterable) -> None:
        self._input: Optional[Iterator] = iter(items)
        self._feeder: Optional[_Feeder] = None

    def take(self, call: Call) -> Optional[list]:
        if call.exhausted:
            return None
        if call.taken - call.consumed >= call.ahead_limit():
            return None
        if self._feeder is None:
            self._feeder = _Feeder(call, self._input or iter(()))
            self._input = None
        feeder = self._feeder
        buffer = feeder.buffer
        feeder.hungry = True  # before looking, so an item appended meanwhile still pumps
        if not buffer:
            if feeder.done and not buffer:
                call.exhausted = True
                if feeder.error is not None:
                    call.input_error = feeder.error
                    call.fail(feeder.error)
                else:
                    call.maybe_done()
            return None
        feeder.hungry = False
        size = call.batch_size()
        if not call.sent_bytes_per_item:  # nothing learned yet: big first items set the pace
            first = buffer[0]
            if type(first) in (bytes, bytearray, str) and len(first) > 65536:
                size = max(1, call.policy.max_batch_bytes // len(first))
        popleft = buffer.popleft
        items = [popleft() for _ in range(min(size, len(buffer)))]
        call.taken += len(items)
        return items

    def progress(self, call: Call) -> Tuple[int, bool]:
        feeder = self._feeder
        if feeder is None:
            return call.taken, False
        return feeder.read, feeder.done

    def close(self) -> None:
        self._input = None


class Stream:
    """Delivery to one reader, through results(): in input order (job runs, map, imap: a
    reorder buffer bounded by max_ahead) or as results arrive (imap_unordered)."""

    def __init__(self, ordered: bool = True) -> None:
        self.ordered = ordered
        self._pending: Dict[int, list] = {}   # ordered: chunks waiting for earlier ones
        self._ready: Deque[list] = collections.deque()
        self._next_out = 0

    def accept(self, call: Call, seq: int, values: list) -> None:
        if self.ordered:
            self._pending[seq] = values
            self._drain(call)
        else:
            self._ready.append(values)
            call.scheduler.cond.notify_all()
            call.maybe_done()

    def accept_failure(self, call: Call, seq: int, error: TaskError) -> None:
        if self.ordered:
            self._pending[seq] = [Failure(error)]
            self._drain(call)
        else:
            self._ready.append([Failure(error)])
            call.scheduler.cond.notify_all()

    def _drain(self, call: Call) -> None:
        moved = False
        while self._next_out in self._pending:
            chunk = self._pending.pop(self._next_out)
            self._next_out += len(chunk)
            self._ready.append(chunk)
            moved = True
        if moved:
            call.scheduler.cond.notify_all()
        call.maybe_done()

    def fail(self, call: Call, error: BaseException) -> None:
        call.end(error)

    def finished(self, call: Call) -> None:
        call.scheduler.forget(call)

    def results(self, call: Call, with_failures: bool = False,
                raise_failures: bool = False) -> Iterator[Any]:
        """Values; a Failure object stands for a failed taskunit when asked for, or its error
        is raised in its place (raise_failures)."""
        sched = call.scheduler
        while True:
            with sched.cond:
                while not self._ready:
                    if call.error is not None:
                        raise call.error
                    if call.done:
                        return
                    sched.wait(call)
                chunk = self._ready.popleft()
                throttled = call.taken - call.consumed >= call.policy.max_ahead
                call.consumed += len(chunk)
                if call.feeder_waiting:  # the input reader waits for room: there is some now
                    sched.cond.notify_all()
            if throttled:
                sched.pump()
            if len(chunk) == 1 and type(chunk[0]) is Failure:
                if raise_failures:
                    raise chunk.pop().error
                if with_failures:
                    yield chunk.pop()
                continue
            chunk.reverse()
            while chunk:  # popped, so a value read and dropped by the caller is freed at once
                yield chunk.pop()


class Futures:
    """Source and delivery of a submit call (Cluster.submit, on_each_host): one future per
    taskunit, fed from a queue. Such a call lives as long as its function is submitted: a
    failure settles the futures it holds and new submits still run."""

    def __init__(self) -> None:
        self._queue: Deque[Tuple[Any, Future]] = collections.deque()
        self._futures: Dict[int, Future] = {}   # call seq -> future, sent and not settled
        self.retired = False  # its function is gone: forgotten once its futures are settled

    def add(self, item: Any) -> Future:
        future: Future = Future()
        self._queue.append((item, future))
        return future

    def take(self, call: Call) -> Optional[list]:
        items: List[Any] = []
        while self._queue and len(items) < call.batch_size():
            item, future = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            self._futures[call.next_seq + len(items)] = future
            items.append(item)
        return items

    def progress(self, call: Call) -> Tuple[int, bool]:
        return call.taken, False

    def close(self) -> None:
        pass

    def accept(self, call: Call, seq: int, values: list) -> None:
        pop = self._futures.pop
        call.scheduler.settle([(pop(seq + offset), value, None)
                               for offset, value in enumerate(values)])
        self.maybe_retire(call)

    def accept_failure(self, call: Call, seq: int, error: TaskError) -> None:
        call.scheduler.settle([(self._futures.pop(seq), None, as_raisable(error))])
        self.maybe_retire(call)

    def fail(self, call: Call, error: BaseException) -> None:
        actions: List[Tuple[Future, Any, BaseException]] = [
            (future, None, error) for future in self._futures.values()]
        self._futures.clear()
        while self._queue:
            _, future = self._queue.popleft()
            actions.append((future, _START, error))
        call.inflight = 0
        call.scheduler.settle(actions)
        self.maybe_retire(call)

    def finished(self, call: Call) -> None:
        pass  # lives as long as its function is submitted

    def cancel_pending(self, call: Call) -> List[Future]:
        """Take the queued futures out; the caller cancels them outside the lock."""
        futures = [future for _, future in self._queue]
        self._queue.clear()
        self.maybe_retire(call)
        return futures

    def pending(self) -> List[Future]:
        """Every future not settled yet: sent ones, then queued ones."""
        return list(self._futures.values()) + [future for _, future in self._queue]

    def idle(self, call: Call) -> bool:
        return not self._queue and not self._futures and call.inflight == 0

    def maybe_retire(self, call: Call) -> None:
        if self.retired and self.idle(call):
            call.scheduler.forget(call)


def ordered_call(scheduler: "Scheduler", fn: Callable, items: Iterable, *, name: str = "",
                 setup: Optional[Callable[[], Any]] = None,
                 journal: Optional[Journaling] = None) -> Call:
    """Results in input order: a job run, Cluster.map and imap."""
    return Call(scheduler, fn, Feed(items), Stream(ordered=True), name=name, setup=setup,
                journal=journal)


def unordered_call(scheduler: "Scheduler", fn: Callable, items: Iterable, *,
                   name: str = "") -> Call:
    """Results as they arrive: imap_unordered."""
    return Call(scheduler, fn, Feed(items), Stream(ordered=False), name=name)


def future_call(scheduler: "Scheduler", fn: Callable, *, name: str = "",
                policy: Optional[Policy] = None) -> Call:
    """A future per taskunit, added one by one (Call.add): submit and on_each_host. Every
    failure is its own future's, so the call keeps going."""
    futures = Futures()
    policy = dataclasses.replace(policy or scheduler.policy, keep_going=True)
    return Call(scheduler, fn, futures, futures, policy=policy, name=name)

_START = object()  # settle: the future was still pending; start it first (it may be cancelled)


class Settler:
    """Sets futures' outcomes outside the scheduler lock, on threads of its own: done-callbacks
    may take their time, submit more work and wait for it (a stuck one gets company: see grow)."""

    GROW_AFTER = 0.2  # seconds every settler thread has been busy with one callback

    def __init__(self) -> None:
        self._queue: Deque[Tuple[Future, Any, Optional[BaseException]]] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._busy_since: Dict[int, float] = {}   # thread id -> when its current action began
        self._idle = 0

    def put(self, actions: list) -> None:
        if not actions:
            return
        with self._cond:
            self._queue.extend(actions)
            if self._idle:
                self._cond.notify()
            elif not self._busy_since:
                self._start()

    def grow(self) -> None:
        """Called now and then (the cluster's monitor): work waits and every thread is stuck."""
        now = time.monotonic()
        with self._cond:
            if self._queue and not self._idle and all(
                    now - since > self.GROW_AFTER for since in self._busy_since.values()):
                self._start()

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="antnest-settle", daemon=True)
        self._busy_since[id(thread)] = time.monotonic()
        thread.start()

    def _run(self) -> None:
        me = id(threading.current_thread())
        while True:
            with self._cond:
                while not self._queue:
                    self._idle += 1
                    woken = self._cond.wait(5.0)
                    self._idle -= 1
                    if not woken and not self._queue:
                        del self._busy_since[me]  # idle a while: `put` starts a new one
                        return
                future, value, error = self._queue.popleft()
                self._busy_since[me] = time.monotonic()
            try:
                if value is _START:
                    if future.set_running_or_notify_cancel():
                        future.set_exception(error)
                elif error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(value)
            except Exception:  # InvalidStateError: settled elsewhere already (a race with
                log.debug("future settled twice", exc_info=True)  # cancel or shutdown)
            del future, value, error


def _first_line(error: Optional[BaseException]) -> str:
    if error is None:
        return "finished"
    return (str(error).splitlines() or [""])[0] or type(error).__name__


def progress_of(call: Optional[Call], tally: Optional[Tally] = None) -> str:
    """What a call had done when it stopped, for error messages."""
    if tally is None:
        if call is None or call.next_seq == 0:
            return ""
        tally = call.tally()
    return "; " + tally.describe()


class RemoteTraceback(Exception):
    """The remote traceback, chained as __cause__ like concurrent.futures does."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def as_raisable(error: TaskError) -> BaseException:
    """The remote exception as its own type when it could be rebuilt, else the TaskError."""
    exc = getattr(error, "exception", None)
    if exc is None:
        return error
    exc.__cause__ = RemoteTraceback(f'\n"""\n{error.remote_traceback.rstrip()}\n"""')
    if hasattr(exc, "add_note") and not getattr(exc, "_antnest_noted", False):
        exc.add_note(f"(taskunit {error.taskunit_id} on {error.host})")
        exc._antnest_noted = True
    exc.antnest_taskunit = error.taskunit_id
    exc.antnest_host = error.host
    return exc


def build_task_error(batch: Batch, index: int, host: str, desc: tuple) -> TaskError:
    """Turn the runner's (blob, type name, message, traceback) into a TaskError."""
    blob, type_name, message, text = desc
    exc = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except BaseException as load_error:  # even SystemExit: the text still tells
            log.debug("cannot rebuild remote %s here: %s", type_name, load_error)
            exc = None
    seq = batch.first_seq + index
    data = batch.items[index]
    problem = f"{type_name.split('.', 1)[-1] if type_name.startswith('builtins.') else type_name}: {message}"
    attempts = batch.attempts + 1
    if exc is None:
        err: TaskError = RemoteError(seq, host, problem, data=data, remote_traceback=text,
                                     attempts=attempts, type_name=type_name)
    else:
        err = TaskError(seq, host, problem, data=data, remote_traceback=text, attempts=attempts)
    err.exception = exc
    return err


class Scheduler:
    """Owns the work queue; workers call in with frames, calls call in for results."""

    def __init__(self, policy: Policy,
                 no_hosts_error: Optional[Callable[[Optional[Call]], NoHostsError]] = None) -> None:
        self.policy = policy
        self._no_hosts_error = no_hosts_error
        self.cond = threading.Condition()
        self.workers: List[Any] = []
        self.calls: List[Call] = []
        self.requeued: Deque[Batch] = collections.deque()
        self._rr = 0
        self.closed: Optional[BaseException] = None
        self.starting = 0            # runners booting; no worker and none starting: no way on
        self.one_shot = False        # the cluster shuts down after this call: no restarts
        self.stats: "collections.Counter[str]" = collections.Counter()
        self.settler = Settler()
        self.recorder = Recorder()   # the run record (antnest.trace); cheap, always on

    def settle(self, actions: list) -> None:
        """Futures to resolve; done outside this lock (callbacks must not run under it)."""
        self.settler.put(actions)

    # -- registration --------------------------------------------------------------------
    def add_call(self, call: Call) -> Call:
        with self.cond:
            if self.closed is not None:
                raise self.closed
            self.calls.append(call)
            self._check_alive()
        self.pump()
        return call

    def forget(self, call: Call) -> None:
        if call in self.calls:
            self.calls.remove(call)
            for worker in self.workers:  # the runners drop its function with the next frame
                worker.to_forget.append(call.fn_id)

    def booting(self, count: int = 1) -> None:
        with self.cond:
            self.starting += count

    def boot_failed(self) -> None:
        with self.cond:
            self.starting -= 1
            self._check_alive()
            self.cond.notify_all()

    def add_worker(self, worker: Any) -> None:
        with self.cond:
            self.starting -= 1
            self.workers.append(worker)
            self.cond.notify_all()
        self.pump()

    def wait(self, call: Call, timeout: float = 1.0) -> None:
        """Wait (lock held) for progress; notices a cluster with no way left to make any."""
        self._check_alive()
        if call.error is None:
            self.cond.wait(timeout)

    def _check_alive(self) -> None:
        if self.closed is not None:
            for call in list(self.calls):
                call.fail(self.closed)
            return
        if not self.workers and self.starting <= 0:
            for call in list(self.calls):
                call.fail(self.no_hosts_error(call))

    def no_hosts_error(self, call: Optional[Call] = None) -> NoHostsError:
        """The error calls end with when no runner is left; the cluster names the hosts."""
        if self._no_hosts_error is not None:
            return self._no_hosts_error(call)
        return NoHostsError([], "every host is lost or failed to start" + progress_of(call))

    # -- dispatch ------------------------------------------------------------------------
    def pump(self) -> None:
        """Fill every worker's window; sends happen outside the lock, in order per worker."""
        touched = []
        with self.cond:
            if not self.workers or self.closed is not None:
                return
            count = len(self.workers)
            self._rr = (self._rr + 1) % count
            batch = None
            for i in range(count):
                worker = self.workers[(self._rr + i) % count]
                if not worker.accepting or len(worker.inflight) >= self.policy.window:
                    continue
                added = False
                while len(worker.inflight) < self.policy.window:
                    batch = self._next_batch(worker)
                    if batch is None:
                        break
                    if not worker.inflight:
                        batch.started = time.monotonic()
                    worker.inflight[batch.id] = batch
                    worker.outbox.append(batch)
                    added = True
                if added:
                    touched.append(worker)
                if batch is None and not self.requeued and \
                        not any(call.host is not None for call in self.calls):
                    break  # no work for this worker means none for the others either
        for worker in touched:
            worker.flush_outbox()

    def _next_batch(self, worker: Any) -> Optional[Batch]:
        for _ in range(len(self.requeued)):
            batch = self.requeued.popleft()
            if batch.call.error is not None:
                continue
            pinned = batch.call.host
            if pinned is not None and pinned != worker.host_name or pinned is None and (
                    worker.host_name in batch.avoid and self._someone_else_can(batch)):
                self.requeued.append(batch)
                continue
            return batch
        calls = self.calls
        for i in range(len(calls)):
            call = calls[(self._rr + i) % len(calls)]
            if call.host is not None and call.host != worker.host_name:
                continue
            taken = call.take()
            if taken is not None:
                return taken
        return None

    def _someone_else_can(self, batch: Batch) -> bool:
        return any(w.host_name not in batch.avoid and w.accepting for w in self.workers)

    # -- frames from workers -------------------------------------------------------------
    def on_results(self, worker: Any, record: tuple, payload_size: int) -> int:
        """Take a RESULTS frame; returns how many of its values were accepted (not dropped
        as duplicates or as results of an ended call): what the host's `done` counts."""
        batch_id, offset, values, errors, elapsed = record
        accepted = 0
        with self.cond:
            batch = worker.inflight.get(batch_id)
            if batch is None:
                return 0
            call = batch.call
            n = len(values)
            call.learn(n, elapsed, payload_size)
            self.recorder.batch_results(batch_id, payload_size, n - len(errors))
            lo = batch.base + offset
            if call.error is not None:  # the call ended: drop the values, free the window
                batch.filled[lo:lo + n] = b"\x01" * n
            else:
                if not errors and batch.filled.find(1, lo, lo + n) == -1:
                    batch.filled[lo:lo + n] = b"\x01" * n
                    call.accept(batch.first_seq + offset, values)
                    accepted = n
                else:
                    accepted = self._accept_slow(worker, batch, offset, values, errors)
            if batch.filled.find(0, batch.base, batch.base + len(batch.items)) == -1:
                self._finished(worker, batch)
            self.stats["results"] += n
            if accepted:  # counted before anyone woken by these results looks at the host
                worker.group.state.done += accepted
        self.pump()
        return accepted

    def _finished(self, worker: Any, batch: Batch) -> None:
        now = time.monotonic()
        del worker.inflight[batch.id]
        if batch.started:
            batch.call.durations.append(now - batch.started)
        self.recorder.batch_finished(batch, batch.started)
        for head in worker.inflight.values():
            head.started = now
            break
        if batch.twins:
            self._stop_losers(batch)

    def _stop_losers(self, winner: Batch) -> None:
        """A speculative race is over: stop the copies still running elsewhere."""
        for twin in winner.twins or ():
            if twin is winner:
                continue
            for worker in self.workers:
                if twin.id in worker.inflight:
                    head = next(iter(worker.inflight))
                    if head == twin.id:
                        worker.culprit_known = True
                        worker.abort("a speculative copy finished first")
                    break

    def speculate(self) -> None:
        """When the queue is dry and workers idle, copy stragglers onto them."""
        touched = []
        with self.cond:
            if not self.policy.speculate or self.requeued or self.closed is not None:
                return
            if any(not call.exhausted for call in self.calls if call.futures is None):
                return
            idle = [w for w in self.workers if w.accepting and not w.inflight]
            if not idle:
                return
            now = time.monotonic()
            stragglers = []
            for worker in self.workers:
                if not worker.inflight:
                    continue
                batch = next(iter(worker.inflight.values()))
                if batch.twins is not None or not batch.started or batch.call.error is not None \
                        or batch.call.host is not None:
                    continue
                running = now - batch.started
                timeout = batch.call.policy.task_timeout
                if timeout and running > timeout / 2:
                    continue  # the task timeout will settle it; a copy would be an extra try
                output_of = getattr(worker, "output_of", None)
                if output_of is not None and output_of(batch.id) >= OUTPUT_BOUND * running:
                    continue  # slow because its output is: a copy would print it all again
                median = batch.call.median_batch_seconds()
                if median and running > max(self.policy.straggler_factor * median,
                                            self.policy.straggler_min_seconds):
                    stragglers.append((running, worker, batch))
            stragglers.sort(key=lambda entry: -entry[0])
            for running, owner, batch in stragglers:
                others = [w for w in idle if w.host_name != owner.host_name] or idle
                if not others:
                    break
                target = others[0]
                idle.remove(target)
                todo = batch.unfinished()
                if not todo:
                    continue
                copy = batch.part(todo[0])
                batch.twins = copy.twins = [batch, copy]
                copy.started = now
                target.inflight[copy.id] = copy
                target.outbox.append(copy)
                touched.append(target)
                self.stats["speculated"] += 1
                log.info("taskunits %d.. run %s on %s (median %s): copying them to %s",
                         batch.first_seq + todo[0], format_seconds(running), owner.label,
                         format_seconds(batch.call.median_batch_seconds()), target.label)
        for worker in touched:
            worker.flush_outbox()

    def _accept_slow(self, worker: Any, batch: Batch, offset: int, values: list,
                     errors: dict) -> int:
        call = batch.call
        run_start = None
        accepted = 0
        for i in range(offset, offset + len(values) + 1):
            ok = i < offset + len(values) and i not in errors and not batch.filled[batch.base + i]
            if ok and run_start is None:
                run_start = i
            if not ok and run_start is not None:
                batch.filled[batch.base + run_start:batch.base + i] = b"\x01" * (i - run_start)
                call.accept(batch.first_seq + run_start, values[run_start - offset:i - offset])
                accepted += i - run_start
                run_start = None
            if i in errors and not batch.filled[batch.base + i]:
                error = build_task_error(batch, i, worker.host_name, errors[i])
                self._task_failed(worker, batch, i, error)
        return accepted

    def _task_failed(self, worker: Any, batch: Batch, index: int, error: TaskError) -> None:
        call = batch.call
        self.recorder.taskunit_failed(batch.id, error.taskunit_id, error.problem,
                                      isinstance(error, TaskTimeout))
        attempts = batch.attempts + 1
        if attempts <= call.policy.retries and call.error is None:
            retry = batch.part(index, index + 1, fresh=True, attempts=attempts,
                               avoid=batch.avoid | {worker.host_name})
            self.requeued.append(retry)
            batch.filled[batch.base + index] = 1  # now owned by `retry` alone
            call.retried += 1
            self.stats["retried"] += 1
            log.warning("taskunit %d failed on %s (%s); retry %d of %d", error.taskunit_id,
                        worker.host_name, error.problem, attempts, call.policy.retries)
            return
        batch.filled[batch.base + index] = 1
        self.stats["failed"] += 1
        going_on = call.policy.keep_going and call.error is None
        call.reject(batch.first_seq + index, error)   # (sets the id in split() order)
        if going_on and call.futures is None:  # the run goes on: say it now
            log.warning("taskunit %d failed on %s: %s", error.taskunit_id, worker.host_name,
                        error.problem)
            if error.remote_traceback:   # the log file keeps the whole story (INFO)
                log.info("taskunit %d: remote traceback:\n%s", error.taskunit_id,
                         error.remote_traceback.rstrip())

    def on_timeout(self, worker: Any, batch_id: int, index: int, elapsed: float) -> None:
        """The runner stopped a taskunit past --task-timeout and is exiting."""
        with self.cond:
            worker.culprit_known = True
            batch = worker.inflight.get(batch_id)
            if batch is None or batch.filled[batch.base + index]:
                return
            seq = batch.first_seq + index
            error = TaskTimeout(seq, worker.host_name,
                                f"ran longer than the task timeout of "
                                f"{format_seconds(batch.call.policy.task_timeout or 0)} (stopped "
                                f"after {format_seconds(elapsed)}); its runner was stopped",
                                data=batch.items[index], attempts=batch.attempts + 1)
            error.exception = None
            if batch.call.error is None:
                self._task_failed(worker, batch, index, error)
            else:
                batch.filled[batch.base + index] = 1

    def on_lost(self, worker: Any, reason: str, blame: bool, will_restart: bool) -> None:
        """Give back every unfinished taskunit of a vanished worker."""
        with self.cond:
            if worker in self.workers:
                self.workers.remove(worker)
            if will_restart:
                self.starting += 1
            batches = list(worker.inflight.values())
            worker.inflight.clear()
            worker.outbox.clear()
            for position, batch in enumerate(batches):
                self.recorder.batch_lost(batch, batch.started, reason,
                                         cancelled=batch.call.error is not None)
                if batch.call.error is not None:
                    continue
                parts = batch.unfinished_parts()
                if not parts:
                    continue
                if position == 0 and blame and not worker.culprit_known:
                    for part in parts:
                        self._blame(worker, part, reason)
                else:
                    self.requeued.extend(parts)
            self.stats["lost"] += 1
            self._check_alive()
            self.cond.notify_all()
        self.pump()

    def _blame(self, worker: Any, batch: Batch, reason: str) -> None:
        """The running batch took its runner down: its items become single suspects."""
        for index in range(len(batch.items)):
            if batch.filled[batch.base + index]:
                continue
            single = batch.part(index, index + 1, lost=batch.lost + 1,
                                avoid=batch.avoid | {worker.host_name})
            if single.lost > batch.call.policy.max_lost and len(batch.items) == 1:
                error = TaskLost(single.first_seq, worker.host_name,
                                 f"killed {single.lost} runners ({reason}); not run again "
                                 f"(--max-lost {batch.call.policy.max_lost})",
                                 data=single.items[0], attempts=single.lost)
                error.exception = None
                batch.filled[batch.base + index] = 1
                self.stats["failed"] += 1
                batch.call.reject(single.first_seq, error)
                continue
            self.requeued.append(single)

    def abandon(self, call: Call) -> None:
        """A call ended early (failed fast, timed out, its reader left): stop the runners still
        busy with its batches, so the next call does not wait behind dead work. Their other
        batches go back to the queue as for any lost runner; nothing is blamed."""
        if self.closed is not None or self.one_shot:
            return  # everything is being stopped anyway, or will be once this call returns
        busy = [worker for worker in self.workers
                if any(batch.call is call for batch in worker.inflight.values())]
        if busy:  # one line for the event; each runner's stop is a debug line
            log.info("%s ended (%s): stopping the %d runner(s) still busy with it", call.name,
                     _first_line(call.error), len(busy))
        for worker in busy:
            worker.culprit_known = True
            worker.abort(f"its batches belong to a call that ended ({call.name})")

    def unsendable(self, worker: Any, batch: Batch, exc: Exception) -> None:
        """A batch whose data cannot be pickled: its taskunits fail, nothing else does."""
        with self.cond:
            worker.inflight.pop(batch.id, None)
            if len(batch.items) > 1:  # find the culprit: the others go on one by one
                for index in batch.unfinished():
                    self.requeued.append(batch.part(index, index + 1))
                return
            for index in batch.unfinished():
                seq = batch.first_seq + index
                error = UnpicklableData(seq, "master", f"its data cannot be pickled: "
                                        f"{type(exc).__name__}: {exc}", data=batch.items[index])
                error.__cause__ = exc
                error.exception = None
                batch.filled[batch.base + index] = 1
                self.stats["failed"] += 1
                batch.call.reject(seq, error)

    def on_undecodable(self, worker: Any, head: Optional[tuple], error: Any, where: str) -> None:
        """A batch's data did not unpickle on its runner (`error` is the runner's description),
        or a RESULTS record did not unpickle here (`error` is the exception). The taskunits are
        tried one by one; one that alone does not decode fails with UndecodableData."""
        with self.cond:
            if head is None:  # not even the batch id could be read: the batch running there
                batch, offset = next(iter(worker.inflight.values()), None), 0
            else:
                batch, offset = worker.inflight.get(head[0]), head[1]
            if batch is None:
                return
            todo = [i for i in batch.unfinished() if i >= offset]
            if batch.call.error is None and len(todo) > 1:
                for index in todo:
                    self.requeued.append(batch.part(index, index + 1, fresh=True))
                    batch.filled[batch.base + index] = 1
            elif todo:
                index = todo[0]
                seq = batch.first_seq + index
                if isinstance(error, BaseException):
                    import traceback

                    text = "".join(traceback.format_exception(type(error), error,
                                                              error.__traceback__))
                    what = f"its result cannot be unpickled on the master: " \
                           f"{type(error).__name__}: {error}"
                else:
                    _blob, type_name, message, text = error
                    what = f"its data cannot be unpickled on {where}: " \
                           f"{type_name.replace('builtins.', '')}: {message}"
                failure = UndecodableData(seq, where, what, data=batch.items[index],
                                          remote_traceback=text)
                failure.exception = None
                batch.filled[batch.base + index] = 1
                if batch.call.error is None:
                    self.stats["failed"] += 1
                    batch.call.reject(seq, failure)
            if batch.filled.find(0, batch.base, batch.base + len(batch.items)) == -1:
                self._finished(worker, batch)
        self.pump()

    # -- shutdown ------------------------------------------------------------------------
    def close(self, error: BaseException) -> None:
        with self.cond:
            if self.closed is None:
                self.closed = error
            for call in list(self.calls):
                call.fail(error)
            self.cond.notify_all()

    def timeout_error(self, seconds: float, call: Call, tally: Optional[Tally] = None) -> JobTimeout:
        tally = tally or call.tally()
        return JobTimeout(seconds, tally.done, tally.running + (tally.not_started or 0),
                          detail=tally.describe())

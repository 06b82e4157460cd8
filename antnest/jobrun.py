"""JobRun: the state of one Cluster.run, from split() to combine(), in one object.

The Cluster holds a reference to the current (or last) run only so that what is said about
it from outside the run (the progress line, the timeout and no-hosts messages, the interrupt
summary and the report) reads one Tally; nothing of the run lives on the executor itself.

    Cluster.run ─▶ JobRun(call = ordered_call(processor, split() [minus the journal]))
                     ├─ combine(results in order, failures) ─▶ value | JobFailed
                     └─ tally() / counts() / bytes_done() ◀─ progress, report, messages
"""
from __future__ import annotations

import os
import stat
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional

from antnest import job as job_module
from antnest.errors import AntnestError, JobCodeError, JobFailed, UsageError
from antnest.scheduler import Call, Failure, Scheduler, Tally, ordered_call

if TYPE_CHECKING:
    from antnest.errors import TaskError
    from antnest.journal import Journal, JournalFeed
    from antnest.progress import Progress


class JobRun:
    """One run of a job on a cluster's scheduler: its call, journal feed, input size and
    gauge, and the failures combine() was told about."""

    def __init__(self, scheduler: Scheduler, job: job_module.Job, plan: job_module.Plan,
                 journal: Optional["Journal"] = None) -> None:
        self.scheduler = scheduler
        self.job = job
        self.plan = plan
        self.total = _length(plan.items)   # taskunits, when split() returned something sized
        self.feed: Optional["JournalFeed"] = None
        if journal is not None:
            from antnest.journal import JournalFeed

            self.feed = JournalFeed(journal, plan.items)
            self.call: Call = ordered_call(scheduler, plan.processor, self.feed.pending(),
                                           name=job.name, setup=plan.setup, journal=self.feed)
        else:
            self.call = ordered_call(scheduler, plan.processor, plan.items, name=job.name,
                                     setup=plan.setup)
        self.input = _InputGauge(plan.source)
        self.failures: List["TaskError"] = []
        self.waiting = 0.0   # time combine() spent waiting for results, not combining

    # -- what is said about the run ------------------------------------------------------
    def tally(self) -> Tally:
        """Where the run's taskunits are: the one count every message and the report use."""
        return self.call.tally(total=self.total,
                               resumed=self.feed.skipped if self.feed is not None else 0)

    def counts(self) -> Dict[str, Any]:
        """What the report and the last log line say: done, failed, retried, resumed,
        in_flight, not_started, failures (TaskErrors)."""
        tally = self.tally()
        return dict(done=tally.done, failed=tally.failed, retried=self.call.retried,
                    resumed=tally.resumed, in_flight=tally.running,
                    not_started=tally.not_started, failures=list(self.call.failures))

    def bytes_done(self, done: int) -> Optional[int]:
        """How much of an input file `done` taskunits stand for, when the input is a file."""
        if not self.input.size:
            return None
        return self.input.consumed(done, self.call.taken)

    def expire(self, seconds: float) -> None:
        """The run's --timeout passed: the call ends with JobTimeout, counts in its message."""
        with self.scheduler.cond:
            self.call.fail(self.scheduler.timeout_error(seconds, self.call, self.tally()))

    # -- running it ----------------------------------------------------------------------
    def combine(self, keep_going: bool, timeout: Optional[float] = None,
                shown: Optional["Progress"] = None) -> Any:
        """Feed the results to combine() as they come; its value, or the error that ended the
        run (JobCodeError for split() and combine(), JobFailed for kept-going failures,
        JobTimeout past `timeout`). `shown`, the progress line, is closed at the end."""
        call, plan, job = self.call, self.plan, self.job
        recorder = self.scheduler.recorder
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, self.expire, (timeout,))
            timer.daemon = True
            timer.start()
        combine_began: Optional[float] = None
        try:
            self.scheduler.add_call(call)
            combine_began = time.monotonic()
            try:
                value = plan.combine(self._successes(keep_going), self.failures)
            except (AntnestError, BrokenPipeError):  # ours, or the output's reader left
                raise
            except Exception as exc:
                where = "split()" if exc is call.input_error else "combine()"
                raise JobCodeError(job.name, where, exc) from exc
            # combine() may stop reading early; the call must still have ended cleanly.
            if call.error is not None:
                if call.error is call.input_error and not isinstance(call.error, AntnestError):
                    raise JobCodeError(job.name, "split()", call.error) from call.error
                raise call.error
        finally:
            if timer is not None:
                timer.cancel()
            recorder.input_seconds = call.input_seconds
            if combine_began is not None:
                recorder.combine_seconds = max(0.0, time.monotonic() - combine_began -
                                               self.waiting)
            recorder.phases["combine_end"] = round(recorder.now(), 4)
            if shown is not None:
                shown.close()
            plan.closer()
            with self.scheduler.cond:
                if not call.done:
                    call.fail(UsageError("combine() stopped reading results"))
        if self.failures:
            raise JobFailed(self.failures, total=call.taken)
        return value

    def _successes(self, keep_going: bool) -> Iterator[Any]:
        """The values combine() reads, in order; failures go to self.failures (and inline
        too, for a job that asked for them there)."""
        values: Iterator[Any] = self.call.results(with_failures=keep_going)
        if self.feed is not None:  # journaled results back in their places
            values = self.feed.results(values)
        clock = time.monotonic
        values = iter(values)
        inline = self.plan.failures_inline
        failures = self.failures
        while True:
            asked = clock()
            try:
                value = next(values)
            except StopIteration:
                self.waiting += clock() - asked
                return
            self.waiting += clock() - asked
            if type(value) is Failure:
                failures.append(value.error)
                if not inline:
                    continue
            yield value


class _InputGauge:
    """How much of an input file the finished taskunits stand for. split() reads ahead of
    the work, so the read position is scaled by done / read: bytes per taskunit so far."""

    def __init__(self, source: Any) -> None:
        self.fd: Optional[int] = None
        self.size: Optional[int] = None
        try:
            fd = source.fileno() if source is not None else None
            if fd is not None:
                info = os.fstat(fd)
                if stat.S_ISREG(info.st_mode) and info.st_size > 0:
                    self.fd, self.size = fd, info.st_size
        except (AttributeError, OSError, ValueError):
            pass

    def consumed(self, done: int, taken: int) -> int:
        if self.fd is None or not self.size:
            return 0
        try:
            position = os.lseek(self.fd, 0, os.SEEK_CUR)
        except OSError:
            return 0
        if taken <= 0:
            return 0
        if position >= self.size and done >= taken:
            return self.size
        return min(self.size, int(position * done / taken))


def _length(items: Any) -> Optional[int]:
    """How many taskunits, when split() returned something sized (a list); else None."""
    try:
        return len(items)
    except TypeError:
        return None

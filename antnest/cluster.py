"""Cluster: the hosts' runners as a concurrent.futures Executor, warm for the cluster's life.

Everything else (the CLI, antnest.run) is built on it: a job run is an ordered call whose
results stream into combine().
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
import weakref
from concurrent.futures import FIRST_COMPLETED, Executor, Future
from concurrent.futures import wait as futures_wait
from typing import (IO, TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sequence, Tuple, Union)

from antnest import bootstrap, codeship, environment, runner
from antnest import inventory as inventory_module
from antnest import job as job_module
from antnest.dispatch import Dispatcher
from antnest.errors import (
    AntnestError,
    ForkedCluster,
    HostError,
    NoHostsError,
    RunnerLost,
    TaskError,
    UsageError,
    format_seconds,
)
from antnest.host import LOCAL, Host
from antnest.jobrun import JobRun
from antnest.limits import raise_open_files_limit
from antnest.scheduler import (
    Call,
    Policy,
    Scheduler,
    Tally,
    as_raisable,
    future_call,
    ordered_call,
    progress_of,
    unordered_call,
)
from antnest.transport import SshOptions
from antnest.worker import HostGroup, HostState

if TYPE_CHECKING:
    from antnest.journal import Journal
    from antnest.progress import Progress

log = logging.getLogger(__name__)

KEEPALIVE = 5.0       # seconds between PINGs to idle runners
MONITOR_EVERY = 0.25  # seconds between straggler checks

PathLike = Union[str, "os.PathLike[str]"]
STRONG_SUBMITS = 64   # functions that take no weak reference (builtins): kept this many at most

_live: "weakref.WeakSet[Cluster]" = weakref.WeakSet()
_interpreter_exiting = False


def _python_exit() -> None:
    """At interpreter exit, work still pending is waited for (as concurrent.futures does), then
    the runners stop; submit() raises from then on."""
    global _interpreter_exiting
    _interpreter_exiting = True
    for cluster in list(_live):
        cluster.shutdown(wait=True)
    for cluster in list(_live):
        cluster._join_closer()


def _after_fork_in_child() -> None:
    """The runners, threads and pipes belong to the parent: every inherited cluster is broken."""
    for cluster in list(_live):
        cluster._broken_by_fork()


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]  # before daemon threads stop
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class HostResults(Dict[str, Any]):
    """What on_each_host returns: {host name: result or exception}, in inventory order, with
    the hosts that answered and those that did not (as Fabric's GroupResult)."""

    @property
    def succeeded(self) -> Dict[str, Any]:
        return {name: value for name, value in self.items() if not isinstance(value, BaseException)}

    @property
    def failed(self) -> Dict[str, BaseException]:
        return {name: value for name, value in self.items() if isinstance(value, BaseException)}


class _NotShared:
    """map(..., shared=) not given (None is a value one may share)."""

    def __repr__(self) -> str:
        return "NOT_SHARED"


NOT_SHARED: Any = _NotShared()


class Cluster(Executor):
    """Runners on the inventory's hosts (or local processes when no hosts are given).

    >>> with Cluster("inventory/hosts.yaml") as cluster:
    ...     squares = list(cluster.map(pow, range(10), [2] * 10))
    """

    def __init__(
        self,
        inventory: Optional[PathLike] = None,
        *,
        hosts: Union[None, str, Sequence[Union[str, Host]]] = None,
        limit: Optional[str] = None,
        procs: Optional[int] = None,
        ssh_config: Optional[PathLike] = None,
        known_hosts: Sequence[PathLike] = (),
        accept_new_host_keys: bool = False,
        allow_unchecked_host_keys: bool = False,
        ssh_client: str = "paramiko",
        connect_timeout: float = 10.0,
        compress: bool = False,
        retries: int = 0,
        max_lost: int = 2,
        task_timeout: Optional[float] = None,
        keep_going: bool = False,
        speculate: bool = True,
        env: Optional[Mapping[str, str]] = None,
        workdir: Optional[str] = None,
        initializer: Optional[Callable[..., Any]] = None,
        initargs: Tuple[Any, ...] = (),
        forks: Optional[int] = None,
        max_procs_total: Optional[int] = None,
        forward_modules: Union[bool, Sequence[str]] = True,
        relay: Optional[str] = None,
    ) -> None:
        if ssh_client not in ("paramiko", "openssh", "auto"):
            raise UsageError(f"ssh_client must be paramiko, openssh or auto, not {ssh_client!r}")
        if retries < 0 or max_lost < 0:
            raise UsageError("retries and max_lost must be 0 or more")
        if forks is not None and forks < 1:
            raise UsageError("forks must be at least 1")
        self.env = dict(env or {})
        for name in self.env:
            environment.check_name(name, "env")
        self.workdir = workdir
        # --forks: at most N hosts connecting (so at most N handshakes of this cluster's);
        # without it the process's adaptive handshake window alone paces connections.
        self.forks: Any = contextlib.nullcontext() if forks is None else \
            threading.BoundedSemaphore(forks)
        # Protocol 4: every host reads it (it goes out before the runner's HELLO is read).
        self._initializer = None if initializer is None else codeship.dumps_function(
            (initializer, tuple(initargs)), 4)
        if task_timeout is not None and task_timeout <= 0:
            raise UsageError("task_timeout must be a positive number of seconds")
        if isinstance(forward_modules, str):
            forward_modules = [forward_modules]
        self.forward_modules = forward_modules if isinstance(forward_modules, bool) \
            else tuple(forward_modules)
        self.policy = Policy(retries=retries, max_lost=max_lost, task_timeout=task_timeout,
                             keep_going=keep_going, speculate=speculate)
        self.ssh_options = SshOptions(
            known_hosts=tuple(os.fspath(p) for p in known_hosts),
            accept_new_host_keys=accept_new_host_keys,
            allow_unchecked_host_keys=allow_unchecked_host_keys,
            ssh_client=ssh_client,
            connect_timeout=connect_timeout,
            compress=compress,
        )
        host_list = resolve_hosts(inventory, hosts, limit, procs, ssh_config, relay)
        if max_procs_total is not None and max_procs_total < len(host_list):
            raise UsageError(f"max_procs_total {max_procs_total} is below the number of hosts "
                             f"({len(host_list)}): every host needs a runner; select fewer "
                             "with --limit")
        # Runners beyond each host's first, still to hand out (None: no cap).
        self._extra_budget = None if max_procs_total is None else max_procs_total - len(host_list)
        if any(not h.local for h in host_list):   # a socket or more per host: lift the soft cap
            raise_open_files_limit()
        self.scheduler = Scheduler(self.policy, no_hosts_error=self._no_hosts_error)
        self.host_errors: Dict[str, Exception] = {}
        # id(fn) -> (weak reference to fn, or fn itself, and its submit call); an entry goes
        # when fn dies, so neither fn nor what it holds outlives its futures
        self._submits: Dict[int, Tuple[Any, Call]] = {}
        self._strong: List[int] = []
        # (key, call) of submitted functions that were garbage collected. A weakref callback
        # runs wherever the collector happens to run, including inside submit() with _lock
        # held, so it only appends here (atomic) and whoever holds _lock next retires them.
        self._collected: "collections.deque[Tuple[int, Call]]" = collections.deque()
        self._pid = os.getpid()
        self._closer: Optional[threading.Thread] = None
        self._job: Optional[JobRun] = None   # the current (or last) Cluster.run
        self._abandon = False  # close without waiting for running work (leaving `with` on error)
        self._shutdown = False
        self._running = False  # a first runner is up
        self._lock = threading.Lock()
        self.dispatcher = Dispatcher()  # the one thread that reads every runner
        self._groups = [HostGroup(h, self) for h in host_list]
        self._stop_keepalive = threading.Event()
        started = time.monotonic()
        bootstrap.prepare()
        try:
            for group in self._groups:
                group.start()
            self._wait_for_first_worker()
        except BaseException:  # Ctrl-C while connecting: stop what already started
            self._close_groups()
            raise
        log.info("first runner up after %s; work starts while the other runners of %d "
                 "host(s) join", format_seconds(time.monotonic() - started), len(self._groups))
        threading.Thread(target=self._monitor, name="antnest-monitor", daemon=True).start()
        _live.add(self)

    # -- hosts -----------------------------------------------------------------------------
    def extra_runners(self, wanted: int) -> int:
        """How many runners beyond its first a host may start, within --max-procs-total (hosts
        take them as they come up: fixed procs at start, procs=auto at their HELLO)."""
        with self._lock:
            if self._extra_budget is None:
                return wanted
            granted = max(0, min(wanted, self._extra_budget))
            self._extra_budget -= granted
            return granted

    def runner_options(self, host: Host) -> Dict[str, Any]:
        """What every runner of `host` is told before any user code: env, workdir, initializer."""
        options: Dict[str, Any] = {}
        env = environment.host_env(host, self.env)
        if env:
            options["env"] = env
        workdir = environment.host_workdir(host, self.workdir)
        if workdir:
            options["workdir"] = workdir
        if self._initializer is not None:
            options["initializer"] = self._initializer
        return options

    def on_each_host(self, fn: Callable[..., Any], /, *args: Any,
                     **kwargs: Any) -> HostResults:
        """fn(*args, **kwargs) once on one runner of every host: {host name: result}. A host
        that failed, is lost, or whose call raised maps to that exception (nothing is raised).
        Waits for every host to finish starting first."""
        self._check_open()
        self.wait_for_hosts()
        results: Dict[str, Any] = {}
        pending: Dict[str, Tuple[HostGroup, Call, Future]] = {}
        calls: List[Call] = []
        apply = _apply(fn)
        for group in self._groups:
            if group.state.state != "connected":
                results[group.name] = group.error or self.host_errors.get(group.name) or \
                    HostError(group.name, group.state.error or f"host is {group.state.state}",
                              status=group.state.state)
                continue
            call = future_call(self.scheduler, apply, name=f"on_each_host({_name(fn)})",
                               policy=dataclasses.replace(self.scheduler.policy, retries=0))
            call.host = group.name
            self.scheduler.add_call(call)
            with self.scheduler.cond:
                future = call.add((args, kwargs))
            pending[group.name] = (group, call, future)
            calls.append(call)
        self.scheduler.pump()
        try:
            while pending:
                for name, (group, call, future) in list(pending.items()):
                    if future.done():
                        error = future.exception()
                        results[name] = future.result() if error is None else error
                        del pending[name]
                    elif group.state.state not in ("connected", "connecting"):
                        error = group.error or HostError(
                            name, group.state.error or group.last_loss or
                            f"host is {group.state.state}", status=group.state.state)
                        with self.scheduler.cond:
                            call.fail(error)
                            call.error = error
                if pending:  # woken by a result; every 0.2 s also looks at the hosts' states
                    futures_wait([entry[2] for entry in pending.values()], timeout=0.2,
                                 return_when=FIRST_COMPLETED)
        finally:
            with self.scheduler.cond:
                for _, call, _ in pending.values():
                    call.fail(AntnestError("on_each_host() was interrupted"))
                for call in calls:
                    call.error = call.error or AntnestError("on_each_host() has ended")
                    self.scheduler.forget(call)
        return HostResults((group.name, results[group.name]) for group in self._groups)

    def _wait_for_first_worker(self) -> None:
        sched = self.scheduler
        with sched.cond:
            while not sched.workers and sched.starting > 0:
                sched.cond.wait(0.5)
            if sched.workers:
                self._running = True
                for name, error in list(self.host_errors.items()):
                    log.warning("host %s cannot be used: %s", name, getattr(error, "problem", error))
                return
        raise self._no_hosts_error()

    def _no_hosts_error(self, call: Optional[Call] = None) -> NoHostsError:
        errors: List[Exception] = list(self.host_errors.values())
        detail = "every host failed to start" if errors else "every runner was lost"
        errors += [RunnerLost(g.name, g.last_loss) for g in self._groups
                   if g.last_loss and g.name not in self.host_errors]
        run = self._job
        tally = run.tally() if run is not None and call is run.call else None
        return NoHostsError(errors, detail + progress_of(call, tally))

    def host_failed(self, group: HostGroup, error: HostError) -> None:
        """Said at once when the cluster already runs; before that, only if some other host
        comes up (when none does, NoHostsError lists them all, once)."""
        self.host_errors[group.name] = error
        if self._running:
            log.warning("host %s cannot be used: %s", group.name, error.problem)

    def wait_for_hosts(self, timeout: Optional[float] = None) -> List[HostState]:
        """Block until every host has finished starting (or failed); returns `hosts`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.scheduler.cond:
            while self.scheduler.starting > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self.scheduler.cond.wait(0.2 if left is None else min(0.2, left))
        return self.hosts

    @property
    def hosts(self) -> List[HostState]:
        """Each host's state: connected/lost/failed, runners alive, Python version, counts."""
        for group in self._groups:
            group.update_alive()
        return [dataclasses.replace(g.state) for g in self._groups]

    def _monitor(self) -> None:
        """Copies stragglers onto idle workers, and keeps idle runners' watchdogs fed."""
        last_ping = time.monotonic()
        while not self._stop_keepalive.wait(MONITOR_EVERY):
            if self._collected:
                with self._lock:
                    self._retire_collected()
            self.scheduler.settler.grow()
            self.scheduler.speculate()
            if time.monotonic() - last_ping >= KEEPALIVE:
                last_ping = time.monotonic()
                for worker in list(self.scheduler.workers):
                    worker.ping()

    # -- the Executor API ------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run fn(*args, **kwargs) on some host; a concurrent.futures.Future."""
        self._check_open()
        with self._lock:
            self._retire_collected()
            entry = self._submits.get(id(fn))
            if entry is None or _deref(entry[0]) is not fn:
                if entry is not None:
                    self._retire(id(fn))
                call = future_call(self.scheduler, _apply(fn), name=_name(fn))
                self.scheduler.add_call(call)
                entry = self._submits[id(fn)] = (self._reference(fn, call), call)
            call = entry[1]
            with self.scheduler.cond:
                future = call.add((args, kwargs))
        self.scheduler.pump()
        return future

    def _reference(self, fn: Callable, call: Call) -> Any:
        key = id(fn)
        me = weakref.ref(self)

        def gone(_: Any) -> None:
            cluster = me()
            if cluster is not None:   # never take a lock here: see _collected
                cluster._collected.append((key, call))

        try:
            return weakref.ref(fn, gone)
        except TypeError:  # a builtin: no weak reference, and it lives forever anyway
            self._strong.append(key)
            if len(self._strong) > STRONG_SUBMITS:
                self._retire(self._strong.pop(0))
            return fn

    def _retire_collected(self) -> None:
        """Retire the calls of submitted functions that were garbage collected (_lock held)."""
        while self._collected:
            key, call = self._collected.popleft()
            entry = self._submits.get(key)
            if entry is not None and entry[1] is call:
                self._retire(key)

    def _retire(self, key: int) -> None:
        """Forget a function's call once its futures are settled (self._lock held)."""
        entry = self._submits.pop(key, None)
        if entry is None:
            return
        call = entry[1]
        futures = call.futures
        assert futures is not None
        with self.scheduler.cond:
            futures.retired = True
            futures.maybe_retire(call)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1, shared: Any = NOT_SHARED) -> Iterator[Any]:
        """Like Executor.map, but lazy: inputs are read as runners free up, memory stays bounded.
        `chunksize` is accepted for compatibility; batch sizes adapt on their own. With
        `shared=obj`, each call is fn(*args, obj) and obj travels once per runner, with fn."""
        self._check_open()
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        call = ordered_call(self.scheduler, _star(fn, shared), zip(*iterables), name=_name(fn))
        return self._results(call, timeout)

    def imap(self, fn: Callable[..., Any], iterable: Iterable[Any], *,
             shared: Any = NOT_SHARED) -> Iterator[Any]:
        """fn(item) for each item, in order, lazily (multiprocessing.Pool.imap); with
        `shared=obj`, fn(item, obj), obj sent once per runner."""
        self._check_open()
        return self._results(ordered_call(self.scheduler, _with_shared(fn, shared), iterable,
                                          name=_name(fn)), None)

    def imap_unordered(self, fn: Callable[..., Any], iterable: Iterable[Any], *,
                       shared: Any = NOT_SHARED) -> Iterator[Any]:
        """fn(item) for each item, as results arrive, lazily; `shared` as for imap."""
        self._check_open()
        return self._results(unordered_call(self.scheduler, _with_shared(fn, shared), iterable,
                                            name=_name(fn)), None)

    def _results(self, call: Call, timeout: Optional[float]) -> Iterator[Any]:
        call.raise_in_order = True
        timer = None
        if timeout is not None:  # counted from the call, as concurrent.futures does
            error = TimeoutError(f"map() did not finish within {format_seconds(timeout)}")
            timer = threading.Timer(timeout, self._fail_call, (call, error))
            timer.daemon = True
            timer.start()
        self.scheduler.add_call(call)
        return _raising_remote_types(call, timer)

    def _fail_call(self, call: Call, error: BaseException) -> None:
        with self.scheduler.cond:
            call.fail(error)

    def run(self, job: Union[PathLike, job_module.Job], input: Any = None,
            output: Optional[IO[str]] = None, timeout: Optional[float] = None, *,
            journal: Optional["Journal"] = None,
            progress: Optional[Callable[[Optional[int]], "Progress"]] = None,
            input_data: Any = job_module.NO_VALUE) -> Any:
        """Run a job (a job file path or a Job) and return what its combine() returns.

        `input` replaces the job's input_data, told apart by type: a str or os.PathLike is a
        path ('-' is stdin) and an open file is read lazily; bytes and any other iterable (a
        list, a generator) are the input itself. `input_data=` takes the input itself, whatever
        it is (text too). With keep_going, combine gets the successful results and JobFailed is
        raised afterwards, listing every failure.
        """
        self._check_open()
        if not isinstance(job, job_module.Job):
            job = job_module.load(job)
        plan = job.plan(input, output, input_data=input_data)
        run = self._job = JobRun(self.scheduler, job, plan, journal)
        self.scheduler.recorder.input_size = run.input.size
        shown = progress(run.total) if progress is not None else None
        if shown is not None:
            shown.set_input_size(run.input.size)
            shown.poll(self.job_progress)
        return run.combine(self.policy.keep_going, timeout, shown)

    def last_call(self) -> None:
        """Say that the next call is the cluster's last (the CLI, antnest.run): when it ends
        early, its busy runners are not restarted for a next call; shutdown stops them."""
        self.scheduler.one_shot = True

    def job_tally(self) -> Optional[Tally]:
        """Where the last job run's taskunits are (done, failed, running, not started): the
        one count the progress line, the timeout message, the log and the report share."""
        run = self._job
        return run.tally() if run is not None else None

    def job_progress(self) -> Tuple[Any, ...]:
        """(taskunits done, hosts busy, hosts usable, extras) of the running job, for
        Progress.poll; extras: failed, retried, runners lost, input bytes consumed."""
        run = self._job
        assert run is not None, "job_progress() is polled during a job run"
        tally = run.tally()
        workers = list(self.scheduler.workers)
        busy = {w.host_name for w in workers if w.inflight}
        usable = {w.host_name for w in workers if w.accepting}
        done = tally.done + tally.failed
        extras = {"failed": len(run.call.failures), "retried": run.call.retried,
                  "lost": sum(g.state.lost for g in self._groups)}
        bytes_done = run.bytes_done(done)
        if bytes_done is not None:
            extras["bytes_done"] = bytes_done
        return done, len(busy), len(usable), extras

    def run_record(self) -> Dict[str, Any]:
        """The run record (antnest.trace) so far: batches, runners, hosts, phases."""
        return self.scheduler.recorder.as_dict()

    def job_counts(self) -> Dict[str, Any]:
        """What the report says about the last job run: done, failed, retried, resumed,
        in_flight, not_started, failures (TaskErrors). Zeros when no job ran."""
        run = self._job
        if run is None:
            return dict(done=0, failed=0, retried=0, resumed=0, failures=[])
        return run.counts()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new work; pending work still runs (unless cancel_futures), then every runner stops
        and every connection closes: nothing stays behind on the hosts. With wait=False this
        returns at once and the closing happens on a thread when the work is done."""
        if os.getpid() != self._pid:
            return  # a forked child: the runners are the parent's
        with self._lock:
            first = not self._shutdown
            self._shutdown = True
            if first:
                self._closer = threading.Thread(target=self._close_when_idle,
                                                name="antnest-shutdown", daemon=True)
        if cancel_futures:
            with self.scheduler.cond:
                queued = [future for call in list(self.scheduler.calls)
                          if call.futures is not None
                          for future in call.futures.cancel_pending(call)]
            for future in queued:
                future.cancel()
        if first:
            assert self._closer is not None
            self._closer.start()
        if wait:
            self._join_closer()

    def _join_closer(self) -> None:
        closer = self._closer
        if closer is not None and closer is not threading.current_thread():
            closer.join()

    def _close_when_idle(self) -> None:
        sched = self.scheduler
        with sched.cond:
            while self._busy() and (sched.workers or sched.starting > 0) and not self._abandon:
                sched.cond.wait(0.2)
        sched.close(AntnestError("the cluster was shut down"))
        self._stop_keepalive.set()
        self._close_groups()
        _live.discard(self)

    def _busy(self) -> bool:
        """Work that can still finish (scheduler lock held): submitted futures, and maps whose
        results are read (a map waiting for its reader counts until the interpreter exits)."""
        for call in self.scheduler.calls:
            if call.futures is not None:
                if not call.futures.idle(call):
                    return True
            elif not call.done and (self._job is None or call is not self._job.call):
                waiting_for_reader = call.inflight == 0 and not call.exhausted and \
                    call.taken - call.consumed >= call.ahead_limit()
                if not (waiting_for_reader and _interpreter_exiting):
                    return True
        return False

    def _close_groups(self) -> None:
        for group in self._groups:
            for worker in group.workers:
                worker.stop()
        for group in self._groups:
            group.close()
        self.dispatcher.close()

    def _broken_by_fork(self) -> None:
        """In a forked child: fail every pending future at once, refuse new work. No lock is
        taken (a parent thread may have held it at the fork) and nothing is stopped."""
        error = ForkedCluster(self._pid, os.getpid())
        self._shutdown = True
        self._forked = error
        for call in list(self.scheduler.calls):
            if call.futures is not None:
                for future in call.futures.pending():
                    try:
                        if future.running() or future.set_running_or_notify_cancel():
                            future.set_exception(error)
                    except Exception:  # settled meanwhile
                        pass
            call.error = call.error or error
        self.scheduler.closed = error

    def _check_open(self) -> None:
        forked = getattr(self, "_forked", None)
        if forked is not None or os.getpid() != self._pid:
            raise forked or ForkedCluster(self._pid, os.getpid())
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is not None:  # leaving on an error or Ctrl-C: stop now, not when done
            self._abandon = True
        self.shutdown(wait=True, cancel_futures=exc_info[0] is not None)


def _deref(reference: Any) -> Any:
    return reference() if type(reference) is weakref.ref else reference


def _raising_remote_types(call: Call, timer: Optional[threading.Timer]) -> Iterator[Any]:
    try:
        yield from call.results(raise_failures=True)  # no local holds the value last yielded
    except TaskError as error:
        raisable = as_raisable(error)
        raise raisable from raisable.__cause__
    finally:
        if timer is not None:
            timer.cancel()
        with call.scheduler.cond:
            if not call.done:  # the caller stopped early: take nothing more
                call.fail(GeneratorExit())


def resolve_hosts(inventory: Optional[PathLike], hosts: Union[None, str, Sequence[Union[str, Host]]],
                  limit: Optional[str], procs: Optional[int],
                  ssh_config: Optional[PathLike], relay: Optional[str] = None) -> List[Host]:
    """Hosts from an inventory file, a host list, or the local default; `relay` is
    --relay's spec (antnest.inventory.relays)."""
    if procs is not None and procs < 1:
        raise UsageError("procs must be at least 1")
    if inventory is None and hosts is None:
        if limit:
            raise UsageError("--limit needs an inventory (-i) or a host list (-H)")
        return [dataclasses.replace(LOCAL, procs=procs or os.cpu_count() or 1)]
    host_objects = [h for h in (hosts or ()) if isinstance(h, Host)] if not isinstance(hosts, str) else []
    if host_objects:
        if len(host_objects) != len(hosts or ()):
            raise UsageError("hosts= takes either Host records or strings, not both")
        found = list(host_objects)
    else:
        host_list = hosts if isinstance(hosts, str) or hosts is None else ",".join(hosts)  # type: ignore[arg-type]
        found = inventory_module.load_hosts(inventory, host_list=host_list, limit=limit,
                                            ssh_config=ssh_config)
    if procs is not None:
        found = [dataclasses.replace(h, procs=procs) for h in found]
    if relay is not None:
        from antnest.inventory import relays

        found = relays.assign(found, relay)
    if not found:
        raise UsageError("no hosts to run on")
    return found


# -- shipping functions ---------------------------------------------------------------------------
# fn travels by reference (its module goes to the hosts as source, see antnest.codeship); these
# wrappers live in the runner module, which every host has.

def _ship(fn: Callable) -> Callable:
    return fn


def _star(fn: Callable, shared: Any = NOT_SHARED) -> Callable[[tuple], Any]:
    return runner.Star(fn) if shared is NOT_SHARED else runner.StarShared(fn, shared)


def _with_shared(fn: Callable, shared: Any) -> Callable[[Any], Any]:
    return fn if shared is NOT_SHARED else runner.WithShared(fn, shared)


def _apply(fn: Callable) -> Callable[[tuple], Any]:
    return runner.Apply(fn)


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)

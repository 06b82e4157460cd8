"""Runner slots: each boots a runner, checks its HELLO, hands its stream to the dispatcher,
and starts a new runner when one is lost (reconnecting the host first when the link is gone).

A slot has a thread only while it boots or winds a runner down; while its runner serves,
the cluster's one dispatcher thread (antnest.dispatch) reads its frames and calls
`Worker.HANDLERS`, one handler per kind, decoding payloads with runner.WIRE. Sends never wait
for a host: the transports queue what a link cannot take at once (antnest.transport.outgoing).

A HostGroup holds what the slots of one host share: its `Connection` (whatever transport
`Host.transport` names, see antnest.transport) and the host's state.
"""
from __future__ import annotations

import collections
import logging
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from antnest import codeship, runner
from antnest.dispatch import Dispatcher, Watch
from antnest.errors import BootstrapError, HostError, format_seconds
from antnest.host import Host, HostStatus, State
from antnest.runner import FrameReader, Kind, decode_hello, encode, frame
from antnest.transport import Connection, RunnerProcess, link_errors, open_connection

log = logging.getLogger(__name__)
remote_log = logging.getLogger("antnest.remote")

MIN_PYTHON = (3, 6)
HEARTBEAT = 2.0        # a runner sends a PING this often
DEAD_AFTER = 10.0      # silence (no frame, no heartbeat) after which an SSH runner is lost
RUNNER_IDLE_TIMEOUT = 30.0  # a runner that hears nothing (the master pings every 5 s) leaves
BOOT_TIMEOUT = 30.0    # from exec to HELLO
MAX_RESTARTS = 3       # consecutive failed boots before a slot gives up
RECV_CHUNK = 1 << 20


@dataclass
class HostState:
    """What `Cluster.hosts` reports for one host."""

    name: str
    address: str
    state: str = State.CONNECTING  # a host.State
    procs: int = 0                 # runner slots: the host's procs (its CPU count for auto)
    python: Optional[str] = None
    cpus: Optional[int] = None
    hostname: Optional[str] = None
    cloudpickle: Optional[str] = None  # "found" on the host or "shipped" from the master
    error: Optional[str] = None
    lost: int = 0                  # runners lost so far
    done: int = 0                  # taskunits finished here (accepted results)
    alive: int = 0                 # runners alive now (restarting or lost ones not counted)


class HostGroup:
    """The runners of one host and what they share."""

    def __init__(self, host: Host, cluster: Any) -> None:
        self.host = host
        self.name = host.name
        self.cluster = cluster
        self.scheduler = cluster.scheduler
        self.dispatcher: Dispatcher = cluster.dispatcher
        # the transport module (paramiko for the ssh client) loads only when a host needs it
        self.connection: Connection = open_connection(host, cluster.ssh_options)
        self.state = HostState(host.name, self.connection.address)
        self.workers: List[Worker] = []
        self.lock = threading.Lock()
        self.target_procs: Optional[int] = host.procs
        self.hello: Optional[dict] = None
        self.error: Optional[HostError] = None
        self.last_loss: Optional[str] = None
        self.setup_error: Optional[HostError] = None  # a bad workdir, a raising initializer
        self.link_epoch = 0  # +1 per reconnect: a runner from an older link lost it, not its task

    def cluster_forward(self) -> Any:
        """The cluster's forward_modules: True, False, or the package names to forward."""
        return getattr(self.cluster, "forward_modules", True)

    def start(self) -> None:
        """Boot every runner at once when the count is known; with procs=auto, boot one and
        the rest once its HELLO tells the CPU count."""
        count = 1 + self.cluster.extra_runners(self.target_procs - 1) if self.target_procs else 1
        if self.target_procs:
            self.target_procs = count
        self.workers.extend(Worker(self, i) for i in range(count))
        for worker in self.workers:
            worker.start()

    def on_hello(self, worker: "Worker", hello: dict) -> None:
        with self.lock:
            if self.hello is not None:
                return
            self.hello = hello
            self.state.python = ".".join(map(str, hello["python"]))
            self.state.cpus = hello["cpus"]
            self.state.hostname = hello["hostname"]
            self.state.cloudpickle = hello.get("cloudpickle")
            self.state.state = State.CONNECTED
            log.info("host %s: connected (%s, Python %s, %s CPUs, cloudpickle %s)", self.name,
                     self.state.address, self.state.python, self.state.cpus,
                     self.state.cloudpickle)
            if self.target_procs is not None:
                return
            wanted = 1 + self.cluster.extra_runners((hello["cpus"] or 1) - 1)
            self.target_procs = wanted
            extra = [Worker(self, i) for i in range(1, wanted)]
            self.workers.extend(extra)
        self.scheduler.booting(len(extra))
        for w in extra:
            w.start(counted=True)

    def start_runner(self, label: str) -> RunnerProcess:
        conn = self.connection
        with self.lock:  # one slot (re)connects; the others reuse it or share its error
            if self.error is not None and self.hello is None:
                raise self.error
            if not conn.is_alive():
                reconnecting = self.hello is not None
                if reconnecting:
                    self.state.state = State.CONNECTING
                try:
                    with self.cluster.forks:  # at most --forks hosts connecting at once
                        conn.connect()
                except HostError as exc:
                    if not reconnecting:
                        self.error = exc
                    raise
                self.link_epoch += 1
                if reconnecting:
                    self.state.state = State.CONNECTED
                    log.info("host %s: reconnected", self.name)
        return conn.open_runner(label)

    def setup_failed(self, error: HostError) -> None:
        """A runner could not prepare itself (workdir, initializer, the job's setup()): every
        runner of this host would fail the same way, so the host is out, with that error."""
        with self.lock:
            if self.setup_error is not None:
                return
            self.setup_error = error
            self.error = error
            self.state.state = "failed"
            self.state.error = str(error)
        self.cluster.host_failed(self, error)
        for worker in self.workers:
            if worker.proc is not None:
                worker.abort(f"host {self.name}: {error.status}")

    def update_alive(self) -> None:
        with self.lock:
            alive = sum(1 for w in self.workers if w.accepting)
            self.state.alive = alive
            self.state.procs = self.target_procs or len(self.workers)
            if alive == 0 and self.hello is not None and all(w.gave_up for w in self.workers) \
                    and self.state.state in (State.CONNECTED, State.CONNECTING):
                self.state.state = State.LOST

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        for w in self.workers:
            w.join(5)
        self.connection.close()
        if self.state.state in (State.CONNECTING, State.CONNECTED):
            self.state.state = State.CLOSED


class Worker:
    """One runner slot."""

    def __init__(self, group: HostGroup, index: int) -> None:
        self.group = group
        self.scheduler = group.scheduler
        self.host_name = group.name
        self.label = f"{group.name}#{index}" if index else group.name
        self.inflight: "collections.OrderedDict[int, Any]" = collections.OrderedDict()
        self.outbox: Deque[Any] = collections.deque()
        self.send_lock = threading.Lock()
        self.loaded: set = set()
        self.to_forget: List[int] = []   # fn ids of ended calls, for the runner to drop
        self.shipped: set = set()   # (module, file) whose source this runner holds
        self.accepting = False
        self.culprit_known = False
        self.gave_up = False
        self.proc: Optional[RunnerProcess] = None
        self.aborted: Optional[str] = None  # why we stopped this runner on purpose
        self.pickle_protocol = 5
        self._stopping = threading.Event()
        self._finished = threading.Event()   # the slot is over: no runner, no thread
        self._thread: Optional[threading.Thread] = None  # booting or winding down, else None
        self._ended: Optional[Tuple[str, bool]] = None   # what a handler said ended the runner
        self._broken = False                              # a handler hit a bug
        self._reader: Optional[FrameReader] = None
        self._counted = False
        self._output_batch: Optional[int] = None   # the batch whose output output_bytes counts
        self.output_bytes = 0
        self._epoch = 0

    def start(self, counted: bool = False) -> None:
        self._counted = counted
        if not counted:
            self.scheduler.booting()
        self._spawn(self._life)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        """Run a step of the slot's life on a thread of its own (boots wait on the network)."""
        self._thread = threading.Thread(target=self._main, args=(target,) + args,
                                        name=f"antnest-{self.label}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.accepting = False
        proc = self.proc
        if proc is not None:
            proc.close()
            proc.kill()

    def abort(self, why: str) -> None:
        """Kill this runner (the slot boots a new one); safe to call with the scheduler lock."""
        proc = self.proc
        if proc is None:
            return
        log.debug("%s: stopping its runner: %s", self.label, why)
        self.aborted = why
        threading.Thread(target=proc.kill, daemon=True).start()

    def join(self, timeout: float) -> None:
        """Wait (bounded) until the slot is over: its runner ended and nothing restarts it."""
        thread = self._thread
        if thread is not None and thread is threading.current_thread():
            return
        self._finished.wait(timeout)

    # -- the slot's life ---------------------------------------------------------------------
    def _main(self, step: Callable[..., None], *args: Any) -> None:
        try:
            step(*args)
        except Exception:  # a bug here must not leave the cluster waiting for this slot
            log.exception("%s: runner slot failed unexpectedly", self.label)
            self._give_up_broken()

    def _give_up_broken(self) -> None:
        self.accepting = False
        self.gave_up = True
        proc = self.proc
        if proc is not None:
            proc.kill()
        if self in self.scheduler.workers:
            self.scheduler.on_lost(self, "internal error", blame=False, will_restart=False)
        else:  # it was (re)starting, and counted as such
            self.scheduler.boot_failed()
        self.group.update_alive()
        self._finished.set()

    def _life(self) -> None:
        """Boot (again, with back-off) until a runner serves; then the dispatcher reads it."""
        failures = 0
        delay = 0.5
        first = self.proc is None
        while not self._stopping.is_set():
            try:
                self._boot_or_host_error()
            except HostError as exc:
                self._release()
                if self._stopping.is_set() or self.group.setup_error is not None:
                    self.scheduler.boot_failed()  # closing, or the host is out already
                    self._finish()
                    return
                failures += 1
                self._boot_failed(exc, first, failures)
                if first or failures >= MAX_RESTARTS or self._stopping.is_set():
                    self._finish()
                    if self.group.state.state == State.LOST:
                        log.error("host %s is lost (%s); the job goes on without it",
                                  self.host_name, exc.problem)
                    return
                self.scheduler.booting()
                self._stopping.wait(delay)
                delay = min(delay * 2, 8.0)
                continue
            self._serve()
            return
        self.scheduler.boot_failed()  # stopped between attempts: over, not given up (closed)
        self.group.update_alive()
        self._finished.set()

    def _finish(self) -> None:
        self.gave_up = True
        self.group.update_alive()
        self._finished.set()

    def _release(self) -> None:
        proc = self.proc
        if proc is not None:
            try:
                proc.release()
            except OSError:
                pass

    def _serve(self) -> None:
        """Hand the runner's stream to the dispatcher; this thread ends."""
        proc = self.proc
        assert proc is not None and self._reader is not None
        self._ended = None
        self._broken = False
        try:
            fileno = proc.fileno()
        except (OSError, ValueError) as exc:
            self._spawn_end(f"connection broken: {exc}", exc)
            return
        reader = self._reader
        # each read asks for what the frame lacks (FrameReader.want: small reads stay small)
        watch = Watch(self.label, fileno, lambda _: proc.read_nowait(reader.want()),
                      self._on_data, self._on_end, DEAD_AFTER)
        self._thread = None
        try:
            self.group.dispatcher.watch(watch)
        except RuntimeError:  # the cluster closed its dispatcher meanwhile: it is closing
            self._stopping.set()
            self._after("closed", None)

    def _on_data(self, data: bytes) -> bool:
        """On the dispatcher thread: the frames in `data`, each to its handler. Returns False
        when a handler says the runner is done for."""
        reader = self._reader
        assert reader is not None
        if data:
            reader.feed(data)
        handlers = self.HANDLERS
        while True:
            found = reader.pop()
            if found is None:
                return True
            kind, payload = found
            handler = handlers.get(kind)
            if handler is not None:
                try:
                    ended = handler(self, payload)
                except link_errors() as exc:  # an answer (MODULE) to a runner already gone
                    ended = (f"connection broken: {exc}", self._link_alive())
                if ended is not None:
                    self._ended = ended
                    return False

    def _on_end(self, why: str, error: Optional[BaseException]) -> None:
        """On the dispatcher thread: the stream ended; the slot winds down on its own thread
        (killing, diagnosing and rebooting all wait)."""
        if why.startswith("internal error"):
            self._broken = True
        self.accepting = False
        self._spawn_end(why, error)

    def _spawn_end(self, why: str, error: Optional[BaseException]) -> None:
        self._spawn(self._after, why, error)

    def _after(self, why: str, error: Optional[BaseException]) -> None:
        """The runner is over: say why, give its batches back, boot the next one."""
        reason, blame = self._why_ended(why, error)
        self.accepting = False
        if self.proc is not None:
            self.proc.kill()
        self._release()
        if self._broken:
            self._give_up_broken()
            return
        if self.group.setup_error is not None:  # the same would happen again: give up
            self.gave_up = True
            self.scheduler.on_lost(self, reason, False, will_restart=False)
            self._finish()
            return
        # no new runner for a cluster that is shutting down
        stopping = self._stopping.is_set() or self.scheduler.closed is not None
        self.scheduler.recorder.runner_exited(self.label, self.host_name, reason,
                                              lost=not stopping and not self.aborted)
        if self.aborted:
            log.debug("%s: runner stopped (%s)%s", self.label, reason,
                      "" if stopping else "; starting a new one")
        elif not stopping:
            log.warning("%s: runner lost (%s); its unfinished taskunits go back to the queue",
                        self.label, reason)
            self.group.state.lost += 1
            self.group.last_loss = reason
        self.scheduler.on_lost(self, reason, blame and not stopping, will_restart=not stopping)
        self.group.update_alive()
        if stopping:
            self._finished.set()  # over, not given up: the host closes, it is not lost
            return
        self._life()

    def _why_ended(self, why: str, error: Optional[BaseException]) -> Tuple[str, bool]:
        """(why, whether to blame its task) for a runner whose stream ended."""
        if self._ended is not None:
            return self._ended
        if self._broken:
            return why, False
        if isinstance(error, socket.timeout):
            return f"no word from the host for {format_seconds(DEAD_AFTER)}", False
        reader = self._reader
        if error is None and why == "eof" and reader is not None and reader.partial():
            why, error = "connection broken: stream closed inside a frame", EOFError()
        if error is not None or why == "closed":
            if self._stopping.is_set() or why == "closed":
                return "stopped", False
            return why, self._link_alive()
        if self._stopping.is_set():
            return "stopped", False
        if self.aborted:
            return self.aborted, False
        alive = self._link_alive()
        proc = self.proc
        detail = proc.diagnose() if alive and proc is not None else "the SSH connection is gone"
        return f"runner exited ({detail})", alive

    def _boot_failed(self, exc: HostError, first: bool, failures: int) -> None:
        group = self.group
        self.scheduler.recorder.runner_exited(self.label, self.host_name,
                                              f"boot failed: {exc}", lost=False)
        with group.lock:
            report = group.hello is None and group.state.state != State.FAILED
            if report:
                group.error = exc
                group.state.state = State.FAILED
                group.state.error = str(exc)
        if report:
            self.scheduler.recorder.host_failed(group.name, str(exc))
            group.cluster.host_failed(group, exc)
        elif group.hello is not None and not self._stopping.is_set():
            log.warning("%s: cannot start a runner (attempt %d of %d): %s", self.label, failures,
                        MAX_RESTARTS, exc)
        self.scheduler.boot_failed()

    def _boot_or_host_error(self) -> None:
        """Any unexpected error while starting (a local limit, a library bug) fails this host
        with that error like any other start failure, so it never stays "connecting"."""
        try:
            self._boot()
        except HostError:
            raise
        except Exception as exc:
            log.debug("%s: unexpected error while starting a runner", self.label, exc_info=True)
            raise BootstrapError(self.host_name, f"unexpected error while starting a runner: "
                                 f"{type(exc).__name__}: {exc}") from exc

    def _boot(self) -> None:
        """Start a runner and wait for its HELLO; raise a HostError saying what went wrong."""
        with self.send_lock:  # a send still going to the old runner finishes first
            self.inflight.clear()
            self.outbox.clear()
            self.loaded = set()
            self.to_forget.clear()
            self.shipped = set()
            self.culprit_known = False
            old, self.proc = self.proc, None
        if old is not None:
            old.release()
        recorder = self.scheduler.recorder
        recorder.runner_booting(self.label, self.host_name)
        proc = self.group.start_runner(self.label)
        self._epoch = self.group.link_epoch
        with self.send_lock:
            self.proc = proc
        if self._stopping.is_set():  # stop() ran while we booted: it could not see this proc
            proc.kill()
            raise BootstrapError(self.host_name, "the cluster is shutting down")
        self.aborted = None
        self._reader = FrameReader(proc.recv, RECV_CHUNK)
        hello = await_hello(self.group.host, proc, self._reader)
        self.pickle_protocol = min(5, hello.get("pickle_protocol", 5))
        self.group.on_hello(self, hello)
        recorder.runner_hello(self.label, self.host_name, ".".join(map(str, hello["python"])),
                              hello.get("cpus"))
        # Options every JOB would carry; sent once now so the watchdogs run from the start.
        options = {"heartbeat": HEARTBEAT, "idle_timeout": RUNNER_IDLE_TIMEOUT,
                   "master_python": _python_version(),
                   "forward": self.group.cluster_forward() is not False,
                   **self.group.cluster.runner_options(self.group.host)}
        # An initializer is loaded before any call: its modules go first.
        sources = self._new_sources(codeship.local_sources()) if "initializer" in options else ()
        try:
            proc.send(*sources, encode(Kind.JOB, runner.encode_job(None, None, options,
                                                                   self.pickle_protocol)))
        except link_errors():
            if self._stopping.is_set():
                raise BootstrapError(self.host_name, "the cluster is shutting down") from None
            # gone right after HELLO: _serve reads the EOF and it is an ordinary lost runner
        self.accepting = True
        self.scheduler.add_worker(self)
        self.group.update_alive()

    def _answer_module(self, name: str) -> None:
        """A runner imports a module its host lacks: the master's source, or why not."""
        python = self.group.state.python or "?"
        record, reason = codeship.module_answer(name, self.host_name, python,
                                                self.group.cluster_forward())
        if record is None:
            log.debug("%s: cannot forward module %s: %s", self.label, name, reason)
        else:
            log.debug("%s: forwarding module %s (%s)", self.label, name, record[2])
        dist = codeship.distribution_metadata(name) if record is not None else None
        payload = runner.encode_module(name, record, reason, dist, protocol=self.pickle_protocol)
        with self.send_lock:
            self.proc.send(encode(Kind.MODULE, payload))  # type: ignore[union-attr]

    # -- frames from the runner: one handler per kind (runner.WIRE has the codecs) -----------
    # A handler returns None to go on reading, or (why, blame) when the runner is done for.
    # Kinds without a handler (PING: any frame proves the runner alive) are read and dropped.
    def _on_module_request(self, payload: bytes) -> None:
        self._answer_module(runner.decode_module_request(payload))
        return None

    def _on_results(self, payload: bytes) -> None:
        try:
            record = runner.decode_results(payload)
        except BaseException as exc:  # even SystemExit: that taskunit's error
            self.scheduler.on_undecodable(self, undecodable_head(payload), exc, "master")
            return None
        self.scheduler.on_results(self, record, len(payload))  # it counts the host's done
        del record  # the values must not outlive their readers (weakrefs, memory)
        return None

    def _on_undecodable(self, payload: bytes) -> None:
        batch_id, desc = runner.decode_undecodable(payload)
        self.scheduler.on_undecodable(self, (batch_id, 0), desc, self.host_name)
        return None

    def _on_timeout(self, payload: bytes) -> None:
        batch_id, index, elapsed = runner.decode_timeout(payload)
        self.scheduler.on_timeout(self, batch_id, index, elapsed)
        return None

    def _on_fatal(self, payload: bytes) -> Tuple[str, bool]:
        return f"runner failed: {runner.decode_fatal(payload).strip()}", False

    def _on_setup_failed(self, payload: bytes) -> Tuple[str, bool]:
        what, text = runner.decode_setup_failed(payload)
        self.group.setup_failed(BootstrapError(self.host_name, text.strip(),
                                               status=f"{what} failed"))
        return f"{what} failed", False

    def _link_alive(self) -> bool:
        """The link this runner ran on is still up (another slot may have reconnected already)."""
        return self.group.connection.is_alive() and self.group.link_epoch == self._epoch

    def _on_log(self, payload: bytes) -> None:
        batch_id, index, text = runner.decode_log(payload)
        if batch_id != self._output_batch:
            self._output_batch, self.output_bytes = batch_id, 0
        self.output_bytes += len(text)
        batch = self.inflight.get(batch_id) if batch_id is not None else None
        where = f" taskunit {batch.first_seq + index}" if batch is not None and index >= 0 else ""
        if where and batch is not None and batch.twins is not None and batch is not batch.twins[0]:
            where += ", copy"   # a speculative copy's output: told apart from the original's
        for line in text.splitlines() or [""]:
            remote_log.info("[%s%s] %s", self.label, where, line)
        return None

    HANDLERS: Dict[int, Callable[["Worker", bytes], Optional[Tuple[str, bool]]]] = {
        Kind.RESULTS: _on_results, Kind.LOG: _on_log, Kind.TIMEOUT: _on_timeout,
        Kind.FATAL: _on_fatal, Kind.SETUP_FAILED: _on_setup_failed,
        Kind.UNDECODABLE: _on_undecodable, Kind.MODULE_REQUEST: _on_module_request,
    }

    def output_of(self, batch_id: int) -> int:
        """Characters of output the running batch `batch_id` has printed so far."""
        return self.output_bytes if batch_id == self._output_batch else 0

    # -- sending -----------------------------------------------------------------------------
    def flush_outbox(self) -> None:
        """Send queued batches in the order they entered this worker's window."""
        if self._send_outbox():
            self.scheduler.pump()  # batches came back from unsendable(): place them

    def _send_outbox(self) -> bool:
        gave_back = False
        with self.send_lock:
            while True:
                try:
                    batch = self.outbox.popleft()
                except IndexError:
                    return gave_back
                call = batch.call
                try:
                    blob = codeship.dumps_data(batch.items, self.pickle_protocol)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # data that cannot be pickled: those taskunits fail
                    self.scheduler.unsendable(self, batch, exc)
                    gave_back = True
                    continue
                try:
                    parts: tuple = self._forget_frames()
                    if call.fn_id not in self.loaded:
                        options = {"task_timeout": call.policy.task_timeout,
                                   "setup": call.setup}
                        parts += self._sources_for(call) + frame(Kind.JOB, runner.encode_job(
                            call.fn_id, call.fn_blob(self.pickle_protocol), options,
                            self.pickle_protocol))
                    # the data in a pickle of its own: a runner that cannot load it says which batch
                    payload = runner.encode_tasks(batch.id, call.fn_id, len(batch.items), blob,
                                                  self.pickle_protocol)
                    del blob
                    call.learn_sent(len(batch.items), len(payload))
                    self.proc.send(*parts, *frame(Kind.TASKS, payload))  # type: ignore[union-attr]
                    self.loaded.add(call.fn_id)
                    self.scheduler.recorder.batch_sent(self.label, self.host_name, batch,
                                                       len(payload))
                except link_errors() + (AttributeError,) as exc:
                    log.debug("%s: send failed: %s", self.label, exc)
                    proc = self.proc
                    if proc is not None:  # the reader sees EOF and gives the batches back
                        threading.Thread(target=proc.kill, daemon=True).start()
                    return gave_back

    def _forget_frames(self) -> tuple:
        """JOB frames without a function: the runner drops those it loaded (send lock held)."""
        parts: tuple = ()
        while self.to_forget:
            fn_id = self.to_forget.pop()
            if fn_id in self.loaded:
                self.loaded.discard(fn_id)
                parts += frame(Kind.JOB, runner.encode_job(fn_id, None, {}, self.pickle_protocol))
        return parts

    def _sources_for(self, call: Any) -> tuple:
        """A SOURCES frame with the call's local modules this runner does not hold yet."""
        return self._new_sources(call.sources)

    def _new_sources(self, records: list) -> tuple:
        new = [r for r in records if (r[0], r[2]) not in self.shipped]
        if not new:
            return ()
        self.shipped.update((r[0], r[2]) for r in new)
        return frame(Kind.SOURCES, runner.encode_sources(new, self.pickle_protocol))

    def ping(self) -> None:
        if not self.accepting or not self.send_lock.acquire(timeout=0.1):
            return
        try:
            self.proc.send(*self._forget_frames(),  # type: ignore[union-attr]
                           encode(Kind.PING, runner.encode_empty()))
        except link_errors() + (AttributeError,):
            pass
        finally:
            self.send_lock.release()


def undecodable_head(payload: bytes) -> Optional[tuple]:
    """(batch id, offset) of a RESULTS record that does not unpickle here: its first two ints,
    read from the opcodes without running any of them."""
    import pickletools

    found: list = []
    try:
        for opcode, arg, _ in pickletools.genops(payload):
            if isinstance(arg, int) and not isinstance(arg, bool) and opcode.name not in (
                    "PROTO", "FRAME", "MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"):
                found.append(arg)
                if len(found) == 2:
                    return tuple(found)
    except Exception:  # a truncated or garbled stream: nothing to attribute it to
        return None
    return None


def _python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def await_hello(host: Host, proc: RunnerProcess, reader: FrameReader) -> dict:
    """Wait for a fresh runner's HELLO and check it; a HostError says what went wrong."""
    proc.set_timeout(BOOT_TIMEOUT)  # a silent host must not hang the boot
    try:
        frame = reader.next()
    except socket.timeout:
        proc.kill()
        raise BootstrapError(host.name, f"the runner did not say hello within {format_seconds(BOOT_TIMEOUT)}",
                             status=HostStatus.TIMEOUT) from None
    except link_errors():
        frame = None
    if frame is None or frame[0] != Kind.HELLO:
        raise _boot_error(host, proc)
    hello = decode_hello(frame[1])
    if hello is None:
        proc.kill()
        raise BootstrapError(host.name, f"unexpected handshake {frame[1][:200]!r}")
    if hello.get("magic") != runner.MAGIC.decode() or hello.get("protocol") != runner.PROTOCOL_VERSION:
        proc.kill()
        raise BootstrapError(host.name, f"unexpected handshake {hello!r}")
    problem = hello_problem(hello)
    if problem is not None:
        proc.kill()
        raise BootstrapError(host.name, f"handshake failed: {problem}", status="handshake failed")
    version = tuple(hello["python"])
    if version < MIN_PYTHON:  # the runner is written for 3.6+; older ones never say HELLO
        proc.kill()
        raise BootstrapError(host.name, f"Python {'.'.join(map(str, version))} on the host is too "
                             f"old; antnest needs {'.'.join(map(str, MIN_PYTHON))}+ (set `python:` "
                             "in the inventory to a newer interpreter)", status=HostStatus.PYTHON_TOO_OLD)
    proc.set_timeout(DEAD_AFTER)
    return hello


def by_value_too(hello: dict) -> bool:
    """Whether functions with no source left (exec, REPL) can go to this host by value: only
    bytecode of the master's own minor version loads there. Source travels everywhere."""
    return tuple(hello["python"][:2]) == sys.version_info[:2]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# HELLO's fields and what each must be: (required, check, what it must be)
HELLO_FIELDS: Dict[str, Any] = {
    "python": (True, lambda v: isinstance(v, (list, tuple)) and len(v) >= 2
               and all(_is_int(n) and n >= 0 for n in v), "a list of version numbers"),
    "cpus": (True, lambda v: _is_int(v) and v >= 1, "a whole number of CPUs, 1 or more"),
    "hostname": (True, lambda v: isinstance(v, str), "a string"),
    "pid": (True, lambda v: _is_int(v) and v > 0, "a process id"),
    "pickle_protocol": (False, lambda v: _is_int(v) and v >= 2, "a pickle protocol number"),
    "executable": (False, lambda v: isinstance(v, str), "a string"),
    "implementation": (False, lambda v: isinstance(v, str), "a string"),
    "cloudpickle": (False, lambda v: v in ("found", "shipped", "missing"),
                    "'found', 'shipped' or 'missing'"),
}


def hello_problem(hello: dict) -> Optional[str]:
    """What is wrong with a HELLO's fields (the first problem), or None: a runner that says
    something else than it should is refused in one line, never with a traceback."""
    for name, (required, check, want) in HELLO_FIELDS.items():
        if name not in hello:
            if required:
                return f"the runner's HELLO lacks the field {name!r}"
            continue
        if not check(hello[name]):
            return f"the runner's HELLO field {name!r} is {hello[name]!r}, not {want}"
    return None


def _boot_error(host: Host, proc: RunnerProcess) -> HostError:
    detail = proc.diagnose()
    proc.kill()
    if "exit status 127" in detail or "not found" in detail:
        return BootstrapError(host.name, f"no Python interpreter {host.python!r} on the host "
                              f"({detail}); install python3 or set `python:` in the inventory",
                              status=HostStatus.NO_PYTHON)
    if "SyntaxError" in detail or "has no attribute 'buffer'" in detail:
        return BootstrapError(host.name, f"{host.python!r} on the host is too old (antnest needs "
                              f"Python {'.'.join(map(str, MIN_PYTHON))}+): {detail}",
                              status=HostStatus.PYTHON_TOO_OLD)
    return BootstrapError(host.name, f"the runner failed to start: {detail}")

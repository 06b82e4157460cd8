"""An in-memory transport: scripted runners inside the master process, for fast core tests.

`Host(name=..., address=..., transport="memory")` reaches a `Script` registered under the
host's address with `register()`. Its runners speak the real wire (runner.WIRE) to the real
Worker and Scheduler, but run each taskunit right here, on the thread that sent the batch, and
do what the script says for it: run it, raise, die mid-batch, go silent, time out, wait for a
release. No process, no socket, no sleep: a run over 64 runner slots takes milliseconds.

This is also the smallest example of a transport: a module with `open_connection(host,
options)` and one line in antnest.transport.TRANSPORTS (like httpx's MockTransport).
"""
from __future__ import annotations

import itertools
import os
import pickle
import socket
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from antnest import runner
from antnest.errors import HostError
from antnest.host import Host, HostStatus
from antnest.runner import HEADER, Kind
from antnest.transport import SshOptions, describe_exit
from antnest.transport import STOP_CHECK, CommandExit, Connection, OutputSink

# What a script may answer for one taskunit (anything else: run it as a runner would).
RUN = "run"          # call the function; an exception is that taskunit's error
DIE = "die"          # the runner process dies before this taskunit (exit 137, link alive)
HANG = "hang"        # the runner goes silent: the master's dead-peer timeout fires at once
TIMEOUT = "timeout"  # the runner's task-timeout watchdog fires on this taskunit, then it exits
FATAL = "fatal"      # the runner itself breaks (a FATAL frame, exit 2)
RAISE = "raise"      # the taskunit raises RuntimeError("scripted failure") on this runner
HOLD = "hold"        # the batch waits here until Script.release()
DROP_LINK = "drop link"  # the host's link goes down: every runner of it ends, not blamed

Action = Callable[[Any, "MemoryProcess"], str]

_scripts: Dict[str, "Script"] = {}
_pids = itertools.count(1000)


class Script:
    """What one in-memory host does. `act(item, process)` picks an action per taskunit; the
    script records every (runner label, item) it was asked to run in `seen`."""

    def __init__(self, act: Optional[Action] = None, cpus: int = 2, flush_every: int = 0,
                 refuse: Optional[HostError] = None) -> None:
        self.act: Action = act or (lambda item, process: RUN)
        self.cpus = cpus
        self.flush_every = flush_every  # send partial RESULTS every n taskunits (0: per batch)
        self.refuse = refuse            # connect() raises this
        # antnest exec: command -> (exit status, stdout, stderr), or None: it runs until
        # stopped or timed out. Unset, the host runs no shell commands.
        self.command: Optional[Callable[[str], Optional[Tuple[int, bytes, bytes]]]] = None
        self.seen: List[Tuple[str, Any]] = []
        self.boots = 0
        self.connects = 0
        self.processes: List["MemoryProcess"] = []
        self.link_up = False
        self._lock = threading.Lock()
        self._held: List["MemoryProcess"] = []

    def release(self) -> None:
        """Let every batch waiting on HOLD go on (on this thread)."""
        with self._lock:
            held, self._held = self._held, []
        for process in held:
            process.resume()

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def _hold(self, process: "MemoryProcess") -> None:
        with self._lock:
            self._held.append(process)


def register(address: str, script: Script) -> Script:
    """Make `script` the host at `address` (Host.address) for transport "memory"."""
    _scripts[address] = script
    return script


def unregister(address: str) -> None:
    _scripts.pop(address, None)


class MemoryConnection:
    address: str

    def __init__(self, host: Host) -> None:
        self.host = host
        self.address = f"memory:{host.address}"
        try:
            self.script = _scripts[host.address]
        except KeyError:
            from antnest.errors import ConnectError

            raise ConnectError(host.name, f"no in-memory script registered for "
                               f"{host.address!r}", status=HostStatus.UNREACHABLE) from None

    def connect(self) -> None:
        script = self.script
        script.connects += 1
        if script.refuse is not None:
            raise script.refuse
        script.link_up = True

    def open_runner(self, label: str, stage2: Optional[bytes] = None) -> "MemoryProcess":
        if not self.script.link_up:
            self.connect()
        process = MemoryProcess(label, self.script, self.host)
        self.script.processes.append(process)
        return process

    def is_alive(self) -> bool:
        return self.script.link_up

    def close(self) -> None:
        self.script.link_up = False

    def run_command(self, command: str, output: OutputSink, timeout: Optional[float],
                    stop: threading.Event) -> CommandExit:
        """What the script's `command` answers; no shell runs."""
        if not self.script.link_up:
            self.connect()
        answer = self.script.command
        if answer is None:
            from antnest.errors import ConnectError

            raise ConnectError(self.host.name, "this in-memory host runs no shell commands "
                               "(its Script has no command)", status=HostStatus.ERROR)
        outcome = answer(command)
        if outcome is None:  # a command that never ends by itself
            stopped = stop.wait(timeout) if timeout is not None else _wait_forever(stop)
            return CommandExit(None, timed_out=not stopped, stopped=stopped)
        status, out, err = outcome
        if out:
            output("stdout", out)
        if err:
            output("stderr", err)
        return CommandExit(status)

    def where(self) -> str:
        return f"in-memory runners ({self.host.address})"


def _wait_forever(stop: threading.Event) -> bool:
    while not stop.wait(STOP_CHECK):
        pass
    return True


def open_connection(host: Host, options: SshOptions) -> Connection:
    return MemoryConnection(host)


class MemoryProcess:
    """One scripted runner: frames in through send(), frames out through recv()."""

    def __init__(self, label: str, script: Script, host: Host) -> None:
        self.label = label
        self.script = script
        self.number = script.boots  # 0 for the host's first runner, 1 for the next...
        script.boots += 1
        self.exit_code: Optional[int] = None
        self._cond = threading.Condition()
        self._out = bytearray()
        self._in = bytearray()
        self._silent = False
        self._functions: Dict[int, Callable] = {}
        self._queue: List[Tuple[int, int, list, int]] = []  # batches not run yet (on HOLD)
        self._held = False
        self._passed: set = set()
        self.task_timeout: Optional[float] = None
        self.timeout: Optional[float] = None
        self._ready_r, self._ready_w = os.pipe()  # readable while there is output or an end
        self._ready = False
        hello = {"magic": runner.MAGIC.decode(), "protocol": runner.PROTOCOL_VERSION,
                 "python": list(sys.version_info[:3]), "implementation": sys.implementation.name,
                 "executable": sys.executable, "hostname": host.name, "pid": next(_pids),
                 "cpus": script.cpus, "pickle_protocol": pickle.HIGHEST_PROTOCOL,
                 "cloudpickle": "found"}
        self._emit(Kind.HELLO, runner.encode_hello(hello))

    # -- RunnerProcess -------------------------------------------------------------------
    def set_timeout(self, seconds: Optional[float]) -> None:
        """Recorded only: an idle scripted runner counts as heartbeating; HANG is the silence."""
        self.timeout = seconds

    def send(self, *chunks: bytes) -> None:
        with self._cond:
            if self.exit_code is not None:
                raise BrokenPipeError(f"{self.label}: the runner has exited")
            for chunk in chunks:
                self._in += chunk
        while True:
            with self._cond:
                if len(self._in) < HEADER.size:
                    return
                size, kind = HEADER.unpack_from(self._in)
                if len(self._in) < HEADER.size + size:
                    return
                payload = bytes(self._in[HEADER.size:HEADER.size + size])
                del self._in[:HEADER.size + size]
            self._handle(kind, payload)

    def recv(self, size: int) -> bytes:
        with self._cond:
            while not self._out and self.exit_code is None and not self._silent:
                self._cond.wait()
            if self._out:
                data = bytes(self._out[:size])
                del self._out[:size]
                return data
            if self._silent:
                raise socket.timeout("scripted silence")
            return b""

    def fileno(self) -> int:
        return self._ready_r

    def read_nowait(self, size: int) -> Optional[bytes]:
        """What recv() would return now; None when it would wait. A silent (HANG) runner
        raises socket.timeout: the master's silence bound, reached at once."""
        with self._cond:
            if self._out:
                data = bytes(self._out[:size])
                del self._out[:size]
            elif self._silent:
                raise socket.timeout("scripted silence")
            elif self.exit_code is not None:
                data = b""
            else:
                data = None
            if not self._out and self.exit_code is None and not self._silent:
                self._signal(False)
            return data

    def release(self) -> None:
        with self._cond:
            if self._ready_r >= 0:
                os.close(self._ready_r)
                os.close(self._ready_w)
                self._ready_r = self._ready_w = -1

    def _signal(self, ready: bool) -> None:
        """Make fileno() readable or not (the condition's lock held)."""
        if ready == self._ready or self._ready_w < 0:
            return
        self._ready = ready
        if ready:
            os.write(self._ready_w, b"!")
        else:
            os.read(self._ready_r, 1)

    def close(self) -> None:
        self._exit(0)

    def kill(self) -> None:
        self._exit(-9)

    def diagnose(self) -> str:
        return describe_exit(self.exit_code, "scripted runner")

    # -- the scripted runner -------------------------------------------------------------
    def _emit(self, kind: int, payload: bytes) -> None:
        with self._cond:
            if self.exit_code is None and not self._silent:
                self._out += runner.encode(kind, payload)
                self._signal(True)
                self._cond.notify_all()

    def _exit(self, code: int) -> None:
        with self._cond:
            if self.exit_code is None:
                self.exit_code = code
            self._signal(True)
            self._cond.notify_all()

    def _handle(self, kind: int, payload: bytes) -> None:
        if kind == Kind.JOB:
            fn_id, blob, options = runner.decode_job(payload)
            self.task_timeout = options.get("task_timeout")
            if fn_id is not None and blob is None:  # its call ended: forget it
                self._functions.pop(fn_id, None)
            elif fn_id is not None:
                loaded = pickle.loads(blob)
                if options.get("setup"):  # (processor, setup, args), as the real runner gets it
                    loaded, setup, args = loaded
                    setup(*args)
                self._functions[fn_id] = loaded
        elif kind == Kind.TASKS:
            batch_id, fn_id, _count, blob = runner.decode_tasks(payload)
            try:
                items = runner.decode_items(blob)
            except BaseException as exc:  # as the real runner: that batch's error
                self._emit(Kind.UNDECODABLE, runner.encode_undecodable(
                    batch_id, runner._describe_error(exc)))
                return
            self._queue.append((batch_id, fn_id, items, 0))
            self._run_queue()
        elif kind == Kind.BYE:
            self._exit(0)

    def resume(self) -> None:
        self._held = False
        self._run_queue()

    def _run_queue(self) -> None:
        while self._queue and not self._held and self.exit_code is None and not self._silent:
            batch_id, fn_id, items, start = self._queue[0]
            stopped_at = self._run_batch(batch_id, self._functions[fn_id], items, start)
            if stopped_at is None:
                self._queue.pop(0)
            else:
                self._queue[0] = (batch_id, fn_id, items, stopped_at)
                return

    def _run_batch(self, batch_id: int, fn: Callable, items: list, start: int) -> Optional[int]:
        """Run items[start:]; returns where it stopped when it had to (HOLD), else None."""
        script = self.script
        values: List[Any] = []
        errors: Dict[int, Any] = {}
        offset = start
        for index in range(start, len(items)):
            item = items[index]
            action = script.act(item, self)
            if action == HOLD and (batch_id, index) not in self._passed:
                self._passed.add((batch_id, index))  # after release() it runs
                self._flush(batch_id, offset, values, errors)
                self._held = True
                script._hold(self)
                return index
            if action in (DIE, HANG, TIMEOUT, FATAL, DROP_LINK):
                self._flush(batch_id, offset, values, errors)
                self._end(action, batch_id, index)
                return None
            script.seen.append((self.label, item))
            try:
                if action == RAISE:
                    raise RuntimeError("scripted failure")
                values.append(fn(item))
            except BaseException as exc:  # the task's failure travels home, as on a host
                errors[index] = runner._describe_error(exc)
                values.append(None)
            if script.flush_every and len(values) >= script.flush_every:
                self._flush(batch_id, offset, values, errors)
                offset, values, errors = index + 1, [], {}
        self._flush(batch_id, offset, values, errors, last=True)
        return None

    def _flush(self, batch_id: int, offset: int, values: list, errors: dict,
               last: bool = False) -> None:
        if values or last:
            self._emit(Kind.RESULTS, runner.encode_results(batch_id, offset, values, errors, 0.0))

    def _end(self, action: str, batch_id: int, index: int) -> None:
        if action == DIE:
            self._exit(137)
        elif action == HANG:
            with self._cond:
                self._silent = True
                self._signal(True)
                self._cond.notify_all()
        elif action == TIMEOUT:
            elapsed = (self.task_timeout or 0.0) + 1.0
            self._emit(Kind.TIMEOUT, runner.encode_timeout(batch_id, index, elapsed))
            self._exit(3)
        elif action == FATAL:
            self._emit(Kind.FATAL, runner.encode_fatal("RuntimeError: scripted fatal"))
            self._exit(2)
        elif action == DROP_LINK:
            self.script.link_up = False
            for process in list(self.script.processes):
                process._exit(255)

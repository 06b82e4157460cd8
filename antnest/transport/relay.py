"""Relays: hosts reached through a runner on another host that opens their ssh sessions.

For thousands of hosts, one master's handshakes (CPU in Python, one socket each) are the
limit. A relay moves them: the master opens one connection to the relay host and starts the
runner there in relay mode (`runner.relay_main`); the relay runs the relay host's own ``ssh``
to each host behind it and carries every session's stdin and stdout over its one channel,
each tagged with a stream id (RELAY_OPEN / RELAY_DATA / RELAY_CLOSE / RELAY_KILL /
RELAY_EXIT frames). The runners' frames inside the streams are the master's alone:
scheduling, exactly-once and loss handling do not change. A lost relay ends every stream it
carried, which are lost runners like any other, requeued by the master.

    master ── one channel ──▶ relay host: runner.relay_main
                                 ├─ ssh -F /dev/null ... host-a 'python3 -B -c ...'  stream 1
                                 └─ ssh -F /dev/null ... host-b 'python3 -B -c ...'  stream 2

Nothing is written on the relay: the master resolves each host (ssh_config, inventory) and
passes the result as ssh options; its known_hosts lines travel in RELAY_SETUP and live in a
memfd there; keys stay on the master and sign through the forwarded agent
(antnest.transport.agent). Each relayed runner is one ssh process, and one handshake, on the
relay; the relay's handshakes are paced by a window of their own.

Here, each relayed runner is a `RelayedProcess`: what the relay forwards lands in an `_Inbox`
(a buffer and a pipe that is readable while it holds something), so the dispatcher selects on
it like on any runner's stdout.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import socket
import threading
import time
from typing import Deque, Dict, List, Optional, Tuple

from antnest import bootstrap, runner
from antnest.errors import BootstrapError, ConnectError, HostError
from antnest.host import Host, HostStatus
from antnest.inventory.ssh_options import DEFAULT_GLOBAL_KNOWN_HOSTS, ssh_user
from antnest.runner import FrameReader, Kind
from antnest.transport import (CommandExit, Connection, OutputSink, RunnerProcess,
                               SshOptions, describe_exit, link_errors, open_connection)
from antnest.transport.handshakes import HandshakeWindow
from antnest.transport.openssh import _known_hosts_files

log = logging.getLogger(__name__)

RELAY_SILENCE = 10.0     # seconds without a frame (it pings every 2 s) before a relay is lost
EXIT_WAIT = 3.0          # seconds diagnose() waits for a stream's exit status
FIRST_BYTE_GRACE = 20.0  # seconds past the connect timeout a relayed ssh gets to say hello


# --------------------------------------------------------------------------- one stream

class _Inbox:
    """Bytes the relay forwarded for one stream, for a reader that blocks (the boot) or
    selects (the dispatcher). A pipe carries one byte while the inbox holds data or its end,
    so `fileno()` is readable exactly then."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._chunks: Deque[bytes] = collections.deque()
        self._ended = False
        self._signalled = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def fileno(self) -> int:
        if self._r < 0:
            raise ValueError("the stream's inbox is closed")
        return self._r

    def put(self, data: bytes) -> None:
        with self._cond:
            if self._ended:
                return
            if data:
                self._chunks.append(data)
            else:
                self._ended = True
            self._signal()
            self._cond.notify_all()

    def end(self) -> None:
        self.put(b"")

    @property
    def has_data(self) -> bool:
        with self._cond:
            return bool(self._chunks)

    def wait_started(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._chunks) or self._ended, timeout)

    def take(self, size: int, timeout: Optional[float], block: bool) -> Optional[bytes]:
        """Up to `size` bytes; b'' once ended and empty; None when nothing is there and
        `block` is False; socket.timeout when blocking longer than `timeout`."""
        with self._cond:
            if block and not self._cond.wait_for(lambda: bool(self._chunks) or self._ended,
                                                 timeout):
                raise socket.timeout(f"no output from the runner for {timeout:g} s")
            if not self._chunks:
                return b"" if self._ended else None
            first = self._chunks[0]
            if len(first) <= size:
                self._chunks.popleft()
            else:
                self._chunks[0] = first[size:]
                first = first[:size]
            if not self._chunks and not self._ended:
                self._clear()
            return first

    def _signal(self) -> None:
        if not self._signalled and self._w >= 0:
            self._signalled = True
            os.write(self._w, b"!")

    def _clear(self) -> None:
        if self._signalled and self._r >= 0:
            self._signalled = False
            try:
                os.read(self._r, 16)
            except BlockingIOError:
                pass

    def close(self) -> None:
        with self._cond:
            self._ended = True
            self._chunks.clear()
            self._cond.notify_all()
            for fd in (self._r, self._w):
                if fd >= 0:
                    os.close(fd)
            self._r = self._w = -1


class RelayedProcess:
    """A runner behind a relay (a RunnerProcess): an ssh process the relay runs for us."""

    def __init__(self, label: str, link: "RelayLink", stream: int, host: Host) -> None:
        self.label = label
        self.host = host
        self._link = link
        self._stream = stream
        self._inbox = _Inbox()
        self._timeout: Optional[float] = None
        self._exited = threading.Event()
        self._status: Optional[int] = None
        self._stderr = ""
        self._lost: Optional[str] = None   # why the relay went, when it did
        self._closed = False

    # what the link's reader calls
    def _deliver(self, data: bytes) -> None:
        self._inbox.put(data)

    def _exit(self, status: Optional[int], stderr: str, lost: Optional[str] = None) -> None:
        if self._exited.is_set():
            return
        self._status, self._stderr, self._lost = status, stderr, lost
        self._inbox.end()
        self._exited.set()

    # RunnerProcess
    def set_timeout(self, seconds: Optional[float]) -> None:
        self._timeout = seconds

    def send(self, *chunks: bytes) -> None:
        if self._closed or self._exited.is_set():
            raise BrokenPipeError(f"{self.label}: the runner's stdin is closed")
        self._link.send_data(self._stream, chunks)

    def recv(self, size: int) -> bytes:
        data = self._inbox.take(size, self._timeout, block=True)
        return data if data is not None else b""

    def fileno(self) -> int:
        return self._inbox.fileno()

    def read_nowait(self, size: int) -> Optional[bytes]:
        return self._inbox.take(size, None, block=False)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._link.control(Kind.RELAY_CLOSE, self._stream)

    def kill(self) -> None:
        self._closed = True
        if not self._exited.is_set():
            self._link.control(Kind.RELAY_KILL, self._stream)

    def release(self) -> None:
        self._inbox.close()

    def started(self, timeout: float) -> bool:
        """Wait until the runner said something (it authenticated and runs) or the stream
        ended; False past `timeout`."""
        return self._inbox.wait_started(timeout)

    def exit_status(self) -> Optional[int]:
        self._exited.wait(EXIT_WAIT)
        return self._status

    def diagnose(self) -> str:
        self._exited.wait(EXIT_WAIT)
        if self._lost is not None:
            return f"the relay {self._link.relay.name} was lost ({self._lost})"
        if not self._exited.is_set():
            return describe_exit(None, "", "no exit status yet")
        if self._status == 255:
            from antnest.transport.openssh import classify

            error = classify(self.host, self._stderr, self._link.options)
            return describe_exit(None, self._stderr, f"ssh on the relay failed ({error.problem})")
        return describe_exit(self._status, self._stderr)


# --------------------------------------------------------------------------- one relay

class RelayLink:
    """The master's one channel to a relay host, shared by every host behind it."""

    def __init__(self, relay: Host, options: SshOptions) -> None:
        if relay.relay is not None:
            raise ConnectError(relay.name, f"is a relay and has a relay itself "
                               f"({relay.relay.name}): relays are one level deep",
                               status=HostStatus.ERROR)
        self.relay = relay
        self.options = options
        self.window = HandshakeWindow()   # the relay's own handshakes, paced like ours
        self.epoch = 0                    # +1 per relay started: streams of an older one are lost
        self._lock = threading.Lock()     # connecting, and the streams table
        self._reader_alive = False
        self._conn: Optional[Connection] = None
        self._proc: Optional[RunnerProcess] = None
        self._streams: Dict[int, RelayedProcess] = {}
        self._ids = itertools.count(1)
        self._identity_files: List[str] = []
        self._known_files: Tuple[str, ...] = ()
        self._sent_known: Tuple[str, ...] = ()
        self._users = 0

    # -- who uses it ----------------------------------------------------------------------
    def register(self, host: Host) -> None:
        """A host behind this relay: its keys and known_hosts files travel to the relay."""
        with self._lock:
            self._users += 1
            self._identity_files += [f for f in host.identity_files
                                     if f not in self._identity_files]
            files = _known_hosts_files(host, self.options) + [
                os.path.expanduser(f) for f in host.global_known_hosts
                or DEFAULT_GLOBAL_KNOWN_HOSTS]
            self._known_files = tuple(dict.fromkeys(self._known_files + tuple(files)))

    def unregister(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users <= 0
        if last:
            self.close()
            _links.forget(self)

    def is_alive(self) -> bool:
        return self._proc is not None and self._reader_alive

    # -- starting the relay ---------------------------------------------------------------
    def ensure(self, for_host: str) -> int:
        """Start the relay unless it runs; returns its epoch. Raises a HostError for
        `for_host` that names the relay."""
        with self._lock:
            if self.is_alive():
                self._send_known_hosts()
                return self.epoch
            self._stop()
            try:
                self._start(for_host)
            except HostError as exc:
                self._stop()
                raise type(exc)(for_host, f"through the relay {self.relay.name}: "
                                f"{exc.problem}", status=exc.status) from None
            return self.epoch

    def _start(self, for_host: str) -> None:
        from antnest.transport.agent import agent_for
        from antnest.worker import await_hello

        agent = agent_for(for_host, self._identity_files)
        options = dataclasses.replace(self.options, forward_agent=agent)
        conn = open_connection(self.relay, options)
        self._conn = conn
        conn.connect()
        proc = conn.open_runner(f"relay {self.relay.name}", stage2=bootstrap.relay_stage2())
        self._proc = proc
        reader = FrameReader(proc.recv, 1 << 20)
        hello = await_hello(self.relay, proc, reader)
        if hello.get("role") != "relay":
            proc.kill()
            raise BootstrapError(self.relay.name, f"the relay did not start in relay mode: "
                                 f"{hello!r}")
        self.epoch += 1
        self._reader_alive = True
        self._sent_known = ()
        self._send_known_hosts()
        threading.Thread(target=self._read, args=(proc, reader, self.epoch),
                         name=f"antnest-relay-{self.relay.name}", daemon=True).start()
        log.info("relay %s: up (Python %s) for the hosts behind it", self.relay.name,
                 ".".join(map(str, hello["python"])))

    def _send_known_hosts(self) -> None:
        if self._known_files == self._sent_known or self._proc is None:
            return
        lines = []
        for path in self._known_files:
            try:
                with open(path, "rb") as f:
                    lines.append(f.read().rstrip(b"\n") + b"\n")
            except OSError:
                continue
        log.debug("relay %s: known_hosts from %s", self.relay.name, ", ".join(self._known_files))
        payload = runner.encode_relay_setup(bootstrap.stage2(), b"".join(lines))
        self._proc.send(*runner.frame(Kind.RELAY_SETUP, payload))
        self._sent_known = self._known_files

    # -- streams --------------------------------------------------------------------------
    def open(self, label: str, host: Host, argv: List[str], with_stage2: bool = True
             ) -> RelayedProcess:
        with self._lock:
            if not self.is_alive():
                raise ConnectError(host.name, f"the relay {self.relay.name} is not connected",
                                   status=HostStatus.UNREACHABLE)
            stream = next(self._ids)
            proc = RelayedProcess(label, self, stream, host)
            self._streams[stream] = proc
            relay = self._proc
            assert relay is not None
        payload = runner.encode_relay_open(stream, argv, with_stage2)
        try:
            relay.send(*runner.frame(Kind.RELAY_OPEN, payload))
        except link_errors() as exc:
            proc._exit(None, "", f"cannot send to it: {exc}")
        return proc

    def send_data(self, stream: int, chunks: Tuple[bytes, ...]) -> None:
        relay = self._proc
        if relay is None:
            raise BrokenPipeError(f"the relay {self.relay.name} is gone")
        size = sum(len(c) for c in chunks)
        # one send() call: its chunks are queued together, never cut by another stream's
        relay.send(runner.relay_data_header(stream, size), *chunks)

    def control(self, kind: int, stream: int) -> None:
        relay = self._proc
        if relay is None:
            return
        try:
            relay.send(runner.encode(kind, runner.encode_relay_stream(stream)))
        except link_errors():
            pass   # the relay is gone: the stream ends with it

    # -- the relay's frames ---------------------------------------------------------------
    def _read(self, proc: RunnerProcess, reader: FrameReader, epoch: int) -> None:
        why = "its channel closed"
        proc.set_timeout(RELAY_SILENCE)
        try:
            while True:
                found = reader.next()
                if found is None:
                    break
                kind, payload = found
                if kind == Kind.RELAY_DATA:
                    stream, data = runner.decode_relay_data(payload)
                    target = self._streams.get(stream)
                    if target is not None:
                        target._deliver(bytes(data))
                elif kind == Kind.RELAY_EXIT:
                    stream, status, stderr = runner.decode_relay_exit(payload)
                    with self._lock:
                        target = self._streams.pop(stream, None)
                    if target is not None:
                        target._exit(status, stderr)
                elif kind == Kind.FATAL:
                    why = "it failed: " + runner.decode_fatal(payload).strip().splitlines()[-1]
                    break
        except socket.timeout:
            why = f"no word from it for {RELAY_SILENCE:g} s"
        except link_errors() as exc:
            why = f"connection broken: {exc}"
        except Exception as exc:   # a bug here must still end every stream, never hang one
            log.exception("relay %s: reading it failed", self.relay.name)
            why = f"internal error: {type(exc).__name__}: {exc}"
        with self._lock:
            if epoch != self.epoch:
                return
            self._reader_alive = False
            streams, self._streams = self._streams, {}
        log.warning("relay %s lost: %s; the runners behind it are lost with it",
                    self.relay.name, why)
        for target in streams.values():
            target._exit(None, "", why)
        try:
            proc.kill()
        except link_errors():
            pass

    # -- the end --------------------------------------------------------------------------
    def _stop(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc, self._conn = None, None
        self._reader_alive = False
        if proc is not None:
            try:
                proc.close()
                proc.kill()
            except link_errors():
                pass
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            streams, self._streams = self._streams, {}
            self._stop()
            self.epoch += 1
        for target in streams.values():
            target._exit(None, "", "the run closed it")


class _Links:
    """One RelayLink per relay host and run options, shared by the hosts behind it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._links: Dict[Tuple[Host, SshOptions], RelayLink] = {}

    def get(self, relay: Host, options: SshOptions) -> RelayLink:
        key = (relay, options)
        with self._lock:
            link = self._links.get(key)
            if link is None:
                link = self._links[key] = RelayLink(relay, options)
            return link

    def forget(self, link: RelayLink) -> None:
        with self._lock:
            key = (link.relay, link.options)
            if self._links.get(key) is link:
                del self._links[key]


_links = _Links()


# --------------------------------------------------------------------------- one relayed host

def relayed_ssh_args(host: Host, options: SshOptions) -> List[str]:
    """The ssh options the relay uses for `host`: everything the master resolved, nothing
    read from the relay's own files (-F /dev/null; known_hosts from RELAY_SETUP)."""
    from antnest.transport.openssh import checked_session_args, host_key_policy

    if host.jump or host.proxy_command:
        raise ConnectError(host.name, f"has a ProxyJump/ProxyCommand and a relay "
                           f"({host.relay.name if host.relay else '?'}): use one of them",
                           status=HostStatus.ERROR)
    checking, known = host_key_policy(host, options)
    # the unchecked opt-in (see host_key_policy) records into /dev/null, even here
    files = ([os.devnull] if os.devnull in known else []) + [runner.KNOWN_HOSTS_TOKEN]
    args = (["-F", os.devnull, "-T"] + checked_session_args(host, options, checking, files)
            + ["-o", "GlobalKnownHostsFile=" + os.devnull,
               "-o", "ControlMaster=no", "-o", "ControlPath=none",
               "-p", str(host.port), "-l", host.user or ssh_user()])
    if host.ciphers:
        args += ["-o", f"Ciphers={host.ciphers}"]
    if options.compress:
        args += ["-C"]
    return args


class RelayedConnection:
    """A host behind a relay (a Connection): its runners are ssh processes on the relay."""

    def __init__(self, host: Host, options: SshOptions) -> None:
        assert host.relay is not None
        self.host = host
        self.options = options
        self.address = f"{host.address}:{host.port} via {host.relay.name}"
        self._link = _links.get(host.relay, options)
        self._link.register(host)
        self._registered = True
        self._lock = threading.Lock()
        self._epoch = -1
        self._first: Optional[RelayedProcess] = None
        self._args: Optional[List[str]] = None

    def _argv(self, command: str) -> List[str]:
        if self._args is None:   # may refuse (a ProxyJump too, StrictHostKeyChecking no)
            self._args = relayed_ssh_args(self.host, self.options)
        return ["ssh"] + self._args + ["--", self.host.address, command]

    def connect(self) -> None:
        """Start the relay if need be, then the host's first runner: its ssh handshake on the
        relay says whether the host can be used, with the same errors as the openssh client."""
        with self._lock:
            if self.is_alive():
                return
            self._argv("")   # refuses what cannot go through a relay before it starts
            epoch = self._link.ensure(self.host.name)
            first = self._open_started("connect")
            status = None if first._inbox.has_data else first.exit_status()  # ended unheard
            if first._lost is not None:
                first.release()
                raise ConnectError(self.host.name, f"the relay {self.host.relay.name} was lost "  # type: ignore[union-attr]
                                   f"({first._lost})", status=HostStatus.UNREACHABLE)
            if status == 255:
                from antnest.transport.openssh import classify

                first.release()
                error = classify(self.host, first._stderr, self.options)
                log.debug("%s: ssh on the relay said: %s", self.host.name, first._stderr)
                raise type(error)(error.host, f"{error.problem} (from the relay "
                                  f"{self.host.relay.name})", status=error.status)  # type: ignore[union-attr]
            self._first = first
            self._epoch = epoch

    def _open_started(self, label: str) -> RelayedProcess:
        """Open a stream under the relay's handshake window and wait until its ssh is through
        (the runner speaks) or it ended."""
        timeout = (self.host.connect_timeout or self.options.connect_timeout) + FIRST_BYTE_GRACE
        with self._link.window.slot() as slot:
            proc = self._link.open(label, self.host, self._argv(bootstrap.command(self.host.python)))
            if not proc.started(timeout):
                proc.kill()
                proc.release()
                raise ConnectError(self.host.name, f"ssh from the relay {self.host.relay.name} "  # type: ignore[union-attr]
                                   f"did not get through within {timeout:g} s",
                                   status=HostStatus.TIMEOUT)
            if proc._exited.is_set() and proc._status == 255 and _dropped(proc._stderr):
                slot.outcome = "dropped"
            elif not proc._exited.is_set():
                slot.outcome = "ok"
        return proc

    def open_runner(self, label: str, stage2: Optional[bytes] = None) -> RelayedProcess:
        if stage2 is not None:
            raise ConnectError(self.host.name, "a relayed host cannot be a relay itself",
                               status=HostStatus.ERROR)
        if not self.is_alive():
            self.connect()
        with self._lock:
            first, self._first = self._first, None
        if first is not None:
            first.label = label
            return first
        return self._open_started(label)

    def is_alive(self) -> bool:
        return self._link.is_alive() and self._epoch == self._link.epoch

    def close(self) -> None:
        with self._lock:
            first, self._first = self._first, None
            registered, self._registered = self._registered, False
            self._epoch = -1
        if first is not None:
            first.kill()
            first.release()
        if registered:
            self._link.unregister()

    def run_command(self, command: str, output: OutputSink, timeout: Optional[float],
                    stop: threading.Event) -> CommandExit:
        """The command as an ssh session from the relay; its stderr comes after its stdout
        (the relay keeps the last 8 KiB of it)."""
        from antnest.transport import STOP_CHECK

        argv = self._argv(command)
        self._link.ensure(self.host.name)
        proc = self._link.open("exec", self.host, argv, with_stage2=False)
        proc.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        timed_out = stopped = False
        proc.set_timeout(STOP_CHECK)
        try:
            while True:
                try:
                    data = proc.recv(1 << 16)
                except socket.timeout:
                    stopped = stop.is_set()
                    timed_out = not stopped and deadline is not None and \
                        time.monotonic() >= deadline
                    if stopped or timed_out:
                        proc.kill()
                        break
                    continue
                if not data:
                    break
                output("stdout", data)
            status = proc.exit_status()
            if proc._stderr:
                output("stderr", proc._stderr.encode())
            if proc._lost is not None:
                raise ConnectError(self.host.name, f"the relay {self.host.relay.name} was lost "  # type: ignore[union-attr]
                                   f"({proc._lost})", status=HostStatus.UNREACHABLE)
        finally:
            proc.release()
        return CommandExit(None if (timed_out or stopped) else status, timed_out=timed_out,
                           stopped=stopped)

    def where(self) -> str:
        user = self.host.user or ssh_user()
        return (f"{user}@{self.host.address}:{self.host.port} via the relay "
                f"{self.host.relay.name} (its ssh client)")  # type: ignore[union-attr]


def _dropped(stderr: str) -> bool:
    """sshd refused the handshake for load (MaxStartups), not for the host's reasons."""
    return any(word in stderr for word in ("kex_exchange_identification", "Connection reset",
                                           "Connection closed by remote host"))


__all__ = ["RelayLink", "RelayedConnection", "RelayedProcess", "relayed_ssh_args"]

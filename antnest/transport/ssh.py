"""One SSH connection per host (a paramiko SSHClient), one exec channel per runner.

Host keys are checked against known_hosts like OpenSSH with StrictHostKeyChecking=yes; an
unknown key is recorded only when the user opted in (accept-new), a changed key never is.
Nothing ever prompts: a passphrase, password or host key question is an error instead.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import random
import select
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from antnest.transport import paramiko_without_invoke

with paramiko_without_invoke():
    import paramiko

from antnest import bootstrap
from antnest.transport import STOP_CHECK, CommandExit, OutputSink
from antnest.errors import AuthError, ConnectError, HostError, HostKeyError, format_seconds
from antnest.host import Host, HostStatus
from antnest.limits import FD_ERRNOS, fd_limit_advice
from antnest.transport import SshOptions, describe_exit, known_hosts, outgoing
from antnest.transport.handshakes import handshakes

log = logging.getLogger(__name__)

# paramiko reports every failed handshake with a traceback on its "paramiko.transport" logger;
# antnest already turns each failure into one typed error, so an API user who configured no
# logging must not get paramiko's tracebacks on stderr through Python's last-resort handler.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

WINDOW_SIZE = 64 * 1024 * 1024  # bytes the host may send before we acknowledge
MAX_PACKET = 32 * 1024          # OpenSSH's session packet limit
HANDSHAKE_TRIES = 4
COMMAND_READ = 65536            # bytes per read of a plain command's output


def fingerprint(key: paramiko.PKey) -> str:
    """SHA256 fingerprint exactly as OpenSSH prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


_record_lock = threading.Lock()


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown key: an error naming the fingerprint, or recorded when accept-new is on
    (--accept-new-host-keys or StrictHostKeyChecking accept-new); with StrictHostKeyChecking no
    (only after --allow-unchecked-host-keys) accepted for this connection without recording."""

    def __init__(self, host: Host, options: SshOptions) -> None:
        self._host = host
        self._options = options
        self._policy = known_hosts.policy(host, options.accept_new_host_keys,
                                          options.allow_unchecked_host_keys)

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        where = known_hosts.writable(self._host, self._options.known_hosts)
        if self._policy == "no":
            log.warning("%s: host key %s %s NOT checked (StrictHostKeyChecking no, "
                        "--allow-unchecked-host-keys)", self._host.name, key.get_name(),
                        fingerprint(key))
            return
        if self._policy != "accept-new":
            raise HostKeyError(
                self._host.name,
                f"host key for {hostname} is not known ({key.get_name()} {fingerprint(key)}); "
                f"check it, then add it to {where} (for example with ssh-keyscan) "
                "or rerun with --accept-new-host-keys",
                status=HostStatus.HOST_KEY_UNKNOWN,
            )
        with _record_lock:
            os.makedirs(os.path.dirname(where) or ".", mode=0o700, exist_ok=True)
            with open(where, "a") as out:
                out.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            client._system_host_keys.add(hostname, key.get_name(), key)
        log.warning("%s: recorded new host key %s %s in %s", self._host.name, key.get_name(),
                    fingerprint(key), where)


def open_connection(host: Host, options: SshOptions) -> "SshConnection":
    return SshConnection(host, options)


class SshConnection:
    """The connection to one host; runners are exec channels on it."""

    def __init__(self, host: Host, options: SshOptions) -> None:
        self.host = host
        self.address = f"{host.address}:{host.port}"
        self.options = options
        self._conn: Optional[_Link] = None
        self._lock = threading.Lock()

    # -- connecting -----------------------------------------------------------------------
    def connect(self) -> None:
        """Open the connection (and its jump chain); raise a HostError a person can act on."""
        with self._lock:
            if self._conn is not None and self.is_alive():
                return
            if self._conn is not None:  # a dead connection: let go of it and its jump hosts
                self._discard(self._conn)
                self._conn = None
            delay = 0.2
            timeout = self.host.connect_timeout or self.options.connect_timeout
            deadline = time.monotonic() + timeout  # for every attempt together
            for attempt in range(1, HANDSHAKE_TRIES + 1):
                started = time.monotonic()
                try:
                    self._conn = self._open()
                    return
                except _RetryableHandshake as exc:
                    started += exc.waited          # time queued for a slot is not the host's
                    deadline += exc.waited
                    if time.monotonic() - started >= 0.9 * timeout:
                        # a host that accepts TCP and then says nothing: no second wait
                        raise ConnectError(self.host.name, f"{exc}: no SSH greeting within "
                                           f"the connect timeout ({format_seconds(timeout)})",
                                           status=HostStatus.TIMEOUT) from None
                    pause = delay * (1 + random.random())
                    if attempt == HANDSHAKE_TRIES or time.monotonic() + pause >= deadline:
                        raise ConnectError(self.host.name, f"{exc} (after {attempt} attempts)",
                                           status=HostStatus.HANDSHAKE_FAILED) from None
                    time.sleep(pause)
                    delay *= 2

    def _open(self) -> "_Link":
        gateway: Any = None
        if self.host.jump:
            gateway = _gateways.acquire(self, self.host.jump)
        try:
            conn = self._connection(self.host, gateway)
            self._establish(conn, self.host)
        except BaseException:
            if self.host.jump:
                _gateways.release(self.host.jump)
            raise
        return conn

    def _connection(self, host: Host, gateway: Optional["_Link"]) -> "_Link":
        keys = usable_keys(host)
        known = known_hosts.load(host, self.options.known_hosts)
        conn = _Link(
            host.address,
            user=host.user or _local_user(),
            port=host.port,
            gateway=gateway,
            connect_timeout=host.connect_timeout or self.options.connect_timeout,
            connect_kwargs={
                "key_filename": keys,
                # As OpenSSH: IdentitiesOnly offers only the named files; the default
                # ~/.ssh/id_* are tried only when no IdentityFile is named.
                "allow_agent": not host.identities_only,
                "look_for_keys": not host.identity_files and not host.identities_only,
                "compress": self.options.compress,
                "banner_timeout": host.connect_timeout or self.options.connect_timeout,
                "auth_timeout": host.connect_timeout or self.options.connect_timeout,
                "transport_factory": functools.partial(_transport, host=host, known=known),
            },
        )
        client = conn.client
        # Parsed once per set of files, shared by every connection; each gets its host's lines.
        client._system_host_keys = known.for_host(known_hosts_name(host.address, host.port))
        client.set_missing_host_key_policy(_HostKeyPolicy(host, self.options))
        return conn

    def _establish(self, conn: "_Link", host: Host) -> None:
        if conn.is_connected:
            return
        user = conn.user
        slot = handshakes.slot()
        try:
            with slot:
                if conn.gateway is None and host.proxy_command:
                    conn.connect_kwargs["sock"] = ShellProxyCommand(host.proxy_command)
                elif conn.gateway is None:
                    conn.connect_kwargs["sock"] = _tcp(host, conn.connect_timeout)
                try:
                    conn.open()
                except (EOFError, ConnectionResetError):
                    slot.outcome = "dropped"   # MaxStartups or load: fewer at once
                    raise
                except paramiko.SSHException as exc:
                    if "banner" in str(exc):   # closed before its greeting: dropped too
                        slot.outcome = "dropped"
                    raise
                slot.outcome = "ok"
        except HostError:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                host.name,
                f"host key for {known_hosts_name(host.address, host.port)} has CHANGED: it "
                f"presented {exc.key.get_name()} {fingerprint(exc.key)}, known_hosts has "
                f"{fingerprint(exc.expected_key)}. This may be an attack; if the host was "
                f"reinstalled, remove the old line from "
                f"{known_hosts.writable(host, self.options.known_hosts)} "
                f"(ssh-keygen -R '{known_hosts_name(host.address, host.port)}')",
                status=HostStatus.HOST_KEY_CHANGED,
            ) from None
        except paramiko.PasswordRequiredException as exc:
            raise AuthError(host.name, f"a private key is encrypted and there is no prompt in "
                            f"antnest: add it to ssh-agent (ssh-add) ({exc})") from None
        except paramiko.AuthenticationException as exc:
            raise AuthError(host.name, f"authentication failed for user {user!r}: "
                            f"{_offered_keys(host)} ({exc})") from None
        except socket.gaierror as exc:
            raise ConnectError(host.name, f"cannot resolve {host.address!r}: {exc.strerror}",
                               status=HostStatus.UNREACHABLE) from None
        except paramiko.ssh_exception.NoValidConnectionsError as exc:
            refused = all(getattr(e, "errno", None) == 111 for e in exc.errors.values())
            raise ConnectError(host.name, f"cannot connect to {host.address} port {host.port}: "
                               f"{'connection refused' if refused else exc}",
                               status=HostStatus.REFUSED if refused else HostStatus.UNREACHABLE) from None
        except (socket.timeout, TimeoutError) as exc:
            raise ConnectError(host.name, f"no answer from {host.address} port {host.port} "
                               f"within the connect timeout ({exc or 'timed out'})",
                               status=HostStatus.TIMEOUT) from None
        except ConnectionRefusedError:
            raise ConnectError(host.name, f"connection refused by {host.address} port "
                               f"{host.port}", status=HostStatus.REFUSED) from None
        except paramiko.SSHException as exc:
            if "authentication methods" in str(exc):  # no key at all to offer
                raise AuthError(host.name, f"authentication failed for user {user!r}: "
                                f"{_offered_keys(host)}") from None
            raise _RetryableHandshake(f"SSH handshake with {host.address}:{host.port} "
                                      f"failed: {exc}", slot.waited) from None
        except (EOFError, ConnectionResetError) as exc:
            # sshd drops handshakes beyond MaxStartups: that is worth another try.
            raise _RetryableHandshake(f"SSH handshake with {host.address}:{host.port} "
                                      f"failed: {exc}", slot.waited) from None
        except OSError as exc:
            if exc.errno in FD_ERRNOS:   # a local limit, not the host: say what to raise
                raise ConnectError(host.name, f"cannot connect to {host.address} port "
                                   f"{host.port}: out of file descriptors here; "
                                   f"{fd_limit_advice()}", status=HostStatus.UNREACHABLE) from None
            raise ConnectError(host.name, f"cannot connect to {host.address} port {host.port}: "
                               f"{exc.strerror or exc}", status=HostStatus.UNREACHABLE) from None
        interval = host.server_alive_interval or self.options.keepalive
        if interval:
            conn.transport.set_keepalive(int(max(1, interval)))

    def is_alive(self) -> bool:
        transport = self._conn.transport if self._conn is not None else None
        return bool(transport is not None and transport.is_active())

    # -- runners --------------------------------------------------------------------------
    def open_runner(self, label: str, stage2: Optional[bytes] = None) -> "SshProcess":
        if self._conn is None or not self.is_alive():
            self.connect()
        assert self._conn is not None
        try:
            channel = self._conn.transport.open_session(
                window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET, timeout=self.options.connect_timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(self.host.name, f"cannot open a session channel: {exc}",
                               status=HostStatus.UNREACHABLE) from None
        return SshProcess(label, channel, self.host.python, stage2, self.options.forward_agent)

    def run_command(self, command: str, output: OutputSink, timeout: Optional[float],
                    stop: threading.Event) -> CommandExit:
        """A plain exec channel running `command` in the login shell; its two streams are
        read as paramiko fills them (each buffer signals a pipe of its own)."""
        if self._conn is None or not self.is_alive():
            self.connect()
        assert self._conn is not None
        try:
            channel = self._conn.transport.open_session(timeout=self.options.connect_timeout)
            channel.exec_command(command)
            channel.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(self.host.name, f"cannot run a command: {exc}",
                               status=HostStatus.UNREACHABLE) from None
        events = [paramiko.pipe.make_pipe(), paramiko.pipe.make_pipe()]
        channel.in_buffer.set_event(events[0])
        channel.in_stderr_buffer.set_event(events[1])
        deadline = None if timeout is None else time.monotonic() + timeout
        timed_out = stopped = False
        try:
            while True:
                while channel.recv_ready():
                    output("stdout", channel.recv(COMMAND_READ))
                while channel.recv_stderr_ready():
                    output("stderr", channel.recv_stderr(COMMAND_READ))
                if (channel.eof_received or channel.closed) and channel.exit_status_ready() \
                        and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                stopped = stop.is_set()
                timed_out = not stopped and deadline is not None and \
                    time.monotonic() >= deadline
                if stopped or timed_out:
                    break
                wait = STOP_CHECK if deadline is None else \
                    max(0.0, min(STOP_CHECK, deadline - time.monotonic()))
                if channel.eof_received or channel.closed:  # only the exit status to come
                    channel.status_event.wait(wait)
                else:  # a pipe is readable once its buffer has bytes (or at the end)
                    select.select([event.fileno() for event in events], [], [], wait)
            code = channel.recv_exit_status() if channel.exit_status_ready() else None
        finally:
            channel.close()
            for event in events:
                event.close()
        return CommandExit(code, timed_out=timed_out, stopped=stopped)

    def where(self) -> str:
        return f"{self.host.user or _local_user()}@{self.host.address}:{self.host.port} " \
               "(paramiko)"

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            self._discard(conn)

    def _discard(self, conn: "_Link") -> None:
        conn.close()
        if self.host.jump:
            _gateways.release(self.host.jump)


class _Gateways:
    """Jump hosts shared by every target behind them: one connection per hop chain, so a
    bastion in front of 100 hosts sees one handshake, not 100 (MaxStartups), and each target
    is a cheap direct-tcpip channel through it. Counted: the last user closes it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: Dict[tuple, list] = {}  # chain -> [_Link or None, users, lock]

    @staticmethod
    def _key(chain: Sequence[Host]) -> tuple:
        return tuple((h.user, h.address, h.port, h.identity_files) for h in chain)

    def acquire(self, owner: "SshConnection", chain: Sequence[Host]) -> "_Link":
        """The open connection to the last hop of `chain`, through the hops before it."""
        parent = self.acquire(owner, chain[:-1]) if len(chain) > 1 else None
        key = self._key(chain)
        with self._lock:
            entry = self._entries.setdefault(key, [None, 0, threading.Lock()])
            entry[1] += 1
        try:
            with entry[2]:
                conn = entry[0]
                if conn is None or conn.transport is None or not conn.transport.is_active():
                    hop = chain[-1]
                    conn = owner._connection(hop, parent)
                    owner._establish(conn, _jump_host(hop, owner.host))
                    entry[0] = conn
            return conn
        except BaseException:
            self._drop(key)
            if len(chain) > 1:
                self.release(chain[:-1])
            raise

    def release(self, chain: Sequence[Host]) -> None:
        self._drop(self._key(chain))
        if len(chain) > 1:
            self.release(chain[:-1])

    def _drop(self, key: tuple) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._entries[key]
        if entry[0] is not None:
            entry[0].close()


_gateways = _Gateways()


class _RetryableHandshake(Exception):
    def __init__(self, message: str, waited: float = 0.0) -> None:
        super().__init__(message)
        self.waited = waited   # seconds this attempt queued for a handshake slot


_keys_lock = threading.Lock()
_keys: Dict[tuple, Any] = {}   # (file, stats, passphrase, key class) -> PKey, or why it is not one


def _stamp(path: str) -> Optional[Tuple[int, int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class _Client(paramiko.SSHClient):
    """paramiko's client, reading each identity file once per run. paramiko parses the file
    again for every host, and tries RSA, ECDSA then Ed25519 in turn: three parses per host
    for an Ed25519 key, about 1 ms of the master's one core per host. What is remembered is
    the key, or that the file is not of that type; anything else (an encrypted key, an
    unreadable file) is raised afresh each time, as paramiko raises it."""

    def _key_from_filepath(self, filename: str, klass: Any, password: Any) -> Any:
        suffix = "-cert.pub"
        path = filename[: -len(suffix)] if filename.endswith(suffix) else filename
        stamp = (filename, _stamp(path), _stamp(path + suffix), password, klass)
        with _keys_lock:   # held while parsing: hosts starting together parse once, not each
            known = _keys.get(stamp)
            if isinstance(known, str):
                raise paramiko.SSHException(known)
            if known is not None:
                return known
            try:
                key = super()._key_from_filepath(filename, klass, password)
            except paramiko.SSHException as exc:
                if type(exc) is paramiko.SSHException and stamp[1] is not None:
                    _keys[stamp] = str(exc)   # not a key of this type
                raise
            if stamp[1] is not None:
                if len(_keys) > 256:
                    _keys.clear()
                _keys[stamp] = key
            return key


class _Link:
    """One SSH client connection to one host (a target or a jump host), through an optional
    jump host. paramiko alone does the work; fabric's Connection, which antnest used for this,
    costs a cold process fabric's and invoke's imports (about 100 ms) for no feature antnest uses,
    and its Config shared by every host was not safe to build connections from many threads."""

    def __init__(self, address: str, *, user: str, port: int, gateway: Optional["_Link"],
                 connect_timeout: float, connect_kwargs: Dict[str, Any]) -> None:
        self.host = address
        self.user = user
        self.port = port
        self.gateway = gateway
        self.connect_timeout = connect_timeout
        self.connect_kwargs = connect_kwargs   # for SSHClient.connect; "sock" is set later
        self.client = _Client()
        self.transport: Any = None             # the paramiko Transport, once open

    @property
    def is_connected(self) -> bool:
        return bool(self.transport is not None and self.transport.active)

    def open(self) -> None:
        """Handshake and authenticate; a jump host's link carries it as a direct-tcpip channel."""
        if self.is_connected:
            return
        kwargs = dict(self.connect_kwargs, hostname=self.host, port=self.port,
                      username=self.user, timeout=self.connect_timeout)
        if not kwargs.get("key_filename"):
            kwargs.pop("key_filename", None)
        if self.gateway is not None:
            assert self.gateway.transport is not None
            kwargs["sock"] = self.gateway.transport.open_channel(
                "direct-tcpip", dest_addr=(self.host, int(self.port)), src_addr=("", 0),
                timeout=self.connect_timeout)
        self.client.connect(**kwargs)
        self.transport = self.client.get_transport()

    def close(self) -> None:
        self.client.close()


class _CheckedTransport(paramiko.Transport):
    """Refuses a host key marked @revoked before paramiko looks it up in known_hosts (and so
    before any authentication is attempted)."""

    antnest_check: Any = None
    # How often paramiko's transport thread wakes with nothing to read (its default, 0.1 s,
    # costs an idle master 0.7 ms of CPU per host per second: 7 cores for 10,000 hosts).
    # Data wakes it at once whatever this is, and closing closes the socket, which ends the
    # wait at once too; it is the granularity of paramiko's keepalive clock (5 s here).
    _active_check_timeout = 1.0

    def get_remote_server_key(self) -> paramiko.PKey:
        key = super().get_remote_server_key()
        if self.antnest_check is not None:
            self.antnest_check(key)
        return key


def _transport(sock: Any, host: Optional[Host] = None,
               known: Optional[known_hosts.KnownHosts] = None, **kwargs: Any
               ) -> paramiko.Transport:
    """A paramiko Transport preferring AES-GCM: no separate MAC to compute and compare in
    Python for every packet, which is most of paramiko's per-packet cost."""
    transport = _CheckedTransport(sock, **kwargs)
    if host is not None and known is not None:
        name = known_hosts_name(host.address, host.port)
        transport.antnest_check = lambda key: known.check_revoked(host, name, key)
    options = transport.get_security_options()
    fast = [c for c in ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com") if c in options.ciphers]
    options.ciphers = tuple(fast + [c for c in options.ciphers if c not in fast])
    return transport


def _tcp(host: Host, timeout: Optional[float]) -> socket.socket:
    """The TCP connection, with Nagle off: frames are small and latency matters."""
    sock = socket.create_connection((host.address, host.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class SshProcess:
    """A runner in an exec channel: stdin/stdout carry frames, stderr only fatal messages."""

    def __init__(self, label: str, channel: paramiko.Channel, python: str,
                 stage2: Optional[bytes] = None, agent: Optional[str] = None) -> None:
        self.label = label
        self._channel = channel
        # readable when stdout has bytes or ended (paramiko's own fileno() also wakes on
        # stderr, which the frames never read)
        self._event: Optional[Any] = paramiko.pipe.make_pipe()
        channel.in_buffer.set_event(self._event)
        self._out = outgoing.Outgoing(label, self._try_write, self._wait_window, self._shut,
                                      lambda exc: self.kill())
        if agent is not None:
            channel.request_forward_agent(lambda remote: forward_agent(remote, agent))
        channel.exec_command(bootstrap.command(python))
        try:
            channel.sendall(stage2 or bootstrap.stage2())
        except (OSError, EOFError, paramiko.SSHException):
            # The command died at once (no such interpreter): the reader sees EOF next, and
            # diagnose() reads its exit status and stderr, which are what to report.
            pass

    def set_timeout(self, seconds: Optional[float]) -> None:
        """A recv that hears nothing (not even a heartbeat) this long raises socket.timeout."""
        self._channel.settimeout(seconds)

    def send(self, *chunks: bytes) -> None:
        self._out.send(*chunks)

    def _try_write(self, view: memoryview) -> int:
        channel = self._channel
        if channel.closed or channel.eof_sent:
            raise BrokenPipeError(f"{self.label}: the channel is closed")
        if not channel.send_ready():
            return 0
        return channel.send(view)   # a window is open: sends up to one packet, no waiting

    def _wait_window(self, seconds: float) -> None:
        channel = self._channel
        with channel.out_buffer_cv:  # paramiko notifies it when the host widens the window
            if channel.out_window_size == 0 and not channel.closed and not channel.eof_sent:
                channel.out_buffer_cv.wait(seconds)

    def _shut(self) -> None:
        try:
            self._channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def recv(self, size: int) -> bytes:
        return self._channel.recv(size)

    def fileno(self) -> int:
        if self._event is None:
            raise ValueError(f"{self.label}: released")
        return int(self._event.fileno())

    def read_nowait(self, size: int) -> Optional[bytes]:
        channel = self._channel
        if channel.recv_ready() or channel.eof_received or channel.closed:
            return channel.recv(size)
        return None

    def release(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.close()

    def close(self) -> None:
        self._out.close()

    def kill(self) -> None:
        self._out.close()
        try:
            self._channel.close()
        except (OSError, EOFError, paramiko.SSHException):  # the link is gone already
            pass

    def diagnose(self) -> str:
        deadline = time.monotonic() + 2
        while not self._channel.exit_status_ready() and time.monotonic() < deadline:
            self._channel.status_event.wait(0.1)
        ready = self._channel.exit_status_ready()
        code = self._channel.recv_exit_status() if ready else None
        chunks = []
        while self._channel.recv_stderr_ready():
            chunks.append(self._channel.recv_stderr(65536))
        stderr = b"".join(chunks).decode("utf-8", "replace")
        if code == -1:  # paramiko's word for "ended by a signal" (it drops which one)
            return describe_exit(None, stderr, "killed by a signal")
        return describe_exit(code, stderr, None if ready else "no exit status yet")

def forward_agent(channel: paramiko.Channel, agent: str) -> None:
    """The host opened an agent channel (its ssh asks our agent to sign): join it to the
    agent socket `agent` on a short-lived thread (one per authentication, not per host)."""
    def pump() -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(agent)
            while True:
                ready, _, _ = select.select([sock, channel], [], [], AGENT_IDLE)
                if not ready:
                    return
                if sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    channel.sendall(data)
                if channel in ready:
                    data = channel.recv(65536)
                    if not data:
                        return
                    sock.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.debug("agent forwarding to %s ended: %s", agent, exc)
        finally:
            sock.close()
            channel.close()
    threading.Thread(target=pump, name="antnest-agent", daemon=True).start()


AGENT_IDLE = 60.0   # seconds an agent channel may stay quiet before it is closed


class ShellProxyCommand(paramiko.ProxyCommand):
    """ProxyCommand run as OpenSSH runs it: ``exec`` through the user's shell, so pipes,
    redirects and ``$VAR`` work (paramiko's own splits the line with shlex, no shell)."""

    def __init__(self, command: str) -> None:   # noqa: D107 - paramiko's fields, our Popen
        self.cmd = [os.environ.get("SHELL") or "/bin/sh", "-c", f"exec {command}"]
        self.process = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, bufsize=0)
        self.timeout = None


def usable_keys(host: Host) -> List[str]:
    """The identity files ssh would use: a missing file is skipped with a warning naming it
    (ssh skips it too), and so is a private key others can read (ssh refuses it:
    "UNPROTECTED PRIVATE KEY FILE")."""
    keys: List[str] = []
    for path in (os.path.expanduser(p) for p in host.identity_files):
        try:
            mode = os.stat(path)
        except OSError as exc:
            log.warning("%s: identity file %s skipped: %s", host.name, path,
                        exc.strerror or exc)
            continue
        if mode.st_mode & 0o077 and mode.st_uid == os.getuid():
            log.warning("%s: identity file %s skipped: permissions %o are too open (ssh "
                        "refuses a private key others can read: chmod 600 %s)",
                        host.name, path, mode.st_mode & 0o777, path)
            continue
        keys.append(path)
    return keys


def _jump_host(hop: Host, target: Host) -> Host:
    """The hop, named so that its errors say it is a jump host and for whom."""
    import dataclasses

    return dataclasses.replace(hop, name=f"{hop.name} (jump host of {target.name})")


def _local_user() -> str:
    """The login name ssh itself would use (the password database's), never a KeyError."""
    from antnest.inventory.ssh_options import ssh_user

    return ssh_user()


def _offered_keys(host: Host) -> str:
    offered: List[str] = []
    agent_keys = 0
    if os.environ.get("SSH_AUTH_SOCK") and not host.identities_only:
        try:
            agent_keys = len(paramiko.Agent().get_keys())
        except paramiko.SSHException:
            agent_keys = 0
    if agent_keys:
        offered.append(f"{agent_keys} ssh-agent key(s)")
    keys = usable_keys(host)
    offered += keys
    if not host.identity_files and not host.identities_only:
        for name in ("id_rsa", "id_ecdsa", "id_ed25519", "id_dsa"):
            path = os.path.expanduser(f"~/.ssh/{name}")
            if os.path.exists(path) and path not in offered:
                offered.append(path)
    skipped = [os.path.expanduser(p) for p in host.identity_files
               if os.path.expanduser(p) not in keys]
    note = f"; skipped (missing or readable by others): {', '.join(skipped)}" if skipped else ""
    if not offered:
        return ("no key was offered: set identity_file in the inventory, IdentityFile in "
                "ssh_config, or load a key into ssh-agent" + note)
    return ("keys offered: " + ", ".join(offered) + note
            + "; is the public key in the host's authorized_keys?")

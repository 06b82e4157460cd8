"""Host: one machine as antnest will use it, after every layer of configuration is applied.

A module of its own so that inventory readers, patterns, transports and the scheduler can all
name it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

__all__ = ["LOCAL", "Host", "HostStatus", "State"]


class State:
    """What a host is doing during a run (`Cluster.hosts`, --report): plain strings."""

    CONNECTING = "connecting"  # connecting, or booting its first runner
    CONNECTED = "connected"    # at least one runner said HELLO
    LOST = "lost"              # it was connected; every runner is gone and gave up
    FAILED = "failed"          # it never became usable (see its error)
    CLOSED = "closed"          # the cluster closed

    @classmethod
    def all(cls) -> List[str]:
        return [v for k, v in vars(cls).items() if k.isupper()]


class HostStatus:
    """Why a host can or cannot be used: `antnest check`'s STATUS column and `HostError.status`.
    README's list of statuses is checked against this one."""

    OK = "ok"
    UNREACHABLE = "unreachable"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    AUTH_FAILED = "auth failed"
    HOST_KEY_UNKNOWN = "host key unknown"
    HOST_KEY_CHANGED = "host key changed"
    HOST_KEY_REVOKED = "host key revoked"
    HOST_KEY_UNCHECKED = "host key unchecked"
    NO_PYTHON = "no python"
    PYTHON_TOO_OLD = "python too old"
    HANDSHAKE_FAILED = "handshake failed"
    BOOTSTRAP_FAILED = "bootstrap failed"
    ERROR = "error"            # anything else (a bug): the detail says what

    @classmethod
    def all(cls) -> List[str]:
        return [v for k, v in vars(cls).items() if k.isupper()]


@dataclass(frozen=True)
class Host:
    """One machine as antnest will use it, after defaults, group vars and ssh_config."""

    name: str                                # alias as written in the inventory
    address: str                             # what to connect to (HostName)
    port: int = 22
    user: Optional[str] = None               # None: the local user, as ssh does
    identity_files: Tuple[str, ...] = ()     # tried in order, after ssh-agent keys
    python: str = "python3"                  # may carry a wrapper: "sudo -n python3"
    procs: Optional[int] = None              # worker processes; None = the host's CPU count
    jump: Tuple["Host", ...] = ()            # ProxyJump chain, first hop first
    proxy_command: Optional[str] = None      # ProxyCommand, %h %p %r already expanded
    connect_timeout: Optional[float] = None  # seconds
    server_alive_interval: Optional[float] = None
    groups: Tuple[str, ...] = ()
    source: str = ""                         # file the host came from, for messages
    transport: str = "ssh"                   # a name in antnest.transport's registry: ssh, local
    ssh_client: Optional[str] = None         # for transport "ssh": paramiko, openssh, auto; None = run's
    env: Tuple[Tuple[str, str], ...] = ()    # environment for the runner, in order (NAME, VALUE)
    workdir: Optional[str] = None            # the runner chdirs here before user code runs
    user_known_hosts: Tuple[str, ...] = ()   # UserKnownHostsFile; () = ~/.ssh/known_hosts{,2}
    global_known_hosts: Tuple[str, ...] = () # GlobalKnownHostsFile; () = /etc/ssh/ssh_known_hosts{,2}
    host_key_checking: Optional[str] = None  # StrictHostKeyChecking: yes, accept-new, no; None = run's
    identities_only: bool = False            # IdentitiesOnly: offer only identity_files
    ciphers: Optional[str] = None            # Ciphers, when ssh_config sets it; None = not set
    ssh_config: Optional[str] = None         # the ssh_config given with -F, for the ssh binary
    relay: Optional["Host"] = None           # reached through a relay on this host (transport.relay)

    @property
    def local(self) -> bool:
        """Runs as subprocesses of the master, no SSH (the embedded default, ansible_connection=local)."""
        return self.transport == "local"

    @property
    def label(self) -> str:
        """Short name for logs and tables."""
        return self.name


LOCAL = Host(name="local", address="localhost", transport="local", source="(local default)")

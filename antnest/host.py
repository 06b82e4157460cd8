"""Host: one machine as antnest will use it, after every layer of configuration is applied.

A module of its own so that inventory readers, patterns, transports and the scheduler can all
name it without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

__all__ = ["LOCAL", "Host"]


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
    local: bool = field(default=False)       # the embedded default: subprocesses, no SSH

    @property
    def label(self) -> str:
        """Short name for logs and tables."""
        return self.name


LOCAL = Host(name="local", address="localhost", local=True, source="(local default)")

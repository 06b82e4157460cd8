"""known_hosts as OpenSSH reads it, for the paramiko client: which files (UserKnownHostsFile,
GlobalKnownHostsFile, every --known-hosts), which policy (StrictHostKeyChecking), and the
markers paramiko does not know: ``@revoked`` keys are refused, ``@cert-authority`` lines are
skipped with a one-line warning (paramiko does not verify host certificates; the openssh client
does). Host patterns (``*``, ``?``, ``!``) are matched as OpenSSH matches them.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from antnest.transport import paramiko_without_invoke

with paramiko_without_invoke():
    import paramiko
    from paramiko.hostkeys import HostKeyEntry

from antnest.errors import HostKeyError
from antnest.host import Host, HostStatus
from antnest.inventory.ssh_options import (
    DEFAULT_GLOBAL_KNOWN_HOSTS, DEFAULT_USER_KNOWN_HOSTS, _pattern_list
)

log = logging.getLogger(__name__)

__all__ = ["KnownHosts", "host_files", "load", "policy", "writable"]


def user_files(host: Host) -> List[str]:
    files = host.user_known_hosts or DEFAULT_USER_KNOWN_HOSTS
    return [os.path.expanduser(p) for p in files]


def host_files(host: Host, extra: Tuple[str, ...]) -> List[str]:
    """Every file consulted for ``host``, in OpenSSH's order, then each --known-hosts."""
    files = user_files(host) + [os.path.expanduser(p) for p in
                                (host.global_known_hosts or DEFAULT_GLOBAL_KNOWN_HOSTS)]
    files += [os.path.expanduser(p) for p in extra]
    return [p for p in dict.fromkeys(files) if p != "/dev/null"]


def writable(host: Host, extra: Tuple[str, ...]) -> str:
    """Where accept-new records a key: the last --known-hosts, else the first
    UserKnownHostsFile (where OpenSSH records it)."""
    return os.path.expanduser(extra[-1]) if extra else user_files(host)[0]


def policy(host: Host, accept_new: bool, allow_unchecked: bool) -> str:
    """``yes``, ``accept-new`` or ``no`` (only when the user opted in to unchecked keys)."""
    if host.host_key_checking == "no":
        if not allow_unchecked:
            raise HostKeyError(
                host.name,
                "ssh_config sets StrictHostKeyChecking no for this host: antnest does not "
                "connect without checking the host key (anyone on the path could read and "
                "change the job); use accept-new, or rerun with --allow-unchecked-host-keys",
                status=HostStatus.HOST_KEY_UNCHECKED)
        return "no"
    if accept_new or host.host_key_checking == "accept-new":
        return "accept-new"
    return "yes"


class _PatternHostKeys(paramiko.HostKeys):
    """paramiko's HostKeys, also matching OpenSSH's wildcard and negated host patterns."""

    def _hostname_matches(self, hostname: str, entry: HostKeyEntry) -> bool:
        if super()._hostname_matches(hostname, entry):
            return True
        patterns = [h for h in entry.hostnames if not h.startswith("|1|")]
        if not any(c in h for h in patterns for c in "*?!"):
            return False
        return _pattern_list(hostname.lower(), [p.lower() for p in patterns])


@dataclass
class KnownHosts:
    keys: paramiko.HostKeys
    revoked: List[Tuple[HostKeyEntry, str]] = field(default_factory=list)  # entry, "file:line"
    _index: Optional[Tuple[Dict[str, List[int]], List[int]]] = field(default=None, repr=False)
    _index_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def for_host(self, hostname: str) -> paramiko.HostKeys:
        """The entries that can match ``hostname`` (its plain name, every hashed and every
        pattern line), in file order, as a HostKeys of their own. paramiko's lookup visits
        every entry: with the whole file for each of N hosts, start-up cost N² (200 hosts:
        40,000 matches, a second of CPU)."""
        with self._index_lock:
            if self._index is None:
                plain: Dict[str, List[int]] = {}
                scan: List[int] = []
                for position, entry in enumerate(self.keys._entries):
                    names = entry.hostnames
                    if any(n.startswith("|1|") or any(c in n for c in "*?!") for n in names):
                        scan.append(position)
                    else:
                        for name in dict.fromkeys(names):
                            plain.setdefault(name, []).append(position)
                self._index = (plain, scan)
            plain, scan = self._index
        view = _PatternHostKeys()
        view._entries = [self.keys._entries[i] for i in sorted(plain.get(hostname, []) + scan)]
        return view

    def check_revoked(self, host: Host, hostname: str, key: paramiko.PKey) -> None:
        """Refuse a key marked @revoked for this host name, as OpenSSH does."""
        probe = _PatternHostKeys()
        for entry, where in self.revoked:
            probe._entries = [entry]
            if probe._hostname_matches(hostname, entry) and entry.key == key:
                from antnest.transport.ssh import fingerprint

                raise HostKeyError(
                    host.name,
                    f"host key for {hostname} ({key.get_name()} {fingerprint(key)}) is marked "
                    f"@revoked in {where}: refusing to connect, as ssh does",
                    status=HostStatus.HOST_KEY_REVOKED)


_lock = threading.Lock()
_cache: Dict[tuple, KnownHosts] = {}
_warned: Set[str] = set()


def load(host: Host, extra: Tuple[str, ...]) -> KnownHosts:
    """Every file for ``host`` parsed once, cached until one of them changes (a known_hosts of
    N lines read for N hosts would otherwise cost N² at start-up)."""
    files = [p for p in host_files(host, extra) if os.path.exists(p)]
    try:
        stamp = tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in files)
    except OSError as exc:
        raise HostKeyError(host.name, f"cannot read known_hosts file {exc.filename}: "
                           f"{exc.strerror}", status=HostStatus.HOST_KEY_UNKNOWN) from None
    with _lock:
        found = _cache.get(stamp)
        if found is None:
            found = KnownHosts(_PatternHostKeys())
            for path in files:
                _read(path, found, host)
            if len(_cache) > 32:
                _cache.clear()
            _cache[stamp] = found
        return found


def _read(path: str, into: KnownHosts, host: Host) -> None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise HostKeyError(host.name, f"cannot read known_hosts file {path}: "
                           f"{exc.strerror or exc}", status=HostStatus.HOST_KEY_UNKNOWN) from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        marker = ""
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            line = line.strip()
        try:
            entry = HostKeyEntry.from_line(line, number)
        except (paramiko.SSHException, ValueError, TypeError):   # a key paramiko cannot read
            entry = None
        if marker == "@revoked":
            if entry is not None:
                into.revoked.append((entry, f"{path} line {number}"))
            continue
        if marker:
            _warn_once(f"{path}:{marker}", "%s line %d: %s lines are skipped (paramiko does not "
                       "verify host certificates; --ssh-client openssh does)", path, number,
                       marker)
            continue
        if entry is not None:
            into.keys._entries.append(entry)


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


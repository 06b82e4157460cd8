"""Process limits that scale alone would hit: open files first.

Every SSH host costs the master at least one socket (plus a pipe per local runner), and the soft
``RLIMIT_NOFILE`` of many systems is 1024 (or lower under some service managers) while the hard
limit is far higher. OpenSSH's own client and most servers raise the soft limit at start for the
same reason; so does antnest, before it opens the first connection.
"""
from __future__ import annotations

import errno
import logging
from typing import Optional, Tuple

log = logging.getLogger(__name__)

__all__ = ["FD_ERRNOS", "fd_limit_advice", "raise_open_files_limit"]

FD_ERRNOS = (errno.EMFILE, errno.ENFILE)
"""OSError numbers meaning "this process (or system) ran out of file descriptors"."""


def raise_open_files_limit(wanted: Optional[int] = None) -> Tuple[int, int]:
    """Raise the soft open-files limit to the hard one (or to ``wanted`` if lower); never lower it.

    Returns the (soft, hard) limits now in force. Harmless where ``resource`` is missing.
    """
    try:
        import resource
    except ImportError:   # not a POSIX system
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if wanted is None or (hard != resource.RLIM_INFINITY and wanted > hard) \
        else max(soft, wanted)
    if target == resource.RLIM_INFINITY:   # some kernels refuse "infinity" for NOFILE
        target = 1 << 20
    if soft == resource.RLIM_INFINITY or target <= soft:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.debug("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
        return soft, hard
    log.debug("open-files limit raised from %d to %d", soft, target)
    return target, hard


def fd_limit_advice() -> str:
    """The part of an error message that says what to do when descriptors ran out."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return "raise the open-files limit (ulimit -n) and run again"
    shown = "unlimited" if hard == getattr(resource, "RLIM_INFINITY", -1) else str(hard)
    return (f"this process may open {soft} files (hard limit {shown}), one or more per host: "
            f"raise the hard limit (ulimit -Hn, or LimitNOFILE= for a service) or use fewer "
            f"hosts per run")

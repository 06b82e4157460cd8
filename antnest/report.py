"""The run report (`--report FILE.json`): what a monitoring script reads after an unattended run.

Written once at the end of every run, also a failed or interrupted one, and atomically: a reader
sees the previous report or the new one, never half of one.

    {"antnest_report": 1, "version": "0.1.0", "job": "jobs/x.py", "inventory": "hosts.yaml",
     "started": "2026-11-26T22:40:01+01:00", "ended": "...", "duration_seconds": 12.345,
     "exit_code": 0, "interrupted": false, "error": null,
     "taskunits": {"done": 50000, "failed": 0, "retried": 3, "resumed": 20000, "in_flight": 0,
                   "not_started": 0},
     "hosts": [{"name": "node1", "address": "10.0.0.1:22", "state": "closed", "procs": 4, "alive": 0,
                "python": "3.11.7", "cpus": 4, "error": null, "lost": 0, "done": 25000}, ...],
     "failures": [{"id": 17, "host": "node2", "error": "ValueError: bad line",
                   "traceback": "Traceback (most recent call last): ..."}, ...],
     "failures_not_listed": 0}
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Union

FORMAT_VERSION = 1
MAX_FAILURES_LISTED = 1000   # a keep-going run over a bad input must not write a huge report
HOST_FIELDS = ("name", "address", "state", "procs", "alive", "python", "cpus", "error", "lost",
               "done")

PathLike = Union[str, "os.PathLike[str]"]
Moment = Union[datetime.datetime, float]   # a datetime, or seconds since the epoch (time.time())


def write_report(path: PathLike, report: Dict[str, Any]) -> None:
    """Write `report` as JSON at `path` atomically: temp file in the same directory, fsync,
    os.replace. The new file gets the usual mode (0666 less the umask)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}."
                                   f"{os.urandom(4).hex()}.tmp")
    text = json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable; best effort (not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def build_report(
    *,
    version: str,
    job: Optional[str],
    inventory: Optional[str],
    started: Moment,
    ended: Moment,
    exit_code: int,
    hosts: Sequence[Any],
    done: int,
    failed: int,
    retried: int,
    failures: Sequence[Any],
    interrupted: bool,
    error: Optional[str] = None,
    resumed: int = 0,
    in_flight: int = 0,
    not_started: Optional[int] = None,
) -> Dict[str, Any]:
    """The report as a JSON-ready dict.

    `hosts` are HostState-like (attributes name, address, state, procs, python, cpus, error,
    lost, done), `failures` TaskError-like (taskunit_id, host, problem). `error` is the message
    of what ended the run, if anything did (no usable host, a timeout, ...). `done` counts every
    finished taskunit, `resumed` those of them taken from the journal of an earlier run;
    `in_flight` were sent and had not finished when the run ended, `not_started` never sent
    (None: the input was not read to its end, so it is not known).
    """
    start = _moment(started)
    end = _moment(ended)
    listed = list(failures[:MAX_FAILURES_LISTED])
    return {
        "antnest_report": FORMAT_VERSION,
        "version": version,
        "job": job,
        "inventory": inventory,
        "started": start.isoformat(timespec="seconds"),
        "ended": end.isoformat(timespec="seconds"),
        "duration_seconds": round((end - start).total_seconds(), 3),
        "exit_code": exit_code,
        "interrupted": interrupted,
        "error": error,
        "taskunits": {"done": done, "failed": failed, "retried": retried, "resumed": resumed,
                      "in_flight": in_flight, "not_started": not_started},
        "hosts": [_host(h) for h in hosts],
        "failures": [_failure(f) for f in listed],
        "failures_not_listed": max(0, len(failures) - len(listed)),
    }


def _moment(value: Moment) -> datetime.datetime:
    """Aware local time: naive datetimes are taken as local, like the rest of a cron log."""
    if isinstance(value, datetime.datetime):
        return value.astimezone()
    return datetime.datetime.fromtimestamp(value).astimezone()


def _host(state: Any) -> Dict[str, Any]:
    return {name: getattr(state, name, None) for name in HOST_FIELDS}


def _failure(error: Any) -> Dict[str, Any]:
    problem = getattr(error, "problem", None)
    return {
        "id": getattr(error, "taskunit_id", None),
        "host": getattr(error, "host", None),
        "error": problem if problem is not None else str(error),
        "traceback": getattr(error, "remote_traceback", None) or None,   # the host's own text
    }


def failures_of(error: Optional[BaseException]) -> List[Any]:
    """The failures an exception carries: JobFailed's list, a single TaskError, or none."""
    if error is None:
        return []
    many = getattr(error, "failures", None)
    if many is not None:
        return list(many)
    if hasattr(error, "taskunit_id"):
        return [error]
    return []

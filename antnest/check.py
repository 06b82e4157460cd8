"""`antnest check`: connect to every host in parallel, boot a runner, time one round trip.

Answers "which hosts can I use right now?" before a long run, and why the others cannot be
used, within about the connect timeout even when some hosts never answer.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import pickle

from antnest import runner
from antnest.errors import HostError
from antnest.host import Host, HostStatus
from antnest.runner import FrameReader, Kind, frame
from antnest.transport import Connection, RunnerProcess, SshOptions, open_connection
from antnest.worker import await_hello, by_value_too

SLACK = 5.0  # seconds beyond the connect timeout for booting the runner and the round trip


@dataclass
class HostCheck:
    """One row of `antnest check`."""

    name: str
    address: str
    status: str = HostStatus.TIMEOUT  # a HostStatus
    python: Optional[str] = None
    cpus: Optional[int] = None
    cloudpickle: Optional[str] = None  # "found" on the host, "shipped" from the master
    code: Optional[str] = None   # "source" (any version) or "source+value" (the master's minor)
    latency_ms: Optional[float] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status == HostStatus.OK

    def as_dict(self) -> dict:
        return asdict(self)


def check_hosts(hosts: Sequence[Host], options: SshOptions) -> List[HostCheck]:
    """Probe every host at once; a host still silent at the deadline reports `timeout`."""
    rows: List[HostCheck] = []
    threads = []
    for host in hosts:
        row = HostCheck(host.name, host.address)
        try:
            connection = open_connection(host, options)
            row.address = connection.address
        except HostError as exc:
            row.status, row.error = exc.status, exc.problem
        else:
            threads.append(threading.Thread(target=_probe, args=(host, connection, row),
                                            daemon=True))
        rows.append(row)
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + max(h.connect_timeout or options.connect_timeout for h in hosts) + SLACK
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for row in rows:
        if row.status == HostStatus.TIMEOUT and row.error is None:
            row.error = "no answer before the deadline"
    return rows


def _probe(host: Host, connection: Connection, row: HostCheck) -> None:
    """Connect, boot a runner, run len('ping') on it: the same frames a run sends."""
    proc: Optional[RunnerProcess] = None
    try:
        connection.connect()
        proc = connection.open_runner(host.name)
        reader = FrameReader(proc.recv)
        hello = await_hello(host, proc, reader)
        row.python = ".".join(map(str, hello["python"]))
        row.cpus = hello["cpus"]
        row.cloudpickle = hello.get("cloudpickle")
        row.code = "source+value" if by_value_too(hello) else "source"
        protocol = min(5, hello.get("pickle_protocol", 5))
        proc.send(*frame(Kind.JOB, runner.encode_job(1, pickle.dumps(len, protocol=protocol), {},
                                                     protocol)))
        started = time.perf_counter()
        proc.send(*frame(Kind.TASKS, runner.encode_tasks(
            1, 1, 1, runner.encode_items(["ping"], protocol), protocol)))
        while True:
            reply = reader.next()
            if reply is None:
                raise HostError(host.name, "the runner exited during the round trip",
                                status=HostStatus.BOOTSTRAP_FAILED)
            if reply[0] == Kind.RESULTS:
                runner.decode_results(reply[1])
                break
        row.latency_ms = round((time.perf_counter() - started) * 1000, 2)
        row.status = HostStatus.OK
    except HostError as exc:
        row.status = exc.status
        row.error = exc.problem
    except Exception as exc:  # anything unexpected still gets a row, not a traceback
        row.status = HostStatus.BOOTSTRAP_FAILED
        row.error = f"{type(exc).__name__}: {exc}"
    finally:
        if proc is not None:
            proc.close()
            proc.kill()
            proc.release()
        connection.close()


def format_table(rows: Sequence[HostCheck]) -> str:
    header = ("HOST", "ADDRESS", "STATUS", "PYTHON", "CPUS", "CODE", "CLOUDPICKLE", "RTT ms",
              "DETAIL")
    lines = [header]
    for r in rows:
        lines.append((r.name, r.address, r.status, r.python or "-", str(r.cpus or "-"),
                      r.code or "-", r.cloudpickle or "-",
                      f"{r.latency_ms:.1f}" if r.latency_ms is not None else "-",
                      r.error or ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1]
                     for line in lines).rstrip()

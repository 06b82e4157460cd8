"""The run record: what happened to every batch, runner and host, for `antnest report`.

One Recorder per Cluster; the scheduler and the worker slots call it at a handful of points
(batch sent / results / finished / failed / lost, runner booting / hello / exited, host
connected). Times are the master's monotonic clock, in seconds since the recorder was made;
`anchor` gives the wall-clock time of that zero once.

Bounded: the first MAX_BATCHES batches are kept one by one; past that, batches that simply
finished are summed per runner per time bucket (`aggregated`), so a run of ten million
taskunits writes a few megabytes, not gigabytes. Batches with anything to say (failed, lost,
timed out, speculative) are kept one by one up to MAX_NOTABLE more, then only counted.
"""
from __future__ import annotations

import datetime
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

TRACE_VERSION = 1
MAX_BATCHES = 5000        # batches kept one by one
MAX_NOTABLE = 5000        # failed / lost / speculative batches kept past MAX_BATCHES
MAX_BUCKETS = 400         # time buckets per runner in the aggregate (their width doubles)
MAX_FAILED_UNITS = 1000   # slow or failed taskunits named in the record
MAX_SLOWEST = 20

# outcomes of a batch
OK, FAILED, LOST, TIMEOUT, WON, COPY_LOST, CANCELLED = (
    "ok", "failed", "lost", "timeout", "won", "copy-lost", "cancelled")


class Recorder:
    """Collects the run record; every method is cheap and safe from any thread."""

    def __init__(self) -> None:
        self._mono0 = time.monotonic()
        self.anchor = datetime.datetime.now().astimezone().isoformat(timespec="microseconds")
        self._lock = threading.Lock()
        self._open: Dict[int, Dict[str, Any]] = {}      # batch id -> its record, in flight
        self.batches: List[Dict[str, Any]] = []
        self.batches_aggregated = 0
        self.notable_dropped = 0
        self._buckets: Dict[str, Dict[int, List[float]]] = {}
        self._bucket_width: Dict[str, float] = {}
        self.runners: Dict[str, Dict[str, Any]] = {}
        self.hosts: Dict[str, Dict[str, Any]] = {}
        self.slowest: List[Tuple[float, int, str, int]] = []   # (s per unit, first, runner, n)
        self._won: set = set()                        # speculative races already won
        self.phases: Dict[str, Optional[float]] = {"first_runner_up": None, "first_sent": None,
                                                   "last_finished": None, "combine_end": None}
        self.input_seconds = 0.0
        self.combine_seconds = 0.0
        self.input_size: Optional[int] = None

    def now(self) -> float:
        return time.monotonic() - self._mono0

    def at(self, monotonic: float) -> float:
        """A time.monotonic() value on this record's clock."""
        return monotonic - self._mono0

    # -- hosts and runners --------------------------------------------------------------------
    def runner_booting(self, runner: str, host: str) -> None:
        t = self.now()
        with self._lock:
            entry = self.runners.setdefault(runner, {"runner": runner, "host": host, "lives": []})
            entry["lives"].append({"boot": round(t, 4), "hello": None, "exit": None, "why": None,
                                   "lost": False})
            self.hosts.setdefault(host, {"name": host, "first_boot": round(t, 4),
                                         "connected": None, "python": None, "cpus": None,
                                         "lost": 0, "failed": None})

    def runner_hello(self, runner: str, host: str, python: Optional[str],
                     cpus: Optional[int]) -> None:
        t = self.now()
        with self._lock:
            lives = self.runners.get(runner, {}).get("lives") or []
            if lives:
                lives[-1]["hello"] = round(t, 4)
            info = self.hosts.get(host)
            if info is not None and info["connected"] is None:
                info.update(connected=round(t, 4), python=python, cpus=cpus)
            if self.phases["first_runner_up"] is None:
                self.phases["first_runner_up"] = round(t, 4)

    def runner_exited(self, runner: str, host: str, why: str, lost: bool) -> None:
        """`lost`: it died on us (not stopped on purpose, not the end of the run)."""
        t = self.now()
        with self._lock:
            lives = self.runners.get(runner, {}).get("lives") or []
            if lives and lives[-1]["exit"] is None:
                lives[-1].update(exit=round(t, 4), why=why, lost=lost)
            if lost and host in self.hosts:
                self.hosts[host]["lost"] += 1

    def host_failed(self, host: str, error: str) -> None:
        with self._lock:
            info = self.hosts.setdefault(host, {"name": host, "first_boot": None,
                                                "connected": None, "python": None, "cpus": None,
                                                "lost": 0, "failed": None})
            info["failed"] = error

    # -- batches ------------------------------------------------------------------------------
    def batch_sent(self, runner: str, host: str, batch: Any, nbytes: int) -> None:
        t = self.now()
        twins = getattr(batch, "twins", None)
        record = {"id": batch.id, "host": host, "runner": runner, "first": batch.first_seq,
                  "n": len(batch.items), "sent": round(t, 4), "started": None, "finished": None,
                  "bytes_out": nbytes, "bytes_in": 0, "done": 0, "outcome": None, "error": None,
                  "attempt": 1 + batch.attempts + batch.lost,
                  "copy_of": twins[0].id if twins and twins[0] is not batch else None}
        if self.phases["first_sent"] is None:
            self.phases["first_sent"] = round(t, 4)
        with self._lock:
            self._open[batch.id] = record

    def batch_results(self, batch_id: int, nbytes: int, done: int = 0) -> None:
        """A RESULTS frame of `nbytes` came back carrying `done` successful results."""
        record = self._open.get(batch_id)
        if record is not None:
            record["bytes_in"] += nbytes
            record["done"] += done

    def taskunit_failed(self, batch_id: int, taskunit: int, error: str, timeout: bool) -> None:
        record = self._open.get(batch_id)
        if record is not None:
            record["outcome"] = TIMEOUT if timeout else FAILED
            if record["error"] is None:
                record["error"] = f"taskunit {taskunit}: {error}"[:300]

    def batch_finished(self, batch: Any, started: float) -> None:
        """Every item of `batch` is settled; `started` is its time.monotonic() start (or 0)."""
        t = self.now()
        twins = getattr(batch, "twins", None)
        outcome = None
        if twins:
            race = twins[0].id
            outcome = COPY_LOST if race in self._won else WON
            self._won.add(race)
        self._close(batch.id, t, started, outcome)

    def batch_lost(self, batch: Any, started: float, why: str, cancelled: bool) -> None:
        t = self.now()
        twins = getattr(batch, "twins", None)
        if cancelled:
            outcome = CANCELLED
        elif twins and twins[0].id in self._won:
            outcome = COPY_LOST
        else:
            outcome = LOST
        self._close(batch.id, t, started, outcome, why)

    def _close(self, batch_id: int, t: float, started: float, outcome: Optional[str],
               why: Optional[str] = None) -> None:
        with self._lock:
            record = self._open.pop(batch_id, None)
            if record is None:
                return
            record["finished"] = round(t, 4)
            # a batch still queued behind another in its runner's window never started:
            # it gets no length (it did not hold the runner)
            record["started"] = round(self.at(started), 4) if started else record["finished"]
            if record["outcome"] in (None, OK) or outcome in (LOST, CANCELLED, COPY_LOST):
                if not (record["outcome"] == TIMEOUT and outcome == LOST):
                    record["outcome"] = outcome or record["outcome"] or OK
            if why and record["error"] is None and record["outcome"] != OK:
                record["error"] = why[:300]
            if record["outcome"] in (OK, WON):
                self.phases["last_finished"] = round(t, 4)
            if record["outcome"] in (OK, WON, COPY_LOST):   # a copied straggler was slow too
                per = (t - record["started"]) / max(1, record["n"])
                if len(self.slowest) < MAX_SLOWEST or per > self.slowest[-1][0]:
                    self.slowest.append((per, record["first"], record["runner"], record["n"]))
                    self.slowest.sort(key=lambda s: -s[0])
                    del self.slowest[MAX_SLOWEST:]
            if len(self.batches) < MAX_BATCHES:
                self.batches.append(record)
            elif record["outcome"] != OK:
                if len(self.batches) < MAX_BATCHES + MAX_NOTABLE:
                    self.batches.append(record)
                else:
                    self.notable_dropped += 1
                    self._aggregate(record)
            else:
                self._aggregate(record)

    def _aggregate(self, record: Dict[str, Any]) -> None:
        runner = record["runner"]
        width = self._bucket_width.setdefault(runner, 1.0)
        buckets = self._buckets.setdefault(runner, {})
        key = int(record["started"] // width)
        row = buckets.get(key)
        if row is None:
            if len(buckets) >= MAX_BUCKETS:   # coarser buckets: merge pairs
                width *= 2
                self._bucket_width[runner] = width
                merged: Dict[int, List[float]] = {}
                for old, values in buckets.items():
                    into = merged.setdefault(old // 2, [0, 0, 0.0, 0, 0])
                    for i in range(5):
                        into[i] += values[i]
                buckets = self._buckets[runner] = merged
                key = int(record["started"] // width)
                row = buckets.get(key)
            if row is None:
                row = buckets[key] = [0, 0, 0.0, 0, 0]
        row[0] += 1
        row[1] += record["done"]
        row[2] += max(0.0, record["finished"] - record["started"])
        row[3] += record["bytes_out"]
        row[4] += record["bytes_in"]
        self.batches_aggregated += 1

    # -- the whole run ------------------------------------------------------------------------
    def as_dict(self) -> Dict[str, Any]:
        """The record, JSON-ready (it goes under "trace" in the run report)."""
        with self._lock:
            aggregated = []
            for runner, buckets in self._buckets.items():
                width = self._bucket_width[runner]
                for key in sorted(buckets):
                    b, n, busy, out, got = buckets[key]
                    aggregated.append({"runner": runner,
                                       "host": self.runners.get(runner, {}).get("host"),
                                       "from": round(key * width, 3),
                                       "to": round((key + 1) * width, 3), "batches": int(b),
                                       "n": int(n), "busy": round(busy, 4),
                                       "bytes_out": int(out), "bytes_in": int(got)})
            still_open = [dict(r, outcome="unfinished") for r in self._open.values()]
            return {
                "trace": TRACE_VERSION,
                "clock": "seconds on the master's monotonic clock since `anchor`",
                "anchor": self.anchor,
                "ended": round(self.now(), 4),
                "limits": {"batches_listed": MAX_BATCHES, "notable_listed": MAX_NOTABLE,
                           "buckets_per_runner": MAX_BUCKETS},
                "batches": list(self.batches) + still_open,
                "aggregated": aggregated,
                "batches_aggregated": self.batches_aggregated,
                "notable_not_listed": self.notable_dropped,
                "runners": [dict(r, lives=list(r["lives"])) for r in self.runners.values()],
                "hosts": [dict(h) for h in self.hosts.values()],
                "slowest": [{"per_taskunit": round(s, 4), "first": first, "runner": runner,
                             "n": n} for s, first, runner, n in self.slowest],
                "phases": dict(self.phases, input_seconds=round(self.input_seconds, 4),
                               combine_seconds=round(self.combine_seconds, 4)),
                "input_size": self.input_size,
            }

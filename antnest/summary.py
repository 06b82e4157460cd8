"""`antnest report RUN.json`: the run record (`"trace"` in a --report file) as numbers a person
reads at a terminal: per host work and troubles, the slowest taskunits, what dominated the run.

Everything is computed from the JSON alone, so a record from another machine reads the same.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Tuple, Union

from antnest.errors import UsageError

DONE = ("ok", "won")


def load_record(path: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """Read a --report file; a UsageError names the file when it is not one with a record."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)
    except OSError as exc:
        raise UsageError(f"report {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"report {path}: not JSON ({exc})") from None
    if not isinstance(report, dict) or "antnest_report" not in report:
        raise UsageError(f"report {path}: not an antnest run report")
    if not isinstance(report.get("trace"), dict):
        raise UsageError(f"report {path}: holds no run record (written by an antnest without "
                         "one, or the run never reached its hosts)")
    return report


def host_rows(trace: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per host: done, busy %, mean batch s, failures, lost, retries, stragglers."""
    runners_of: Dict[str, List[str]] = {}
    for runner in trace.get("runners", []):
        runners_of.setdefault(runner["host"], []).append(runner["runner"])
    rows: Dict[str, Dict[str, Any]] = {}
    for info in trace.get("hosts", []):
        rows[info["name"]] = {"host": info["name"], "python": info.get("python"),
                              "connect": _span(info.get("first_boot"), info.get("connected")),
                              "runners": len(runners_of.get(info["name"], [])),
                              "done": 0, "busy": 0.0, "batches": 0, "failures": 0,
                              "lost": info.get("lost", 0), "retries": 0, "stragglers": 0,
                              "ran": 0, "error": info.get("failed")}

    def row(host: str) -> Dict[str, Any]:
        return rows.setdefault(host, {"host": host, "python": None, "connect": None,
                                      "runners": len(runners_of.get(host, [])), "done": 0,
                                      "busy": 0.0, "batches": 0, "failures": 0, "lost": 0,
                                      "retries": 0, "stragglers": 0, "ran": 0, "error": None})

    for batch in trace.get("batches", []):
        r = row(batch["host"])
        took = max(0.0, (batch.get("finished") or 0) - (batch.get("started") or 0))
        r["busy"] += took
        if batch["outcome"] != "cancelled" and took > 0:
            r["ran"] += 1
        if batch["outcome"] != "copy-lost":   # a losing copy's results were dropped
            r["done"] += batch.get("done", batch["n"] if batch["outcome"] in DONE else 0)
        if batch["outcome"] in DONE:
            r["batches"] += 1
        if batch["outcome"] in ("failed", "timeout"):
            r["failures"] += 1
        if batch.get("attempt", 1) > 1:
            r["retries"] += 1
        if batch.get("copy_of") is not None or batch["outcome"] in ("won", "copy-lost"):
            r["stragglers"] += 1 if batch.get("copy_of") is None else 0
    for bucket in trace.get("aggregated", []):
        r = row(bucket["host"])
        r["done"] += bucket["n"]
        r["busy"] += bucket["busy"]
        r["batches"] += bucket["batches"]
        r["ran"] += bucket["batches"]
    span = _work_span(trace)
    for r in rows.values():
        r["mean_batch"] = r["busy"] / r["ran"] if r["ran"] else None
        capacity = span * max(1, r["runners"])
        r["busy_pct"] = min(100.0, 100.0 * r["busy"] / capacity) if capacity > 0 else 0.0
    return list(rows.values())


def dominated(report: Dict[str, Any]) -> Tuple[str, List[Tuple[str, float]]]:
    """What took the run's time: (a sentence, [(part, seconds)...] largest first)."""
    trace = report["trace"]
    phases = trace.get("phases", {})
    total = float(report.get("duration_seconds") or trace.get("ended") or 0.0)
    up = phases.get("first_runner_up") or 0.0
    last = phases.get("last_finished") or up
    ends = [b.get("finished") or 0 for b in trace.get("batches", []) if b["outcome"] in DONE]
    straggling = _lonely_seconds(trace, up, last)
    parts = [("start-up (connecting, booting runners)", up),
             ("input (reading and splitting it)", phases.get("input_seconds") or 0.0),
             ("stragglers (one runner busy, the others idle)", straggling),
             ("combine()", phases.get("combine_seconds") or 0.0),
             ("the processors on the hosts", max(0.0, last - up - straggling) if ends or
              trace.get("aggregated") else 0.0)]
    parts.sort(key=lambda p: -p[1])
    name, seconds = parts[0]
    share = 100.0 * seconds / total if total > 0 else 0.0
    return f"{name} dominated: {seconds:.2f} s of {total:.2f} s ({share:.0f}%)", parts


def format_summary(report: Dict[str, Any]) -> str:
    """The terminal summary of a run report with a record."""
    trace = report["trace"]
    units = report.get("taskunits", {})
    lines = [f"run of {report.get('job')}: exit {report.get('exit_code')}, "
             f"{report.get('duration_seconds', 0):.2f} s, started {report.get('started')}",
             f"taskunits: {units.get('done', 0)} done, {units.get('failed', 0)} failed, "
             f"{units.get('retried', 0)} retried, {units.get('resumed', 0)} resumed"]
    if report.get("error"):
        lines.append(f"ended by: {report['error']}")
    lines.append("")
    header = ("host", "runners", "done", "busy", "mean batch", "failures", "lost", "retries",
              "stragglers", "connect")
    table = [header]
    for r in host_rows(trace):
        table.append((r["host"], str(r["runners"]), str(r["done"]), f"{r['busy_pct']:.0f}%",
                      "-" if r["mean_batch"] is None else f"{r['mean_batch'] * 1000:.1f} ms",
                      str(r["failures"]), str(r["lost"]), str(r["retries"]),
                      str(r["stragglers"]),
                      "-" if r["connect"] is None else f"{r['connect']:.2f} s"))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)).rstrip())
    for r in host_rows(trace):
        if r["error"]:
            lines.append(f"  {r['host']}: {r['error']}")
    lost = [(runner["runner"], life) for runner in trace.get("runners", [])
            for life in runner["lives"] if life.get("lost")]
    if lost:
        lines.append("")
        lines.append("runners lost:")
        for name, life in lost:
            lines.append(f"  {name} at {life['exit']:.2f} s: {life['why']}")
    if trace.get("slowest"):
        lines.append("")
        lines.append("slowest taskunits (seconds each; a batch's mean when it held several):")
        for entry in trace["slowest"][:5]:
            which = (f"taskunit {entry['first']}" if entry["n"] == 1 else
                     f"taskunits {entry['first']}..{entry['first'] + entry['n'] - 1}")
            lines.append(f"  {entry['per_taskunit']:.3f} s  {which} on {entry['runner']}")
    lines.append("")
    sentence, parts = dominated(report)
    lines.append(sentence)
    lines.append("  " + ", ".join(f"{name.split(' (')[0]} {seconds:.2f} s"
                                  for name, seconds in parts))
    if trace.get("batches_aggregated"):
        lines.append(f"(record: {len(trace['batches'])} batches listed, "
                     f"{trace['batches_aggregated']} summed per runner per time bucket)")
    return "\n".join(lines)


def _lonely_seconds(trace: Dict[str, Any], start: float, end: float) -> float:
    """Seconds between `start` and `end` when work was going on but at most one runner of
    several was busy: the run waiting for a straggler (or for a last slow batch)."""
    if len(trace.get("runners", [])) < 2:
        return 0.0
    edges: List[Tuple[float, int]] = []
    for b in trace.get("batches", []):
        if b["outcome"] != "cancelled" and (b.get("finished") or 0) > (b.get("started") or 0):
            edges += [(b["started"], 1), (b["finished"], -1)]
    for bucket in trace.get("aggregated", []):
        edges += [(bucket["from"], 1), (bucket["from"] + bucket["busy"], -1)]
    edges.sort()
    busy, at, lonely = 0, start, 0.0
    for t, step in edges:
        t = min(max(t, start), end)
        if busy == 1:
            lonely += t - at
        busy += step
        at = t
    return lonely


def _span(start: Any, end: Any) -> Any:
    if start is None or end is None:
        return None
    return max(0.0, end - start)


def _work_span(trace: Dict[str, Any]) -> float:
    """From the first runner up to the last batch's end (whatever its outcome)."""
    phases = trace.get("phases", {})
    start = phases.get("first_runner_up") or 0.0
    ends = [b.get("finished") or 0.0 for b in trace.get("batches", [])]
    ends += [b["to"] for b in trace.get("aggregated", [])]
    end = max(ends) if ends else (phases.get("last_finished") or trace.get("ended") or 0.0)
    return max(0.0, min(end, trace.get("ended") or end) - start)

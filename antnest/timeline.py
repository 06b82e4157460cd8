"""`antnest report RUN.json --html run.html`: the run record drawn as one self-contained page.

Plain SVG written here, no plotting library: the page is a Gantt chart (one lane per runner,
grouped by host; batches as bars coloured by outcome; runner losses, restarts and speculative
copies marked), taskunits/s over time and the per-host table. No script, no network, no
server: it opens offline in any browser. Past MAX_BARS bars, finished batches are drawn merged
per lane per pixel column, so a big run's page stays small and quick.
"""
from __future__ import annotations

import html
from typing import Any, Dict, List, Tuple

from antnest.errors import UsageError
from antnest.summary import DONE, dominated, format_summary, host_rows

MAX_BARS = 3000
WIDTH = 1100          # the plot's width in px (the time axis)
LEFT = 150            # room for lane labels
LANE = 22
GROUP_GAP = 10
RATE_HEIGHT = 120
COLOURS = {"ok": "#4a90d9", "won": "#2e7d32", "copy-lost": "#b0bec5", "failed": "#e53935",
           "timeout": "#fb8c00", "lost": "#8e24aa", "cancelled": "#cfd8dc",
           "unfinished": "#ffd54f", "aggregated": "#4a90d9"}
LEGEND = (("ok", "finished"), ("failed", "a taskunit raised"), ("timeout", "timed out"),
          ("lost", "lost with its runner"), ("won", "speculative copy won"),
          ("copy-lost", "speculative copy lost"), ("cancelled", "cancelled"))


def render_html(report: Dict[str, Any]) -> str:
    """The page for a run report that holds a record."""
    trace = report["trace"]
    gantt, lanes = _gantt(trace)
    title = f"antnest run: {report.get('job')} ({report.get('started')})"
    sentence, _ = dominated(report)
    units = report.get("taskunits", {})
    facts = (f"exit {report.get('exit_code')} &middot; {report.get('duration_seconds', 0):.2f} s "
             f"&middot; {units.get('done', 0)} taskunits done, {units.get('failed', 0)} failed, "
             f"{units.get('retried', 0)} retried &middot; {_count(lanes, 'runner')} on "
             f"{_count(len(trace.get('hosts', [])), 'host')}")
    note = ""
    if trace.get("batches_aggregated"):
        note = (f"<p class='note'>{trace['batches_aggregated']} batches were recorded summed per "
                "runner per time bucket (drawn as shaded blocks): the record stays small.</p>")
    legend = "".join(f"<span class='key'><i style='background:{COLOURS[k]}'></i>{html.escape(v)}"
                     f"</span>" for k, v in LEGEND)
    legend += ("<span class='key'><b class='x'>&#x2297;</b>runner lost</span>"
               "<span class='key'><b class='r'>&#x25B6;</b>runner (re)started</span>"
               "<span class='key'><i style='background:#9e9e9e;height:4px'></i>booting</span>"
               "<span class='key'><i class='idle'></i>idle</span>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 13px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #222; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }} h2 {{ font-size: 15px; margin: 18px 0 6px; }}
.facts {{ color: #555; }} .dominated {{ font-weight: 600; }} .note {{ color: #777; }}
.key {{ margin-right: 14px; white-space: nowrap; }}
.key i {{ display: inline-block; width: 12px; height: 10px; margin-right: 4px; }}
.key i.idle {{ background: #f1f3f5; border: 1px solid #ddd; }}
.key b.x {{ color: #c62828; margin-right: 4px; }} .key b.r {{ color: #555; margin-right: 4px; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; text-align: right; }}
th {{ border-bottom: 1px solid #999; }} td:first-child, th:first-child {{ text-align: left; }}
svg text {{ font: 11px system-ui, sans-serif; fill: #333; }}
pre {{ background: #f6f8fa; padding: 8px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="facts">{facts}</p>
<p class="dominated">{html.escape(sentence)}</p>
<h2>Timeline</h2>
<div class="legend">{legend}</div>
{note}
{gantt}
<h2>Taskunits per second</h2>
{_rate_chart(trace)}
<h2>Hosts</h2>
{_host_table(trace)}
<h2>Summary</h2>
<pre>{html.escape(format_summary(report))}</pre>
</body></html>
"""


def _lanes(trace: Dict[str, Any]) -> List[Tuple[str, List[str]]]:
    """Hosts in record order, each with its runners (slot order)."""
    hosts: Dict[str, List[str]] = {h["name"]: [] for h in trace.get("hosts", [])}
    for runner in trace.get("runners", []):
        hosts.setdefault(runner["host"], []).append(runner["runner"])
    return [(host, sorted(runners, key=_slot)) for host, runners in hosts.items()]


def _slot(label: str) -> int:
    _, _, index = label.rpartition("#")
    return int(index) if index.isdigit() else 0


def _gantt(trace: Dict[str, Any]) -> Tuple[str, int]:
    end = max(float(trace.get("ended") or 0.0), 0.001)
    scale = WIDTH / end
    groups = _lanes(trace)
    y_of: Dict[str, float] = {}
    y = 24.0
    parts: List[str] = []
    lane_count = 0
    for host, runners in groups:
        parts.append(f"<g class='host' data-host='{_a(host)}'>")
        parts.append(f"<text x='4' y='{y + 15:.0f}' font-weight='bold'>{html.escape(host)}</text>")
        y += LANE
        for runner in runners:
            y_of[runner] = y
            lane_count += 1
            parts.append(f"<g class='lane' data-runner='{_a(runner)}'>"
                         f"<rect class='idle' x='{LEFT}' y='{y + 2:.0f}' width='{WIDTH}' "
                         f"height='{LANE - 4}' fill='#f1f3f5'/>"
                         f"<text x='14' y='{y + 15:.0f}'>{html.escape(runner)}</text></g>")
            y += LANE
        parts.append("</g>")
        y += GROUP_GAP
    height = y + 10
    bars = _bars(trace, scale, y_of)
    marks = _marks(trace, scale, y_of)
    axis = _axis(end, scale, height)
    svg = (f"<svg id='gantt' xmlns='http://www.w3.org/2000/svg' width='{LEFT + WIDTH + 20}' "
           f"height='{height:.0f}' viewBox='0 0 {LEFT + WIDTH + 20} {height:.0f}'>"
           + axis + "".join(parts) + bars + marks + "</svg>")
    return svg, lane_count


def _bars(trace: Dict[str, Any], scale: float, y_of: Dict[str, float]) -> str:
    batches = trace.get("batches", [])
    out: List[str] = []
    merge = len(batches) > MAX_BARS
    merged: Dict[Tuple[str, int], List[float]] = {}
    where: Dict[int, Tuple[float, float]] = {}
    for b in batches:
        y = y_of.get(b["runner"])
        if y is None:
            continue
        start = b.get("started") if b.get("started") is not None else b.get("sent") or 0.0
        stop = b.get("finished") if b.get("finished") is not None else trace.get("ended", start)
        if b["outcome"] in ("lost", "cancelled", "copy-lost") and stop <= start:
            continue   # queued behind another batch when its runner went: it never ran
        x = LEFT + start * scale
        # failed, lost and timed-out bars stay visible however short they were
        w = max(1.0 if b["outcome"] in ("ok", "won", "copy-lost", "cancelled") else 4.0,
                (stop - start) * scale)
        where[b["id"]] = (x, y + LANE / 2)
        if merge and b["outcome"] == "ok":
            key = (b["runner"], int(x))
            slot = merged.setdefault(key, [x, x + w, 0])
            slot[1] = max(slot[1], x + w)
            slot[2] += b.get("done", b["n"])
            continue
        tip = (f"{b['runner']} batch {b['id']}: taskunits {b['first']}..{b['first'] + b['n'] - 1}"
               f", {b['outcome']}, {start:.3f}-{stop:.3f} s, attempt {b.get('attempt', 1)}, "
               f"{b.get('bytes_out', 0)} B out / {b.get('bytes_in', 0)} B back")
        if b.get("error"):
            tip += f"\n{b['error']}"
        out.append(f"<rect class='bar {b['outcome']}' data-batch='{b['id']}' x='{x:.1f}' "
                   f"y='{y + 3:.0f}' width='{w:.1f}' height='{LANE - 6}' "
                   f"fill='{COLOURS.get(b['outcome'], '#999')}'><title>{html.escape(tip)}"
                   f"</title></rect>")
    for (runner, _), (x0, x1, n) in merged.items():
        out.append(f"<rect class='bar ok merged' x='{x0:.1f}' y='{y_of[runner] + 3:.0f}' "
                   f"width='{max(1.0, x1 - x0):.1f}' height='{LANE - 6}' "
                   f"fill='{COLOURS['ok']}'><title>{int(n)} taskunits</title></rect>")
    for bucket in trace.get("aggregated", []):
        y = y_of.get(bucket["runner"])
        if y is None:
            continue
        span = max(1e-9, bucket["to"] - bucket["from"])
        shade = min(1.0, bucket["busy"] / span)
        out.append(f"<rect class='bar aggregated' x='{LEFT + bucket['from'] * scale:.1f}' "
                   f"y='{y + 3:.0f}' width='{max(1.0, span * scale):.1f}' height='{LANE - 6}' "
                   f"fill='{COLOURS['aggregated']}' fill-opacity='{0.15 + 0.85 * shade:.2f}'>"
                   f"<title>{bucket['batches']} batches, {bucket['n']} taskunits, busy "
                   f"{100 * shade:.0f}%</title></rect>")
    for b in batches:   # speculative copies: from the original, at the moment it was
        # copied, to the copy's start
        if b.get("copy_of") is not None and b["copy_of"] in where and b["id"] in where:
            (_, y0), (x1, y1) = where[b["copy_of"]], where[b["id"]]
            x0 = LEFT + (b.get("sent") or 0.0) * scale
            out.append(f"<line class='spec-link' data-from='{b['copy_of']}' data-to='{b['id']}' "
                       f"x1='{x0:.1f}' y1='{y0:.1f}' x2='{x1:.1f}' y2='{y1:.1f}' stroke='#2e7d32'"
                       f" stroke-width='1.5' stroke-dasharray='4 2'/>")
    return "".join(out)


def _marks(trace: Dict[str, Any], scale: float, y_of: Dict[str, float]) -> str:
    out: List[str] = []
    losses: List[Tuple[float, float, str, Dict[str, Any]]] = []
    for runner in trace.get("runners", []):
        y = y_of.get(runner["runner"])
        if y is None:
            continue
        for number, life in enumerate(runner["lives"]):
            boot = life.get("boot") or 0.0
            hello = life.get("hello")
            x = LEFT + boot * scale
            kind = "restart" if number else "boot"
            if number:
                x += 8   # right of the loss mark it usually follows at once
            if hello is not None:   # booting: a thin grey band up to its HELLO
                out.append(f"<rect class='booting' x='{LEFT + boot * scale:.1f}' "
                           f"y='{y + LANE / 2 - 2:.0f}' "
                           f"width='{max(1.0, (hello - boot) * scale):.1f}' height='4' "
                           f"fill='#9e9e9e'><title>{html.escape(runner['runner'])} booting "
                           f"{boot:.3f}-{hello:.3f} s</title></rect>")
            out.append(f"<path class='{kind}' d='M{x:.1f},{y + 5:.0f} l7,6 l-7,6 z' "
                       f"fill='#555'><title>{html.escape(runner['runner'])} "
                       f"{'restarted' if number else 'started'} at {boot:.3f} s</title></path>")
            if life.get("lost") and life.get("exit") is not None:
                losses.append((LEFT + life["exit"] * scale, y, runner["runner"], life))
    for ex, y, name, life in losses:   # last, on top of everything in the lane
        why = html.escape(str(life.get("why")))
        cy = y + LANE / 2
        out.append(f"<g class='loss' data-runner='{_a(name)}'>"
                   f"<line x1='{ex:.1f}' y1='{y:.0f}' x2='{ex:.1f}' y2='{y + LANE:.0f}' "
                   f"stroke='#c62828' stroke-width='2'/>"
                   f"<circle cx='{ex:.1f}' cy='{cy:.1f}' r='7' fill='#fff' stroke='#c62828' "
                   f"stroke-width='1.5'/>"
                   f"<path d='M{ex - 3.5:.1f},{cy - 3.5:.1f} l7,7 M{ex + 3.5:.1f},{cy - 3.5:.1f} "
                   f"l-7,7' stroke='#c62828' stroke-width='2'/>"
                   f"<title>{html.escape(name)} lost at {life['exit']:.3f} s: {why}</title></g>")
    return "".join(out)


def _axis(end: float, scale: float, height: float) -> str:
    step = _nice_step(end / 10)
    out = []
    t = 0.0
    while t <= end + 1e-9:
        x = LEFT + t * scale
        out.append(f"<line x1='{x:.1f}' y1='16' x2='{x:.1f}' y2='{height:.0f}' stroke='#e0e0e0'/>"
                   f"<text x='{x:.1f}' y='12' text-anchor='middle'>{_seconds(t)}</text>")
        t += step
    return "<g class='axis'>" + "".join(out) + "</g>"


def _rate_chart(trace: Dict[str, Any], bins: int = 100) -> str:
    end = max(float(trace.get("ended") or 0.0), 0.001)
    width = end / bins
    counts = [0.0] * bins
    for b in trace.get("batches", []):
        if b["outcome"] != "copy-lost" and b.get("finished") is not None:
            done = b.get("done", b["n"] if b["outcome"] in DONE else 0)
            counts[min(bins - 1, int(b["finished"] / width))] += done
    for bucket in trace.get("aggregated", []):
        counts[min(bins - 1, int(bucket["to"] / width))] += bucket["n"]
    rates = [c / width for c in counts]
    top = max(rates) or 1.0
    scale = WIDTH / end
    points = " ".join(f"{LEFT + (i + 0.5) * width * scale:.1f},"
                      f"{RATE_HEIGHT - 4 - (r / top) * (RATE_HEIGHT - 24):.1f}"
                      for i, r in enumerate(rates))
    return (f"<svg id='rate' xmlns='http://www.w3.org/2000/svg' width='{LEFT + WIDTH + 20}' "
            f"height='{RATE_HEIGHT + 20}'>"
            + _axis(end, scale, RATE_HEIGHT)
            + f"<text x='4' y='30'>{_rate(top)}/s</text><text x='4' y='{RATE_HEIGHT - 4}'>0</text>"
            f"<polyline fill='none' stroke='#4a90d9' stroke-width='2' points='{points}'/></svg>")


def _host_table(trace: Dict[str, Any]) -> str:
    head = ("host", "Python", "connect", "runners", "taskunits done", "busy", "mean batch",
            "failures", "runners lost", "retries", "stragglers")
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in host_rows(trace):
        cells = (r["host"], r["python"] or "-",
                 "-" if r["connect"] is None else f"{r['connect']:.2f} s", r["runners"],
                 r["done"], f"{r['busy_pct']:.0f}%",
                 "-" if r["mean_batch"] is None else f"{r['mean_batch'] * 1000:.1f} ms",
                 r["failures"], r["lost"], r["retries"], r["stragglers"])
        rows.append("<tr class='host-row'>" + "".join(f"<td>{html.escape(str(c))}</td>"
                                                      for c in cells) + "</tr>")
    return "<table id='hosts'>" + "".join(rows) + "</table>"


def _nice_step(raw: float) -> float:
    for step in (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60,
                 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400):
        if step >= raw:
            return float(step)
    return 86400.0 * max(1, round(raw / 86400))


def _seconds(t: float) -> str:
    if t >= 3600:
        return f"{int(t // 3600)}h{int(t % 3600 // 60):02d}"
    if t >= 60:
        return f"{int(t // 60)}m{int(t % 60):02d}"
    return f"{t:g}s"


def _rate(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2f}"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _a(text: str) -> str:
    return html.escape(text, quote=True)


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str:
    """A headless-capable Chromium on PATH (or /usr/bin), or a UsageError saying so."""
    import shutil

    for name in BROWSERS:
        found = shutil.which(name) or shutil.which(name, path="/usr/bin")
        if found:
            return found
    raise UsageError("--png needs chromium (apt-get install chromium); --html works without it")


def browser_command(browser: str, profile: str, *args: str) -> List[str]:
    """Headless Chromium that touches no network and no user profile."""
    return [browser, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *args]


def page_size(page: str) -> Tuple[int, int]:
    """A window big enough for the whole page (width of the plot, height from the SVG)."""
    import re

    heights = [int(float(h)) for h in re.findall(r"<svg id='gantt'[^>]* height='([\d.]+)'", page)]
    rows = page.count("class='host-row'")
    return LEFT + WIDTH + 70, 330 + (heights[0] if heights else 200) + RATE_HEIGHT + 26 * rows + 520


def screenshot(page: str, png: str, timeout: float = 60.0) -> None:
    """Render `page` in headless Chromium and save a PNG of it at `png`."""
    import os
    import subprocess
    import tempfile

    browser = find_browser()
    width, height = page_size(page)
    with tempfile.TemporaryDirectory(prefix="antnest-png-") as tmp:
        source = os.path.join(tmp, "run.html")
        with open(source, "w", encoding="utf-8") as handle:
            handle.write(page)
        target = os.path.abspath(png)
        command = browser_command(browser, os.path.join(tmp, "profile"),
                                  f"--screenshot={target}", f"--window-size={width},{height}",
                                  "file://" + source)
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise UsageError(f"--png: {browser} did not finish within {timeout:g} s") from None
        if done.returncode != 0 or not os.path.exists(target):
            tail = done.stdout.decode(errors="replace").strip().splitlines()[-1:]
            raise UsageError(f"--png: {browser} failed (exit {done.returncode}): "
                             f"{tail[0] if tail else 'no output'}")

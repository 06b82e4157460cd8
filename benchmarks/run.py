#!/usr/bin/env python3
"""antnest benchmarks (issue 7): each workload on antnest and on multiprocessing.Pool, same run.

    python benchmarks/run.py                  # every workload, full sizes (a few minutes)
    python benchmarks/run.py --quick          # smaller sizes: a smoke check (< 1 min)
    python benchmarks/run.py --only W1,W3     # some workloads
    python benchmarks/run.py --profile DIR    # also py-spy (master side) per workload, into DIR
    python benchmarks/run.py --json out.json  # raw figures as JSON as well

It starts its own loopback sshd fleet (antnest.testing.SshdFleet; needs openssh-server), with
HOME pointed at a temporary directory and no ssh-agent, so the user's ~/.ssh is never read or
written. Every "host" is a real sshd on 127.0.0.x; one runner process per host.

Each measurement runs in a fresh child interpreter (this same file, `--child`), so nothing
cached by an earlier workload (bootstrap source, imported modules, warm heap) helps a later
one and W6 can read the child's own peak RSS. Figures are end to end: Cluster start (connect,
bootstrap, HELLO) through the last result and shutdown, unless the row says otherwise; the Pool
figure is Pool() creation through close()/join() for the same work and process count.

Not part of CI. The fleet is stopped on exit, on Ctrl-C and on SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

RESULT_TAG = "ANTNEST_BENCH_RESULT "
FLEET_ENV = "ANTNEST_BENCH_FLEET"
MB = 1_000_000
MiB = 1 << 20

# name -> (title, unit, target, higher_is_better)
ROWS = {
    "W1": ("W1 tiny: reverse(16 chars), 4 hosts", "tasks/s", 200_000, True),
    "W2": ("W2 CPU: ~20 ms taskunits, 2 hosts", "efficiency", 0.95, True),
    "W3-8": ("W3 startup: 8 hosts, 1 trivial each", "s", 0.4, False),
    "W3-32": ("W3 startup: 32 hosts, 1 trivial each", "s", 1.2, False),
    "W4": ("W4 bytes: 1 MiB chunks, 2 hosts", "MiB/s", 55, True),
    "W5": ("W5 latency: submit().result(), 4 hosts", "us/task", 150, False),
    "W6-big": ("W6 memory: 5M items (--quick 500k), 2 hosts", "MB peak RSS", 150, False),
    "W6-small": ("W6 memory: 1/10 of that, 2 hosts", "MB peak RSS", 150, False),
}
WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "W6"]


# =============================================================================================
# Task functions (module level: Pool pickles them by reference, antnest ships them by value).

def reverse(s: str) -> str:
    return s[::-1]


def burn(n: int) -> int:
    """Pure-Python CPU work; n is calibrated to about 20 ms."""
    x = 0
    for i in range(n):
        x += i * i % 7
    return x


def burn_timed(n: int) -> float:
    """burn(n), returning the CPU seconds it took on the thread that ran it."""
    start = time.thread_time()
    burn(n)
    return time.thread_time() - start


def trivial(x: int) -> int:
    return os.getpid()


def nbytes(chunk: bytes) -> int:
    return len(chunk)


def echo(x: int) -> int:
    return x


def small(x: int) -> int:
    return x & 0xFF


def split_n(n: int) -> Iterator[int]:
    return iter(range(n))


def count(results: Iterator[Any]) -> int:
    total = 0
    for _ in results:
        total += 1
    return total


def chunks(total_mib: int) -> Iterator[bytes]:
    """Lazily made 1 MiB chunks. Each is a distinct object: pickle memoises a bytes object seen
    twice in one dump, so yielding the very same object would send one copy per batch."""
    block = os.urandom(MiB - 8)
    for i in range(total_mib):
        yield block + i.to_bytes(8, "big")


# =============================================================================================
# Child side: one measurement in a fresh interpreter.

def _fleet_hosts(n: int) -> Dict[str, Any]:
    with open(os.environ[FLEET_ENV]) as f:
        info = json.load(f)
    if n > len(info["hosts"]):
        raise SystemExit(f"the fleet has {len(info['hosts'])} hosts, {n} wanted")
    import antnest

    config = os.environ.get("ANTNEST_BENCH_SSH_CONFIG")   # clients.py: an ssh_config for -F
    hosts = [antnest.Host(name=h["name"], address=h["address"], port=h["port"], user=info["user"],
                          identity_files=(info["client_key"],), procs=1, ssh_config=config)
             for h in info["hosts"][:n]]
    return {"hosts": hosts, "known_hosts": [info["known_hosts"]]}


def cluster(n: int, **options: Any):
    import antnest

    client = os.environ.get("ANTNEST_BENCH_SSH_CLIENT")   # benchmarks/clients.py sets it
    if client:
        options.setdefault("ssh_client", client)
    return antnest.Cluster(**_fleet_hosts(n), **options)


class Weather:
    """CPU that processes other than this child (and its children) and the fleet (sshd and the
    runners) took while the block ran, as a share of the machine: the machine may be shared."""

    def __enter__(self) -> "Weather":
        with open(os.environ[FLEET_ENV]) as f:
            self._roots = [os.getpid()] + json.load(f).get("daemon_pids", [])
        self._busy, self._ours, self._t = _busy_ticks(), _tree_ticks(self._roots), time.monotonic()
        return self

    def __exit__(self, *exc: Any) -> None:
        foreign = (_busy_ticks() - self._busy) - (_tree_ticks(self._roots) - self._ours)
        self.seconds = max(0.0, foreign / os.sysconf("SC_CLK_TCK"))
        capacity = (time.monotonic() - self._t) * (os.cpu_count() or 1)
        self.share = self.seconds / capacity if capacity else 0.0


def _rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / MB
    return 0.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # kB on Linux


def child_W1(quick: bool) -> Dict[str, Any]:
    from multiprocessing import Pool

    n = 20_000 if quick else 100_000
    items = [f"{i:016d}" for i in range(n)]
    with Weather() as weather:
        t0 = time.perf_counter()
        with cluster(4) as c:
            started = time.perf_counter() - t0
            got = 0
            for _ in c.map(reverse, items):
                got += 1
        wall = time.perf_counter() - t0
    assert got == n, got
    with Weather() as pool_weather:
        t1 = time.perf_counter()
        with Pool(4) as pool:
            out = pool.map(reverse, items)
            pool.close()
            pool.join()
        pool_wall = time.perf_counter() - t1
    assert len(out) == n
    return {"antnest": n / wall, "pool": n / pool_wall,
            "notes": f"n={n}; antnest {wall:.3f} s (Cluster() {started:.3f} s), Pool "
                     f"{pool_wall:.3f} s; others took {weather.share:.0%} / "
                     f"{pool_weather.share:.0%} of the CPUs"}


def _calibrate(target: float = 0.020) -> int:
    n = 20_000
    while True:
        start = time.process_time()
        burn(n)
        took = time.process_time() - start
        if took > 0.005:
            break
        n *= 2
    n = int(n * target / took)
    samples = []
    for _ in range(5):
        start = time.process_time()
        burn(n)
        samples.append(time.process_time() - start)
    return int(n * target / statistics.median(samples))


def child_W2(quick: bool) -> Dict[str, Any]:
    """Efficiency = (serial CPU / 2) / wall. The serial CPU is the sum of what each taskunit
    itself took (thread CPU time, measured inside it) in this very run: on a shared or
    frequency-scaling VM a separate serial run minutes apart can differ by 20 %, and the hosts'
    python3 need not be this interpreter. A classic serial run on this interpreter is in notes."""
    from multiprocessing import Pool

    tasks = 100 if quick else 400
    n = _calibrate()
    items = [n] * tasks
    with Weather() as weather:
        t0 = time.perf_counter()
        with cluster(2) as c:
            cpu = sum(c.map(burn_timed, items))
        wall = time.perf_counter() - t0
    with Weather() as pool_weather:
        t1 = time.perf_counter()
        with Pool(2) as pool:
            pool_cpu = sum(pool.map(burn_timed, items, chunksize=1))
            pool.close()
            pool.join()
        pool_wall = time.perf_counter() - t1
    # What the efficiency would be had other processes left the CPUs alone.
    corrected = cpu / max(1e-9, 2 * wall - weather.seconds)
    pool_corrected = pool_cpu / max(1e-9, 2 * pool_wall - pool_weather.seconds)
    sample = max(10, tasks // 8)
    start = time.process_time()
    for _ in range(sample):
        burn(n)
    serial_here = (time.process_time() - start) / sample
    return {"antnest": cpu / 2 / wall, "pool": pool_cpu / 2 / pool_wall,
            "notes": f"{tasks} tasks; per task {cpu / tasks * 1000:.1f} ms CPU on the runners "
                     f"(hosts' python3), {pool_cpu / tasks * 1000:.1f} ms in Pool workers, "
                     f"{serial_here * 1000:.1f} ms serial here; wall antnest {wall:.2f} s, Pool "
                     f"{pool_wall:.2f} s (ideal {cpu / 2:.2f} / {pool_cpu / 2:.2f} s); other processes "
                     f"took {weather.share:.0%} / {pool_weather.share:.0%} of the CPUs, without them "
                     f"efficiency would be {min(1, corrected):.3f} / {min(1, pool_corrected):.3f}"}


def child_W3(quick: bool, hosts: int) -> Dict[str, Any]:
    from multiprocessing import Pool

    reps = 1 if quick else 3
    walls, firsts, readies = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        c = cluster(hosts)
        try:
            firsts.append(time.perf_counter() - t0)
            states = c.wait_for_hosts()
            readies.append(time.perf_counter() - t0)
            # one trivial task answered by each host (map of N items may use fewer hosts)
            answers = c.on_each_host(trivial, 1)
            walls.append(time.perf_counter() - t0)
            up = sum(1 for s in states if s.state == "connected")
            assert up == hosts and len(answers) == hosts, (up, answers)
            assert len(set(answers.values())) == hosts, answers  # N runners, one per host
        finally:
            c.shutdown()
        time.sleep(0.5)  # let the sshd sessions of this round go before the next
    pool_walls = []
    for _ in range(reps):
        t1 = time.perf_counter()
        with Pool(hosts) as pool:
            pool.map(trivial, range(hosts), chunksize=1)
        pool_walls.append(time.perf_counter() - t1)
    med = statistics.median
    return {"antnest": med(walls), "pool": med(pool_walls),
            "notes": f"median of {reps}: first runner {med(firsts):.3f} s, all {hosts} up "
                     f"{med(readies):.3f} s, results {med(walls):.3f} s "
                     f"(all rounds: {', '.join(f'{w:.3f}' for w in walls)})"}


def child_W4(quick: bool) -> Dict[str, Any]:
    from multiprocessing import Pool

    total = 32 if quick else 256
    with Weather() as weather:
        t0 = time.perf_counter()
        with cluster(2) as c:
            got = sum(c.imap(nbytes, chunks(total)))
        wall = time.perf_counter() - t0
    assert got == total * MiB, got
    peak = _peak_rss_mb()  # the input is lazy: the master should hold a few chunks, not all
    t1 = time.perf_counter()
    with Pool(2) as pool:
        got = sum(pool.imap(nbytes, chunks(total), chunksize=1))
        pool.close()
        pool.join()
    pool_wall = time.perf_counter() - t1
    assert got == total * MiB
    return {"antnest": total / wall, "pool": total / pool_wall,
            "notes": f"{total} MiB; antnest {wall:.2f} s (master peak RSS {peak:.0f} MB; others "
                     f"took {weather.share:.0%} of the CPUs), Pool {pool_wall:.2f} s"}


def child_W5(quick: bool) -> Dict[str, Any]:
    """Blocks of antnest and Pool round trips alternate, so both see the same machine weather
    (on a shared VM a round trip can vary 2x from one minute to the next)."""
    from multiprocessing import Pool

    warm, n, blocks = (100, 300, 3) if quick else (300, 2000, 10)
    per_block = n // blocks
    clock = time.perf_counter
    lat: List[float] = []
    pool_lat: List[float] = []
    floor_lat: List[float] = []
    with Weather() as weather, cluster(4) as c, Pool(4) as pool, _EchoChannel() as floor:
        c.wait_for_hosts()
        for i in range(warm):
            c.submit(echo, i).result()
            pool.apply_async(echo, (i,)).get()
            floor.round_trip()
        for _ in range(blocks):
            for i in range(per_block):
                t = clock()
                c.submit(echo, i).result()
                lat.append(clock() - t)
            for i in range(per_block):
                t = clock()
                pool.apply_async(echo, (i,)).get()
                pool_lat.append(clock() - t)
            for i in range(per_block):
                t = clock()
                floor.round_trip()
                floor_lat.append(clock() - t)
    lat.sort()
    pool_lat.sort()
    n = len(lat)
    med = statistics.median
    return {"antnest": med(lat) * 1e6, "pool": med(pool_lat) * 1e6,
            "notes": f"median of {n} after {warm} warm-up, in {blocks} alternating blocks; "
                     f"antnest p10/p90 {lat[n // 10] * 1e6:.0f}/{lat[n * 9 // 10] * 1e6:.0f} us, "
                     f"Pool p10/p90 {pool_lat[n // 10] * 1e6:.0f}/{pool_lat[n * 9 // 10] * 1e6:.0f} us; "
                     f"transport floor (bare paramiko exec channel, same cipher, to a python3 "
                     f"echo loop, no pickling): median {med(floor_lat) * 1e6:.0f} us, antnest = "
                     f"{med(lat) / med(floor_lat):.2f}x floor; "
                     f"others took {weather.share:.0%} of the CPUs"}


class _EchoChannel:
    """The transport's own round-trip floor: one paramiko exec channel (AES-GCM, like antnest)
    to a python3 loop that echoes what it reads, on the first fleet host."""

    SOURCE = "import os\nwhile True:\n d=os.read(0,65536)\n if not d: break\n os.write(1,d)\n"

    def __enter__(self) -> "_EchoChannel":
        import shlex

        import paramiko

        with open(os.environ[FLEET_ENV]) as f:
            info = json.load(f)
        host = info["hosts"][0]
        self._client = paramiko.SSHClient()
        self._client.load_host_keys(info["known_hosts"])
        self._client.connect(host["address"], port=host["port"], username=info["user"],
                             key_filename=info["client_key"], allow_agent=False,
                             look_for_keys=False,
                             disabled_algorithms={"ciphers": ["aes128-ctr", "aes192-ctr",
                                                              "aes256-ctr"]})
        self._channel = self._client.get_transport().open_session(window_size=64 << 20,
                                                                  max_packet_size=32768)
        self._channel.exec_command("python3 -c " + shlex.quote(self.SOURCE))
        return self

    def round_trip(self) -> None:
        self._channel.sendall(b"x" * 40)
        self._channel.recv(100)

    def __exit__(self, *exc: Any) -> None:
        self._channel.close()
        self._client.close()


def child_W6(quick: bool, impl: str, items: int) -> Dict[str, Any]:
    """One job run in this fresh process; its peak RSS is the figure."""
    base = _rss_now_mb()
    t0 = time.perf_counter()
    if impl == "antnest":
        import antnest

        job = antnest.Job(processor=small, split=split_n, combine=count, input_data=items,
                          name="w6")
        with cluster(2) as c:
            got = c.run(job)
    else:
        from multiprocessing import Pool

        with Pool(2) as pool:
            got = count(pool.imap(small, split_n(items), chunksize=1000))
    wall = time.perf_counter() - t0
    assert got == items, got
    return {"value": _peak_rss_mb(), "base": base, "wall": wall}


def child_main(argv: List[str]) -> None:
    name, quick = argv[0], argv[1] == "quick"
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t = time.perf_counter()
    if argv[2:3] != ["pool"]:  # W6's Pool child stays without antnest: its RSS is the figure
        import antnest  # noqa: F401  (imports are not part of any figure)
    import_seconds = time.perf_counter() - t
    if name == "W3":
        result = child_W3(quick, int(argv[2]))
    elif name == "W6":
        result = child_W6(quick, argv[2], int(argv[3]))
    elif name == "hostinfo":
        with cluster(1) as c:
            result = {"python": c.submit(platform.python_version).result(),
                      "where": c.submit(lambda: sys.executable).result()}
            try:  # diagnostics only, through internals: allowed to fail
                transport = c._groups[0].ssh._conn.transport
                cipher = transport.local_cipher
                result["ssh"] = (f"{cipher} (AEAD: no separate MAC)" if "gcm" in cipher
                                 else f"{cipher} + {transport.local_mac}")
            except Exception:
                result["ssh"] = "?"
    else:
        result = globals()[f"child_{name}"](quick)
    result["import_seconds"] = import_seconds
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


# =============================================================================================
# Parent side: the fleet, the children, the table.

_current_child: Optional[subprocess.Popen] = None


def _cpu_times() -> List[int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return [sum(fields), idle]


def wait_for_quiet(limit: float, max_busy: float = 0.15) -> float:
    """Wait (up to `limit` s) until other processes leave the CPUs mostly idle: the machine
    may be shared (tests running beside us), and every figure here is about CPU time.
    Returns the busy fraction last seen."""
    deadline = time.monotonic() + limit
    while True:
        a = _cpu_times()
        time.sleep(0.5)
        b = _cpu_times()
        total = b[0] - a[0]
        busy = 1 - (b[1] - a[1]) / total if total else 0.0
        if busy <= max_busy or time.monotonic() >= deadline:
            return busy


_quiet_limit = 60.0
_fleet_roots: List[int] = []


def _tree_ticks(roots: List[int]) -> int:
    """CPU ticks used by `roots` and every process below them, reaped ones included (a reaped
    child's time moves into its parent's cutime/cstime, so before/after deltas add up)."""
    children: Dict[int, List[int]] = {}
    stats: Dict[int, List[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo, seen = 0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += sum(int(x) for x in stats[pid][11:15])  # utime stime cutime cstime
        todo.extend(children.get(pid, ()))
    return total


def _busy_ticks() -> int:
    total, idle = _cpu_times()
    return total - idle


def run_child(args: List[str], profile_dir: Optional[Path], profile_name: str,
              timeout: float = 900) -> Dict[str, Any]:
    global _current_child
    if _quiet_limit > 0:
        busy = wait_for_quiet(_quiet_limit)
        if busy > 0.15:
            print(f"  (warning: the CPUs are {busy:.0%} busy with other work; figures will be "
                  "low)", file=sys.stderr)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    if profile_dir is not None:
        cmd = [shutil.which("py-spy") or "py-spy", "record", "--nonblocking", "--threads",
               "--rate", "200", "--format", "raw",
               "-o", str(profile_dir / f"{profile_name}.txt"), "--", *cmd]
    roots = [os.getpid()] + _fleet_roots
    busy0, ours0, t0 = _busy_ticks(), _tree_ticks(roots), time.monotonic()
    _current_child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = _current_child.communicate(timeout=timeout)
        time.sleep(0.2)  # the sshd sessions of the last cluster end and are reaped
        foreign = (_busy_ticks() - busy0) - (_tree_ticks(roots) - ours0)
        capacity = (time.monotonic() - t0) * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
        foreign_share = max(0.0, foreign / capacity) if capacity else 0.0
    finally:
        if _current_child.poll() is None:
            _current_child.kill()
            _current_child.wait()
        code = _current_child.returncode
        _current_child = None
    for line in out.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            result["foreign_cpu"] = foreign_share
            if foreign_share > 0.05:
                print(f"  (other processes took {foreign_share:.0%} of the CPUs meanwhile)",
                      file=sys.stderr)
            return result
    raise RuntimeError(f"child {' '.join(args)} failed (exit {code}); output:\n{out[-2000:]}")


def machine_info() -> List[str]:
    import cloudpickle
    import paramiko

    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    try:
        ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    except OSError:
        ssh = "?"
    return [
        f"CPU: {model}, {cores} cores usable ({os.cpu_count()} online)",
        f"OS: {platform.system()} {platform.release()}; {ssh}",
        f"master Python {platform.python_version()} ({sys.executable}); paramiko "
        f"{paramiko.__version__}, cloudpickle {cloudpickle.__version__}",
    ]


def fmt(value: float, unit: str) -> str:
    if unit == "tasks/s":
        return f"{value / 1000:,.1f}k"
    if unit == "efficiency":
        return f"{value:.3f}"
    if unit == "s":
        return f"{value:.3f}"
    return f"{value:,.1f}"


def print_table(rows: Dict[str, Dict[str, Any]], info: List[str], quick: bool) -> str:
    lines = []
    lines.append(f"antnest benchmarks ({'--quick sizes, not the spec' if quick else 'full sizes'})")
    lines.extend("  " + line for line in info)
    lines.append("")
    lines.append("| workload | unit | antnest | Pool | antnest/Pool | target | met |")
    lines.append("|---|---|---:|---:|---:|---|---|")
    for key, (title, unit, target, higher) in ROWS.items():
        if key not in rows:
            continue
        r = rows[key]
        a, p = r["antnest"], r["pool"]
        ratio = a / p if p else float("nan")
        ok = a >= target if higher else a <= target
        sign = ">=" if higher else "<="
        lines.append(f"| {title} | {unit} | {fmt(a, unit)} | {fmt(p, unit)} | {ratio:.2f} | "
                     f"{sign} {fmt(target, unit)} | {'yes' if ok else 'NO'} |")
    lines.append("")
    lines.append("Notes:")
    for key in ROWS:
        if key in rows and rows[key].get("notes"):
            other = rows[key].get("foreign_cpu", 0.0)
            extra = f" [other processes: {other:.0%} of the CPUs]" if other >= 0.01 else ""
            lines.append(f"  {key}: {rows[key]['notes']}{extra}")
    text = "\n".join(lines)
    print(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W3")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke check)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy record each antnest child "
                        "(master side, all threads, raw collapsed stacks) into DIR")
    parser.add_argument("--json", metavar="PATH", help="also write the raw figures as JSON")
    parser.add_argument("--quiet-wait", type=float, default=60.0, metavar="S",
                        help="before each measurement wait up to S seconds for other processes "
                        "to leave the CPUs idle (default 60; 0: don't wait)")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="run W1 and W4 N times each and keep the median (default 3; "
                        "1 with --quick)")
    parser.add_argument("--serve-fleet", action="store_true",
                        help="only start the fleet, print how to run one measurement against "
                        "it by hand (for profiling), and wait for Ctrl-C")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        try:
            child_main(args.child)
        except KeyboardInterrupt:  # Ctrl-C reaches the child too; the parent reports it
            return 130
        return 0

    global _quiet_limit
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    _quiet_limit = args.quiet_wait
    chosen = [w.strip().upper() for w in args.only.split(",") if w.strip()] or WORKLOADS
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir is not None:
        if not shutil.which("py-spy"):
            parser.error("--profile needs py-spy (pip install py-spy)")
        profile_dir.mkdir(parents=True, exist_ok=True)
    quick = "quick" if args.quick else "full"
    w3_sizes = [8] if args.quick else [8, 32]
    fleet_size = max([4] + ([max(w3_sizes)] if "W3" in chosen or args.serve_fleet else []))

    # Nothing of the user's SSH setup takes part: an empty HOME, no agent (children inherit).
    scratch = Path(tempfile.mkdtemp(prefix="antnest-bench-"))
    home = scratch / "home"
    home.mkdir()
    os.environ["HOME"] = str(home)
    os.environ.pop("SSH_AUTH_SOCK", None)

    from antnest.testing import SshdFleet

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    fleet = SshdFleet(scratch / "fleet", count=fleet_size, first_octet=11)
    rows: Dict[str, Dict[str, Any]] = {}
    try:
        t = time.perf_counter()
        fleet.start()
        print(f"fleet: {fleet_size} sshd on 127.0.0.11-{10 + fleet_size} "
              f"(up in {time.perf_counter() - t:.1f} s)", file=sys.stderr)
        fleet_file = scratch / "fleet.json"
        fleet_file.write_text(json.dumps({
            "user": fleet.user, "client_key": str(fleet.client_key),
            "known_hosts": str(fleet.known_hosts),
            "hosts": [{"name": h.name, "address": h.address, "port": h.port} for h in fleet.hosts],
            "daemon_pids": [h.pid for h in fleet.hosts],
        }))
        os.environ[FLEET_ENV] = str(fleet_file)
        _fleet_roots[:] = [h.pid for h in fleet.hosts]
        if args.serve_fleet:
            print(f"fleet up. In another shell (same HOME keeps the user's ~/.ssh out):\n"
                  f"  HOME={home} {FLEET_ENV}={fleet_file} {sys.executable} "
                  f"{Path(__file__).resolve()} --child W1 full   # or W2..W5; W3 full 8; "
                  f"W6 full antnest 5000000\nCtrl-C stops it.", flush=True)
            while True:
                time.sleep(3600)
        info = machine_info()
        hostinfo = run_child(["hostinfo", quick], None, "")
        info.append(f"hosts' python3: {hostinfo['python']} ({hostinfo['where']}); every host "
                    f"is a loopback sshd, one runner per host; SSH cipher {hostinfo['ssh']}")

        def step(key: str, child_args: List[str], repeats: int = 1) -> None:
            """Run the child `repeats` times (fresh interpreters); keep the median run."""
            t = time.perf_counter()
            print(f"running {key} ...", file=sys.stderr, flush=True)
            runs = []
            for i in range(repeats):
                runs.append(run_child(child_args, profile_dir if i == 0 else None, key))
                print(f"  {key}: antnest {runs[-1]['antnest']:.4g}, Pool {runs[-1]['pool']:.4g}",
                      file=sys.stderr, flush=True)
            runs.sort(key=lambda r: r["antnest"])
            row = dict(runs[len(runs) // 2])
            if repeats > 1:
                row["pool"] = statistics.median(r["pool"] for r in runs)
                unit = ROWS[key][1]
                row["notes"] += (f"; median of {repeats} runs: antnest "
                                 f"{', '.join(fmt(r['antnest'], unit) for r in runs)}; Pool "
                                 f"{', '.join(fmt(r['pool'], unit) for r in runs)}")
                row["foreign_cpu"] = max(r["foreign_cpu"] for r in runs)
            rows[key] = row
            print(f"  ({time.perf_counter() - t:.1f} s)", file=sys.stderr, flush=True)

        for w in chosen:
            if w == "W3":
                for size in w3_sizes:
                    step(f"W3-{size}", ["W3", quick, str(size)])
            elif w == "W6":
                sizes = {"big": 500_000 if args.quick else 5_000_000,
                         "small": 50_000 if args.quick else 500_000}
                for label, n in sizes.items():
                    print(f"running W6-{label} ({n:,} items) ...", file=sys.stderr, flush=True)
                    a = run_child(["W6", quick, "antnest", str(n)], profile_dir, f"W6-{label}")
                    p = run_child(["W6", quick, "pool", str(n)], None, "")
                    rows[f"W6-{label}"] = {
                        "antnest": a["value"], "pool": p["value"],
                        "foreign_cpu": max(a["foreign_cpu"], p["foreign_cpu"]),
                        "notes": f"{n:,} items; RSS before the run {a['base']:.0f} MB "
                                 f"(Pool child {p['base']:.0f} MB); antnest {a['wall']:.1f} s "
                                 f"({n / a['wall'] / 1000:.0f}k items/s), Pool imap chunksize "
                                 f"1000 {p['wall']:.1f} s"}
                    print(f"  W6-{label}: antnest {a['value']:.1f} MB, Pool {p['value']:.1f} MB",
                          file=sys.stderr, flush=True)
            else:
                step(w, [w, quick], repeats=args.repeat if w in ("W1", "W4") else 1)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the fleet", file=sys.stderr)
        if _current_child is not None and _current_child.poll() is None:
            _current_child.kill()
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        try:
            fleet.stop()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if rows:
        print()
        print_table(rows, info, args.quick)
        if args.json:
            Path(args.json).write_text(json.dumps({"quick": args.quick, "machine": info,
                                                   "rows": rows}, indent=2))
        if profile_dir is not None:
            print(f"\npy-spy profiles (collapsed stacks) in {profile_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

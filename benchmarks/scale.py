#!/usr/bin/env python3
"""Scale and cold start: what `antnest run` pays in a fresh process, per host, at many hosts.

    python benchmarks/scale.py                    # 16, 64 and 200 hosts, cold CLI, inventory
    python benchmarks/scale.py --hosts 16,64      # some sizes
    python benchmarks/scale.py --quick            # 16 hosts only (a smoke check)

Every figure comes from a fresh interpreter (a child process), imports included, as a user's
`antnest run` or cron job pays them:

* cold CLI   `python -m antnest run` over 8 hosts of a native inventory: wall time from exec to
             its first output line and to its exit; `python -c pass` and `import antnest` in the
             same run as the floor.
* all up     `Cluster()` + `wait_for_hosts()` on N hosts, one runner each: seconds, the CPU
             the whole machine spent meanwhile (the hosts' sshd and runners share it), master
             threads, master RSS, master CPU to connect, and master CPU per host per second while
             idle afterwards (5 s of doing nothing).
* relays     the same N hosts through 4 and 8 relays (--relay auto:N/K): all up, master CPU.
* check      `antnest check` on N hosts: wall time.
* inventory  resolving 2,000 hosts whose ssh_config has one Host block each (no SSH at all).

It starts its own loopback sshd fleet (antnest.testing.SshdFleet: one sshd per host, on
127.0.0.11 and up) with HOME pointed at a temporary directory. Not part of CI. On this 2-core
machine the hosts share the master's cores: read ratios and per-host costs, not absolutes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TAG = "ANTNEST_SCALE "


# --------------------------------------------------------------------------- children

def _machine_cpu() -> float:
    """Seconds of CPU the whole machine has spent (all processes: here the hosts' sshd and
    runners, the master, and whatever else runs)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:8]]
    except OSError:
        return float("nan")
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def child_up(inventory: str, known_hosts: str, relay: str = "none") -> Dict[str, Any]:
    import threading

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    machine0 = _machine_cpu()
    import antnest

    cluster = antnest.Cluster(inventory, known_hosts=[known_hosts], procs=1, connect_timeout=30,
                              relay=relay)
    states = cluster.wait_for_hosts(timeout=300)
    up = time.perf_counter() - t0
    connect_cpu = time.process_time() - cpu0
    machine_cpu = _machine_cpu() - machine0
    threads = threading.active_count()
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1
    idle_cpu0 = time.process_time()
    time.sleep(5.0)
    idle_cpu = time.process_time() - idle_cpu0
    cluster.shutdown()
    hosts = len(states)
    return {"hosts": hosts, "connected": sum(s.state == "connected" for s in states),
            "all_up_s": up, "threads": threads, "fds": fds, "connect_cpu_s": connect_cpu,
            "machine_cpu_s": machine_cpu,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "idle_cpu_ms_per_host_s": 1000 * idle_cpu / 5.0 / max(1, hosts)}


def child_inventory(count: int) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "ssh_config")
        config.write_text("".join(f"Host n{i}\n    HostName 10.1.{i // 250}.{i % 250}\n"
                                  f"    Port {2000 + i % 100}\n" for i in range(count)))
        hosts = Path(tmp, "hosts")
        hosts.write_text(",".join(f"n{i}" for i in range(count)))
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        from antnest.inventory import load_hosts

        found = load_hosts(host_list=hosts.read_text(), ssh_config=config)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    assert len(found) == count and found[7].address == "10.1.0.7", found[7]
    return {"hosts": count, "wall_s": wall, "cpu_s": cpu}


def child_main(argv: List[str]) -> None:
    kind = argv[0]
    result = child_up(*argv[1:]) if kind == "up" else child_inventory(int(argv[1]))
    print(TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent

def run_child(args: List[str], env: Dict[str, str]) -> Dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True, env=env, timeout=900, cwd=ROOT)
    for line in out.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    raise SystemExit(f"child {args} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def timed(cmd: List[str], env: Dict[str, str], ok: tuple = (0,)) -> Dict[str, Any]:
    """Wall time to the first line on stdout and to exit, for a fresh process."""
    with tempfile.TemporaryFile("w+") as errors:   # a file: stdout alone is piped and read
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, env=env, cwd=ROOT,
                                text=True)
        assert proc.stdout is not None
        head = proc.stdout.readline()
        first = time.perf_counter() - t0
        rest = proc.stdout.read()
        proc.wait(timeout=600)
        total = time.perf_counter() - t0
        errors.seek(0)
        err = errors.read()
    if proc.returncode not in ok:
        raise SystemExit(f"{cmd} exited {proc.returncode}: {err[-2000:]}")
    return {"first": first, "exit": total, "stdout": head + rest}


def best(runs: List[Dict[str, float]], key: str) -> float:
    return sorted(r[key] for r in runs)[len(runs) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="16,64,200")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--relays", default="4,8",
                        help="also bring every size up through this many relays (--relay "
                             "auto:N); '' for direct only")
    parser.add_argument("--child", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return 0
    sizes = [16] if args.quick else [int(n) for n in args.hosts.split(",")]
    from antnest.limits import raise_open_files_limit
    from antnest.testing import SshdFleet

    raise_open_files_limit()
    rows: List[str] = []
    with tempfile.TemporaryDirectory(prefix="antnest-scale-") as tmp:
        home = Path(tmp, "home")
        home.mkdir()
        env = dict(os.environ, HOME=str(home), PYTHONPATH=str(ROOT))
        env.pop("SSH_AUTH_SOCK", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)   # users' processes read cached bytecode
        biggest = max(sizes + [8])
        with SshdFleet(Path(tmp, "fleet"), count=biggest) as fleet:
            hosts8 = Path(tmp, "h8.yaml")
            _write_inventory(fleet, hosts8, 8)
            job = ROOT / "jobs" / "reverse.py"
            reps = 3 if not args.quick else 1
            timed([sys.executable, "-m", "antnest", "run", "-i", str(hosts8), "--known-hosts",
                   str(fleet.known_hosts), "--procs", "1", str(job)], env)  # bytecode cached
            ssh_import = [timed([sys.executable, "-c", "import antnest.transport.ssh; print(1)"],
                                env) for _ in range(reps)]
            floor = [timed([sys.executable, "-c", "print(1)"], env) for _ in range(reps)]
            imp = [timed([sys.executable, "-c", "import antnest; print(1)"], env)
                   for _ in range(reps)]
            cold = [timed([sys.executable, "-m", "antnest", "run", "-i", str(hosts8),
                           "--known-hosts", str(fleet.known_hosts), "--procs", "1", str(job)],
                          env) for _ in range(reps)]
            local = [timed([sys.executable, "-m", "antnest", "run", str(job)], env)
                     for _ in range(reps)]
            rows.append(f"| cold `python -c pass` | {best(floor, 'exit'):.3f} s |")
            rows.append(f"| cold `import antnest` | {best(imp, 'exit'):.3f} s |")
            rows.append(f"| cold `import antnest.transport.ssh` (the paramiko client) | "
                        f"{best(ssh_import, 'exit'):.3f} s |")
            rows.append(f"| cold `antnest run` local default, first line / exit | "
                        f"{best(local, 'first'):.3f} / {best(local, 'exit'):.3f} s |")
            rows.append(f"| cold `antnest run` 8 hosts, first line / exit | "
                        f"{best(cold, 'first'):.3f} / {best(cold, 'exit'):.3f} s |")
            for n in sizes:
                inv = Path(tmp, f"h{n}.yaml")
                _write_inventory(fleet, inv, n)
                up = run_child(["up", str(inv), str(fleet.known_hosts)], env)
                check = timed([sys.executable, "-m", "antnest", "check", "-i", str(inv),
                               "--known-hosts", str(fleet.known_hosts), "--json"], env, ok=(0, 3))
                statuses = [row["status"] for row in json.loads(check["stdout"])]
                rows.append(
                    f"| {n} hosts: all up (cold process) | {up['all_up_s']:.2f} s, "
                    f"{up['connected']}/{n} connected, {up['threads']} master threads, "
                    f"{up['fds']} fds, "
                    f"RSS {up['rss_mb']:.0f} MB, connect CPU {up['connect_cpu_s']:.2f} s "
                    f"({1000 * up['connect_cpu_s'] / n:.1f} ms/host; the whole machine "
                    f"{up['machine_cpu_s']:.1f} s), idle "
                    f"{up['idle_cpu_ms_per_host_s']:.3f} ms CPU per host per s |")
                rows.append(f"| {n} hosts: `antnest check` | {check['exit']:.2f} s, "
                            f"{statuses.count('ok')}/{n} ok |")
                print(rows[-2], rows[-1], sep="\n", file=sys.stderr, flush=True)
                for relays in [int(k) for k in args.relays.split(",") if k and not args.quick]:
                    share = -(-n // relays)
                    time.sleep(1.0)
                    via = run_child(["up", str(inv), str(fleet.known_hosts), f"auto:{share}"],
                                    env)
                    rows.append(
                        f"| {n} hosts through {relays} relays (auto:{share}): all up | "
                        f"{via['all_up_s']:.2f} s ({up['all_up_s'] / via['all_up_s']:.2f}x "
                        f"direct's speed), {via['connected']}/{n} connected, "
                        f"{via['threads']} master threads, {via['fds']} fds, RSS "
                        f"{via['rss_mb']:.0f} MB, master connect CPU "
                        f"{via['connect_cpu_s']:.2f} s ({1000 * via['connect_cpu_s'] / n:.1f} "
                        f"ms/host; direct {1000 * up['connect_cpu_s'] / n:.1f}) |")
                    print(rows[-1], file=sys.stderr, flush=True)
                time.sleep(1.0)
    for count in (200, 2000):
        plain = dict(os.environ, PYTHONPATH=str(ROOT))
        plain.pop("PYTHONDONTWRITEBYTECODE", None)
        inv = run_child(["inventory", str(count)], plain)
        rows.append(f"| inventory of {count} hosts, one ssh_config Host block each | "
                    f"{inv['wall_s']:.2f} s wall, {inv['cpu_s']:.2f} s CPU |")
    print("| measurement | figure |\n|---|---|")
    print("\n".join(rows))
    return 0


def _write_inventory(fleet: Any, path: Path, n: int) -> None:
    fleet.write_inventory(path, names=[h.name for h in fleet.hosts[:n]], procs=1)


if __name__ == "__main__":
    sys.exit(main())

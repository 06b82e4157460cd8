"""paramiko vs openssh (issue 12), side by side with multiprocessing.Pool, in one run.

    python benchmarks/clients.py            # full sizes
    python benchmarks/clients.py --quick    # smaller sizes

Each figure comes from a fresh child interpreter (``run.py --child``, the same workloads as
run.py: W2 efficiency, W3 start-up of 8 hosts, W4 MiB/s, W5 one-at-a-time latency), once per
client, the clients alternating, Pool measured inside every child. The third column is openssh
with an ssh_config that sets ``KexAlgorithms curve25519-sha256`` (then includes the system
config), what a user can set when start-up matters more than a post-quantum key exchange. Then
the cost of OpenSSH's key exchange alone: connect+authenticate+exit (``ssh -o ControlMaster=no
host true``) with the default KexAlgorithms (post-quantum sntrup761x25519 first on OpenSSH
9.0-9.8) and with curve25519-sha256, with each one's client CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from antnest.testing import SshdFleet  # noqa: E402

RESULT_TAG = "ANTNEST_BENCH_RESULT "
UNITS = {"W4": "MiB/s", "W5": "us/call", "W2": "efficiency", "W3": "s (8 hosts)"}
CLIENTS = ("paramiko", "openssh", "openssh+c25519")
KEX_CONFIG = "KexAlgorithms curve25519-sha256\nInclude /etc/ssh/ssh_config\n"


def child(args: List[str], client: str, env: Dict[str, str]) -> Dict[str, Any]:
    env = dict(env, ANTNEST_BENCH_SSH_CLIENT=client.split("+")[0])
    if client.endswith("+c25519"):
        env["ANTNEST_BENCH_SSH_CONFIG"] = env.pop("ANTNEST_BENCH_KEX_CONFIG")
    else:
        env.pop("ANTNEST_BENCH_KEX_CONFIG", None)
    out = subprocess.run([sys.executable, str(HERE / "run.py"), "--child", *args],
                         env=env, capture_output=True, text=True, timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise SystemExit(f"child {args} ({client}) failed:\n{out.stderr[-3000:]}")


def kex_cost(fleet: SshdFleet, rounds: int) -> Dict[str, Tuple[float, float]]:
    host = fleet.hosts[0]
    base = ["ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "ControlMaster=no",
            "-o", f"UserKnownHostsFile={fleet.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-i", str(fleet.client_key), "-o", "IdentitiesOnly=yes", "-p", str(host.port),
            "-l", fleet.user, host.address, "true"]
    variants = {"default (sntrup761x25519 first)": [],
                "KexAlgorithms=curve25519-sha256": ["-o", "KexAlgorithms=curve25519-sha256"]}
    times: Dict[str, List[float]] = {k: [] for k in variants}
    cpu: Dict[str, List[float]] = {k: [] for k in variants}
    for _ in range(rounds):   # alternating, so both see the same machine
        for name, extra in variants.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run(base[:1] + extra + base[1:], check=True, capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=60)
            times[name].append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return {name: (statistics.median(times[name]) * 1000, statistics.median(cpu[name]) * 1000)
            for name in variants}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    scratch = Path(tempfile.mkdtemp(prefix="antnest-clients-"))
    home = scratch / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(HERE.parent))
    env.pop("SSH_AUTH_SOCK", None)
    try:
        rows, kex = measure(scratch, env, size, args.quick)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)   # the fleet's keys, HOME, the config
    report(rows, kex)
    return 0


def measure(scratch: Path, env: Dict[str, str], size: str, quick: bool
            ) -> Tuple[List[Tuple[str, Dict[str, Dict[str, Any]]]], Dict[str, Tuple[float, float]]]:
    """Every workload for every client, then the key exchange's cost, on one fleet."""
    with SshdFleet(scratch / "fleet", count=8, first_octet=11) as fleet:
        fleet_file = scratch / "fleet.json"
        fleet_file.write_text(json.dumps({
            "user": fleet.user, "client_key": str(fleet.client_key),
            "known_hosts": str(fleet.known_hosts),
            "hosts": [{"name": h.name, "address": h.address, "port": h.port}
                      for h in fleet.hosts],
            "daemon_pids": [h.pid for h in fleet.hosts]}))
        env["ANTNEST_BENCH_FLEET"] = str(fleet_file)
        kex_config = scratch / "kex_config"
        kex_config.write_text(KEX_CONFIG)
        env["ANTNEST_BENCH_KEX_CONFIG"] = str(kex_config)
        rows = []
        for workload in (["W4", size], ["W5", size], ["W2", size], ["W3", size, "8"]):
            figures = {client: child(workload, client, env) for client in CLIENTS}
            rows.append((workload[0], figures))
        kex = kex_cost(fleet, 5 if quick else 15)
    return rows, kex


def report(rows: List[Tuple[str, Dict[str, Dict[str, Any]]]],
           kex: Dict[str, Tuple[float, float]]) -> None:
    print(f"{'workload':<10} {'unit':<12} {'Pool':>10} "
          + " ".join(f"{c:>15}" for c in CLIENTS))
    for name, figures in rows:
        unit = UNITS[name]
        pool = statistics.mean(f.get("pool", float("nan")) for f in figures.values())
        print(f"{name:<10} {unit:<12} {pool:>10.3f} "
              + " ".join(f"{figures[c].get('antnest', float('nan')):>15.3f}" for c in CLIENTS))
    for name, figures in rows:
        for client in CLIENTS:
            print(f"  {name} {client}: {figures[client].get('notes', '')}")
    print("ssh connect+auth+exit, median ms (wall / client CPU):")
    for name, (ms, cpu_ms) in kex.items():
        print(f"  {name}: {ms:.1f} / {cpu_ms:.1f}")


if __name__ == "__main__":
    raise SystemExit(main())

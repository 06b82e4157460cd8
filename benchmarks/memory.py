#!/usr/bin/env python3
"""One big result: the master's peak RSS for a taskunit returning ~300 MB of bytes (issue 18).

    python benchmarks/memory.py                      # 300 MB over local, paramiko and openssh
    python benchmarks/memory.py --size 100 --only local,paramiko
    python benchmarks/memory.py --json out.json

Each figure is a fresh child interpreter (this file, `--child TRANSPORT BYTES`) that imports
antnest, starts a one-runner Cluster, runs `submit(big, n).result()` (the host builds
`b"x" * n` and returns it) and reports its own peak RSS (`ru_maxrss`: the master only; runners
are other processes) as a ratio to the result's size, and the runner's peak RSS likewise. The ratio counts the whole process: the
interpreter, antnest and the transport's imports are in it (the "before" column).

The SSH rows use a loopback sshd of its own (antnest.testing.SshdFleet on 127.0.0.41), with HOME
pointed at a temporary directory and no ssh-agent, as benchmarks/run.py does. Not part of CI.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

RESULT_TAG = "ANTNEST_MEMORY_RESULT "
FLEET_ENV = "ANTNEST_MEMORY_FLEET"
MB = 1_000_000
TRANSPORTS = ["local", "paramiko", "openssh"]


def big(n: int) -> bytes:
    """Made on the host: every page written (bytes(n) could stay unmapped zero pages)."""
    return b"x" * n


def host_peak_mb(_: int) -> float:
    """The runner's own peak RSS (one runner: the one that built and sent the result)."""
    return _peak_mb()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # kB on Linux


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / MB
    return 0.0


def child(transport: str, size: int) -> Dict[str, Any]:
    import antnest

    if transport == "local":
        options: Dict[str, Any] = {"procs": 1}
    else:
        with open(os.environ[FLEET_ENV]) as f:
            info = json.load(f)
        host = info["hosts"][0]
        options = {"hosts": [antnest.Host(name=host["name"], address=host["address"],
                                          port=host["port"], user=info["user"],
                                          identity_files=(info["client_key"],), procs=1)],
                   "known_hosts": [info["known_hosts"]], "ssh_client": transport}
    with antnest.Cluster(**options) as cluster:
        cluster.submit(len, b"warm").result(timeout=120)  # connected, transport imported
        before = _peak_mb()
        t = time.perf_counter()
        value = cluster.submit(big, size).result(timeout=600)
        seconds = time.perf_counter() - t
        assert type(value) is bytes and len(value) == size, (type(value), len(value))
        del value
        host = cluster.submit(host_peak_mb, 0).result(timeout=120)
    peak = _peak_mb()
    return {"transport": transport, "size_mb": size / MB, "before_mb": before,
            "peak_mb": peak, "ratio": peak * MB / size, "seconds": seconds,
            "after_mb": _rss_mb(), "host_peak_mb": host, "host_ratio": host * MB / size}


def run_child(transport: str, size: int) -> Dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", transport, str(size)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=900).stdout
    for line in out.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"child {transport} failed; output:\n{out[-2000:]}")


def main(argv: List[str]) -> int:
    if argv[:1] == ["--child"]:
        result = child(argv[1], int(argv[2]))
        sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=300, help="result size in MB (300)")
    parser.add_argument("--only", default=",".join(TRANSPORTS), help="local,paramiko,openssh")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args(argv)
    chosen = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = set(chosen) - set(TRANSPORTS)
    if unknown:
        parser.error(f"unknown transport(s) {', '.join(sorted(unknown))}")
    size = int(args.size * MB)
    scratch = Path(tempfile.mkdtemp(prefix="antnest-memory-"))
    rows = []
    fleet = None
    try:
        if any(t != "local" for t in chosen):
            home = scratch / "home"
            home.mkdir()
            os.environ["HOME"] = str(home)
            os.environ.pop("SSH_AUTH_SOCK", None)
            from antnest.testing import SshdFleet

            fleet = SshdFleet(scratch / "fleet", count=1, first_octet=41).start()
            fleet_file = scratch / "fleet.json"
            fleet_file.write_text(json.dumps({
                "user": fleet.user, "client_key": str(fleet.client_key),
                "known_hosts": str(fleet.known_hosts),
                "hosts": [{"name": h.name, "address": h.address, "port": h.port}
                          for h in fleet.hosts]}))
            os.environ[FLEET_ENV] = str(fleet_file)
        for transport in chosen:
            row = run_child(transport, size)
            rows.append(row)
            print(f"{transport:9} result {row['size_mb']:.0f} MB: master peak RSS "
                  f"{row['peak_mb']:.0f} MB = {row['ratio']:.2f}x (before the result "
                  f"{row['before_mb']:.0f} MB; {row['seconds']:.1f} s); runner peak "
                  f"{row['host_peak_mb']:.0f} MB = {row['host_ratio']:.2f}x", flush=True)
    finally:
        if fleet is not None:
            fleet.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Master threads per runner slot: a run on 32 hosts x 2 procs, over each SSH client.

    python benchmarks/threads.py                  # 32 hosts x 2 procs, paramiko and openssh
    python benchmarks/threads.py --hosts 8,32     # several sizes

Each figure is taken in a fresh interpreter (a child process): `Cluster(procs=2)` over N hosts
of a loopback sshd fleet (antnest.testing.SshdFleet), all runners up, then a map of 20,000
taskunits; the threads of the master are counted while the map runs, and split into antnest's
own (named antnest-*), paramiko's (one transport thread per connection) and the rest. The
figure that matters is antnest's: it must not grow with the runner slots. Not part of CI.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TAG = "ANTNEST_THREADS "


def child(inventory: str, known_hosts: str, client: str) -> Dict[str, Any]:
    import threading

    import antnest

    counts: List[Dict[str, int]] = []
    with antnest.Cluster(inventory, known_hosts=[known_hosts], procs=2, connect_timeout=60,
                         ssh_client=client) as cluster:
        states = cluster.wait_for_hosts(timeout=300)
        slots = sum(s.alive for s in states)
        results = cluster.imap(abs, range(20000))
        for i, _ in enumerate(results):
            if i in (5000, 15000):
                kinds: Dict[str, int] = collections.Counter()
                paramiko = sys.modules.get("paramiko")
                for thread in threading.enumerate():
                    kinds["antnest" if thread.name.startswith("antnest-") else
                          "paramiko" if paramiko and isinstance(thread, paramiko.Transport)
                          else "other"] += 1
                kinds["total"] = threading.active_count()
                counts.append(dict(kinds))
    return {"hosts": len(states), "slots": slots, "counts": counts,
            "names": sorted({t.name.split("#")[0] for t in threading.enumerate()})[:20]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="32")
    parser.add_argument("--clients", default="paramiko,openssh")
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        print(TAG + json.dumps(child(*args.child)), flush=True)
        return 0
    from antnest.limits import raise_open_files_limit
    from antnest.testing import SshdFleet

    raise_open_files_limit()
    sizes = [int(n) for n in args.hosts.split(",")]
    rows = ["| hosts x procs | client | runner slots | master threads: antnest / paramiko / "
            "other / total |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="antnest-threads-") as tmp:
        home = Path(tmp, "home")
        home.mkdir()
        env = dict(os.environ, HOME=str(home), PYTHONPATH=str(ROOT))
        env.pop("SSH_AUTH_SOCK", None)
        with SshdFleet(Path(tmp, "fleet"), count=max(sizes)) as fleet:
            for n in sizes:
                inv = Path(tmp, f"h{n}.yaml")
                fleet.write_inventory(inv, names=[h.name for h in fleet.hosts[:n]], procs=2)
                for client in args.clients.split(","):
                    out = subprocess.run([sys.executable, __file__, "--child", str(inv),
                                          str(fleet.known_hosts), client], env=env,
                                         capture_output=True, text=True, timeout=600)
                    line = [x for x in out.stdout.splitlines() if x.startswith(TAG)]
                    if not line:
                        print(out.stderr[-3000:], file=sys.stderr)
                        return 1
                    got = json.loads(line[0][len(TAG):])
                    c = max(got["counts"], key=lambda k: k["total"])
                    rows.append(f"| {n} x 2 | {client} | {got['slots']} | {c.get('antnest', 0)} / "
                                f"{c.get('paramiko', 0)} / {c.get('other', 0)} / {c['total']} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

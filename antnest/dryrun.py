"""`antnest run --dry-run`: what a run would do, without connecting to anything.

It resolves the hosts (as `antnest inventory` shows them, with env and workdir, and where each
one's Connection would lead, from the transport itself), loads the job,
runs split() just far enough to show the first taskunits, counts them when that is cheap (a
sized split, or a file's size), and says what --resume would skip. Exit 0 when the run would
start, 2 for bad input (a job file, inventory, argument, or a split() that raises).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from typing import Any, List, Optional

import antnest
from antnest import environment
from antnest.errors import HostError, UsageError
from antnest.transport import SshOptions, open_connection

SHOWN = 5  # taskunits printed


def dry_run(args: argparse.Namespace, out: Any = None) -> int:
    """Print the plan of `antnest run ARGS` on `out` (stdout); raises UsageError (exit 2)."""
    from antnest.cluster import resolve_hosts
    from antnest.inventory import describe
    from antnest.journal import input_id, peek

    out = out or sys.stdout
    if args.inventory and args.hosts:
        raise UsageError("give either -i/--inventory or -H/--hosts, not both")
    env = environment.parse_env_options(args.env)
    job = antnest.load(args.job)
    hosts = resolve_hosts(args.inventory, args.hosts, args.limit, args.procs, args.ssh_config)
    write = lambda text="": print(text, file=out)  # noqa: E731
    write("dry run: nothing is connected to, nothing runs on the hosts")
    write(f"job {args.job}: {job.form} form, processor {_name(job.processor)}"
          + (", setup() once per runner" if job.setup is not None else ""))
    pace = f"at most {args.forks} connecting at once" if args.forks else "connecting in parallel"
    write(f"hosts ({len(hosts)}, {pace}):")
    options = SshOptions(ssh_client=getattr(args, "ssh_client", None) or "paramiko")
    for host, row in zip(hosts, describe(hosts)):
        try:   # a connection object, not connected: it says where it would lead
            where = open_connection(host, options).where()
        except HostError as exc:   # a transport that cannot even say (unknown, unregistered)
            where = f"cannot be used: {exc.problem}"
        extras = [f"python={row['python']}", f"procs={row['procs']}"]
        if row["jump"]:
            extras.append("via " + " -> ".join(row["jump"]))
        names = [name for name, _ in environment.host_env(host, env)]
        if names:
            extras.append("env=" + ",".join(names))
        workdir = environment.host_workdir(host, args.workdir)
        if workdir:
            extras.append(f"workdir={workdir}")
        write(f"  {row['name']}\t{where}\t" + " ".join(extras))

    plan = job.plan(args.input, None)
    try:
        try:
            first: List[Any] = list(itertools.islice(iter(plan.items), SHOWN + 1))
        except UsageError:
            raise
        except Exception as exc:  # the job's own split() raised
            raise UsageError(f"job {args.job}: split() raised {type(exc).__name__}: {exc}") from exc
        count = _count(plan.items, first, args.input)
        write(f"taskunits: {count}")
        for index, item in enumerate(first[:SHOWN]):
            write(f"  {index}: {_short(item)}")
        if len(first) > SHOWN:
            write("  ...")
    finally:
        plan.closer()
    if args.resume and args.journal:
        done = peek(args.journal, job.digest, input_id(args.input))
        if done is None:
            write(f"resume: journal {args.journal} does not exist yet: every taskunit runs")
        else:
            write(f"resume: journal {args.journal} holds {len(done)} finished taskunit(s); "
                  "they would be skipped")
    elif args.journal:
        write(f"journal: {args.journal} would be started afresh (no --resume)")
    if args.output:
        write(f"output: {args.output}")
    return 0


def _count(items: Any, first: List[Any], input: Optional[str]) -> str:
    """An exact count when split() returned a sized value or ended within the first few; else
    the input file's size, which costs nothing (counting would read all of it)."""
    try:
        return str(len(items))
    except TypeError:
        pass
    if len(first) <= SHOWN:
        return str(len(first))
    size = _input_size(input)
    where = f"; input {input}: {size} bytes" if size is not None else ""
    return f"more than {SHOWN}, not counted (split() yields lazily{where})"


def _input_size(path: Optional[str]) -> Optional[int]:
    if not path or path == "-":
        return None
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _short(item: Any, limit: int = 100) -> str:
    text = repr(item)
    return text if len(text) <= limit else text[:limit - 3] + "..."

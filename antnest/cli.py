"""The `antnest` command: parse arguments, call the library, map errors to exit codes.

No logic of its own lives here; the library never calls sys.exit.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import antnest
from antnest import errors
from antnest.errors import format_seconds
from antnest import exec as exec_command
from antnest.environment import parse_env_options
from antnest.journal import Journal, input_id
from antnest.lock import RunLock
from antnest.outfile import OutputFile
from antnest.progress import Progress
from antnest.report import build_report, failures_of, write_report

log = logging.getLogger("antnest")
progress_log = logging.getLogger("antnest.progress")  # plain progress lines, for --log-file

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_HOSTS = 3
EXIT_JOB_TIMEOUT = 4
EXIT_LOCKED = 75
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, as a shell reports `antnest run ... | head`
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

# One table: the first matching row wins. README's exit code table mirrors it.
EXIT_CODES: List[Tuple[Type[BaseException], int]] = [
    (errors.LockedError, EXIT_LOCKED),
    (errors.JobTimeout, EXIT_JOB_TIMEOUT),
    (errors.NoHostsError, EXIT_NO_HOSTS),
    (errors.HostError, EXIT_NO_HOSTS),
    (errors.UsageError, EXIT_BAD_INPUT),
    (errors.TaskError, EXIT_TASK_FAILED),
    (errors.JobFailed, EXIT_TASK_FAILED),
    (errors.AntnestError, EXIT_TASK_FAILED),
]


class Terminated(BaseException):
    """SIGTERM, turned into an exception so the run unwinds and stops its runners."""


def exit_code_for(error: BaseException) -> int:
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return EXIT_TASK_FAILED


def _add_host_options(parser: argparse.ArgumentParser) -> None:
    hosts = parser.add_argument_group("hosts")
    hosts.add_argument("-i", "--inventory", metavar="PATH",
                       help="inventory file (native YAML, Ansible YAML or INI) or an Ansible "
                            "inventory directory")
    hosts.add_argument("-H", "--hosts", metavar="LIST",
                       help="comma-separated hosts instead of an inventory: node1,user@node2:2222")
    hosts.add_argument("-l", "--limit", metavar="PATTERN",
                       help="use only hosts matching an Ansible-style pattern (web*:&prod:!web3)")
    hosts.add_argument("-F", "--ssh-config", metavar="FILE",
                       help="ssh_config to read instead of ~/.ssh/config and "
                            "/etc/ssh/ssh_config (resolved by ssh -G when ssh is on PATH)")
    hosts.add_argument("--known-hosts", metavar="FILE", action="append", default=[],
                       help="known_hosts file to trust besides the host's UserKnownHostsFile "
                            "and GlobalKnownHostsFile (repeatable); "
                            "new keys are recorded in the last one")
    hosts.add_argument("--accept-new-host-keys", action="store_true",
                       help="record unknown host keys instead of refusing (a changed key is "
                            "always refused)")
    hosts.add_argument("--ssh-client", choices=("paramiko", "openssh", "auto"),
                       default="paramiko",
                       help="SSH client for hosts whose inventory names none: paramiko "
                            "(default), openssh (the ssh binary, one master per host) or auto "
                            "(openssh when ssh is on PATH)")
    hosts.add_argument("--allow-unchecked-host-keys", action="store_true",
                       help="let an ssh_config's StrictHostKeyChecking no through (unknown "
                            "keys accepted unrecorded, with a warning); refused without it")
    hosts.add_argument("--relay", metavar="SPEC",
                       help="reach hosts through relays that open their SSH connections: "
                            "auto (one per 32 hosts), auto:N, a comma-separated list of "
                            "inventory hosts, or none (all direct; overrides the inventory's "
                            "relay:)")
    hosts.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="per-host connect and handshake timeout (default 10)")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument("-v", "--verbose", action="count", default=0,
                     help="more detail (-vv for debug); tracebacks on errors")
    out.add_argument("-q", "--quiet", action="store_true",
                     help="only errors; hides the processors' own output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="antnest",
        description="Fan Python work out over plain SSH: hosts need only sshd and python3.",
        epilog="exit codes: 0 ok, 1 a taskunit failed, 2 bad input, 3 no usable host, "
               "4 job timeout, 75 locked, 130/143 interrupted, 141 output reader gone",
    )
    parser.add_argument("--version", action="version", version=f"antnest {antnest.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run a job file",
                              description="Run a job: split() the input, processor() on the "
                                          "hosts, combine() here. Without -i/-H the job runs on "
                                          "local worker processes.")
    run.add_argument("job", help="job file (a .py defining processor, and optionally split, "
                                 "combine and input_data)")
    _add_host_options(run)
    run.add_argument("--procs", type=int, metavar="N",
                     help="worker processes per host (default: the host's CPU count)")
    data = run.add_argument_group("data")
    data.add_argument("--input", metavar="FILE",
                      help="read the input from FILE ('-' for stdin) instead of input_data; "
                           "read lazily")
    data.add_argument("--input-mode", choices=("text", "bytes"), default="text",
                      help="text (default): UTF-8 lines, undecodable bytes kept as lone "
                           "surrogates (surrogateescape); bytes: the file opened in binary, "
                           "lines as bytes")
    data.add_argument("-o", "--output", metavar="FILE",
                      help="write what combine() prints to FILE instead of stdout")
    faults = run.add_argument_group("faults")
    faults.add_argument("--retries", type=int, default=0, metavar="N",
                        help="re-run a taskunit whose processor raised up to N times, on "
                             "another host when there is one (default 0)")
    faults.add_argument("--max-lost", type=int, default=2, metavar="N",
                        help="re-run a taskunit whose runner died under it up to N times "
                             "(default 2)")
    faults.add_argument("--task-timeout", type=float, metavar="SECONDS",
                        help="stop a taskunit (and its runner) that runs longer")
    faults.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop the whole job after this long (exit 4)")
    faults.add_argument("--keep-going", action="store_true",
                        help="finish the job despite failed taskunits; combine gets the "
                             "successful results; exit 1 with a summary")
    faults.add_argument("--no-speculate", dest="speculate", action="store_false",
                        help="do not copy straggling taskunits onto idle workers")
    run.add_argument("--compress", action="store_true", help="compress SSH traffic (slow links)")
    code = run.add_argument_group("modules the hosts lack")
    code.add_argument("--no-forward", dest="forward", action="store_const", const=False,
                      help="do not forward modules the hosts lack from here")
    code.add_argument("--forward", dest="forward", action="append", metavar="PACKAGE",
                      help="forward only these packages (repeatable, or comma-separated)")
    unattended = run.add_argument_group("unattended runs (cron)")
    unattended.add_argument("--lock", metavar="FILE",
                            help="hold an exclusive lock on FILE for the run; if another run "
                                 "holds it, exit 75 at once naming its PID")
    unattended.add_argument("--log-file", metavar="FILE",
                            help="append timestamped lines (start, hosts, progress, retries, "
                                 "failures, end) to FILE, whatever -q/-v say for stderr")
    unattended.add_argument("--report", metavar="FILE.json",
                            help="write a JSON summary to FILE at the end, also when the run "
                                 "fails or is interrupted (atomically)")
    unattended.add_argument("--journal", metavar="FILE",
                            help="append each finished taskunit's result to FILE as it arrives")
    unattended.add_argument("--resume", action="store_true",
                            help="with --journal: run only the taskunits the journal lacks "
                                 "(a missing journal starts one)")
    unattended.add_argument("--progress", dest="progress", action="store_true", default=None,
                            help="draw a progress bar on stderr even without a terminal")
    unattended.add_argument("--no-progress", dest="progress", action="store_false",
                            help="no progress output (default: a bar on a terminal, else a "
                                 "line every 30 s)")
    _add_runner_options(run)
    _add_output_options(run)

    inv = commands.add_parser("inventory", help="print the hosts as antnest will use them",
                              description="Print every selected host after defaults, group "
                                          "vars and ssh_config are applied.")
    _add_host_options(inv)
    inv.add_argument("--json", action="store_true", help="print JSON")
    _add_output_options(inv)

    rep = commands.add_parser("report", help="summarise a run from its --report file",
                              description="Print what a run did, per host, from the record a "
                                          "`run --report FILE.json` wrote; --html draws it as "
                                          "one self-contained page (a timeline of every runner).")
    rep.add_argument("record", metavar="RUN.json", help="a file written by run --report")
    rep.add_argument("--html", metavar="FILE", help="write the timeline page to FILE")
    rep.add_argument("--png", metavar="FILE",
                     help="also write a screenshot of the page to FILE (needs chromium)")
    _add_output_options(rep)

    check = commands.add_parser("check", help="connect to every host and report which are usable",
                                description="Connect to every host in parallel, boot the runner "
                                            "and time one round trip. Exit 0 when all are ok, "
                                            "3 otherwise.")
    _add_host_options(check)
    check.add_argument("--json", action="store_true", help="print JSON")
    _add_output_options(check)
    exec_command.add_parser(commands, _add_host_options, _add_output_options)
    return parser


def _add_runner_options(parser: argparse.ArgumentParser) -> None:
    """--env, --workdir, --forks, --dry-run for `antnest run` (the runners' surroundings)."""
    where = parser.add_argument_group("runner environment")
    where.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                       help="set NAME in every runner: this machine's value, or VALUE "
                            "(repeatable; over the inventory's env:)")
    where.add_argument("--workdir", metavar="DIR",
                       help="runners chdir to DIR before any job code (over the inventory's "
                            "workdir:); a missing DIR fails that host")
    where.add_argument("--forks", type=int, metavar="N",
                       help="at most N hosts connecting at once (default: an adaptive window "
                            "of handshakes, 8 growing to 64)")
    where.add_argument("--max-procs-total", type=int, metavar="N",
                       help="at most N runners over all hosts together (each host keeps one)")
    where.add_argument("--dry-run", action="store_true",
                       help="connect to nothing: print the hosts, the job, its first taskunits "
                            "and what --resume would skip; exit 0 or 2")


class _StderrFilter(logging.Filter):
    """stderr shows records at the -q/-v level, and the processors' output unless -q."""

    def __init__(self, level: int, remote_level: int) -> None:
        super().__init__()
        self.level = level
        self.remote_level = remote_level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "antnest.remote":
            return record.levelno >= self.remote_level
        if record.name == "antnest.progress":  # Progress draws on stderr itself
            return record.levelno >= logging.WARNING
        return record.levelno >= self.level


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[
        min(args.verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("antnest: %(message)s"))
    handler.addFilter(_StderrFilter(level, logging.ERROR if args.quiet else logging.INFO))
    handlers: List[logging.Handler] = [handler]
    floor = level
    log_file = getattr(args, "log_file", None)
    if log_file:
        try:
            to_file = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        except OSError as exc:
            raise errors.UsageError(f"log file {log_file}: {exc.strerror or exc}") from None
        to_file.setFormatter(logging.Formatter(
            # the PID tells two runs apart (a second run refused by --lock, say) in one log
            "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S%z"))
        to_file.setLevel(logging.DEBUG if args.verbose >= 2 else logging.INFO)
        handlers.append(to_file)
        floor = min(floor, to_file.level)
    root = logging.getLogger("antnest")
    root.handlers[:] = handlers
    root.setLevel(min(floor, logging.INFO))
    root.propagate = False
    remote = logging.getLogger("antnest.remote")  # the processors' own output
    remote.setLevel(logging.NOTSET)
    paramiko_log = logging.getLogger("paramiko")
    if args.verbose < 2:
        paramiko_log.setLevel(logging.CRITICAL)
    else:   # -vv: paramiko's own story too, through the same handlers
        paramiko_log.handlers[:] = handlers
        paramiko_log.propagate = False


def _cluster_options(args: argparse.Namespace) -> dict:
    return dict(
        hosts=args.hosts,
        limit=args.limit,
        ssh_config=args.ssh_config,
        known_hosts=args.known_hosts,
        accept_new_host_keys=args.accept_new_host_keys,
        allow_unchecked_host_keys=args.allow_unchecked_host_keys,
        ssh_client=args.ssh_client,
        connect_timeout=args.connect_timeout,
        relay=args.relay,
    )


def cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:  # before the lock and the report: a dry run touches nothing
        from antnest.dryrun import dry_run

        return dry_run(args)
    lock = RunLock(args.lock) if args.lock else contextlib.nullcontext()
    with lock:  # first: a second run must not even load the job (LockedError: exit 75)
        if not args.report:
            return _run(args, {})
        started = time.time()
        state: Dict[str, Any] = {}
        code = EXIT_TASK_FAILED
        error: Optional[BaseException] = None
        try:
            code = _run(args, state)
            return code
        except BaseException as exc:
            error = exc
            code = _exit_code_of(exc)
            raise
        finally:
            cluster = state.get("cluster")
            counts: Dict[str, Any] = cluster.job_counts() if cluster is not None else dict(
                done=0, failed=0, retried=0, resumed=0, failures=[])
            failures = list(counts.pop("failures") or failures_of(error))
            message = None if error is None else (str(error).splitlines() or [""])[0] or (
                type(error).__name__)
            try:
                report = build_report(
                    version=antnest.__version__, job=args.job,
                    inventory=args.inventory or args.hosts, started=started, ended=time.time(),
                    exit_code=code, hosts=cluster.hosts if cluster is not None else [],
                    failures=failures, interrupted=code in (EXIT_INTERRUPTED, EXIT_TERMINATED),
                    error=message, **counts)
                if cluster is not None:   # the run record, for `antnest report FILE.json`
                    report["trace"] = cluster.run_record()
                write_report(args.report, report)
            except OSError as exc:
                log.error("cannot write the report %s: %s", args.report, exc.strerror or exc)


def _exit_code_of(error: BaseException) -> int:
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, Terminated):
        return EXIT_TERMINATED
    if isinstance(error, BrokenPipeError):
        return EXIT_PIPE_CLOSED
    return exit_code_for(error)


def _run(args: argparse.Namespace, state: Optional[Dict[str, Any]]) -> int:
    if state is not None:
        args.run_state = state   # main() writes the log's last line from it
    if args.resume and not args.journal:
        raise errors.UsageError("--resume needs --journal FILE")
    job = antnest.load(args.job)
    _one_host_source(args)
    env = parse_env_options(args.env)
    log.info("start: job %s, input %s, hosts %s, pid %d", args.job,
             args.input or "input_data", args.inventory or args.hosts or "local", os.getpid())
    journal = None
    if args.journal:  # after load (results unpickle against the job), before any host
        journal = Journal.open(args.journal, job.digest, input_id(args.input), args.resume)
    mode = args.progress if args.progress is not None else (False if args.quiet else None)
    output: Optional[OutputFile] = None
    try:
        if args.output:
            output = OutputFile(args.output)
        with antnest.Cluster(
            args.inventory,
            procs=args.procs,
            compress=args.compress,
            retries=args.retries,
            max_lost=args.max_lost,
            task_timeout=args.task_timeout,
            keep_going=args.keep_going,
            speculate=args.speculate,
            env=env,
            workdir=args.workdir,
            forks=args.forks,
            max_procs_total=args.max_procs_total,
            forward_modules=_forward_policy(args.forward),
            **_cluster_options(args),
        ) as cluster:
            if state is not None:
                state["cluster"] = cluster
            cluster.last_call()
            value = cluster.run(job, input=_input(args), output=output.handle if output is not None else None,
                                timeout=args.timeout,
                                journal=journal,
                                progress=lambda total: Progress(total, mode=mode,
                                                                on_line=progress_log.info))
        if value is not None:
            print(value, file=output.handle if output is not None else sys.stdout)
        if output is not None:
            output.commit()
        sys.stdout.flush()
        if journal is not None:
            journal.remove()   # finished: the next run with --resume starts afresh
    except BaseException as exc:
        if output is not None:
            if isinstance(exc, errors.JobFailed):  # --keep-going: combine() did finish
                output.commit()
            else:
                output.discard()
        raise
    finally:
        if journal is not None:
            journal.close()
    return EXIT_OK


def _log_end(args: argparse.Namespace, code: int, started: float) -> None:
    """The log's last line: exit code, duration, counts, where the output went."""
    log.info("end: exit %d after %s: %s", code, format_seconds(time.monotonic() - started),
             _summary(getattr(args, "run_state", None), args))


def _input(args: argparse.Namespace) -> Any:
    """--input as cluster.run takes it: the path, or with --input-mode bytes a binary file."""
    if args.input is None or args.input_mode == "text":
        return args.input
    if args.input == "-":
        return sys.stdin.buffer
    try:
        return open(args.input, "rb")
    except OSError as exc:
        raise errors.UsageError(f"input {args.input}: {exc.strerror or exc}") from None


def _summary(state: Optional[Dict[str, Any]], args: argparse.Namespace) -> str:
    """The last log line's counts: done / failed / resumed / not done, and where output went."""
    cluster = (state or {}).get("cluster")
    counts = cluster.job_counts() if cluster is not None else {}
    text = (f"{counts.get('done', 0)} taskunits done, {counts.get('failed', 0)} failed, "
            f"{counts.get('resumed', 0)} resumed")
    if counts.get("in_flight"):
        text += f", {counts['in_flight']} sent and not finished"
    if counts.get("not_started"):
        text += f", {counts['not_started']} not started"
    return text + f"; output {args.output or 'stdout'}"


def _one_host_source(args: argparse.Namespace) -> bool:
    """-i and -H exclude each other; True when one of them is given."""
    if args.inventory and args.hosts:
        raise errors.UsageError("give either -i/--inventory or -H/--hosts, not both")
    return bool(args.inventory or args.hosts)


def _selected_hosts(args: argparse.Namespace) -> list:
    from antnest.cluster import resolve_hosts

    if not _one_host_source(args):
        raise errors.UsageError(f"antnest {args.command} needs -i INVENTORY or -H HOSTS")
    return resolve_hosts(args.inventory, args.hosts, args.limit, None, args.ssh_config,
                         args.relay)


def cmd_inventory(args: argparse.Namespace) -> int:
    from antnest.inventory import describe

    rows = describe(_selected_hosts(args))
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        target = f"{row['user'] + '@' if row['user'] else ''}{row['address']}:{row['port']}"
        if row.get("transport") == "local":
            target = "local"
        extras = [f"python={row['python']}", f"procs={row['procs']}"]
        if row.get("ssh_client"):
            extras.append(f"client={row['ssh_client']}")
        if row["identity_files"]:
            extras.append("key=" + ",".join(row["identity_files"]))
        if row["jump"]:
            extras.append("via " + " -> ".join(row["jump"]))
        if row.get("relay"):
            extras.append(f"relay={row['relay']}")
        if row["proxy_command"]:
            extras.append(f"proxy_command={row['proxy_command']!r}")
        if row.get("env"):  # names only: values may be secrets
            extras.append("env=" + ",".join(row["env"]))
        if row.get("workdir"):
            extras.append(f"workdir={row['workdir']}")
        extras.append("groups=" + ",".join(row["groups"]))
        print(f"{row['name']}\t{target}\t" + " ".join(extras))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from antnest.check import check_hosts, format_table
    from antnest.transport import SshOptions

    hosts = _selected_hosts(args)
    options = SshOptions(known_hosts=tuple(args.known_hosts),
                         accept_new_host_keys=args.accept_new_host_keys,
                         allow_unchecked_host_keys=args.allow_unchecked_host_keys,
                         ssh_client=args.ssh_client,
                         connect_timeout=args.connect_timeout)
    rows = check_hosts(hosts, options)
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        print(format_table(rows))
    return EXIT_OK if all(row.ok for row in rows) else EXIT_NO_HOSTS


def cmd_exec(args: argparse.Namespace) -> int:
    return exec_command.main(args, _selected_hosts(args))


def cmd_report(args: argparse.Namespace) -> int:
    from antnest.summary import format_summary, load_record

    report = load_record(args.record)
    print(format_summary(report))
    if args.html or args.png:
        from antnest.timeline import render_html, screenshot

        page = render_html(report)
        target = args.html
        if target:
            try:
                with open(target, "w", encoding="utf-8") as handle:
                    handle.write(page)
            except OSError as exc:
                raise errors.UsageError(f"html {target}: {exc.strerror or exc}") from None
        if args.png:
            screenshot(page, args.png)
    return EXIT_OK


COMMANDS: dict = {"run": cmd_run, "inventory": cmd_inventory, "check": cmd_check,
                  "exec": cmd_exec, "report": cmd_report}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        _setup_logging(args)
    except errors.UsageError as exc:
        print(f"antnest: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    started = time.monotonic()
    code = EXIT_TASK_FAILED
    try:
        code = COMMANDS[args.command](args)
    except errors.AntnestError as exc:
        _report(exc, args)
        code = exit_code_for(exc)
    except BrokenPipeError:  # whoever read our output stopped reading: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_PIPE_CLOSED
    except KeyboardInterrupt:
        log.error("interrupted; runners stopped")
        code = EXIT_INTERRUPTED
    except Terminated:
        log.error("terminated; runners stopped")
        code = EXIT_TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)
        if args.command == "run":
            _log_end(args, code, started)
        sys.stdout.flush()
    return code


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _report(exc: BaseException, args: argparse.Namespace) -> None:
    if args.verbose:
        log.exception("%s", exc)
    else:
        log.error("%s", exc)


def _forward_policy(value: Any) -> Any:
    """--no-forward: False; --forward a,b --forward c: ("a", "b", "c"); neither: True."""
    if isinstance(value, list):
        return tuple(name.strip() for item in value for name in item.split(",") if name.strip())
    return value is not False

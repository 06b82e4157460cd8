"""`antnest exec`: one shell command on every host at once, over plain exec channels.

No runner and no Python are needed on the hosts: this is how to look at a fleet, or install
what a job needs (`antnest exec -i hosts.yaml -- pip install --user numpy`). Each host is reached
through its Connection (antnest.transport), whatever its transport. Output lines are
tagged with the host (`[web1] ...`) as they arrive, or grouped per host; a summary follows.
Nothing ever prompts: there is no pty and the command's stdin is closed at once.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from antnest import environment
from antnest.errors import HostError, UsageError
from antnest.host import Host
from antnest.transport import CommandExit, SshOptions, open_connection

LineSink = Callable[[str, str, str], None]   # (host name, "stdout" | "stderr", line)


@dataclass
class HostRun:
    """What one host did with the command."""

    name: str
    status: str = "not started"   # ok, failed, timeout, interrupted, or why it was not reached
    exit_status: Optional[int] = None
    reached: bool = False         # connected and started the command
    error: Optional[str] = None
    seconds: Optional[float] = None
    stdout: List[str] = field(default_factory=list)
    stderr: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


class _Lines:
    """Bytes in, whole lines out to the sink (and kept, when asked)."""

    def __init__(self, run: HostRun, stream: str, sink: Optional[LineSink], keep: bool) -> None:
        self._run, self._stream, self._sink, self._keep = run, stream, sink, keep
        self._pending = b""

    def feed(self, data: bytes) -> None:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self._emit(line)

    def end(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = b""

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if self._keep:
            getattr(self._run, self._stream).append(line)
        if self._sink is not None:
            self._sink(self._run.name, self._stream, line)


def run_command(hosts: Sequence[Host], command: str, options: SshOptions, *, forks: int = 16,
                timeout: Optional[float] = None, env: Optional[Mapping[str, str]] = None,
                workdir: Optional[str] = None, on_line: Optional[LineSink] = None,
                on_done: Optional[Callable[[HostRun], None]] = None,
                keep_output: bool = False) -> List[HostRun]:
    """Run `command` on every host, at most `forks` at once; one HostRun per host, in order.
    `timeout` bounds each host's command (the connect has its own timeout)."""
    if forks < 1:
        raise UsageError("--forks must be at least 1")
    if timeout is not None and timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    runs = [HostRun(h.name) for h in hosts]
    slots = threading.BoundedSemaphore(forks)
    stop = threading.Event()

    def one(host: Host, run: HostRun) -> None:
        with slots:
            if stop.is_set():
                run.status = "interrupted"
                return
            full = environment.shell_prefix(environment.host_env(host, env),
                                            environment.host_workdir(host, workdir)) + command
            started = time.monotonic()
            try:
                _run_on(host, full, options, run, timeout, stop, on_line, keep_output)
            except HostError as exc:
                run.status, run.error = exc.status, str(exc)
            run.seconds = round(time.monotonic() - started, 3)
        if on_done is not None:
            on_done(run)

    threads = [threading.Thread(target=one, args=(h, r), name=f"antnest-exec-{h.name}",
                                daemon=True) for h, r in zip(hosts, runs)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except BaseException:  # Ctrl-C, SIGTERM: close every channel, then leave
        stop.set()
        for thread in threads:
            thread.join(2)
        raise
    return runs


def _finish(run: HostRun, ended: CommandExit, timeout: Optional[float]) -> None:
    if ended.timed_out:
        run.status = "timeout"
        run.error = (f"{run.name}: still running after {timeout:g} s (--timeout); its channel "
                     "was closed")
    elif ended.stopped:
        run.status = "interrupted"
    elif ended.status is None or ended.status < 0:
        run.status = "failed"
        run.error = f"{run.name}: the command was killed by a signal"
    else:
        run.exit_status = ended.status
        run.status = "ok" if ended.status == 0 else "failed"


def _run_on(host: Host, command: str, options: SshOptions, run: HostRun,
            timeout: Optional[float], stop: threading.Event, sink: Optional[LineSink],
            keep: bool) -> None:
    """Through the host's connection, as its runners would go (Host.transport; for SSH the
    client ssh_client: or --ssh-client picks): the seam's run_command, nothing else."""
    lines = {"stdout": _Lines(run, "stdout", sink, keep),
             "stderr": _Lines(run, "stderr", sink, keep)}
    connection = open_connection(host, options)
    try:
        ended = connection.run_command(command, lambda stream, data: lines[stream].feed(data),
                                       timeout, stop)
    finally:
        connection.close()
    run.reached = True
    for stream in lines.values():
        stream.end()
    _finish(run, ended, timeout)


# -- the command line ---------------------------------------------------------------------------

EXIT_ALL_OK = 0
EXIT_SOME_FAILED = 1
EXIT_NONE_REACHED = 3


def exit_code(runs: Sequence[HostRun]) -> int:
    """0 when every host exited 0; 3 when no host could be reached; 1 otherwise."""
    if runs and all(run.ok for run in runs):
        return EXIT_ALL_OK
    if not any(run.reached for run in runs):
        return EXIT_NONE_REACHED
    return EXIT_SOME_FAILED


def add_parser(commands: Any, add_host_options: Callable[[argparse.ArgumentParser], None],
               add_output_options: Callable[[argparse.ArgumentParser], None]) -> None:
    parser = commands.add_parser(
        "exec", help="run a shell command on every host (no Python needed there)",
        description="Run COMMAND in the login shell of every selected host at once, over a "
                    "plain SSH exec channel. Output lines are prefixed with the host; a summary "
                    "follows on stderr. Exit 0 when every host exited 0, 1 otherwise, 3 when no "
                    "host could be reached. Never prompts.",
        usage="antnest exec -i INV [-l PAT] [options] -- COMMAND [ARGS...]")
    add_host_options(parser)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON list (host, status, exit_status, stdout, stderr, "
                             "error) at the end instead of lines")
    parser.add_argument("--group", action="store_true",
                        help="print each host's output together when it finishes, not line "
                             "by line as it arrives")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop a host's command after this long (status timeout)")
    parser.add_argument("--forks", type=int, default=16, metavar="N",
                        help="at most N hosts at once (default 16)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                        help="export NAME (this machine's value) or NAME=VALUE first (repeatable)")
    parser.add_argument("--workdir", metavar="DIR", help="cd to DIR first")
    add_output_options(parser)
    parser.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND",
                        help="the command; its words are joined with spaces, as ssh does")


def main(args: argparse.Namespace, hosts: Sequence[Host]) -> int:
    words = list(args.words)
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise UsageError("antnest exec needs a command: antnest exec -i INV -- COMMAND [ARGS...]")
    env = environment.parse_env_options(args.env)
    options = SshOptions(known_hosts=tuple(args.known_hosts),
                         accept_new_host_keys=args.accept_new_host_keys,
                         allow_unchecked_host_keys=args.allow_unchecked_host_keys,
                         ssh_client=args.ssh_client,
                         connect_timeout=args.connect_timeout)
    lock = threading.Lock()

    def write(stream: str, text: str) -> None:
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.write(text)
        out.flush()

    def tagged(host: str, stream: str, line: str) -> None:
        with lock:
            write(stream, f"[{host}] {line}\n")

    def grouped(run: HostRun) -> None:
        with lock:
            for stream in ("stdout", "stderr"):
                lines = getattr(run, stream)
                if lines:
                    write(stream, "".join(f"[{run.name}] {line}\n" for line in lines))

    streaming = not args.json and not args.group
    runs = run_command(hosts, " ".join(words), options, forks=args.forks, timeout=args.timeout,
                       env=env, workdir=args.workdir, on_line=tagged if streaming else None,
                       on_done=grouped if args.group and not args.json else None,
                       keep_output=args.json or args.group)
    if args.json:
        print(json.dumps([run.as_dict() for run in runs], indent=2))
    elif not args.quiet:
        sys.stdout.flush()
        print(format_summary(runs), file=sys.stderr)
    return exit_code(runs)


def format_summary(runs: Sequence[HostRun]) -> str:
    """Per host: status, exit status, seconds, and why when it went wrong; then the counts."""
    rows = [("HOST", "STATUS", "EXIT", "SECONDS", "DETAIL")]
    for run in runs:
        rows.append((run.name, run.status, "-" if run.exit_status is None else str(run.exit_status),
                     "-" if run.seconds is None else f"{run.seconds:.2f}", run.error or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4]
             for row in rows]
    ok = sum(1 for run in runs if run.ok)
    unreached = sum(1 for run in runs if not run.reached)
    lines.append(f"{len(runs)} host(s): {ok} exited 0, {len(runs) - ok - unreached} failed, "
                 f"{unreached} not reached")
    return "\n".join(line.rstrip() for line in lines)

"""`python -m antnest` in a subprocess, as a user types it: with this test's own HOME (no
~/.ssh), no ssh-agent unless the test brings one, from the repository's top directory, and
always with a bound on how long it may take.

    run_cli("run", "-i", inventory, JOBS / "reverse.py")      # at once: a CompletedProcess
    proc = background_cli.start("run", job)                   # in the background, then
    outcome = background_cli.finish(proc, within=30)          # rc, out, err and when it ended
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"
TEST_JOBS = REPO / "tests" / "jobs"
HELLO_WORLD = "olleh\ndlrow\n"   # jobs/reverse.py on its own input
CLI_TIMEOUT = 90.0

RunCli = Callable[..., "subprocess.CompletedProcess[str]"]


def antnest_command(*args: "str | os.PathLike[str]") -> List[str]:
    """The command line of `antnest ARGS` run by this interpreter."""
    return [sys.executable, "-m", "antnest", *map(os.fspath, args)]


def cli_environment(home: Path, env: Optional[Mapping[str, str]] = None,
                    **extra: str) -> Dict[str, str]:
    """`env` (default: ours without SSH_AUTH_SOCK) with HOME=home and `extra` added."""
    environment = dict(env if env is not None else os.environ, HOME=str(home), **extra)
    if env is None:
        environment.pop("SSH_AUTH_SOCK", None)
    return environment


def popen_cli(home: Path, *args: "str | os.PathLike[str]",
              env: Optional[Mapping[str, str]] = None, cwd: "Path | str | None" = None,
              new_session: bool = False, **popen: Any) -> "subprocess.Popen[Any]":
    """Start `antnest ARGS` (see cli_environment); `new_session` takes away the controlling
    terminal, as under cron. Other keywords go to Popen (stdin is /dev/null by default)."""
    popen.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(antnest_command(*args), cwd=str(cwd or REPO),
                            env=cli_environment(home, env), start_new_session=new_session,
                            **popen)


def communicate_within(proc: "subprocess.Popen[Any]", seconds: float, what: str,
                       input: Optional[str] = None) -> "subprocess.CompletedProcess[Any]":
    """Wait for `proc` and collect its output; killed, and the test failed, past `seconds`."""
    try:
        out, err = proc.communicate(input, timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{what} did not end within {seconds:g} s\nstdout: {out}\nstderr: {err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def fresh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of this test's own (no ~/.ssh), for the CLI subprocesses and in-process clusters."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


@pytest.fixture
def run_cli(fresh_home: Path) -> RunCli:
    """Run `antnest ARGS` to its end (at most `timeout` s) with this test's HOME."""

    def run(*args: "str | os.PathLike[str]", input: Optional[str] = None,
            cwd: "Path | str | None" = None, timeout: float = CLI_TIMEOUT,
            env: Optional[Mapping[str, str]] = None, new_session: bool = False,
            ) -> "subprocess.CompletedProcess[str]":
        proc = popen_cli(fresh_home, *args, env=env, cwd=cwd, new_session=new_session,
                         stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return communicate_within(proc, timeout, "antnest " + " ".join(map(str, args)), input)

    return run


@dataclasses.dataclass
class Outcome:
    """How a background CLI ended."""

    rc: int
    out: str
    err: str
    ended: float     # time.time() at exit, comparable with timestamps the job wrote

    @property
    def lines(self) -> List[str]:
        return self.out.splitlines()


class BackgroundCli:
    """`antnest ARGS` started in the background (output to files, so it never blocks), waited
    for with a bound; whatever still runs at the end of the test is killed by its PID."""

    def __init__(self, home: Path, tmp_path: Path) -> None:
        self.home = home
        self.tmp = tmp_path
        self.procs: List["subprocess.Popen[Any]"] = []
        self._files: Dict["subprocess.Popen[Any]", Tuple[IO[str], IO[str]]] = {}

    def start(self, *args: "str | os.PathLike[str]", env: Optional[Mapping[str, Any]] = None,
              new_session: bool = False) -> "subprocess.Popen[Any]":
        """`env` adds to the environment of run_cli (values made strings)."""
        n = len(self.procs)
        out = open(self.tmp / f"cli{n}.out", "w+")
        err = open(self.tmp / f"cli{n}.err", "w+")
        extra = {key: str(value) for key, value in (env or {}).items()}
        proc = popen_cli(self.home, *args, env=cli_environment(self.home, **extra),
                         new_session=new_session, stdout=out, stderr=err)
        self.procs.append(proc)
        self._files[proc] = (out, err)
        return proc

    def finish(self, proc: "subprocess.Popen[Any]", within: float) -> Outcome:
        """Its exit; the test fails (and the process is killed) if it takes over `within` s."""
        try:
            rc = proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            out, err = self._read(proc)
            pytest.fail(f"the CLI did not exit within {within:g} s; stderr:\n{err[-3000:]}")
        ended = time.time()
        out, err = self._read(proc)
        return Outcome(rc, out, err, ended)

    def run(self, *args: "str | os.PathLike[str]", within: float = 60.0,
            **kwargs: Any) -> Outcome:
        return self.finish(self.start(*args, **kwargs), within)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        for handles in self._files.values():
            for handle in handles:
                handle.close()

    def _read(self, proc: "subprocess.Popen[Any]") -> Tuple[str, str]:
        out, err = self._files[proc]
        out.seek(0)
        err.seek(0)
        return out.read(), err.read()


@pytest.fixture
def background_cli(fresh_home: Path, tmp_path: Path) -> Iterator[BackgroundCli]:
    """Start CLIs in the background; any still running afterwards are killed."""
    started = BackgroundCli(fresh_home, tmp_path)
    yield started
    started.stop_all()

"""Defects a new or daily user hits: results kept in place, output files kept whole, counts
that add up, status lines that say what happened (issue 18's findings, one test each)."""
from __future__ import annotations

import io
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

import antnest
from antnest.errors import JobFailed
from antnest.testing import pid_alive
from plugins.cli import JOBS, REPO
from plugins.processes import kill, wait_gone
from plugins.tools import require



def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


ORIGINAL_FAILING = """
    def processor(self, x):
        if x == 'b':
            raise ValueError('no b')
        return x.upper()

    def split(self, input_data, processor):
        import taskunit
        for word in input_data.split():
            yield taskunit.TaskUnit(data=word, processor=processor)

    def combine(self):
        for t in self.taskunits:
            print(t.id, t.data, t.result, t.state, type(t.error).__name__)

    input_data = 'a b c d'
"""


def test_original_form_keep_going_keeps_each_result_in_its_place(tmp_path: Path) -> None:
    job = write(tmp_path / "old.py", ORIGINAL_FAILING)
    out = io.StringIO()
    with pytest.raises(JobFailed):
        antnest.run(str(job), output=out, procs=2, keep_going=True)
    assert out.getvalue().splitlines() == [
        "0 a A COMPLETED NoneType",
        "1 b None BAILED TaskError",
        "2 c C COMPLETED NoneType",
        "3 d D COMPLETED NoneType",
    ]


SLOW_WHEN_TOLD = """
    import time

    def processor(item):
        if item == 'slow':
            time.sleep(60)
        return item

    def combine(results):
        for r in results:
            print(r)
"""


def test_a_failed_run_leaves_the_old_output_whole(tmp_path: Path, run_cli) -> None:
    job = write(tmp_path / "job.py", SLOW_WHEN_TOLD)
    good = write(tmp_path / "good.txt", "a\nb\n")
    bad = write(tmp_path / "bad.txt", "a\nslow\n")
    out = tmp_path / "today.out"
    first = run_cli("run", "--procs", "1", "--input", good, "-o", out, job)
    assert first.returncode == 0, first.stderr
    assert out.read_text() == "a\nb\n"
    second = run_cli("run", "--procs", "1", "--input", bad, "-o", out, "--timeout", "2", job)
    assert second.returncode == 4, second.stderr
    assert out.read_text() == "a\nb\n"
    assert "left as it was" in second.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_output_replaces_the_file_only_when_combine_finished(tmp_path: Path, run_cli) -> None:
    job = write(tmp_path / "job.py", SLOW_WHEN_TOLD)
    out = tmp_path / "o.txt"
    out.write_text("old\n")
    out.chmod(0o640)
    done = run_cli("run", "--procs", "1", "--input", write(tmp_path / "in.txt", "x\n"),
                   "-o", out, job)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == "x\n"
    assert out.stat().st_mode & 0o777 == 0o640


STUCK_AFTER_50 = """
    import time

    def processor(item):
        if item >= 50:
            time.sleep(60)
        return item

    def combine(results):
        for r in results:
            pass

    input_data = range(400)
"""


def test_timeout_summary_report_and_hosts_count_alike(tmp_path: Path, run_cli) -> None:
    import re

    job = write(tmp_path / "job.py", STUCK_AFTER_50)
    report = tmp_path / "r.json"
    log_file = tmp_path / "run.log"
    result = run_cli("run", "--procs", "2", "--timeout", "3", "--report", report,
                     "--log-file", log_file, job)
    assert result.returncode == 4, result.stderr
    said = re.search(r"job timed out after 3 s: (\d+) taskunits done"
                     r"(?:, (\d+) sent and not finished)?(?:, (\d+) not started)?$",
                     result.stderr, re.M)
    assert said, result.stderr
    done, running, not_started = (int(n or 0) for n in said.groups())
    assert done + running + not_started == 400
    counts = json.loads(report.read_text())
    assert counts["taskunits"]["done"] == done
    assert counts["taskunits"]["in_flight"] == running
    assert counts["taskunits"]["not_started"] == not_started
    assert sum(h["done"] for h in counts["hosts"]) == done
    last = log_file.read_text().splitlines()[-1]
    assert f"{done} taskunits done, 0 failed, 0 resumed" in last, last
    assert last.endswith("; output stdout"), last
    assert f"{running} sent and not finished" in last or not running, last


def test_durations_print_one_way() -> None:
    from antnest.errors import format_seconds

    assert [format_seconds(s) for s in (2, 2.0, 2.0001, 2.04, 0.5, 12.34, 1500.4)] == [
        "2 s", "2 s", "2 s", "2.04 s", "0.5 s", "12.3 s", "1500 s"]


def test_task_timeout_message_prints_both_durations_alike(tmp_path: Path, run_cli) -> None:
    import re

    job = write(tmp_path / "job.py", """
        import time

        def processor(item):
            time.sleep(30)
    """)
    result = run_cli("run", "--procs", "1", "--task-timeout", "1", "--input",
                     write(tmp_path / "in.txt", "x\n"), job)
    assert result.returncode == 1, result.stderr
    said = re.search(r"task timeout of ([0-9.]+ s) \(stopped after ([0-9.]+ s)\)", result.stderr)
    assert said, result.stderr
    assert said.group(1) == "1 s"
    assert re.fullmatch(r"\d+(\.\d{1,2})? s", said.group(2)), said.group(2)


# --- the leftover check watches what the fleet's sessions can write, not all of /tmp ------------

def test_leftover_check_ignores_other_programs_files_in_tmp(fleet, fleet_inventory, run_cli,
                                                            fleet_leftovers) -> None:
    import tempfile

    handle, other = tempfile.mkstemp(dir="/tmp", prefix="nc-data-")   # another program's file
    os.close(handle)
    try:
        result = run_cli("run", "-i", fleet_inventory, "--known-hosts", fleet.known_hosts,
                         "--procs", "1", JOBS / "reverse.py")
        assert result.returncode == 0, result.stderr
        assert fleet_leftovers.new_files() == []
    finally:
        os.unlink(other)


def test_leftover_check_sees_a_remote_sessions_temporary_file(fleet, fleet_inventory, run_cli,
                                                              tmp_path: Path,
                                                              fleet_leftovers) -> None:
    job = write(tmp_path / "litter.py", """
        import tempfile

        def processor(item):
            handle, path = tempfile.mkstemp(prefix="litter-")
            return path

        input_data = ["x"]
    """)
    result = run_cli("run", "-i", fleet_inventory, "--known-hosts", fleet.known_hosts,
                     "--procs", "1", "-l", "fleet1", job)
    assert result.returncode == 0, result.stderr
    written = Path(result.stdout.strip())
    try:
        assert written.parent == fleet.host("fleet1").tmp
        assert [f for f in fleet_leftovers.new_files() if "litter-" in f] == [
            f"fleet1:$TMPDIR/{written.name}"]
    finally:
        written.unlink()


def test_the_runner_never_names_tmp() -> None:
    import antnest.runner

    source = Path(antnest.runner.__file__).read_text()
    assert "/tmp" not in source and "tempfile" not in source


# --- --task-timeout charges only the taskunit that overran, once per overrun ---------------------

FOREVER_AT_20 = """
    import sys

    def processor(item):
        print("start", item, file=sys.stderr, flush=True)
        while item == 20:
            pass
        return item

    input_data = range(40)
"""


@pytest.mark.parametrize("procs", ["1", "2"])
def test_task_timeout_fails_the_overrunning_taskunit_exactly_once(tmp_path: Path, run_cli,
                                                                  procs: str) -> None:
    job = write(tmp_path / "forever.py", FOREVER_AT_20)
    result = run_cli("run", "--procs", procs, "--keep-going", "--task-timeout", "1",
                     "--retries", "0", "--timeout", "60", job)
    assert result.returncode == 1, result.stderr
    assert result.stdout.split() == [str(i) for i in range(40) if i != 20]
    assert "1 of 40 taskunits failed" in result.stderr, result.stderr
    starts = [line.rsplit(" ", 1)[-1] for line in result.stderr.splitlines() if " start " in line]
    assert starts.count("20") == 1, result.stderr
    assert sorted(set(starts), key=int) == [str(i) for i in range(40)]


def test_task_timeout_with_retries_runs_it_once_more_per_retry(tmp_path: Path, run_cli) -> None:
    job = write(tmp_path / "forever.py", FOREVER_AT_20)
    result = run_cli("run", "--procs", "1", "--keep-going", "--task-timeout", "1",
                     "--retries", "1", "--timeout", "60", job)
    assert result.returncode == 1, result.stderr
    starts = [line.rsplit(" ", 1)[-1] for line in result.stderr.splitlines() if " start " in line]
    assert starts.count("20") == 2, result.stderr


# --- the runner owns every process the job starts -----------------------------------------------

SPAWNING = """
    import os
    import subprocess
    import time

    SECONDS = "{seconds}"

    def processor(item):
        if item == "child":
            return subprocess.Popen(["sleep", SECONDS]).pid
        if item == "daemon":   # forks away into its own session: its parent exits at once
            subprocess.run(["setsid", "-f", "sleep", SECONDS + "1"], check=True)
            time.sleep(0.5)
            out = subprocess.run(["pgrep", "-f", "^sleep " + SECONDS + "1$"],
                                 stdout=subprocess.PIPE, check=True).stdout
            return int(out.split()[0])
        if item == "stuck":
            subprocess.run(["sleep", SECONDS + "2"])
        return 0

    def combine(results):
        return list(results)
"""


def _pids_of(pattern: str) -> list:
    import subprocess

    found = subprocess.run(["pgrep", "-f", pattern], stdout=subprocess.PIPE, text=True).stdout
    return [int(p) for p in found.split()]


def _need_tools() -> None:
    import shutil

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    require(shutil.which("setsid") and shutil.which("pgrep"),
            "setsid and pgrep (util-linux, procps) are needed")


def _spawning_job(tmp_path: Path) -> "tuple[Path, str]":
    import random

    seconds = f"600.{random.randrange(10**6, 10**7)}"   # unique: other tests' sleeps differ
    path = tmp_path / "spawning.py"
    path.write_text(textwrap.dedent(SPAWNING).lstrip().replace("{seconds}", seconds))
    return path, seconds


def test_children_and_daemons_of_a_processor_end_with_the_run(target, tmp_path: Path) -> None:
    _need_tools()
    job, seconds = _spawning_job(tmp_path)
    with antnest.Cluster(**target.cluster_kwargs, procs=1) as cluster:
        loaded = antnest.load(str(job))
        loaded.input_data = ["child", "daemon"]
        pids = cluster.run(loaded)
        assert len(pids) == 2 and all(pid_alive(pid) for pid in pids), pids
    left = wait_gone(pids, 10)
    kill(left)  # a failed test must not leave its own sleeps behind either
    assert left == []


def test_a_timed_out_taskunits_children_are_stopped(target, tmp_path: Path) -> None:
    _need_tools()
    job, seconds = _spawning_job(tmp_path)
    loaded = antnest.load(str(job))
    loaded.input_data = ["stuck"]
    with antnest.Cluster(**target.cluster_kwargs, procs=1, task_timeout=1) as cluster:
        with pytest.raises(antnest.errors.TaskTimeout):
            cluster.run(loaded)
        left = wait_gone(_pids_of(f"^sleep {seconds}2$"), 10)
        kill(left)
        assert left == []


# --- antnest check says `no python`, never a socket error ---------------------------------------

def test_check_names_a_missing_interpreter_every_time(fleet, tmp_path: Path, run_cli) -> None:
    inventory = fleet.write_inventory(tmp_path / "bad.yaml", python="python3.99")
    for attempt in range(3):
        result = run_cli("check", "-i", inventory, "--known-hosts", fleet.known_hosts, "--json")
        assert result.returncode == 3, result.stderr
        rows = json.loads(result.stdout)
        assert [row["status"] for row in rows] == ["no python"] * len(rows), rows
        assert all("python3.99" in row["error"] and "127" in row["error"] for row in rows), rows


# --- --limit: Ansible's rule, and no "ignoring it" before an exit 2 -----------------------------

def test_limit_partly_unmatched_warns_and_goes_on(tmp_path: Path, run_cli) -> None:
    inventory = write(tmp_path / "hosts.yaml", """
        hosts:
          - h1
          - h2
    """)
    some = run_cli("inventory", "-i", inventory, "-l", "h1:nope")
    assert some.returncode == 0, some.stderr
    assert some.stdout.split("\t")[0] == "h1"
    assert "'nope' matches no host or group; going on with the 1 host(s)" in some.stderr
    none = run_cli("inventory", "-i", inventory, "-l", "nope:nada")
    assert none.returncode == 2
    assert "ignoring" not in none.stderr and "going on" not in none.stderr
    assert "'nope:nada' matches no host ('nope', 'nada' matches no host or group)" in none.stderr


# --- README's set-up works on a PEP 668 system Python -------------------------------------------

def test_readme_set_up_installs_into_a_venv() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    first, second = commands
    assert first.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install . ")
    assert first.endswith("antnest run jobs/reverse.py")
    assert ". .venv/bin/activate && pip install -e '.[test]'" in second
    assert "pipx install ." in section


# --- cluster.run takes values as well as paths and files ----------------------------------------

def test_run_takes_values_paths_and_files(tmp_path: Path) -> None:
    count = antnest.Job(processor=lambda line: len(line.split()), combine=sum)
    text = tmp_path / "data.txt"
    text.write_text("the quick brown fox\njumps\n")
    with antnest.Cluster(procs=1) as cluster:
        assert cluster.run(count, input_data="the quick brown fox\njumps") == 5   # README's
        assert cluster.run(count, input=["a b", "c"]) == 3
        assert cluster.run(count, input=(line for line in ["a", "b c d"])) == 4
        assert cluster.run(count, input=b"a b\nc") == 3   # bytes: its lines
        assert cluster.run(count, input=str(text)) == 5
        assert cluster.run(count, input=text) == 5
        with open(text) as handle:
            assert cluster.run(count, input=handle) == 5
        with pytest.raises(antnest.errors.UsageError, match="input_data='200000'"):
            cluster.run(count, input="200000")
        with pytest.raises(antnest.errors.UsageError, match="not both"):
            cluster.run(count, input=["x"], input_data="x")
        out = io.StringIO()
        assert cluster.run(str(REPO / "jobs" / "wordcount.py"), output=out) is None   # it prints
        assert out.getvalue().startswith("3\tthe\n")
        assert isinstance(antnest.load(REPO / "jobs" / "wordcount.py"), antnest.Job)


def test_readme_documents_load_and_input_data() -> None:
    readme = (REPO / "README.md").read_text()
    assert "`antnest.load(path)`" in readme
    assert "input_data=" in readme.split("## Python API", 1)[1]


# --- logs that help ---------------------------------------------------------------------------

FAILING_SOME = """
    def processor(item):
        if item % 10 == 3:
            raise ValueError("bad item %d" % item)
        return item

    def combine(results):
        for r in results:
            pass

    input_data = range(40)
"""


def test_keep_going_log_and_report_carry_each_failures_traceback(tmp_path: Path,
                                                                  run_cli) -> None:
    job = write(tmp_path / "job.py", FAILING_SOME)
    log_file = tmp_path / "run.log"
    report = tmp_path / "r.json"
    result = run_cli("run", "--procs", "2", "--keep-going", "--log-file", log_file,
                     "--report", report, job)
    assert result.returncode == 1, result.stderr
    text = log_file.read_text()
    lines = text.splitlines()
    assert all(f"[{os.getpid()}]" not in line for line in lines)
    stamped = [line for line in lines if line[:4].isdigit()]
    pids = {line.split(" [", 1)[1].split("]", 1)[0] for line in stamped}
    assert len(pids) == 1 and pids.pop().isdigit(), stamped[:3]
    for n in (3, 13, 23, 33):
        assert f"taskunit {n} failed on local: ValueError: bad item {n}" in text
        assert f"taskunit {n}: remote traceback:" in text
    assert text.count('raise ValueError("bad item %d" % item)') == 4
    failures = json.loads(report.read_text())["failures"]
    assert sorted(f["id"] for f in failures) == [3, 13, 23, 33]
    assert all("ValueError: bad item" in f["traceback"] for f in failures)
    assert "runner stopped" not in text and "starting a new one" not in text
    assert "end: exit 1 after " in lines[-1] and "36 taskunits done, 4 failed, 0 resumed" in \
        lines[-1] and "output stdout" in lines[-1]


def test_a_failing_run_restarts_no_runner_while_it_shuts_down(tmp_path: Path, run_cli) -> None:
    job = write(tmp_path / "job.py", FAILING_SOME.replace("% 10 == 3", "== 3"))
    log_file = tmp_path / "run.log"
    result = run_cli("run", "--procs", "4", "-vv", "--log-file", log_file, job)
    assert result.returncode == 1, result.stderr
    text = log_file.read_text()
    assert "starting a new one" not in text, text
    assert text.count("still busy with it") <= 1, text


def test_host_state_says_how_many_runners_are_alive() -> None:
    with antnest.Cluster(procs=2) as cluster:
        (state,) = cluster.wait_for_hosts(timeout=30)
        assert (state.procs, state.alive) == (2, 2)
    (state,) = cluster.hosts
    assert (state.procs, state.alive) == (2, 0)


# --- a compact journal ------------------------------------------------------------------------

def test_journal_stores_big_results_compressed_and_reads_old_lines(tmp_path: Path) -> None:
    import base64
    import collections
    import pickle

    from antnest.journal import Journal, data_digest

    counts = collections.Counter({f"word{i % 500}": i for i in range(5000)})
    plain = len(base64.b64encode(pickle.dumps(counts, protocol=4)))
    path = tmp_path / "j"
    with Journal.open(path, "job", "in", resume=False) as journal:
        journal.record(0, "chunk0", counts)
        journal.record(1, "small", 7)
    size = path.stat().st_size
    assert size < plain / 2, (size, plain)
    with open(path, "ab") as handle:   # a line as format 1 wrote it: plain base64
        handle.write(b"2\t%s\t%s\n" % (data_digest("old").encode(),
                                        base64.b64encode(pickle.dumps("OLD", protocol=4))))
    with Journal.open(path, "job", "in", resume=True) as again:
        assert {k: v[1] for k, v in again.done.items()} == {0: counts, 1: 7, 2: "OLD"}


# --- speculation: output-bound stragglers are not copied, a copy's output is labelled -----------

CHATTY_AT_5 = """
    import sys
    import time

    def processor(item):
        if item == 5:
            for n in range(2000):
                print("line %d of taskunit 5 " % n + "x" * 80)
                time.sleep(0.0015)
        elif item == 7:
            print("slow seven")
            time.sleep(4)
        else:
            time.sleep(0.05)
        return item

    def combine(results):
        for r in results:
            pass

    input_data = {items}
"""


def test_a_straggler_slow_with_output_is_not_copied(tmp_path: Path, run_cli) -> None:
    job = write(tmp_path / "chatty.py", CHATTY_AT_5.replace("{items}", "list(range(5)) + [5]"))
    result = run_cli("run", "--procs", "2", "-v", job)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "of taskunit 5 " in line]
    assert len(lines) == 2000, len(lines)
    assert "copying them to" not in result.stderr


def test_a_speculative_copys_output_is_labelled(tmp_path: Path, run_cli) -> None:
    job = write(tmp_path / "slow.py", CHATTY_AT_5.replace("{items}", "[0, 1, 2, 3, 4, 6, 7]"))
    result = run_cli("run", "--procs", "2", "-v", job)
    assert result.returncode == 0, result.stderr
    seven = [line for line in result.stderr.splitlines() if line.endswith("slow seven")]
    assert "copying them to" in result.stderr, result.stderr
    plain = [line for line in seven if ", copy]" not in line]
    assert len(plain) == 1 and len(seven) == 2, seven


# --- binary --input -----------------------------------------------------------------------------

BYTES_JOB = """
    def processor(line):
        return "%s %d %r" % (type(line).__name__, len(line), line[:2])
"""


def test_binary_input_as_bytes_or_as_text_that_round_trips(tmp_path: Path, run_cli) -> None:
    job = write(tmp_path / "b.py", BYTES_JOB)
    data = tmp_path / "in.bin"
    data.write_bytes(b"\xff\xfeab\ncd\n")
    as_bytes = run_cli("run", "--procs", "1", "--input", data, "--input-mode", "bytes", job)
    assert as_bytes.returncode == 0, as_bytes.stderr
    assert as_bytes.stdout.splitlines() == ["bytes 4 b'\\xff\\xfe'", "bytes 2 b'cd'"]
    echo = write(tmp_path / "echo.py", """
        def processor(line):
            return line
    """)
    out = tmp_path / "out.bin"
    as_text = run_cli("run", "--procs", "1", "--input", data, "-o", out, echo)
    assert as_text.returncode == 0, as_text.stderr
    assert out.read_bytes() == data.read_bytes()     # nothing replaced by U+FFFD


# --- a malformed handshake is one line naming the host and the field ----------------------------

class _StubProc:
    """Stands in for a runner process at the await_hello seam: bytes in, kill and diagnose."""

    def __init__(self, payload: bytes) -> None:
        from antnest.runner import Kind, encode

        self.data = io.BytesIO(encode(Kind.HELLO, payload))
        self.killed = False

    def recv(self, size: int) -> bytes:
        return self.data.read(size)

    def kill(self) -> None:
        self.killed = True

    def set_timeout(self, seconds: float) -> None:
        """Part of the RunnerProcess interface; the bytes are all there already."""

    def diagnose(self) -> str:
        return "exit status 0"


@pytest.mark.parametrize("change, field", [
    ({"python": "3.11"}, "python"), ({"cpus": "many"}, "cpus"), ({"cpus": 0}, "cpus"),
    ({"pid": None}, "pid"), ({"hostname": 7}, "hostname"),
])
def test_malformed_hello_is_a_handshake_failure_naming_host_and_field(change, field) -> None:
    import sys as _sys

    from antnest.errors import BootstrapError
    from antnest.runner import MAGIC, PROTOCOL_VERSION, FrameReader, encode_hello
    from antnest.worker import await_hello

    hello = {"magic": MAGIC.decode(), "protocol": PROTOCOL_VERSION,
             "python": list(_sys.version_info[:3]), "hostname": "h", "pid": 42, "cpus": 2,
             "pickle_protocol": 5, "cloudpickle": "found", "executable": "/usr/bin/python3"}
    hello.update(change)
    proc = _StubProc(encode_hello(hello))
    host = antnest.Host(name="node9", address="10.0.0.9")
    with pytest.raises(BootstrapError) as info:
        await_hello(host, proc, FrameReader(proc.recv))
    message = str(info.value)
    assert info.value.status == "handshake failed" and proc.killed
    assert message.startswith("node9: handshake failed:") and f"'{field}'" in message
    assert "\n" not in message


def test_a_hello_without_a_field_is_refused() -> None:
    from antnest.worker import hello_problem

    assert hello_problem({"python": [3, 11, 2], "hostname": "h", "pid": 1}) == \
        "the runner's HELLO lacks the field 'cpus'"


def test_log_frames_are_text_not_pickles() -> None:
    import pickle

    from antnest.runner import decode_log, encode_log

    payload = encode_log(3, 1, "ünïcode line \udcff")
    assert decode_log(payload) == (3, 1, "ünïcode line \ufffd\ufffd\ufffd")
    assert decode_log(encode_log(None, -1, "x")) == (None, -1, "x")
    evil = pickle.dumps((1, 0, "x"))     # a pickle is never unpickled: it is read as ids + text
    batch, index, text = decode_log(evil + b"\0" * 16)
    assert isinstance(text, str)

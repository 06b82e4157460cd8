"""Everyday operations (issue 15): once on every host (on_each_host, `antnest exec`), per-runner
setup (a job's setup(), Cluster(initializer=), shared data), environment and working directory,
`antnest run --dry-run`, and --forks. Over the real sshd fleet and locally."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, List

import pytest

import antnest
from antnest.errors import HostError, NoHostsError
from antnest.testing import SshdFleet
from plugins.fleet import fleet_args
from plugins.tools import ssh_binary

JOBS = Path(__file__).parent / "jobs_everyday"


def _home() -> str:
    return os.environ["HOME"]


def _fail_here() -> None:
    raise KeyError("nothing here")


def write_job(tmp_path: Path, text: str, name: str = "job.py") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- on_each_host ----------------------------------------------------------------------------

def test_on_each_host_answers_once_per_fleet_host(fleet: SshdFleet, fleet_inventory: Path,
                                                  fleet_leftovers: Any) -> None:
    with antnest.Cluster(fleet_inventory, known_hosts=[fleet.known_hosts], procs=2) as cluster:
        homes = cluster.on_each_host(_home)
        failures = cluster.on_each_host(_fail_here)
        assert isinstance(homes, antnest.HostResults) and homes.failed == {}
        assert failures.succeeded == {} and failures.failed == dict(failures)
        after = list(cluster.map(abs, [-1, -2, -3]))  # the cluster is still fine afterwards
    assert homes == {h.name: str(h.home) for h in fleet.hosts}
    assert set(failures) == {h.name for h in fleet.hosts}
    assert all(isinstance(error, KeyError) for error in failures.values())
    assert after == [1, 2, 3]


def test_on_each_host_reports_a_host_that_cannot_be_used(fleet: SshdFleet, tmp_path: Path,
                                                         fleet_leftovers: Any) -> None:
    inventory = tmp_path / "hosts.yaml"
    fleet.write_inventory(inventory)
    text = inventory.read_text() + "- name: closed\n  address: 127.0.0.1\n  port: 1\n"
    inventory.write_text(text)
    with antnest.Cluster(inventory, known_hosts=[fleet.known_hosts]) as cluster:
        homes = cluster.on_each_host(_home)
    assert isinstance(homes.pop("closed"), HostError)
    assert homes == {h.name: str(h.home) for h in fleet.hosts}


def test_on_each_host_locally_passes_arguments() -> None:
    with antnest.Cluster(procs=2) as cluster:
        assert cluster.on_each_host(divmod, 7, 2) == {"local": (3, 1)}
        assert cluster.on_each_host(int, "ff", base=16) == {"local": 255}


# -- antnest exec ----------------------------------------------------------------------------

def _client(name: str) -> str:
    """An SSH client to test with; the openssh one needs the ssh binary (CI installs it)."""
    if name == "openssh":
        ssh_binary()
    return name


@pytest.mark.parametrize("client", ["paramiko", "openssh"])
def test_exec_tags_lines_and_exits_0_when_every_host_did(fleet: SshdFleet, fleet_inventory: Path,
                                                         run_cli: Any, client: str) -> None:
    done = run_cli("exec", *fleet_args(fleet, fleet_inventory), "--ssh-client", _client(client),
                   "--", "echo", "out;", "echo", "err", ">&2")
    assert done.returncode == 0, done.stderr
    for host in fleet.hosts:
        assert f"[{host.name}] out" in done.stdout.splitlines()
        assert f"[{host.name}] err" in done.stderr.splitlines()
    assert "3 host(s): 3 exited 0, 0 failed, 0 not reached" in done.stderr


def test_exec_exit_1_when_one_host_fails_and_json_says_which(fleet: SshdFleet,
                                                             fleet_inventory: Path,
                                                             run_cli: Any) -> None:
    first = fleet.hosts[0]
    done = run_cli("exec", *fleet_args(fleet, fleet_inventory), "--json", "--",
                   f'test "$HOME" = {first.home} && echo yes')
    assert done.returncode == 1, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows[first.name]["exit_status"] == 0 and rows[first.name]["stdout"] == ["yes"]
    for host in fleet.hosts[1:]:
        assert rows[host.name]["exit_status"] == 1 and rows[host.name]["status"] == "failed"


def test_exec_group_env_workdir_and_forks(fleet: SshdFleet, fleet_inventory: Path,
                                          run_cli: Any) -> None:
    done = run_cli("exec", *fleet_args(fleet, fleet_inventory), "--group", "--forks", "1",
                   "--env", "GREETING=hello world", "--workdir", "/tmp", "--",
                   'echo "$GREETING"; pwd')
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for host in fleet.hosts:  # grouped: a host's lines are next to each other
        at = lines.index(f"[{host.name}] hello world")
        assert lines[at + 1] == f"[{host.name}] /tmp"


@pytest.mark.parametrize("client", ["paramiko", "openssh"])
def test_exec_timeout_and_unreachable_hosts(fleet: SshdFleet, tmp_path: Path,
                                            run_cli: Any, client: str) -> None:
    inventory = fleet.write_inventory(tmp_path / "one.yaml", names=[fleet.hosts[0].name])
    done = run_cli("exec", *fleet_args(fleet, inventory), "--ssh-client", _client(client),
                   "--timeout", "0.5", "--", "sleep", "5")
    assert done.returncode == 1
    assert "timeout" in done.stderr and "still running after 0.5 s" in done.stderr
    closed = run_cli("exec", "-H", "127.0.0.1:1", "--ssh-client", client, "--", "true")
    assert closed.returncode == 3
    assert "refused" in closed.stderr and "0 exited 0, 0 failed, 1 not reached" in closed.stderr


def test_exec_needs_a_command_and_hosts(run_cli: Any) -> None:
    assert run_cli("exec", "-H", "127.0.0.1:1").returncode == 2
    assert run_cli("exec", "--", "true").returncode == 2


def test_exec_on_a_local_host_goes_through_its_connection() -> None:
    """transport local: the command under /bin/sh, streamed, exit status kept; the timeout
    stops the whole of it."""
    from antnest import exec as exec_module
    from antnest.host import LOCAL
    from antnest.transport import SshOptions

    seen: List[Any] = []
    done, = exec_module.run_command([LOCAL], "echo out; echo err >&2; exit 3", SshOptions(),
                                    on_line=lambda *line: seen.append(line), keep_output=True)
    assert (done.status, done.exit_status, done.reached) == ("failed", 3, True)
    assert done.stdout == ["out"] and done.stderr == ["err"]
    assert ("local", "stdout", "out") in seen and ("local", "stderr", "err") in seen
    slow, = exec_module.run_command([LOCAL], "sleep 30 & sleep 30", SshOptions(), timeout=0.3)
    assert slow.status == "timeout" and "still running after 0.3 s" in (slow.error or "")


def test_exec_on_in_memory_hosts_statuses_and_exit_code() -> None:
    """Every way a host's command can end, through the in-memory transport's run_command: no
    sshd, no process; exec.py sees only the Connection seam."""
    import uuid

    from antnest import exec as exec_module
    from antnest.host import Host
    from antnest.transport import SshOptions, memory

    tag = uuid.uuid4().hex[:8]
    answers = {"ok": (0, b"one\ntwo", b""), "fails": (2, b"", b"bad\n"), "hangs": None}
    hosts = []
    for name in ("ok", "fails", "hangs", "no-shell"):
        script = memory.register(f"{tag}-{name}", memory.Script())
        if name in answers:
            script.command = (lambda answer: lambda command: answer)(answers[name])
        hosts.append(Host(name=name, address=f"{tag}-{name}", transport="memory"))
    hosts.append(Host(name="unknown", address=f"{tag}-unknown", transport="memory"))
    try:
        runs = exec_module.run_command(hosts, "uptime", SshOptions(), timeout=0.2,
                                       keep_output=True)
    finally:
        for host in hosts:
            memory.unregister(host.address)
    by_name = {run.name: run for run in runs}
    assert by_name["ok"].status == "ok" and by_name["ok"].stdout == ["one", "two"]
    assert by_name["fails"].exit_status == 2 and by_name["fails"].stderr == ["bad"]
    assert by_name["hangs"].status == "timeout" and by_name["hangs"].reached
    assert not by_name["no-shell"].reached and "runs no shell commands" in by_name["no-shell"].error
    assert not by_name["unknown"].reached and by_name["unknown"].status == "unreachable"
    assert exec_module.exit_code(runs) == exec_module.EXIT_SOME_FAILED
    assert "5 host(s): 1 exited 0, 2 failed, 2 not reached" in exec_module.format_summary(runs)


# -- setup(), initializer, shared data ------------------------------------------------------------

SETUP_JOB = '''
import os
TABLE = None

def setup():
    global TABLE
    TABLE = {"pid": os.getpid()}
    with open(os.environ["SETUP_LOG"], "a") as log:
        log.write("%d\\n" % os.getpid())

def processor(item):
    return "%s %s" % (item, TABLE["pid"] == os.getpid())

input_data = "\\n".join(str(i) for i in range(40))
'''


def test_job_setup_runs_once_per_runner(tmp_path: Path, run_cli: Any) -> None:
    job = write_job(tmp_path, SETUP_JOB)
    log = tmp_path / "setup.log"
    done = run_cli("run", "--procs", "2", "--env", f"SETUP_LOG={log}", job)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{i} True" for i in range(40)]
    pids = log.read_text().split()
    assert 1 <= len(pids) <= 2 and len(set(pids)) == len(pids)  # per runner, not per taskunit


def test_job_setup_on_the_fleet(fleet: SshdFleet, fleet_inventory: Path, tmp_path: Path,
                                run_cli: Any) -> None:
    job = write_job(tmp_path, SETUP_JOB.replace('os.environ["SETUP_LOG"]',
                                                'os.path.expanduser("~/setup.log")'))
    try:
        done = run_cli("run", *fleet_args(fleet, fleet_inventory), "--procs", "2", job)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [f"{i} True" for i in range(40)]
        counts = [len((h.home / "setup.log").read_text().split()) for h in fleet.hosts
                  if (h.home / "setup.log").exists()]
        assert counts and all(1 <= count <= 2 for count in counts)  # procs 2: at most 2 each
    finally:
        for host in fleet.hosts:
            (host.home / "setup.log").unlink(missing_ok=True)


def test_a_raising_setup_fails_the_host_once_with_the_job_traceback(tmp_path: Path,
                                                                    run_cli: Any) -> None:
    job = write_job(tmp_path, "def setup():\n    raise ValueError('no model file here')\n\n"
                              "def processor(item):\n    return item\n\n"
                              "input_data = '\\n'.join(map(str, range(50)))\n")
    done = run_cli("run", "--procs", "2", job)
    assert done.returncode == 3
    assert "the job's setup() raised" in done.stderr
    assert f'File "{job}", line 2, in setup' in done.stderr
    assert "ValueError: no model file here" in done.stderr
    assert "taskunit 0" not in done.stderr and "taskunit 1 " not in done.stderr


def test_setup_with_arguments_is_a_job_file_error(tmp_path: Path, run_cli: Any) -> None:
    job = write_job(tmp_path, "def setup(x):\n    pass\n\ndef processor(item):\n    return item\n")
    done = run_cli("run", job)
    assert done.returncode == 2 and "setup() takes 1 arguments" in done.stderr


CACHE: Any = None


def _init(value: int) -> None:
    global CACHE
    CACHE = {"value": value, "pid": os.getpid()}


def _read_cache(item: int) -> Any:
    return (item, CACHE["value"], CACHE["pid"] == os.getpid())


def _grow(item: int, shared: bytearray) -> Any:
    shared.append(item)  # the runner's one copy grows: it was not sent with each taskunit
    return (os.getpid(), len(shared))


def test_initializer_and_initargs_over_the_fleet(fleet: SshdFleet, fleet_inventory: Path,
                                                 fleet_leftovers: Any) -> None:
    with antnest.Cluster(fleet_inventory, known_hosts=[fleet.known_hosts], procs=2,
                         initializer=_init, initargs=(42,)) as cluster:
        assert list(cluster.map(_read_cache, range(20))) == [(i, 42, True) for i in range(20)]
        assert set(cluster.on_each_host(_read_cache, 0).values()) == {(0, 42, True)}


def test_a_raising_initializer_fails_its_hosts() -> None:
    with antnest.Cluster(procs=2, initializer=_fail_here) as cluster:
        with pytest.raises(NoHostsError, match="the initializer raised"):
            list(cluster.map(abs, range(10)))
        assert cluster.hosts[0].state == "failed"


def test_shared_data_travels_once_per_runner(fleet: SshdFleet, fleet_inventory: Path) -> None:
    table = bytearray(1 << 20)
    with antnest.Cluster(fleet_inventory, known_hosts=[fleet.known_hosts], procs=1) as cluster:
        results = list(cluster.map(_grow, range(30), shared=table))
        ordered = list(cluster.imap(_grow, range(5), shared=bytearray(10)))
    by_runner: dict = {}
    for pid, size in results:
        by_runner.setdefault(pid, []).append(size - len(table))
    assert any(max(sizes) > 1 for sizes in by_runner.values())
    for sizes in by_runner.values():
        assert sorted(sizes) == list(range(1, len(sizes) + 1))
    assert len(ordered) == 5 and len(table) == 1 << 20  # the master's object is untouched


# -- environment and working directory ----------------------------------------------------------

ENV_JOB = '''
import os

def processor(item):
    return "%s %s %s %s" % (os.getcwd(), os.environ.get("FROM_INVENTORY"),
                            os.environ.get("FROM_CLI"), os.environ.get("FROM_MASTER"))

input_data = "x"
'''


def test_env_and_workdir_over_the_fleet(fleet: SshdFleet, tmp_path: Path,
                                        run_cli: Any) -> None:
    inventory = fleet.write_inventory(tmp_path / "hosts.yaml", procs=1,
                                      env={"FROM_INVENTORY": "inv", "FROM_CLI": "inv"},
                                      workdir="/tmp")
    job = write_job(tmp_path, ENV_JOB)
    env_before = os.environ.get("FROM_MASTER")
    os.environ["FROM_MASTER"] = "master value"
    try:
        done = run_cli("run", *fleet_args(fleet, inventory), "--env", "FROM_CLI=cli",
                       "--env", "FROM_MASTER", job)
    finally:
        if env_before is None:
            os.environ.pop("FROM_MASTER")
        else:
            os.environ["FROM_MASTER"] = env_before
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["/tmp inv cli master value"]
    home = run_cli("run", *fleet_args(fleet, inventory), "--workdir", "~", job)
    assert home.returncode == 0, home.stderr
    assert home.stdout.split()[0] in {str(h.home) for h in fleet.hosts}


def test_a_missing_workdir_is_a_per_host_error(fleet: SshdFleet, fleet_inventory: Path,
                                               tmp_path: Path, run_cli: Any) -> None:
    job = write_job(tmp_path, ENV_JOB)
    done = run_cli("run", *fleet_args(fleet, fleet_inventory), "--workdir", "/no/such/dir", job)
    assert done.returncode == 3
    for host in fleet.hosts:
        assert (f"{host.name}: cannot change to the working directory '/no/such/dir': "
                "No such file or directory") in done.stderr


def test_env_errors_are_bad_input(tmp_path: Path, run_cli: Any) -> None:
    job = write_job(tmp_path, ENV_JOB)
    os.environ.pop("ANTNEST_SURELY_UNSET", None)
    unset = run_cli("run", "--env", "ANTNEST_SURELY_UNSET", job)
    assert unset.returncode == 2 and "is not set here" in unset.stderr
    assert run_cli("run", "--env", "1BAD=x", job).returncode == 2
    local = run_cli("run", "--env", "FROM_CLI=here", "--workdir", str(tmp_path), job)
    assert local.stdout.splitlines() == [f"{tmp_path} None here None"]


def test_native_inventory_env_layers_defaults_groups_hosts(tmp_path: Path,
                                                           run_cli: Any) -> None:
    from antnest.inventory import load_hosts

    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(
        "defaults:\n  env: {A: '1', B: 2}\n  workdir: /srv\n"
        "groups:\n  web:\n    hosts: [n1]\n    env: {B: web, C: true}\n    workdir: /web\n"
        "  db: [n2]\n"
        "hosts:\n  - name: n1\n    env: {D: d}\n  - name: n2\n    workdir: ~/data\n")
    hosts = {h.name: h for h in load_hosts(inventory)}
    assert dict(hosts["n1"].env) == {"A": "1", "B": "web", "C": "true", "D": "d"}
    assert hosts["n1"].workdir == "/web"
    assert dict(hosts["n2"].env) == {"A": "1", "B": "2"} and hosts["n2"].workdir == "~/data"
    shown = run_cli("inventory", "-i", inventory)
    assert shown.returncode == 0, shown.stderr
    assert "env=A,B,C,D workdir=/web" in shown.stdout and "env=A,B workdir=~/data" in shown.stdout
    inventory.write_text("hosts:\n  - name: n1\n    env: {1X: a}\n")
    with pytest.raises(antnest.errors.InventoryError, match=r"hosts\[0\]\.env"):
        load_hosts(inventory)
    inventory.write_text("groups:\n  g: {hosts: [n1], port: 2}\nhosts: [n1]\n")
    with pytest.raises(antnest.errors.InventoryError, match=r"groups\.g\.port: unknown key"):
        load_hosts(inventory)


# -- dry run -------------------------------------------------------------------------------------

def test_dry_run_connects_to_nothing(tmp_path: Path, run_cli: Any, blackhole: Any) -> None:
    job = write_job(tmp_path, "def processor(item):\n    return item\n")
    data = tmp_path / "in.txt"
    data.write_text("".join(f"line {i}\n" for i in range(1000)))
    done = run_cli("run", "--dry-run", "-H", f"{blackhole.address}:{blackhole.port},127.0.0.1:1",
                   "--env", "X=1", "--workdir", "/w", "--forks", "3", "--input", data, job)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "hosts (2, at most 3 connecting at once)" in out
    assert f"{blackhole.address}:{blackhole.port} (paramiko)" in out and "env=X workdir=/w" in out
    assert "0: 'line 0'" in out and "4: 'line 4'" in out and "5: " not in out
    assert f"{data.stat().st_size} bytes" in out
    assert blackhole.accepted == []


def test_dry_run_counts_sized_input_and_shows_what_resume_skips(tmp_path: Path,
                                                                run_cli: Any) -> None:
    job = write_job(tmp_path, "def processor(item):\n    if item == 'c':\n"
                              "        raise ValueError(item)\n    return item\n\n"
                              "input_data = 'a\\nb\\nc\\nd'\n")
    journal = tmp_path / "j.journal"
    first = run_cli("run", "--keep-going", "--journal", journal, job)
    assert first.returncode == 1
    done = run_cli("run", "--dry-run", "--journal", journal, "--resume", job)
    assert done.returncode == 0, done.stderr
    assert "taskunits: 4" in done.stdout and "\tlocal processes\t" in done.stdout
    assert "holds 3 finished taskunit(s); they would be skipped" in done.stdout


def test_dry_run_bad_input_exits_2(tmp_path: Path, run_cli: Any) -> None:
    broken = write_job(tmp_path, "def processor(:\n", "broken.py")
    assert run_cli("run", "--dry-run", broken).returncode == 2
    raising = write_job(tmp_path, "def split(data):\n    raise OSError('gone')\n    yield 1\n\n"
                                  "def processor(item):\n    return item\n\ninput_data = 'x'\n",
                        "raising.py")
    done = run_cli("run", "--dry-run", raising)
    assert done.returncode == 2 and "split() raised OSError: gone" in done.stderr
    assert run_cli("run", "--dry-run", "-i", tmp_path / "missing.yaml", raising).returncode == 2


# -- forks ---------------------------------------------------------------------------------------

def test_forks_caps_hosts_connecting_at_once(fleet: SshdFleet, fleet_inventory: Path,
                                             mocker: Any) -> None:
    from antnest.transport.ssh import SshConnection

    real = SshConnection.connect
    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    def counting(self: SshConnection) -> None:
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            real(self)
        finally:
            with lock:
                state["now"] -= 1

    mocker.patch.object(SshConnection, "connect", counting)
    with antnest.Cluster(fleet_inventory, known_hosts=[fleet.known_hosts], procs=1,
                         forks=1) as cluster:
        assert len(cluster.on_each_host(_home)) == 3
    assert state["most"] == 1
    with pytest.raises(antnest.errors.UsageError):
        antnest.Cluster(forks=0)


def test_a_jobs_shared_data_travels_once_per_runner(fleet: SshdFleet, tmp_path: Path,
                                                    run_cli: Any) -> None:
    inventory = fleet.write_inventory(tmp_path / "hosts.yaml", procs=1)
    job = write_job(tmp_path, "import os\nshared_data = [0] * 100000\n\n"
                              "def processor(item):\n    shared_data.append(item)\n"
                              "    return '%d %d' % (os.getpid(), len(shared_data) - 100000)\n\n"
                              "input_data = '\\n'.join(map(str, range(30)))\n")
    done = run_cli("run", *fleet_args(fleet, inventory), job)
    assert done.returncode == 0, done.stderr
    by_runner: dict = {}
    for line in done.stdout.splitlines():
        pid, grown = line.split()
        by_runner.setdefault(pid, []).append(int(grown))
    assert any(max(sizes) > 1 for sizes in by_runner.values())  # one copy per runner, growing


# -- max procs total -------------------------------------------------------------------------

def test_max_procs_total_caps_runners_over_the_fleet(fleet: SshdFleet, fleet_inventory: Path,
                                                     fleet_leftovers: Any) -> None:
    with antnest.Cluster(fleet_inventory, known_hosts=[fleet.known_hosts],
                         max_procs_total=4) as cluster:   # procs auto: granted at each HELLO
        states = cluster.wait_for_hosts()
        assert list(cluster.map(abs, range(-20, 0))) == list(range(20, 0, -1))
    wanted = sum(s.cpus or 1 for s in states)
    assert sum(s.procs for s in states) == min(4, wanted) and all(s.procs >= 1 for s in states)
    with pytest.raises(antnest.errors.UsageError, match="below the number of hosts"):
        antnest.Cluster(fleet_inventory, known_hosts=[fleet.known_hosts], max_procs_total=2)


def test_max_procs_total_with_fixed_procs_locally(run_cli: Any, tmp_path: Path) -> None:
    job = write_job(tmp_path, "import os\n\ndef processor(item):\n    return os.getpid()\n\n"
                              "def combine(results):\n    print(len(set(results)))\n\n"
                              "input_data = list(range(200))\n")
    done = run_cli("run", "--procs", "4", "--max-procs-total", "1", job)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]

"""Any Python on the hosts: one master drives a fleet mixing 3.6, 3.8, 3.10, 3.12 and 3.13
(pyenv interpreters as the hosts' `python:`), code travels as source, and modules the hosts lack
are forwarded from the master in memory. Every test also checks that nothing was written on the
hosts and no runner outlived the run (the fleet_leftovers guard).

Interpreters are found under `pyenv root`; a missing one fails under CI=true, skips elsewhere.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

import antnest
from antnest.host import Host
from antnest.runner import CodeShippingError
from antnest.testing import SshdFleet
from plugins.cli import JOBS, REPO
from plugins.tools import require

HERE = Path(__file__).resolve().parent / "jobs_anypython"
VERSIONS = ["3.6", "3.8", "3.10", "3.12", "3.13"]
MASTER_MINOR = "%d.%d" % sys.version_info[:2]


def _pyenv_root() -> Path:
    try:
        out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return Path(out or os.path.expanduser("~/.pyenv"))


def interpreters() -> Dict[str, str]:
    """{"3.8": path} for each wanted version; a missing one fails under CI, skips elsewhere."""
    found: Dict[str, str] = {}
    versions = _pyenv_root() / "versions"
    for minor in VERSIONS:
        for entry in sorted(versions.glob(minor + ".*")) if versions.is_dir() else []:
            python = entry / "bin" / "python3"
            if re.fullmatch(re.escape(minor) + r"\.\d+", entry.name) and os.access(python, os.X_OK):
                found[minor] = str(python)
    missing = [v for v in VERSIONS if v not in found]
    require(not missing,
            f"pyenv interpreters missing: Python {', '.join(missing)} (under {versions})")
    return found


def host_name(minor: str) -> str:
    return "py" + minor.replace(".", "")


def mixed_hosts(fleet: SshdFleet, procs: int = 1) -> List[Host]:
    """One host per Python version, spread over the fleet's sshd daemons."""
    daemons = fleet.hosts
    return [Host(name=host_name(minor), address=daemons[i % len(daemons)].address,
                 port=daemons[i % len(daemons)].port, user=fleet.user,
                 identity_files=(str(fleet.client_key),), python=python, procs=procs)
            for i, (minor, python) in enumerate(sorted(interpreters().items()))]


def write_inventory(path: Path, hosts: List[Host]) -> Path:
    document = {"hosts": [{"name": h.name, "address": h.address, "port": h.port,
                           "user": h.user, "identity_file": h.identity_files[0],
                           "python": h.python, "procs": h.procs} for h in hosts]}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
def hosts(fleet: SshdFleet, fleet_leftovers) -> List[Host]:
    return mixed_hosts(fleet)


@pytest.fixture
def inventory(hosts: List[Host], tmp_path: Path) -> Path:
    return write_inventory(tmp_path / "mixed.yaml", hosts)


def cluster(fleet: SshdFleet, hosts: List[Host], **kwargs) -> antnest.Cluster:
    return antnest.Cluster(hosts=hosts, known_hosts=[fleet.known_hosts], **kwargs)


def started(c: antnest.Cluster, hosts: List[Host]) -> None:
    """Every host up before the work starts, so that every host gets some."""
    states = c.wait_for_hosts(timeout=90)
    assert [s.state for s in states] == ["connected"] * len(hosts), states
    got = {s.name: s.python.rsplit(".", 1)[0] for s in states}
    assert got == {host_name(m): m for m in interpreters()}, got


def run(fleet: SshdFleet, run_cli, inventory: Path, *args):
    return run_cli("run", "-i", inventory, "--known-hosts", fleet.known_hosts, *args,
                   timeout=180)


# -- the job file and its own modules travel as source -------------------------------------------

def test_wordcount_on_a_mixed_fleet(fleet, inventory, run_cli, tmp_path: Path) -> None:
    text = "\n".join(f"the fox {i % 7} jumps over the dog {i % 3}" for i in range(200))
    data = tmp_path / "words.txt"
    data.write_text(text + "\n")
    result = run(fleet, run_cli, inventory, "--input", data, JOBS / "wordcount.py")
    assert result.returncode == 0, result.stderr
    expected = Counter(text.split())
    got = {line.split("\t")[1]: int(line.split("\t")[0]) for line in result.stdout.splitlines()}
    assert got == dict(expected)


def test_a_job_with_a_sibling_module_returns_its_own_classes_from_every_version(
        fleet, inventory, run_cli, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = run(fleet, run_cli, inventory, "--report", report, HERE / "points_job.py")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert [(int(x), int(y)) for x, y, _ in rows] == [(i, -i) for i in range(40)]
    assert set(python for _, _, python in rows) <= set(interpreters())
    hosts_done = {h["name"]: h["done"] for h in json.loads(report.read_text())["hosts"]}
    assert sum(hosts_done.values()) == 40, hosts_done


def test_the_original_form_job_on_a_mixed_fleet(fleet, inventory, run_cli) -> None:
    result = run(fleet, run_cli, inventory, JOBS / "reverse_strings.py")
    assert (result.returncode, result.stdout) == (0, "olleh\ndlrow\n"), result.stderr


def spread(item: int) -> tuple:
    time.sleep(0.3)  # slow enough that every host's runner takes some
    return item, "%d.%d" % sys.version_info[:2]


def test_api_map_with_a_lambda_and_a_closure_spreads_over_every_version(fleet, hosts) -> None:
    offset = 1000

    def shifted(x: int) -> int:
        return x + offset

    with cluster(fleet, hosts) as c:
        started(c, hosts)
        assert list(c.map(lambda x: x * 3, range(50))) == [x * 3 for x in range(50)]
        assert list(c.map(shifted, range(50))) == [x + 1000 for x in range(50)]
        twice = [lambda v: -v, lambda v: v * 10]  # two lambdas on a line: columns tell them apart
        assert list(c.map(twice[1], range(5))) == [0, 10, 20, 30, 40]
        results = list(c.map(spread, range(4 * len(hosts))))
    assert [r[0] for r in results] == list(range(4 * len(hosts)))
    assert {r[1] for r in results} == set(interpreters()), results


def test_a_main_script_ships_as_its_source(fleet, hosts, fresh_home: Path) -> None:
    spec = {"hosts": [{"name": h.name, "address": h.address, "port": h.port, "user": h.user,
                       "identity_files": list(h.identity_files), "python": h.python,
                       "procs": 1} for h in hosts],
            "known_hosts": str(fleet.known_hosts)}
    env = dict(os.environ, HOME=str(fresh_home), PYTHONPATH=str(REPO))
    env.pop("SSH_AUTH_SOCK", None)
    done = subprocess.run([sys.executable, str(HERE / "main_script.py"), json.dumps(spec)],
                          capture_output=True, text=True, timeout=180, env=env,
                          stdin=subprocess.DEVNULL, cwd=str(HERE))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[x, x * x] for x in range(20)]


# -- modules the hosts lack ---------------------------------------------------------------------

def uses_invoke(_: int) -> str:
    import invoke  # installed here (the test extra), on none of the pyenv interpreters

    return invoke.__version__ + " " + "%d.%d" % sys.version_info[:2]


def slow_invoke(item: int) -> str:
    time.sleep(0.3)
    return uses_invoke(item)


def uses_c_extension(_: int) -> str:
    import _cffi_backend  # a C extension: only pure Python is forwarded

    return _cffi_backend.__file__


def test_a_pure_python_package_only_the_master_has_is_forwarded(fleet, hosts) -> None:
    import invoke

    for python in interpreters().values():
        probe = subprocess.run([python, "-c", "import invoke"], capture_output=True, timeout=60)
        assert probe.returncode != 0, f"{python} has invoke: the test would prove nothing"
    with cluster(fleet, hosts) as c:
        started(c, hosts)
        got = list(c.map(slow_invoke, range(4 * len(hosts))))
    assert {g.split()[0] for g in got} == {invoke.__version__}
    assert {g.split()[1] for g in got} == set(interpreters()), got  # every version did some


def test_a_c_extension_the_hosts_lack_names_module_host_and_fix(fleet, hosts) -> None:
    with cluster(fleet, hosts[:2]) as c:
        with pytest.raises(ImportError) as caught:
            list(c.map(uses_c_extension, range(2)))
    message = str(caught.value)
    assert "'_cffi_backend'" in message and "C extension" in message, message
    assert re.search(r"on host py\d+ \(Python 3\.\d+\.\d+\)", message), message
    assert "-m pip install cffi" in message, message  # the distribution that provides it


def test_no_forward_turns_forwarding_off(fleet, hosts) -> None:
    with cluster(fleet, hosts[:1], forward_modules=False) as c:
        with pytest.raises(ImportError) as caught:
            list(c.map(uses_invoke, range(1)))
    assert "invoke" in str(caught.value)


def test_forwarding_only_named_packages(fleet, hosts) -> None:
    with cluster(fleet, hosts[:1], forward_modules=["yaml"]) as c:
        with pytest.raises(ImportError) as caught:
            list(c.map(uses_invoke, range(1)))
    assert "not among the forwarded packages (yaml)" in str(caught.value)
    with cluster(fleet, hosts[:1], forward_modules=["invoke"]) as c:
        import invoke

        assert list(c.map(uses_invoke, range(1)))[0].split()[0] == invoke.__version__


# -- tracebacks and versions --------------------------------------------------------------------

@pytest.mark.parametrize("minor", VERSIONS)
def test_a_remote_traceback_shows_file_line_and_source(fleet, fleet_leftovers, minor: str) -> None:
    python = interpreters()[minor]
    host = [h for h in mixed_hosts(fleet) if h.python == python]
    with cluster(fleet, host) as c:
        with pytest.raises(antnest.errors.TaskError, match="no boom allowed") as caught:
            c.run(HERE / "failing_job.py")
    remote = caught.value.remote_traceback
    job = str(HERE / "failing_job.py")
    assert f'File "{job}", line 6, in processor' in remote, remote
    assert 'raise ValueError("no boom allowed: " + item)  # the line the traceback shows' in remote


def made_by_exec():
    namespace: dict = {}
    exec("def no_source(x):\n    return x + 1\n", namespace)
    return namespace["no_source"]


def test_a_function_without_source_goes_by_value_to_same_minor_hosts_only(fleet, hosts) -> None:
    same = Host(name="same", address=hosts[0].address, port=hosts[0].port, user=hosts[0].user,
                identity_files=hosts[0].identity_files, procs=1)  # the fleet's python3
    with cluster(fleet, [same]) as c:
        state = c.wait_for_hosts(60)[0]
        assert state.python.startswith(MASTER_MINOR + "."), state
        assert list(c.map(made_by_exec(), range(3))) == [1, 2, 3]
    with cluster(fleet, hosts[1:2]) as c:
        with pytest.raises(CodeShippingError) as caught:
            list(c.map(made_by_exec(), range(1)))
    message = str(caught.value)
    assert "no_source (<string>:1)" in message, message
    assert f"loads only on Python {MASTER_MINOR}" in message, message
    assert "define it in a .py file" in message, message


def test_check_shows_each_hosts_version_and_how_code_travels(fleet, inventory, run_cli) -> None:
    result = run_cli("check", "-i", inventory, "--known-hosts", fleet.known_hosts, "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for minor in interpreters():
        row = rows[host_name(minor)]
        assert row["python"].startswith(minor + "."), row
        assert row["code"] == ("source+value" if minor == MASTER_MINOR else "source"), row


def import_new_syntax(_: int) -> tuple:
    """A module only the master has, in syntax 3.6 and 3.7 cannot compile."""
    try:
        import antnest_walrus_probe
    except ImportError as exc:   # libraries fall back on ImportError (yaml's C loader, ...)
        return "%d.%d" % sys.version_info[:2], "ImportError", str(exc)
    return "%d.%d" % sys.version_info[:2], antnest_walrus_probe.VALUE, ""


def test_a_forwarded_module_too_new_for_the_host_is_an_import_error_naming_it(
        fleet, hosts, tmp_path: Path, monkeypatch) -> None:
    """Seen when the master's PyYAML (written for 3.8+) was forwarded to a 3.6 host: a
    SyntaxError broke invoke's own ImportError fallback and failed every taskunit."""
    where = tmp_path / "master_only"
    where.mkdir()
    (where / "antnest_walrus_probe.py").write_text("VALUE = (seen := 'new')\n")
    monkeypatch.syspath_prepend(str(where))
    with cluster(fleet, hosts) as c:
        started(c, hosts)
        answers = c.on_each_host(import_new_syntax, 0)
    assert not answers.failed, answers.failed
    by_version = {version: (value, why) for version, value, why in answers.values()}
    for version, (value, why) in by_version.items():
        if version in ("3.6", "3.7"):
            assert value == "ImportError" and "antnest_walrus_probe" in why and version in why
        else:
            assert (value, why) == ("new", "")

"""The openssh client on the real fleet: every failure gets the same status from `antnest check`
as with paramiko, with a one-line message; nothing (ssh process, control socket, socket
directory) is left behind after a normal end, an error, SIGTERM, SIGINT or SIGKILL."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

import antnest
from antnest.testing import SshdFleet

REPO = Path(__file__).parent.parent
JOBS = REPO / "jobs"
HELLO_WORLD = "olleh\ndlrow\n"
CLIENTS = ["paramiko", "openssh"]


@pytest.fixture(autouse=True)
def need_ssh() -> None:
    if shutil.which("ssh") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("no ssh binary on CI; .ci/run should install openssh-client")
        pytest.skip("no ssh binary")


def config_copy(fleet: SshdFleet, path: Path, **replace: str) -> Path:
    lines = []
    for line in fleet.ssh_config.read_text().splitlines():
        key = line.strip().split(" ", 1)[0]
        if key in replace:
            line = f"    {key} {replace[key]}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path


def check(run_cli, client: str, *args: "str | os.PathLike[str]") -> Dict[str, dict]:
    result = run_cli("check", "--json", "--ssh-client", client, "--connect-timeout", "3", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def key_line(fleet: SshdFleet, name: str) -> str:
    host = fleet.host(name)
    for line in fleet.known_hosts.read_text().splitlines():
        if line.startswith(f"[{host.address}]:{host.port} "):
            return line
    raise AssertionError(name)


@pytest.mark.parametrize("client", CLIENTS)
def test_ok(fleet: SshdFleet, run_cli, client: str) -> None:
    rows = check(run_cli, client, "-H", "fleet1,fleet2", "-F", fleet.ssh_config)
    assert [rows[n]["status"] for n in ("fleet1", "fleet2")] == ["ok", "ok"], rows


@pytest.mark.parametrize("client", CLIENTS)
def test_unreachable_and_refused(run_cli, client: str) -> None:
    rows = check(run_cli, client, "-H", "no-such-host.invalid,127.0.0.1:1")
    assert rows["no-such-host.invalid"]["status"] == "unreachable", rows
    assert "cannot resolve" in rows["no-such-host.invalid"]["error"]
    assert rows["127.0.0.1"]["status"] == "refused", rows


@pytest.mark.parametrize("client", CLIENTS)
def test_silent_host_times_out(run_cli, blackhole, client: str) -> None:
    rows = check(run_cli, client, "-H", f"{blackhole.address}:{blackhole.port}")
    assert rows[blackhole.address]["status"] == "timeout", rows


@pytest.mark.parametrize("client", CLIENTS)
def test_auth_failed(fleet: SshdFleet, run_cli, tmp_path: Path, client: str) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True, timeout=30, stdin=subprocess.DEVNULL)
    config = config_copy(fleet, tmp_path / "config", IdentityFile=str(stranger))
    rows = check(run_cli, client, "-H", "fleet1", "-F", config)
    assert rows["fleet1"]["status"] == "auth failed", rows
    assert "authentication failed" in rows["fleet1"]["error"]


@pytest.mark.parametrize("client", CLIENTS)
def test_host_key_unknown_names_the_fingerprint_and_file(fleet: SshdFleet, run_cli,
                                                         tmp_path: Path, client: str) -> None:
    empty = tmp_path / "known"
    empty.write_text("")
    config = config_copy(fleet, tmp_path / "config", UserKnownHostsFile=str(empty))
    row = check(run_cli, client, "-H", "fleet1", "-F", config)["fleet1"]
    assert row["status"] == "host key unknown", row
    assert fleet.host("fleet1").fingerprint in row["error"]
    assert str(empty) in row["error"]


@pytest.mark.parametrize("client", CLIENTS)
def test_host_key_changed_shows_both_fingerprints(fleet: SshdFleet, run_cli, tmp_path: Path,
                                                  client: str) -> None:
    host = fleet.host("fleet1")
    other = key_line(fleet, "fleet2").split(" ", 1)[1]
    known = tmp_path / "known"
    known.write_text(f"[{host.address}]:{host.port} {other}\n")
    config = config_copy(fleet, tmp_path / "config", UserKnownHostsFile=str(known))
    row = check(run_cli, client, "-H", "fleet1", "-F", config)["fleet1"]
    assert row["status"] == "host key changed", row
    assert host.fingerprint in row["error"] and fleet.host("fleet2").fingerprint in row["error"]


@pytest.mark.parametrize("client", CLIENTS)
def test_revoked_host_key(fleet: SshdFleet, run_cli, tmp_path: Path, client: str) -> None:
    known = tmp_path / "known"
    known.write_text("@revoked " + key_line(fleet, "fleet1") + "\n" + fleet.known_hosts.read_text())
    config = config_copy(fleet, tmp_path / "config", UserKnownHostsFile=str(known))
    row = check(run_cli, client, "-H", "fleet1", "-F", config)["fleet1"]
    assert row["status"] == "host key revoked", row


@pytest.mark.parametrize("client", CLIENTS)
def test_no_python(fleet: SshdFleet, run_cli, tmp_path: Path, client: str) -> None:
    inventory = fleet.write_inventory(tmp_path / "hosts.yaml")
    text = inventory.read_text().replace("defaults:", "defaults:\n  python: /no/such/python3", 1)
    inventory.write_text(text)
    rows = check(run_cli, client, "-i", inventory, "--known-hosts", fleet.known_hosts)
    assert {row["status"] for row in rows.values()} == {"no python"}, rows


@pytest.mark.parametrize("client", CLIENTS)
def test_unchecked_host_keys_refused(fleet: SshdFleet, run_cli, tmp_path: Path,
                                     client: str) -> None:
    config = config_copy(fleet, tmp_path / "config", StrictHostKeyChecking="no")
    row = check(run_cli, client, "-H", "fleet1", "-F", config)["fleet1"]
    assert row["status"] == "host key unchecked", row


# --------------------------------------------------------------------------- nothing left


def our_ssh_processes(marker: str) -> List[int]:
    """ssh processes whose command line carries this test's marker (its config file path)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and os.path.basename(cmdline[0]) in (b"ssh", b"sh") and \
                marker.encode() in b" ".join(cmdline):
            found.append(int(entry))
    return found


def settle(marker: str, timeout: float = 10.0) -> List[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = our_ssh_processes(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_api_run_leaves_no_master_socket_or_directory(fleet: SshdFleet, tmp_path: Path) -> None:
    config = config_copy(fleet, tmp_path / "config-api")
    before = set(glob.glob("/tmp/antnest-ssh-*"))
    with antnest.Cluster(hosts="fleet1,fleet2", ssh_config=config, ssh_client="openssh",
                         procs=1) as cluster:
        assert sorted(cluster.map(abs, [-1, -2, -3])) == [1, 2, 3]
        masters = our_ssh_processes(str(config))
        assert masters, "no ssh master while running"
        dirs = set(glob.glob("/tmp/antnest-ssh-*")) - before
        assert dirs and all(os.stat(d).st_mode & 0o777 == 0o700 for d in dirs)
    assert settle(str(config)) == []
    assert not any(os.path.exists(d) for d in dirs)


SLOW_JOB = '''
import time
input_data = list(range(100))
def processor(x):
    time.sleep(0.2)
    return x
def combine(results):
    print(len(list(results)))
'''


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A TMPDIR of this test's own, short enough for control socket paths."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="an12-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("how", ["normal", "error", "SIGTERM", "SIGINT", "SIGKILL"])
def test_nothing_left_after(fleet: SshdFleet, tmp_path: Path, fresh_home: Path,
                            short_tmp: Path, how: str) -> None:
    config = config_copy(fleet, tmp_path / f"config-{how}")
    job = tmp_path / "job.py"
    job.write_text(SLOW_JOB if how != "error" else SLOW_JOB.replace(
        "    return x", "    raise ValueError(x)"))
    if how == "normal":
        job.write_text(SLOW_JOB.replace("range(100)", "range(4)"))
    env = dict(os.environ, HOME=str(fresh_home), PYTHONPATH=str(REPO), TMPDIR=str(short_tmp))
    proc = subprocess.Popen([sys.executable, "-m", "antnest", "run", "--ssh-client", "openssh",
                             "-H", "fleet1,fleet2", "-F", str(config), str(job)],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    if how.startswith("SIG"):
        deadline = time.monotonic() + 30
        while len(our_ssh_processes(str(config))) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert our_ssh_processes(str(config)), "the run never started ssh"
        assert glob.glob(f"{short_tmp}/antnest-ssh-*/m*"), "no control socket while running"
        time.sleep(0.5)
        proc.send_signal(getattr(signal, how))
    out, err = proc.communicate(timeout=60)
    if how == "normal":
        assert (proc.returncode, out.decode()) == (0, "4\n"), err.decode()
    elif how == "error":
        assert proc.returncode != 0
    assert settle(str(config)) == [], "ssh processes outlived antnest"
    deadline = time.monotonic() + 10
    while os.listdir(short_tmp) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(short_tmp) == [], "control socket directory left behind"

"""The openssh client on the real fleet: every failure gets the same status from `antnest check`
as with paramiko, with a one-line message; nothing (ssh process, control socket, socket
directory) is left behind after a normal end, an error, SIGTERM, SIGINT or SIGKILL."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

import antnest
from antnest.testing import SshdFleet
from plugins.cli import HELLO_WORLD, JOBS, BackgroundCli, RunCli
from plugins.fleet import known_hosts_line, ssh_config_copy, with_known_hosts
from plugins.processes import ssh_processes, wait_until

CLIENTS = ["paramiko", "openssh"]

pytestmark = pytest.mark.usefixtures("need_ssh_binary")


def check(run_cli: RunCli, client: str, *args: "str | os.PathLike[str]") -> Dict[str, dict]:
    result = run_cli("check", "--json", "--ssh-client", client, "--connect-timeout", "3", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


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
def test_auth_failed(fleet: SshdFleet, run_cli, tmp_path: Path, stranger_key: Path,
                     client: str) -> None:
    config = ssh_config_copy(fleet, tmp_path / "config", IdentityFile=str(stranger_key))
    rows = check(run_cli, client, "-H", "fleet1", "-F", config)
    assert rows["fleet1"]["status"] == "auth failed", rows
    assert "authentication failed" in rows["fleet1"]["error"]


@pytest.mark.parametrize("client", CLIENTS)
def test_host_key_unknown_names_the_fingerprint_and_file(fleet: SshdFleet, run_cli,
                                                         tmp_path: Path, client: str) -> None:
    config, empty = with_known_hosts(fleet, tmp_path)
    row = check(run_cli, client, "-H", "fleet1", "-F", config)["fleet1"]
    assert row["status"] == "host key unknown", row
    assert fleet.host("fleet1").fingerprint in row["error"]
    assert str(empty) in row["error"]


@pytest.mark.parametrize("client", CLIENTS)
def test_host_key_changed_shows_both_fingerprints(fleet: SshdFleet, run_cli, tmp_path: Path,
                                                  client: str) -> None:
    host = fleet.host("fleet1")
    other = known_hosts_line(fleet, "fleet2").split(" ", 1)[1]
    config, _ = with_known_hosts(fleet, tmp_path, f"[{host.address}]:{host.port} {other}")
    row = check(run_cli, client, "-H", "fleet1", "-F", config)["fleet1"]
    assert row["status"] == "host key changed", row
    assert host.fingerprint in row["error"] and fleet.host("fleet2").fingerprint in row["error"]


@pytest.mark.parametrize("client", CLIENTS)
def test_revoked_host_key(fleet: SshdFleet, run_cli, tmp_path: Path, client: str) -> None:
    config, _ = with_known_hosts(fleet, tmp_path, "@revoked " + known_hosts_line(fleet, "fleet1"),
                                 keep=True)
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
    config = ssh_config_copy(fleet, tmp_path / "config", StrictHostKeyChecking="no")
    row = check(run_cli, client, "-H", "fleet1", "-F", config)["fleet1"]
    assert row["status"] == "host key unchecked", row


def test_aes_gcm_first_unless_ssh_config_sets_ciphers(fleet: SshdFleet, run_cli,
                                                     tmp_path: Path) -> None:
    """A host whose ssh_config sets no Ciphers gets ssh's own default set with AES-GCM first
    (nothing added, nothing removed); one that sets Ciphers keeps them, and connects."""
    from antnest.inventory import load_hosts
    from antnest.inventory.ssh_options import default_ciphers
    from antnest.transport import SshOptions
    from antnest.transport.openssh import ssh_args

    def ciphers_option(host: antnest.Host) -> "str | None":
        args = ssh_args(host, SshOptions())
        found = [a for a in args if a.startswith("Ciphers=")]
        return found[0][len("Ciphers="):] if found else None

    plain, = load_hosts(host_list="fleet1", ssh_config=fleet.ssh_config)
    assert plain.ciphers is None
    offered = ciphers_option(plain)
    assert offered is not None and offered.startswith("aes128-gcm@openssh.com,")
    assert sorted(offered.split(",")) == sorted(default_ciphers())

    config = tmp_path / "config-ciphers"
    config.write_text("Host *\n    Ciphers aes256-ctr\n\n" + fleet.ssh_config.read_text())
    chosen, = load_hosts(host_list="fleet1", ssh_config=config)
    assert chosen.ciphers == "aes256-ctr" and ciphers_option(chosen) is None
    result = run_cli("run", "--ssh-client", "openssh", "-H", "fleet1", "-F", config,
                     JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (0, HELLO_WORLD), result.stderr


# --------------------------------------------------------------------------- nothing left


def settle(marker: str, timeout: float = 10.0) -> List[int]:
    """The ssh processes of this test still there after up to `timeout` seconds."""
    wait_until(lambda: not ssh_processes(marker), timeout)
    return ssh_processes(marker)


def test_api_run_leaves_no_master_socket_or_directory(fleet: SshdFleet, tmp_path: Path) -> None:
    config = ssh_config_copy(fleet, tmp_path / "config-api")
    before = set(glob.glob("/tmp/antnest-ssh-*"))
    with antnest.Cluster(hosts="fleet1,fleet2", ssh_config=config, ssh_client="openssh",
                         procs=1) as cluster:
        assert sorted(cluster.map(abs, [-1, -2, -3])) == [1, 2, 3]
        masters = ssh_processes(str(config))
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
def test_nothing_left_after(fleet: SshdFleet, tmp_path: Path, background_cli: BackgroundCli,
                            short_tmp: Path, how: str) -> None:
    config = ssh_config_copy(fleet, tmp_path / f"config-{how}")
    job = tmp_path / "job.py"
    job.write_text(SLOW_JOB if how != "error" else SLOW_JOB.replace(
        "    return x", "    raise ValueError(x)"))
    if how == "normal":
        job.write_text(SLOW_JOB.replace("range(100)", "range(4)"))
    proc = background_cli.start("run", "--ssh-client", "openssh", "-H", "fleet1,fleet2",
                                "-F", config, job, env={"TMPDIR": short_tmp}, new_session=True)
    if how.startswith("SIG"):
        wait_until(lambda: len(ssh_processes(str(config))) >= 4, 30)
        assert ssh_processes(str(config)), "the run never started ssh"
        assert glob.glob(f"{short_tmp}/antnest-ssh-*/m*"), "no control socket while running"
        time.sleep(0.5)
        proc.send_signal(getattr(signal, how))
    result = background_cli.finish(proc, 60)
    if how == "normal":
        assert (result.rc, result.out) == (0, "4\n"), result.err
    elif how == "error":
        assert result.rc != 0
    assert settle(str(config)) == [], "ssh processes outlived antnest"
    wait_until(lambda: not os.listdir(short_tmp), 10)
    assert os.listdir(short_tmp) == [], "control socket directory left behind"

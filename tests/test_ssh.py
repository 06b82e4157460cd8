"""The SSH transport against the real fleet: host keys, authentication, ProxyJump, dead hosts.

Every test here checks afterwards (fleet_leftovers) that no runner is left under the fleet's
daemons and that no file appeared in the hosts' home directories, the login directory or /tmp.
"""
from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import sys
import time
from pathlib import Path
from typing import List

import pytest
import yaml

import antnest
from antnest.testing import FleetHost, SshdFleet
from plugins.cli import HELLO_WORLD, JOBS
from plugins.fleet import free_port
from plugins.processes import Leftovers

pytestmark = pytest.mark.usefixtures("fleet_leftovers")


def known_hosts_line(host: FleetHost) -> str:
    key_type, blob = Path(f"{host.host_key_path}.pub").read_text().split()[:2]
    return f"[{host.address}]:{host.port} {key_type} {blob}"


def known_hosts_without(fleet: SshdFleet, path: Path, name: str) -> Path:
    host = fleet.host(name)
    lines = fleet.known_hosts.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(f"[{host.address}]:{host.port} ")]
    assert len(kept) == len(lines) - 1
    path.write_text("".join(kept))
    return path


def inventory(path: Path, hosts: List[dict], **defaults) -> Path:
    path.write_text(yaml.safe_dump({"defaults": defaults, "hosts": hosts}, sort_keys=False))
    return path


def entry(host: FleetHost, **extra) -> dict:
    return {"name": host.name, "address": host.address, "port": host.port, **extra}


# --- host keys -------------------------------------------------------------------------------


def test_unknown_host_keys_are_refused_with_their_fingerprints(
        fleet: SshdFleet, fleet_inventory: Path, run_cli, fresh_home: Path) -> None:
    result = run_cli("run", "-i", fleet_inventory, JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (3, ""), result.stderr
    for host in fleet.hosts:
        assert host.name in result.stderr
        assert host.fingerprint in result.stderr
    assert "--accept-new-host-keys" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (fresh_home / ".ssh" / "known_hosts").exists(), "a key was accepted silently"


def test_accept_new_host_keys_records_the_key_in_the_given_file(
        fleet: SshdFleet, run_cli, tmp_path: Path, fresh_home: Path) -> None:
    fleet2 = fleet.host("fleet2")
    known = known_hosts_without(fleet, tmp_path / "known_hosts", "fleet2")
    before = known.read_text()
    hosts = fleet.write_inventory(tmp_path / "hosts.yaml", names=["fleet2"])

    refused = run_cli("run", "-i", hosts, "--known-hosts", known, JOBS / "reverse.py")
    assert refused.returncode == 3, refused.stderr
    assert known.read_text() == before

    accepted = run_cli("run", "-i", hosts, "--known-hosts", known, "--accept-new-host-keys",
                       JOBS / "reverse.py")
    assert (accepted.returncode, accepted.stdout) == (0, HELLO_WORLD), accepted.stderr
    after = known.read_text()
    assert after.startswith(before)
    added = after[len(before):].splitlines()
    assert [line.split() for line in added] == [known_hosts_line(fleet2).split()]
    assert not (fresh_home / ".ssh" / "known_hosts").exists()

    again = run_cli("run", "-i", hosts, "--known-hosts", known, JOBS / "reverse.py")
    assert (again.returncode, again.stdout) == (0, HELLO_WORLD), again.stderr
    assert known.read_text() == after


def test_accept_new_host_keys_creates_a_missing_known_hosts_file(
        fleet: SshdFleet, run_cli, tmp_path: Path) -> None:
    known = tmp_path / "new" / "known_hosts"
    hosts = fleet.write_inventory(tmp_path / "hosts.yaml", names=["fleet1"])
    result = run_cli("run", "-i", hosts, "--known-hosts", known, "--accept-new-host-keys",
                     JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (0, HELLO_WORLD), result.stderr
    assert [line.split() for line in known.read_text().splitlines()] == [
        known_hosts_line(fleet.host("fleet1")).split()]


@pytest.mark.parametrize("accept_new", [False, True], ids=["strict", "accept-new"])
def test_changed_host_key_is_refused(fleet: SshdFleet, run_cli, tmp_path: Path,
                                     accept_new: bool) -> None:
    fleet1, fleet2 = fleet.host("fleet1"), fleet.host("fleet2")
    wrong_type, wrong_blob = known_hosts_line(fleet1).split()[1:]
    known = known_hosts_without(fleet, tmp_path / "known_hosts", "fleet2")
    with known.open("a") as out:  # fleet2's address with fleet1's key: as if fleet2 changed
        out.write(f"[{fleet2.address}]:{fleet2.port} {wrong_type} {wrong_blob}\n")
    before = known.read_text()
    hosts = fleet.write_inventory(tmp_path / "hosts.yaml", names=["fleet2"])
    extra = ["--accept-new-host-keys"] if accept_new else []
    result = run_cli("run", "-i", hosts, "--known-hosts", known, *extra, JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (3, ""), result.stderr
    assert "CHANGED" in result.stderr
    assert "fleet2" in result.stderr
    assert fleet2.fingerprint in result.stderr
    assert known.read_text() == before, "a changed key must never be recorded"


# --- authentication and reachability ---------------------------------------------------------


def test_no_usable_key_is_an_auth_error_naming_the_keys(fleet: SshdFleet, run_cli,
                                                       tmp_path: Path) -> None:
    hosts = inventory(tmp_path / "hosts.yaml", [entry(fleet.host("fleet1"))], user=fleet.user)
    result = run_cli("run", "-i", hosts, "--known-hosts", fleet.known_hosts, JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (3, ""), result.stderr
    assert "fleet1" in result.stderr
    assert "no key was offered" in result.stderr, result.stderr


def test_unauthorised_key_is_an_auth_error_naming_the_key(fleet: SshdFleet, run_cli,
                                                         tmp_path: Path,
                                                         stranger_key: Path) -> None:
    key = stranger_key
    hosts = inventory(tmp_path / "hosts.yaml", [entry(fleet.host("fleet1"))], user=fleet.user,
                      identity_file=str(key))
    result = run_cli("run", "-i", hosts, "--known-hosts", fleet.known_hosts, JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (3, ""), result.stderr
    assert "fleet1" in result.stderr
    assert "authentication failed" in result.stderr
    assert str(key) in result.stderr


def test_refused_connection_is_exit_3(fleet: SshdFleet, run_cli, tmp_path: Path) -> None:
    port = free_port()
    hosts = inventory(tmp_path / "hosts.yaml",
                      [{"name": "nobody", "address": "127.0.0.1", "port": port}],
                      user=fleet.user, identity_file=str(fleet.client_key))
    result = run_cli("run", "-i", hosts, "--known-hosts", fleet.known_hosts, JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (3, ""), result.stderr
    assert "nobody" in result.stderr and "refused" in result.stderr


def test_one_dead_host_does_not_stop_the_job(fleet: SshdFleet, run_cli, tmp_path: Path) -> None:
    hosts = inventory(tmp_path / "hosts.yaml",
                      [{"name": "nobody", "address": "127.0.0.1", "port": free_port()},
                       entry(fleet.host("fleet1"))],
                      user=fleet.user, identity_file=str(fleet.client_key))
    result = run_cli("run", "-i", hosts, "--known-hosts", fleet.known_hosts, JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (0, HELLO_WORLD), result.stderr


def test_host_list_with_ssh_config(fleet: SshdFleet, run_cli) -> None:
    result = run_cli("run", "-H", "fleet1,fleet3", "--ssh-config", fleet.ssh_config,
                     "--known-hosts", fleet.known_hosts, JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (0, HELLO_WORLD), result.stderr


# --- ProxyJump -------------------------------------------------------------------------------
# The target is fleet3, reached through fleet1. Proof that the jump is used: while a Cluster is
# open on fleet3 alone, fleet1's daemon has a session, and the runner's SSH_CONNECTION names
# fleet3's address.


def jump_via_ssh_config(fleet: SshdFleet, tmp_path: Path, home: Path) -> dict:
    config = tmp_path / "ssh_config"
    config.write_text(fleet.ssh_config.read_text().replace(
        "Host fleet3\n", "Host fleet3\n    ProxyJump fleet1\n"))
    return {"hosts": "fleet3", "ssh_config": config}


def jump_via_inventory_alias(fleet: SshdFleet, tmp_path: Path, home: Path) -> dict:
    """proxy_jump names an ssh_config alias; the hop's address, port and key come from there."""
    hosts = inventory(tmp_path / "hosts.yaml", [entry(fleet.host("fleet3"), proxy_jump="fleet1")],
                      user=fleet.user, identity_file=str(fleet.client_key))
    return {"inventory": hosts, "ssh_config": fleet.ssh_config}


def jump_via_inventory_address(fleet: SshdFleet, tmp_path: Path, home: Path) -> dict:
    """proxy_jump as user@address:port, no ssh_config: the hop authenticates with the user's
    default key (~/.ssh/id_ed25519), as ssh would."""
    (home / ".ssh").mkdir(mode=0o700)
    shutil.copy(fleet.client_key, home / ".ssh" / "id_ed25519")
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    fleet1 = fleet.host("fleet1")
    hosts = inventory(tmp_path / "hosts.yaml",
                      [entry(fleet.host("fleet3"),
                             proxy_jump=f"{fleet.user}@{fleet1.address}:{fleet1.port}")],
                      user=fleet.user, identity_file=str(fleet.client_key))
    return {"inventory": hosts}


JUMPS = [jump_via_ssh_config, jump_via_inventory_alias, jump_via_inventory_address]


def cli_args(options: dict) -> List[str]:
    args = []
    if "hosts" in options:
        args += ["-H", options["hosts"]]
    if "inventory" in options:
        args += ["-i", str(options["inventory"])]
    if "ssh_config" in options:
        args += ["--ssh-config", str(options["ssh_config"])]
    return args


def server_address(_: object) -> str:
    return os.environ["SSH_CONNECTION"].split()[2]


def sessions_settle(fleet: SshdFleet, name: str, allowed: set, timeout: float = 5.0) -> set:
    """The daemon's session processes once only `allowed` ones are left (or at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        current = set(fleet.session_pids(name))
        if current <= allowed or time.monotonic() >= deadline:
            return current
        time.sleep(0.05)


@pytest.mark.parametrize("jump", JUMPS, ids=lambda f: f.__name__)
def test_proxy_jump_cli(fleet: SshdFleet, run_cli, tmp_path: Path, fresh_home: Path,
                        jump) -> None:
    options = jump(fleet, tmp_path, fresh_home)
    result = run_cli("run", *cli_args(options), "--known-hosts", fleet.known_hosts,
                     JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (0, HELLO_WORLD), result.stderr


@pytest.mark.parametrize("jump", JUMPS, ids=lambda f: f.__name__)
def test_proxy_jump_goes_through_the_jump_host(fleet: SshdFleet, tmp_path: Path,
                                               fresh_home: Path, jump) -> None:
    options = jump(fleet, tmp_path, fresh_home)
    before = set(fleet.session_pids("fleet1"))  # another test's sessions may still be closing
    with antnest.Cluster(options.get("inventory"), hosts=options.get("hosts"),
                         ssh_config=options.get("ssh_config"),
                         known_hosts=[fleet.known_hosts], procs=1) as cluster:
        assert set(cluster.map(server_address, range(4))) == {fleet.host("fleet3").address}
        assert set(fleet.session_pids("fleet1")) - before, "no session on the jump host"
        assert [h.name for h in cluster.hosts] == ["fleet3"]
    assert sessions_settle(fleet, "fleet1", before) <= before, "the jump session stayed open"


def test_jump_host_key_is_checked_too(fleet: SshdFleet, run_cli, tmp_path: Path,
                                      fresh_home: Path) -> None:
    options = jump_via_inventory_alias(fleet, tmp_path, fresh_home)
    known = known_hosts_without(fleet, tmp_path / "known_hosts", "fleet1")
    config = tmp_path / "ssh_config_known"   # the fleet's UserKnownHostsFile is honoured
    config.write_text(fleet.ssh_config.read_text().replace(str(fleet.known_hosts), str(known)))
    options["ssh_config"] = config
    result = run_cli("run", *cli_args(options), "--known-hosts", known, JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (3, ""), result.stderr
    assert fleet.host("fleet1").fingerprint in result.stderr


# --- nothing left behind ---------------------------------------------------------------------


def test_a_run_leaves_no_runner_and_no_file(fleet: SshdFleet, fleet_inventory: Path, run_cli,
                                            fleet_leftovers: Leftovers) -> None:
    result = run_cli("run", "-i", fleet_inventory, "--known-hosts", fleet.known_hosts,
                     "--procs", "3", JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (0, HELLO_WORLD), result.stderr
    assert fleet_leftovers.wait_for_runners_to_go() == []
    assert fleet_leftovers.new_files() == []
    for host in fleet.hosts:
        assert list(host.home.iterdir()) == []


# --- the host's Python -----------------------------------------------------------------------
# Only where other interpreters are installed (pyenv, python3.X): skipped otherwise.


def interpreters() -> dict:
    """{(major, minor): path} of the Python 3 interpreters found on this machine."""
    pyenv = os.environ.get("PYENV_ROOT") or os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".pyenv")
    candidates = glob.glob("/usr/bin/python3.*") + glob.glob("/usr/local/bin/python3.*") + \
        glob.glob(os.path.join(pyenv, "versions", "3.*", "bin", "python3"))
    found = {}
    for path in sorted(candidates):
        match = re.search(r"python3\.(\d+)$", path) or re.search(r"/versions/3\.(\d+)\.", path)
        if match and os.access(path, os.X_OK):
            found.setdefault((3, int(match.group(1))), path)
    return found


def pick(predicate) -> str:
    for version, path in sorted(interpreters().items()):
        if predicate(version):
            return path
    pytest.skip("no such Python interpreter installed here")


def run_with_python(fleet: SshdFleet, run_cli, tmp_path: Path, python: str):
    hosts = fleet.write_inventory(tmp_path / "hosts.yaml", names=["fleet1"], python=python,
                                  procs=1)
    return run_cli("run", "-q", "-i", hosts, "--known-hosts", fleet.known_hosts,
                   JOBS / "reverse.py")


def test_host_python_too_old_is_exit_3(fleet: SshdFleet, run_cli, tmp_path: Path) -> None:
    pyenv = os.environ.get("PYENV_ROOT") or os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".pyenv")
    old = sorted(glob.glob(os.path.join(pyenv, "versions", "2.*", "bin", "python")))
    if not old:
        pytest.skip("no Python 2 interpreter installed here")
    result = run_with_python(fleet, run_cli, tmp_path, old[0])
    assert (result.returncode, result.stdout) == (3, ""), result.stderr
    assert "fleet1" in result.stderr and "too old" in result.stderr


@pytest.mark.parametrize("newer", [False, True], ids=["older-minor", "newer-minor"])
def test_a_host_python_of_another_minor_version_runs_the_job(
        fleet: SshdFleet, run_cli, tmp_path: Path, newer: bool) -> None:
    mine = sys.version_info[:2]
    python = pick(lambda v: v > mine if newer else (3, 6) <= v < mine)
    result = run_with_python(fleet, run_cli, tmp_path, python)
    assert (result.returncode, result.stdout) == (0, "olleh\ndlrow\n"), result.stderr

"""The SSH test fleet is real: OpenSSH daemons with their own host keys, killable and restartable."""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
from pathlib import Path
from typing import Iterator, Optional

import paramiko
import pytest
import yaml

from antnest.testing import FleetHost, SshdFleet, find_sshd, pid_alive, processes_matching

OPENSSH = "/usr/bin/ssh"
needs_openssh_client = pytest.mark.skipif(
    not os.access(OPENSSH, os.X_OK), reason="OpenSSH client not installed"
)


def connect(fleet: SshdFleet, host: FleetHost, known_hosts: Optional[Path] = None) -> paramiko.SSHClient:
    """A paramiko client that trusts nothing but the given known_hosts and the fleet's key."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or fleet.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host.address,
        port=host.port,
        username=fleet.user,
        key_filename=str(fleet.client_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def run(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _, stdout, _ = client.exec_command(command, timeout=20)
    return stdout.channel.recv_exit_status(), stdout.read().decode()


def ssh(fleet: SshdFleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSH, "-F", str(fleet.ssh_config), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def refuses_connections(host: FleetHost) -> bool:
    try:
        socket.create_connection((host.address, host.port), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.fixture
def sleeping_session(fleet: SshdFleet) -> Iterator[paramiko.SSHClient]:
    """An open session on fleet3 running a long command, as a runner would be mid-job."""
    client = connect(fleet, fleet.host("fleet3"))
    client.exec_command("sleep 300")
    yield client
    client.close()


def test_every_host_runs_python_over_paramiko(fleet: SshdFleet) -> None:
    assert [h.name for h in fleet.hosts] == ["fleet1", "fleet2", "fleet3"]
    for host in fleet.hosts:
        with connect(fleet, host) as client:
            assert run(client, 'python3 -c "print(42)"') == (0, "42\n")
            transport = client.get_transport()
            assert transport is not None
            served = transport.get_remote_server_key()
            digest = base64.b64encode(hashlib.sha256(served.asbytes()).digest()).decode()
            assert host.fingerprint == "SHA256:" + digest.rstrip("=")


def test_each_host_has_its_own_host_key(fleet: SshdFleet, tmp_path: Path) -> None:
    first, second = fleet.hosts[:2]
    assert len({h.fingerprint for h in fleet.hosts}) == len(fleet.hosts)
    # known_hosts entry for fleet1's address, but carrying fleet2's key: must be refused.
    key_type, blob = Path(f"{second.host_key_path}.pub").read_text().split()[:2]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{first.address}]:{first.port} {key_type} {blob}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        connect(fleet, first, known_hosts=wrong)


def test_sessions_get_a_fresh_home(fleet: SshdFleet) -> None:
    host = fleet.host("fleet2")
    with connect(fleet, host) as client:
        assert run(client, 'echo "$HOME"') == (0, f"{host.home}\n")
    assert list(host.home.iterdir()) == []


@needs_openssh_client
def test_openssh_client_uses_the_generated_ssh_config(fleet: SshdFleet) -> None:
    result = ssh(fleet, "fleet1", "true")
    assert result.returncode == 0, result.stderr


@needs_openssh_client
def test_proxyjump_through_a_fleet_host(fleet: SshdFleet) -> None:
    result = ssh(fleet, "-J", "fleet1", "fleet2", "python3 -c 'print(42)'")
    assert (result.returncode, result.stdout) == (0, "42\n"), result.stderr


def test_kill_host_then_restart_host(
    fleet: SshdFleet, sleeping_session: paramiko.SSHClient
) -> None:
    before = fleet.host("fleet3")
    sessions = fleet.session_pids("fleet3")
    assert sessions, "an open session should show up under its daemon"
    try:
        fleet.kill_host("fleet3")
        assert not any(pid_alive(pid) for pid in [before.pid, *sessions])
        assert fleet.host("fleet3").pid == 0
        assert refuses_connections(before)
    finally:
        after = fleet.restart_host("fleet3")
    assert (after.address, after.port, after.fingerprint) == (
        before.address, before.port, before.fingerprint
    )
    assert after.pid not in (0, before.pid)
    with connect(fleet, after) as client:  # same known_hosts still verifies it
        assert run(client, "true") == (0, "")


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    if find_sshd() is None:
        pytest.skip("sshd not installed")
    workdir = tmp_path / "own-fleet"
    with SshdFleet(workdir, count=2, first_octet=61) as own:
        client = connect(own, own.hosts[0])
        client.exec_command("sleep 300")
        started = [h.pid for h in own.hosts]
        spawned = own.session_pids("fleet1")
        assert spawned
        assert set(started) <= set(processes_matching(str(workdir)))
    client.close()
    assert not any(pid_alive(pid) for pid in [*started, *spawned])
    assert processes_matching(str(workdir)) == []
    assert all(h.pid == 0 for h in own.hosts)


def test_write_inventory(fleet: SshdFleet, tmp_path: Path) -> None:
    path = fleet.write_inventory(tmp_path / "two.yaml", names=["fleet2", "fleet3"], procs=2)
    document = yaml.safe_load(path.read_text())
    assert document["defaults"] == {
        "user": fleet.user,
        "identity_file": str(fleet.client_key),
        "procs": 2,
    }
    assert document["hosts"] == [
        {"name": h.name, "address": h.address, "port": h.port} for h in fleet.hosts[1:]
    ]


def test_fleet_inventory_lists_every_host(fleet: SshdFleet, fleet_inventory: Path) -> None:
    hosts = yaml.safe_load(fleet_inventory.read_text())["hosts"]
    assert [h["name"] for h in hosts] == [h.name for h in fleet.hosts]


def test_user_ssh_directory_is_hidden() -> None:
    assert not (Path.home() / ".ssh").exists()
    assert "SSH_AUTH_SOCK" not in os.environ

"""What ssh_config resolved is honoured on the real fleet (paramiko client; StrictHostKeyChecking
no over both clients): known-hosts files, StrictHostKeyChecking, IdentityFile/IdentitiesOnly,
ProxyCommand through the shell; and the known_hosts markers and misleading errors of issue 18
(items 16 and 17)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from antnest.testing import SshdFleet
from plugins.cli import HELLO_WORLD, JOBS, RunCli
from plugins.fleet import Agent, known_hosts_line, ssh_config_copy, with_known_hosts
from plugins.tools import ssh_binary

RELAY = """\
import os, socket, sys, threading
assert len(sys.argv) == 3, sys.argv   # a shell ran us: the pipe is not our argument
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)
threading.Thread(target=up, daemon=True).start()
while True:
    data = conn.recv(65536)
    if not data:
        break
    os.write(1, data)
"""


def run(run_cli: RunCli, config: Path, *extra: str, hosts: str = "fleet1"):
    return run_cli("run", "-H", hosts, "-F", config, *extra, JOBS / "reverse.py")


def test_user_known_hosts_file_from_ssh_config_is_used(fleet: SshdFleet, run_cli,
                                                       fresh_home: Path) -> None:
    """No --known-hosts: the fleet's ssh_config names its own known_hosts, and that is enough."""
    result = run(run_cli, fleet.ssh_config, hosts="fleet1,fleet2")
    assert (result.returncode, result.stdout) == (0, HELLO_WORLD), result.stderr


def test_unknown_key_advice_names_the_user_known_hosts_file(fleet: SshdFleet, run_cli,
                                                            tmp_path: Path) -> None:
    config, empty = with_known_hosts(fleet, tmp_path)
    result = run(run_cli, config)
    assert result.returncode == 3, result.stderr
    assert f"add it to {empty}" in result.stderr
    assert fleet.host("fleet1").fingerprint in result.stderr
    assert "Traceback" not in result.stderr


def test_accept_new_from_ssh_config_records_in_the_user_known_hosts_file(
        fleet: SshdFleet, run_cli, tmp_path: Path) -> None:
    config, empty = with_known_hosts(fleet, tmp_path, StrictHostKeyChecking="accept-new")
    result = run(run_cli, config)
    assert (result.returncode, result.stdout) == (0, HELLO_WORLD), result.stderr
    host = fleet.host("fleet1")
    assert empty.read_text().startswith(f"[{host.address}]:{host.port} ")


@pytest.mark.parametrize("client", ["paramiko", "openssh"])
def test_strict_host_key_checking_no_is_refused_unless_opted_in(fleet: SshdFleet, run_cli,
                                                                tmp_path: Path,
                                                                client: str) -> None:
    """The same for both clients: refused without the flag; with it an unknown key is
    accepted with a warning and not recorded, and a changed key is still refused."""
    if client == "openssh":
        ssh_binary()
    config, empty = with_known_hosts(fleet, tmp_path, StrictHostKeyChecking="no")
    refused = run(run_cli, config, "--ssh-client", client)
    assert refused.returncode == 3, refused.stderr
    assert "StrictHostKeyChecking no" in refused.stderr
    assert "--allow-unchecked-host-keys" in refused.stderr
    allowed = run(run_cli, config, "--ssh-client", client, "--allow-unchecked-host-keys")
    assert (allowed.returncode, allowed.stdout) == (0, HELLO_WORLD), allowed.stderr
    assert "NOT checked" in allowed.stderr
    assert empty.read_text() == ""   # nothing recorded

    host = fleet.host("fleet1")
    other_key = known_hosts_line(fleet, "fleet2").split(" ", 1)[1]
    (tmp_path / "changed").mkdir()   # fleet1's name with another host's key
    config, changed = with_known_hosts(fleet, tmp_path / "changed",
                                       f"[{host.address}]:{host.port} {other_key}",
                                       StrictHostKeyChecking="no")
    before = changed.read_text()
    refused = run(run_cli, config, "--ssh-client", client, "--allow-unchecked-host-keys")
    assert refused.returncode == 3, refused.stderr
    assert "CHANGED" in refused.stderr or "changed" in refused.stderr, refused.stderr
    assert changed.read_text() == before


def test_identity_file_set_means_the_default_keys_are_not_tried(fleet: SshdFleet, run_cli,
                                                                tmp_path: Path,
                                                                fresh_home: Path,
                                                                stranger_key: Path) -> None:
    """As ssh: with an IdentityFile named, ~/.ssh/id_* are not offered (here the default key
    is the authorised one, the named key is not)."""
    dot_ssh = fresh_home / ".ssh"
    dot_ssh.mkdir(mode=0o700)
    shutil.copy(fleet.client_key, dot_ssh / "id_ed25519")
    (dot_ssh / "id_ed25519").chmod(0o600)
    config = ssh_config_copy(fleet, tmp_path / "config", IdentityFile=str(stranger_key))
    result = run(run_cli, config)
    assert result.returncode == 3, result.stderr
    assert "authentication failed" in result.stderr
    assert str(dot_ssh / "id_ed25519") not in result.stderr.split("keys offered:")[-1]


def test_identities_only_leaves_the_agent_keys_out(fleet: SshdFleet, run_cli: RunCli,
                                                   tmp_path: Path, stranger_key: Path,
                                                   ssh_agent: Agent) -> None:
    ssh_agent.add(fleet.client_key)   # the authorised key, only in the agent
    config = ssh_config_copy(fleet, tmp_path / "config", IdentityFile=str(stranger_key))
    argv = ["run", "-H", "fleet1", "-F", config, JOBS / "reverse.py"]
    only = run_cli(*argv, env=ssh_agent.env(), timeout=120)
    assert only.returncode == 3, only.stderr   # IdentitiesOnly yes (the fleet's config)
    ssh_config_copy(fleet, config, IdentityFile=str(stranger_key), IdentitiesOnly="no")
    agent = run_cli(*argv, env=ssh_agent.env(), timeout=120)
    assert (agent.returncode, agent.stdout) == (0, HELLO_WORLD), agent.stderr


def test_proxy_command_runs_through_the_shell(fleet: SshdFleet, run_cli, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    monkeypatch.setenv("ANTNEST_TEST_RELAY", str(relay))
    config = ssh_config_copy(fleet, tmp_path / "config")
    config.write_text(config.read_text().replace(
        "Host fleet1\n",
        f'Host fleet1\n    ProxyCommand {sys.executable} "$ANTNEST_TEST_RELAY" %h %p '
        "2>/dev/null | cat\n"))
    result = run(run_cli, config)
    assert (result.returncode, result.stdout) == (0, HELLO_WORLD), result.stderr


# --------------------------------------------------------------------------- issue 18, item 16

def test_revoked_host_key_is_refused_with_a_clear_message(fleet: SshdFleet, run_cli,
                                                          tmp_path: Path) -> None:
    config, _ = with_known_hosts(fleet, tmp_path, "@revoked " + known_hosts_line(fleet, "fleet1"),
                                 keep=True)
    result = run(run_cli, config)
    assert result.returncode == 3, result.stderr
    assert "@revoked" in result.stderr and fleet.host("fleet1").fingerprint in result.stderr
    assert "Traceback" not in result.stderr and "every runner was lost" not in result.stderr
    check = run_cli("check", "-H", "fleet1", "-F", config)
    assert "host key revoked" in check.stdout, check.stdout + check.stderr


def test_revoked_key_of_another_host_does_not_matter(fleet: SshdFleet, run_cli,
                                                     tmp_path: Path) -> None:
    line = known_hosts_line(fleet, "fleet1").split(" ", 1)[1]
    config, _ = with_known_hosts(fleet, tmp_path, f"@revoked [elsewhere]:22 {line}", keep=True)
    result = run(run_cli, config)
    assert (result.returncode, result.stdout) == (0, HELLO_WORLD), result.stderr


def test_cert_authority_line_is_skipped_with_one_warning(fleet: SshdFleet, run_cli,
                                                         tmp_path: Path) -> None:
    ca = known_hosts_line(fleet, "fleet2").split(" ", 1)[1]
    config, _ = with_known_hosts(fleet, tmp_path, f"@cert-authority *.example {ca}",
                                 f"@cert-authority 127.0.0.* {ca}", keep=True)
    result = run(run_cli, config, hosts="fleet1,fleet2")
    assert (result.returncode, result.stdout) == (0, HELLO_WORLD), result.stderr
    assert result.stderr.count("@cert-authority lines are skipped") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_wildcard_known_hosts_patterns_match_as_in_openssh(fleet: SshdFleet, run_cli,
                                                           tmp_path: Path) -> None:
    host = fleet.host("fleet1")
    blob = known_hosts_line(fleet, "fleet1").split(" ", 1)[1]
    config, _ = with_known_hosts(fleet, tmp_path, f"[127.0.0.*]:{host.port},!nomatch {blob}")
    result = run(run_cli, config)
    assert (result.returncode, result.stdout) == (0, HELLO_WORLD), result.stderr


# --------------------------------------------------------------------------- issue 18, item 17

def test_missing_identity_file_is_named(fleet: SshdFleet, run_cli, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_key"
    config = ssh_config_copy(fleet, tmp_path / "config", IdentityFile=str(missing))
    result = run(run_cli, config)
    assert result.returncode == 3, result.stderr
    assert f"identity file {missing} skipped" in result.stderr
    assert "No such file or directory" in result.stderr.split("skipped:")[1]
    assert "cannot connect" not in result.stderr
    assert "authentication failed" in result.stderr


def test_private_key_readable_by_others_is_refused_as_ssh_does(fleet: SshdFleet, run_cli,
                                                               tmp_path: Path) -> None:
    key = tmp_path / "open_key"
    shutil.copy(fleet.client_key, key)
    key.chmod(0o644)
    config = ssh_config_copy(fleet, tmp_path / "config", IdentityFile=str(key))
    result = run(run_cli, config)
    assert result.returncode == 3, result.stderr
    assert "permissions 644 are too open" in result.stderr
    assert f"chmod 600 {key}" in result.stderr


def test_bad_host_in_the_host_list_is_a_usage_error(run_cli) -> None:
    result = run_cli("run", "-H", "fleet1,:::", JOBS / "reverse.py")
    assert result.returncode == 2, result.stderr
    assert "':::' is neither a host name nor an IPv6 address" in result.stderr

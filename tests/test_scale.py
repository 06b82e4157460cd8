"""Failures that scale alone causes: descriptors, stuck hosts, library log noise."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from antnest.errors import ConnectError
from antnest.host import Host
from antnest.limits import fd_limit_advice, raise_open_files_limit
from plugins.cli import REPO
from plugins.fleet import keygen


def test_open_files_limit_is_raised_to_the_hard_limit_in_a_fresh_process() -> None:
    code = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "from antnest.limits import raise_open_files_limit\n"
        "now = raise_open_files_limit()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], now[0], hard)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=60, check=True).stdout.split()
    soft_after, reported, hard = (int(x) for x in out)
    assert soft_after == reported
    assert soft_after > 64
    assert soft_after == (hard if hard != -1 and hard < (1 << 20) else soft_after)


def test_raising_never_lowers_the_limit() -> None:
    import resource

    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    raise_open_files_limit(wanted=8)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= before[0]


def test_running_out_of_descriptors_is_a_host_error_saying_what_to_raise(mocker) -> None:
    """A local limit, not the host's fault: the message names the limit and the fix."""
    from antnest.transport import SshOptions
    from antnest.transport import ssh

    mocker.patch.object(ssh, "_tcp", side_effect=OSError(errno.EMFILE, "Too many open files"))
    host = Host(name="web7", address="127.0.0.1", port=22)
    with pytest.raises(ConnectError) as caught:
        ssh.SshConnection(host, SshOptions(connect_timeout=2.0)).connect()
    message = str(caught.value)
    assert "web7" in message and "file descriptors" in message
    assert "ulimit -Hn" in message
    assert "ulimit -Hn" in fd_limit_advice()


def test_api_user_without_logging_gets_no_tracebacks_on_stderr(garbage_banner_server,
                                                               tmp_path: Path) -> None:
    address, port = garbage_banner_server
    code = (
        "import antnest, sys\n"
        "try:\n"
        f"    antnest.Cluster(hosts='{address}:{port}', connect_timeout=2, "
        "accept_new_host_keys=True)\n"
        "except antnest.errors.NoHostsError as exc:\n"
        "    print('no hosts:', exc)\n"
    )
    env = dict(os.environ, HOME=str(tmp_path))
    env.pop("SSH_AUTH_SOCK", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=90)
    assert "no hosts:" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ""


def test_an_unexpected_error_while_starting_fails_that_host_instead_of_leaving_it_connecting(
        fleet, fleet_inventory: Path, mocker) -> None:
    """Seen at 128 hosts: `KeyError: 'getpwuid(): uid not found'` inside a start left the host
    "connecting" forever and wait_for_hosts() returned anyway."""
    import antnest
    from antnest.worker import HostGroup

    original = HostGroup.start_runner

    def flaky(group: HostGroup, label: str):
        if group.name == "fleet2":
            raise KeyError("getpwuid(): uid not found: 4242")
        return original(group, label)

    mocker.patch.object(HostGroup, "start_runner", flaky)
    with antnest.Cluster(fleet_inventory, known_hosts=[fleet.known_hosts], procs=1) as cluster:
        states = {s.name: s for s in cluster.wait_for_hosts(timeout=60)}
        assert states["fleet2"].state == "failed"
        assert "getpwuid" in (states["fleet2"].error or "")
        assert {states["fleet1"].state, states["fleet3"].state} == {"connected"}
        assert sorted(cluster.map(abs, [-1, -2, -3], timeout=60)) == [1, 2, 3]


def test_handshake_window_grows_on_success_halves_on_drops_and_keeps_its_cap() -> None:
    from antnest.transport.handshakes import START, HandshakeWindow

    window = HandshakeWindow(cap=20)
    assert window.size == START < 10          # below sshd's MaxStartups start
    for _ in range(30):
        window.acquire(timeout=1)
        window.release("ok")
    assert window.size == 20                  # grew, up to the cap
    window.acquire(timeout=1)
    window.release("dropped")
    assert window.size == 10
    window.set_cap(3)                         # --forks 3
    assert window.size == 3
    for _ in range(3):
        window.acquire(timeout=1)
    with pytest.raises(TimeoutError):         # a full window: the wait is bounded
        window.acquire(timeout=0.05)
    window.release("neutral")
    assert window.acquire(timeout=1) >= 0.0   # and frees when a holder finishes



def _one_block_per_host(path: Path, count: int) -> Path:
    path.write_text("Host *.corp\n    User ops\n" + "".join(
        f"Host n{i} alias{i}\n    HostName 10.1.{i // 250}.{i % 250}\n    Port {2000 + i % 100}\n"
        for i in range(count)) + "Host *\n    ServerAliveInterval 7\n")
    return path


def test_ssh_config_lookups_are_linear_in_hosts(tmp_path: Path, mocker) -> None:
    """One Host block per host (what inventory generators write): each lookup visits the
    blocks naming it plus the wildcard ones, never every block (that was N² at start-up)."""
    from antnest.inventory import load_hosts
    from antnest.inventory import ssh_options

    count = 600
    config = _one_block_per_host(tmp_path / "ssh_config", count)
    matched = mocker.spy(ssh_options, "_pattern_list")
    mocker.patch.dict(os.environ, {"ANTNEST_SSH_CONFIG_READER": "builtin"})
    hosts = load_hosts(host_list=",".join(f"n{i}" for i in range(count)), ssh_config=config)
    assert [h.address for h in hosts[:3]] == ["10.1.0.0", "10.1.0.1", "10.1.0.2"]
    assert hosts[257].port == 2057 and hosts[257].server_alive_interval == 7.0
    assert matched.call_count <= 4 * count


def test_large_inventories_resolve_without_a_process_per_host(tmp_path: Path, mocker) -> None:
    """ssh -G is one process per name: above a few dozen names the reader (proven equal to
    ssh -G by the parity corpus) answers instead, unless ssh -G is asked for by name."""
    from antnest.inventory import load_hosts
    from antnest.inventory import ssh_options

    config = _one_block_per_host(tmp_path / "ssh_config", 300)
    spawned = mocker.spy(ssh_options, "ssh_g")
    mocker.patch.dict(os.environ, {}, clear=False)
    os.environ.pop("ANTNEST_SSH_CONFIG_READER", None)
    hosts = load_hosts(host_list=",".join(f"alias{i}" for i in range(300)), ssh_config=config)
    assert spawned.call_count == 0
    assert hosts[299].address == "10.1.1.49"


def test_known_hosts_gives_each_host_only_the_lines_that_can_match_it(tmp_path: Path) -> None:
    """Each host's lookup visits its own lines (plain name), every hashed and every pattern
    line, in file order; paramiko's visits the whole file, N² for N hosts."""
    import paramiko

    from antnest.transport import known_hosts

    key = paramiko.Ed25519Key.from_private_key_file(str(keygen(tmp_path / "k")))
    other = paramiko.Ed25519Key.from_private_key_file(str(keygen(tmp_path / "o")))
    hashed = paramiko.HostKeys.hash_host("[10.0.0.7]:2222")
    lines = [f"[10.0.0.{i}]:2222 ssh-ed25519 {other.get_base64()}" for i in range(300)]
    lines += [f"{hashed} ssh-ed25519 {key.get_base64()}",
              f"*.example.org ssh-ed25519 {key.get_base64()}"]
    (tmp_path / "known_hosts").write_text("\n".join(lines) + "\n")
    host = Host(name="h", address="10.0.0.7", port=2222)
    known = known_hosts.load(host, (str(tmp_path / "known_hosts"),))
    view = known.for_host("[10.0.0.7]:2222")
    assert len(view._entries) == 3
    assert view.lookup("[10.0.0.7]:2222")["ssh-ed25519"] == other   # the first line wins
    assert known.for_host("[10.0.0.99]:2222").lookup("[10.0.0.99]:2222") is not None
    assert known.for_host("a.example.org").lookup("a.example.org")["ssh-ed25519"] == key
    assert known.for_host("nowhere").lookup("nowhere") is None


def test_an_identity_file_is_read_once_for_all_hosts(fleet, tmp_path: Path, mocker) -> None:
    """paramiko parses the key file for every host and key type; antnest reads it once."""
    import paramiko

    import antnest

    inventory = fleet.write_inventory(tmp_path / "hosts.yaml", procs=1)
    parsed = mocker.spy(paramiko.SSHClient, "_key_from_filepath")   # parses the file
    with antnest.Cluster(str(inventory), known_hosts=[str(fleet.known_hosts)]) as cluster:
        states = cluster.wait_for_hosts(timeout=60)
    assert [s.state for s in states] == ["connected"] * len(fleet.hosts)
    tried = [call.args[-2].__name__ for call in parsed.call_args_list]   # the key classes
    assert len(tried) <= 3, tried   # RSA, ECDSA, Ed25519 once, not once per host

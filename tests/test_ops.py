"""Issue 3 end to end over the real sshd fleet: inventories as ops people have them (native,
Ansible YAML, Ansible INI, ssh_config), --limit, a two-hop ProxyJump, an ssh-agent key,
`antnest check` with broken hosts, and 32 loopback hosts at once.

"Which hosts did the work" is read from the runners themselves: every fleet host gives its
sessions a HOME of its own (FleetHost.home), and the gate job below returns it. The gate makes
each taskunit wait (at most GATE_SECONDS) until every expected host has started one, so every
selected host gets work however fast the first one is.
"""
from __future__ import annotations

import json
import os
import re
import socket
import struct
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import pytest
import yaml

import antnest
from antnest.testing import SshdFleet
from plugins.cli import HELLO_WORLD, JOBS, RunCli
from plugins.fleet import Agent, Blackhole, free_port
from plugins.processes import remote_runners

GATE_SECONDS = 20.0
LINES = [f"line{i:02d}" for i in range(24)]

pytestmark = pytest.mark.usefixtures("fleet_leftovers")


# --- helpers -----------------------------------------------------------------------------------


def gate_job(path: Path, expected: int, lines: Sequence[str] = LINES) -> Path:
    """A job whose taskunits each wait for `expected` distinct hosts, then return
    (line reversed, the host's HOME). combine() prints the lines, then the sorted HOMEs."""
    gate = path.with_suffix(".gate")
    gate.mkdir()
    data = "\n".join(lines)
    path.write_text(textwrap.dedent(f"""\
        import os, time

        GATE = {str(gate)!r}
        EXPECTED = {expected}

        def processor(line):
            home = os.environ.get("HOME", "")
            open(os.path.join(GATE, home.strip("/").replace("/", "_") or "nohome"), "a").close()
            deadline = time.time() + {GATE_SECONDS}
            while len(os.listdir(GATE)) < EXPECTED and time.time() < deadline:
                time.sleep(0.01)
            return line[::-1], home

        def combine(results):
            homes = set()
            for reversed_line, home in results:
                print(reversed_line)
                homes.add(home)
            for home in sorted(homes):
                print("HOME", home)

        input_data = {data!r}
        """))
    return path


def gate_output(fleet: SshdFleet, names: Sequence[str], lines: Sequence[str] = LINES) -> str:
    homes = sorted(str(fleet.host(n).home) for n in names)
    return "".join(f"{line[::-1]}\n" for line in lines) + "".join(f"HOME {h}\n" for h in homes)


def listed(run_cli: RunCli, inventory: Path, *args: str) -> List[dict]:
    result = run_cli("inventory", "-i", inventory, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def without_source(rows: List[dict]) -> List[dict]:
    return sorted(({k: v for k, v in row.items() if k != "source"} for row in rows),
                  key=lambda row: row["name"])


# Inventories of the session fleet in the three syntaxes, with the same groups:
#   odd = fleet1, fleet3; even = fleet2; workers = odd + even (children in the Ansible forms).


def native_inventory(fleet: SshdFleet, path: Path) -> Path:
    hosts = fleet.hosts
    path.write_text(yaml.safe_dump({
        "defaults": {"user": fleet.user, "identity_file": str(fleet.client_key), "procs": 1},
        "groups": {"odd": ["fleet1", "fleet3"], "even": ["fleet2"],
                   "workers": ["fleet1", "fleet2", "fleet3"]},
        "hosts": [{"name": h.name, "address": h.address, "port": h.port} for h in hosts],
    }, sort_keys=False))
    return path


def ansible_yaml_inventory(fleet: SshdFleet, path: Path,
                           procs: Optional[Dict[str, dict]] = None) -> Path:
    """`procs` adds vars: {"all": {...}, "workers": {...}, "odd": {...}, "fleet3": {...}}."""
    procs = procs or {}

    def host(name: str) -> dict:
        h = fleet.host(name)
        return {"ansible_host": h.address, "ansible_port": h.port, **procs.get(name, {})}

    def group(body: dict, name: str) -> dict:
        return {**({"vars": procs[name]} if name in procs else {}), **body}

    path.write_text(yaml.safe_dump({"all": {
        "vars": {"ansible_user": fleet.user, "ansible_ssh_private_key_file": str(fleet.client_key),
                 "antnest_procs": 1, **procs.get("all", {})},
        "children": {"workers": group({"children": {
            "odd": group({"hosts": {"fleet1": host("fleet1"), "fleet3": host("fleet3")}}, "odd"),
            "even": group({"hosts": {"fleet2": host("fleet2")}}, "even"),
        }}, "workers")},
    }}, sort_keys=False))
    return path


def ansible_ini_inventory(fleet: SshdFleet, path: Path,
                          procs: Optional[Dict[str, dict]] = None) -> Path:
    procs = procs or {}

    def line(name: str) -> str:
        h = fleet.host(name)
        extra = "".join(f" {k}={v}" for k, v in procs.get(name, {}).items())
        return f"{name} ansible_host={h.address} ansible_port={h.port}{extra}\n"

    def group_vars(name: str) -> str:
        if name not in procs:
            return ""
        return f"\n[{name}:vars]\n" + "".join(f"{k}={v}\n" for k, v in procs[name].items())

    all_vars = {"ansible_user": fleet.user, "ansible_ssh_private_key_file": str(fleet.client_key),
                "antnest_procs": 1, **procs.get("all", {})}
    path.write_text(
        "# the session fleet, as Ansible would have it\n"
        "[odd]\n" + line("fleet1") + line("fleet3") +
        "\n[even]\n" + line("fleet2") +
        "\n[workers:children]\nodd\neven\n" +
        "\n[all:vars]\n" + "".join(f"{k}={v}\n" for k, v in all_vars.items()) +
        group_vars("workers") + group_vars("odd"))
    return path


def inventory_name(kind: str) -> str:
    """As Ansible reads them: its YAML plugin takes only .yml/.yaml/.json names."""
    return f"{kind}.ini" if kind == "ansible-ini" else f"{kind}.yaml"


INVENTORIES = {"native": native_inventory, "ansible-yaml": ansible_yaml_inventory,
               "ansible-ini": ansible_ini_inventory}


# --- one fleet, three inventory syntaxes -----------------------------------------------------


def test_native_ansible_yaml_and_ini_inventories_are_the_same_fleet(
        fleet: SshdFleet, tmp_path: Path, run_cli: RunCli) -> None:
    described: Dict[str, List[dict]] = {}
    outputs: Dict[str, str] = {}
    for kind, write in INVENTORIES.items():
        inventory = write(fleet, tmp_path / inventory_name(kind))
        rows = listed(run_cli, inventory)
        assert {row["source"] for row in rows} == {str(inventory)}
        described[kind] = without_source(rows)
        job = gate_job(tmp_path / f"job-{kind}.py", expected=3)
        result = run_cli("run", "-i", inventory, "--known-hosts", fleet.known_hosts, job)
        assert result.returncode == 0, f"{kind}: {result.stderr}"
        outputs[kind] = result.stdout

    native = described["native"]
    assert [(r["name"], r["address"], r["port"], r["user"], r["identity_files"], r["procs"],
             r["groups"]) for r in native] == [
        (h.name, h.address, h.port, fleet.user, [str(fleet.client_key)], 1,
         ["all", "odd" if h.name != "fleet2" else "even", "workers"]) for h in fleet.hosts]
    assert described["ansible-yaml"] == native
    assert described["ansible-ini"] == native

    expected = gate_output(fleet, ["fleet1", "fleet2", "fleet3"])
    assert outputs == {kind: expected for kind in INVENTORIES}


# --- --limit ------------------------------------------------------------------------------------

LIMITS = [
    ("odd", ["fleet1", "fleet3"]),                    # a group
    ("~fleet[12]", ["fleet1", "fleet2"]),             # a regex (fleet[12]: group fleet's 13th)
    ("fleet1:even", ["fleet1", "fleet2"]),            # union
    ("odd,fleet2", ["fleet1", "fleet2", "fleet3"]),   # union, comma form
    ("odd:&~fleet[23]", ["fleet3"]),                  # intersection
    ("workers[0]", ["fleet1"]),                       # Ansible's 0-based subscript
    ("workers:!fleet1", ["fleet2", "fleet3"]),        # exclusion
    ("workers:&odd:!fleet3", ["fleet1"]),             # all three at once
]


@pytest.mark.parametrize("pattern,names", LIMITS, ids=[p for p, _ in LIMITS])
def test_limit_selects_the_hosts_that_run_the_work(
        fleet: SshdFleet, tmp_path: Path, run_cli: RunCli, pattern: str,
        names: List[str]) -> None:
    inventory = ansible_ini_inventory(fleet, tmp_path / "hosts.ini")
    assert sorted(row["name"] for row in listed(run_cli, inventory, "-l", pattern)) == names

    job = gate_job(tmp_path / "job.py", expected=len(names))
    report = tmp_path / "report.json"
    result = run_cli("run", "-i", inventory, "-l", pattern, "--known-hosts",
                 fleet.known_hosts, "--report", report, job)
    assert (result.returncode, result.stdout) == (0, gate_output(fleet, names)), result.stderr
    assert sorted(h["name"] for h in json.loads(report.read_text())["hosts"]) == names


def test_limit_matching_nothing_is_exit_2_naming_the_pattern(
        fleet: SshdFleet, tmp_path: Path, run_cli: RunCli) -> None:
    inventory = ansible_ini_inventory(fleet, tmp_path / "hosts.ini")
    result = run_cli("run", "-i", inventory, "-l", "odd:&even", "--known-hosts",
                 fleet.known_hosts, JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert "odd:&even" in result.stderr


# --- group vars decide the runner count --------------------------------------------------------

PROCS_VARS = {"all": {"antnest_procs": 1}, "workers": {"antnest_procs": 3},
              "odd": {"antnest_procs": 2}, "fleet3": {"antnest_procs": 4}}
EXPECTED_PROCS = {"fleet1": 2,   # odd (nearer) beats workers and all
                  "fleet2": 3,   # in even, which sets nothing: inherited from its parent, workers
                  "fleet3": 4}   # host vars beat every group


@pytest.mark.parametrize("kind", ["ansible-yaml", "ansible-ini"])
def test_group_vars_inheritance_sets_the_runners_per_host(
        fleet: SshdFleet, tmp_path: Path, run_cli: RunCli, kind: str) -> None:
    inventory = INVENTORIES[kind](fleet, tmp_path / inventory_name(kind), procs=PROCS_VARS)
    rows = listed(run_cli, inventory)
    assert {row["name"]: row["procs"] for row in rows} == EXPECTED_PROCS

    with antnest.Cluster(inventory, known_hosts=[fleet.known_hosts]) as cluster:
        hosts = cluster.wait_for_hosts(timeout=60)
        assert {h.name: (h.state, h.procs) for h in hosts} == {
            name: ("connected", procs) for name, procs in EXPECTED_PROCS.items()}
        assert {name: len(remote_runners(fleet, name)) for name in EXPECTED_PROCS} == \
            EXPECTED_PROCS
        assert sorted(cluster.map(abs, range(-50, 0))) == list(range(1, 51))


# --- ssh_config-only hosts -------------------------------------------------------------------


def test_hosts_known_only_to_ssh_config(fleet: SshdFleet, tmp_path: Path,
                                        run_cli: RunCli) -> None:
    fleet1 = fleet.host("fleet1")
    result = run_cli("inventory", "-H", "fleet1", "--ssh-config", fleet.ssh_config,
                 "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert (row["name"], row["address"], row["port"], row["user"], row["identity_files"]) == (
        "fleet1", fleet1.address, fleet1.port, fleet.user, [str(fleet.client_key)])

    job = gate_job(tmp_path / "job.py", expected=1)
    result = run_cli("run", "-H", "fleet1", "--ssh-config", fleet.ssh_config,
                 "--known-hosts", fleet.known_hosts, job)
    assert (result.returncode, result.stdout) == (0, gate_output(fleet, ["fleet1"])), \
        result.stderr

    # An inventory of bare names: everything else comes from ssh_config (-F).
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"hosts": ["fleet2", "fleet3"]}))
    job = gate_job(tmp_path / "job2.py", expected=2)
    result = run_cli("run", "-i", bare, "-F", fleet.ssh_config, "--procs", "1",
                 "--known-hosts", fleet.known_hosts, job)
    assert (result.returncode, result.stdout) == (0, gate_output(fleet, ["fleet2", "fleet3"])), \
        result.stderr


# --- a two-hop ProxyJump -----------------------------------------------------------------------
# On loopback every outgoing TCP connection leaves from 127.0.0.1, whichever daemon opens it,
# so SSH_CONNECTION's client *address* cannot tell the hops apart. Its client *port* can: the
# socket bound to it belongs to one process, and that process must be one of fleet2's sessions.


def ssh_connection(_: object) -> str:
    return os.environ["SSH_CONNECTION"]


def _tcp_connections() -> List[Tuple[Tuple[str, int], Tuple[str, int], int]]:
    """Established IPv4 TCP connections: (local, remote, inode)."""
    def endpoint(text: str) -> Tuple[str, int]:
        address, port = text.split(":")
        return socket.inet_ntoa(struct.pack("<I", int(address, 16))), int(port, 16)

    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01":  # ESTABLISHED
            found.append((endpoint(fields[1]), endpoint(fields[2]), int(fields[9])))
    return found


def _socket_owners(inode: int, pids: Sequence[int]) -> Set[int]:
    owners = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    owners.add(pid)
            except OSError:
                continue
    return owners


def _owners_of_connections_to(address: str, port: int, pids: Sequence[int]) -> Set[int]:
    owners: Set[int] = set()
    for _, remote, inode in _tcp_connections():
        if remote == (address, port):
            owners |= _socket_owners(inode, pids)
    return owners


def two_hop_ssh_config(fleet: SshdFleet, path: Path) -> Path:
    text = fleet.ssh_config.read_text()
    assert "Host fleet3\n" in text
    path.write_text(text.replace("Host fleet3\n", "Host fleet3\n    ProxyJump fleet1,fleet2\n"))
    return path


def test_two_hop_proxy_jump_cli(fleet: SshdFleet, tmp_path: Path, run_cli: RunCli) -> None:
    config = two_hop_ssh_config(fleet, tmp_path / "ssh_config")
    result = run_cli("inventory", "-H", "fleet3", "-F", config, "--json")
    assert result.returncode == 0, result.stderr
    hops = [fleet.host("fleet1"), fleet.host("fleet2")]
    assert json.loads(result.stdout)[0]["jump"] == [
        f"{fleet.user}@{h.address}:{h.port}" for h in hops]

    result = run_cli("run", "-H", "fleet3", "-F", config, "--known-hosts",
                 fleet.known_hosts, JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (0, HELLO_WORLD), result.stderr


def test_two_hop_proxy_jump_reaches_the_target_from_the_second_hop(
        fleet: SshdFleet, tmp_path: Path, fresh_home: Path) -> None:
    config = two_hop_ssh_config(fleet, tmp_path / "ssh_config")
    fleet1, fleet2, fleet3 = (fleet.host(n) for n in ("fleet1", "fleet2", "fleet3"))
    with antnest.Cluster(hosts="fleet3", ssh_config=config, known_hosts=[fleet.known_hosts],
                         procs=1) as cluster:
        seen = set(cluster.map(ssh_connection, range(4)))
        assert len(seen) == 1, seen
        client_ip, client_port, server_ip, server_port = seen.pop().split()
        assert (server_ip, int(server_port)) == (fleet3.address, fleet3.port)

        # The TCP connection into fleet3 is fleet2's: its client end belongs to a fleet2 session.
        inodes = [inode for local, remote, inode in _tcp_connections()
                  if local == (client_ip, int(client_port))
                  and remote == (fleet3.address, fleet3.port)]
        assert len(inodes) == 1, inodes
        everyone = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        owners = _socket_owners(inodes[0], everyone)
        assert owners and owners <= set(fleet.session_pids("fleet2")), (
            f"fleet3's client {client_ip}:{client_port} is held by {owners}, not by fleet2's "
            f"sessions {fleet.session_pids('fleet2')}")
        # ... fleet2 is reached from fleet1, and the master dials fleet1 only.
        assert _owners_of_connections_to(fleet2.address, fleet2.port,
                                          fleet.session_pids("fleet1")), \
            "no connection from fleet1's sessions to fleet2"
        me = [os.getpid()]
        assert _owners_of_connections_to(fleet1.address, fleet1.port, me) == {os.getpid()}
        assert not _owners_of_connections_to(fleet2.address, fleet2.port, me)
        assert not _owners_of_connections_to(fleet3.address, fleet3.port, me)
        assert [h.name for h in cluster.hosts] == ["fleet3"]


# --- ssh-agent -------------------------------------------------------------------------------


def test_key_held_by_ssh_agent(fleet: SshdFleet, tmp_path: Path, fresh_home: Path,
                               ssh_agent: Agent, run_cli: RunCli) -> None:
    ssh_agent.add(fleet.client_key)
    assert "antnest-fleet-client" in ssh_agent.listed()
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(yaml.safe_dump({
        "defaults": {"user": fleet.user, "procs": 1},
        "hosts": [{"name": h.name, "address": h.address, "port": h.port} for h in fleet.hosts],
    }))
    assert not any(fresh_home.iterdir()), "HOME must be empty: no ~/.ssh key to fall back on"
    assert all(row["identity_files"] == [] for row in listed(run_cli, inventory))

    job = gate_job(tmp_path / "job.py", expected=3)
    result = run_cli("run", "-i", inventory, "--known-hosts", fleet.known_hosts, job,
                 env=ssh_agent.env())
    assert (result.returncode, result.stdout) == (0, gate_output(fleet, ["fleet1", "fleet2",
                                                                         "fleet3"])), result.stderr

    # The same run without the agent: no key at all, so the agent is what made it work.
    result = run_cli("run", "-i", inventory, "--known-hosts", fleet.known_hosts,
                 JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (3, ""), result.stderr


# --- antnest check -----------------------------------------------------------------------------


def broken_fleet(fleet: SshdFleet, tmp_path: Path) -> Tuple[Path, Path]:
    """An inventory with two good hosts and three broken ones, and the known_hosts to use.

    `badkey` is fleet3, whose known_hosts line carries fleet1's key (a changed host key).
    """
    fleet1, fleet2, fleet3 = (fleet.host(n) for n in ("fleet1", "fleet2", "fleet3"))
    fleet1_key = Path(f"{fleet1.host_key_path}.pub").read_text().split()[:2]
    lines = [line for line in fleet.known_hosts.read_text().splitlines()
             if not line.startswith(f"[{fleet3.address}]:{fleet3.port} ")]
    lines.append(f"[{fleet3.address}]:{fleet3.port} {' '.join(fleet1_key)}")
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(lines) + "\n")
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(yaml.safe_dump({
        "defaults": {"user": fleet.user, "identity_file": str(fleet.client_key), "procs": 1},
        "hosts": [
            {"name": "fleet1", "address": fleet1.address, "port": fleet1.port},
            {"name": "down", "address": "127.0.0.1", "port": free_port()},
            {"name": "badkey", "address": fleet3.address, "port": fleet3.port},
            {"name": "baduser", "address": fleet1.address, "port": fleet1.port,
             "user": "antnest-no-such-user"},
            {"name": "fleet2", "address": fleet2.address, "port": fleet2.port},
        ],
    }, sort_keys=False))
    return inventory, known


def table_rows(stdout: str) -> Dict[str, List[str]]:
    """`antnest check`'s table, by host: columns are separated by two spaces or more."""
    lines = stdout.splitlines()
    assert lines and lines[0].split()[:3] == ["HOST", "ADDRESS", "STATUS"], stdout
    return {cells[0]: cells for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[1:])}


EXPECTED_STATUS = {"fleet1": {"ok"}, "down": {"refused", "unreachable"},   # inventory order
                   "badkey": {"host key changed"}, "baduser": {"auth failed"},
                   "fleet2": {"ok"}}


def test_check_reports_each_broken_host(fleet: SshdFleet, tmp_path: Path,
                                        run_cli: RunCli) -> None:
    inventory, known = broken_fleet(fleet, tmp_path)
    result = run_cli("check", "-i", inventory, "--known-hosts", known,
                 "--connect-timeout", "5")
    assert result.returncode == 3, result.stdout + result.stderr
    rows = table_rows(result.stdout)
    assert list(rows) == list(EXPECTED_STATUS)
    for name, statuses in EXPECTED_STATUS.items():
        assert rows[name][2] in statuses, (name, rows[name])
    version = ".".join(map(str, sys.version_info[:2]))
    for name in ("fleet1", "fleet2"):
        _, address, _, python, cpus, code, cloudpickle, rtt = rows[name][:8]
        assert code == "source+value"  # the fleet's python3 is the master's minor version
        assert address == f"{fleet.host(name).address}:{fleet.host(name).port}"
        assert python.startswith(version + "."), rows[name]
        assert int(cpus) == os.cpu_count()
        assert cloudpickle in ("found", "shipped")
        assert float(rtt) >= 0
    assert fleet.host("fleet3").fingerprint in rows["badkey"][-1]
    assert "antnest-no-such-user" in rows["baduser"][-1]
    assert "Traceback" not in result.stderr


def test_check_json_and_an_unknown_host_key(fleet: SshdFleet, tmp_path: Path,
                                            run_cli: RunCli) -> None:
    inventory, known = broken_fleet(fleet, tmp_path)
    fleet2 = fleet.host("fleet2")
    known.write_text("".join(line + "\n" for line in known.read_text().splitlines()
                             if not line.startswith(f"[{fleet2.address}]:{fleet2.port} ")))
    result = run_cli("check", "-i", inventory, "--known-hosts", known, "--json",
                 "--connect-timeout", "5")
    assert result.returncode == 3, result.stdout + result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    expected = dict(EXPECTED_STATUS, fleet2={"host key unknown"})
    assert {name: row["status"] for name, row in rows.items()}.keys() == expected.keys()
    for name, statuses in expected.items():
        assert rows[name]["status"] in statuses, rows[name]
    assert rows["fleet1"]["error"] is None and rows["fleet1"]["cpus"] == os.cpu_count()
    assert fleet2.fingerprint in rows["fleet2"]["error"]
    assert str(known) in rows["fleet2"]["error"]

    only_good = run_cli("check", "-i", inventory, "-l", "fleet1", "--known-hosts", known,
                    "--json")
    assert only_good.returncode == 0, only_good.stdout + only_good.stderr
    assert [row["status"] for row in json.loads(only_good.stdout)] == ["ok"]


CONNECT_TIMEOUT = 2.0
FEW_SECONDS = 4.0   # interpreter start, one boot and round trip on the good host, scheduling


def test_check_does_not_wait_long_for_a_host_that_never_answers(
        fleet: SshdFleet, tmp_path: Path, run_cli: RunCli, blackhole: Blackhole) -> None:
    fleet1 = fleet.host("fleet1")
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(yaml.safe_dump({
        "defaults": {"user": fleet.user, "identity_file": str(fleet.client_key)},
        "hosts": [{"name": "fleet1", "address": fleet1.address, "port": fleet1.port},
                  {"name": "silent", "address": blackhole.address, "port": blackhole.port}],
    }, sort_keys=False))
    started = time.monotonic()
    result = run_cli("check", "-i", inventory, "--known-hosts", fleet.known_hosts,
                 "--json", "--connect-timeout", str(CONNECT_TIMEOUT), timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stdout + result.stderr
    rows = {row["name"]: row["status"] for row in json.loads(result.stdout)}
    assert rows == {"fleet1": "ok", "silent": "timeout"}
    assert blackhole.accepted, "check never dialled the silent host"
    assert elapsed < CONNECT_TIMEOUT + FEW_SECONDS, (
        f"check took {elapsed:.1f} s with --connect-timeout {CONNECT_TIMEOUT:g}")


# --- 32 hosts at once ---------------------------------------------------------------------------


def test_32_hosts_run_a_job_with_every_host_working(big_fleet: SshdFleet, tmp_path: Path,
                                                   run_cli: RunCli) -> None:
    names = [h.name for h in big_fleet.hosts]
    assert len(names) == 32
    inventory = big_fleet.write_inventory(tmp_path / "hosts.yaml", procs=1)
    lines = [f"item{i:03d}" for i in range(96)]
    job = gate_job(tmp_path / "job.py", expected=32, lines=lines)
    report = tmp_path / "report.json"
    result = run_cli("run", "-i", inventory, "--known-hosts", big_fleet.known_hosts,
                 "--report", report, job, timeout=120)
    assert (result.returncode, result.stdout) == (0, gate_output(big_fleet, names, lines)), \
        result.stderr[-3000:]
    assert "handshake failed" not in result.stderr
    assert "cannot be used" not in result.stderr
    hosts = json.loads(report.read_text())["hosts"]
    assert sorted(h["name"] for h in hosts) == sorted(names)
    assert all(h["error"] is None and h["lost"] == 0 and h["done"] >= 1 for h in hosts), hosts
    assert sum(h["done"] for h in hosts) >= len(lines)


def test_32_hosts_all_connect_through_the_api(big_fleet: SshdFleet, tmp_path: Path,
                                              fresh_home: Path) -> None:
    inventory = big_fleet.write_inventory(tmp_path / "hosts.yaml")
    with antnest.Cluster(inventory, known_hosts=[big_fleet.known_hosts], procs=1) as cluster:
        hosts = cluster.wait_for_hosts(timeout=90)
        assert [h.name for h in hosts] == [h.name for h in big_fleet.hosts]
        problems = {h.name: (h.state, h.procs, h.error) for h in hosts
                    if (h.state, h.procs, h.error) != ("connected", 1, None)}
        assert problems == {}, problems
        assert list(cluster.map(abs, range(-1000, 0))) == list(range(1000, 0, -1))

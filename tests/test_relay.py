"""Relays on the real fleet: one host's runner in relay mode opens the SSH sessions of the
hosts behind it with that host's own ssh, and carries their runners' streams."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, List

import pytest
import yaml

import antnest
from antnest.testing import SshdFleet
from plugins.cli import HELLO_WORLD, JOBS
from plugins.fleet import fleet_args, known_hosts_line, started_fleet
from plugins.processes import GRACE, remember_fleet, runners, wait_until

BEHIND = 16   # hosts behind the relay


@pytest.fixture(scope="module")
def relay_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdFleet]:
    """17 daemons: relay1 in front of 16, one more host reached directly."""
    with started_fleet(tmp_path_factory.mktemp("relayfleet"), count=BEHIND + 2,
                       first_octet=160) as started:
        remember_fleet(started)
        yield started


def _inventory(fleet: SshdFleet, path: Path, relay_all: bool = True) -> Path:
    """fleet1 relays fleet2..fleet17; fleet18 is direct."""
    fleet.write_inventory(path)
    document = yaml.safe_load(path.read_text())
    for entry in document["hosts"][1:BEHIND + 1]:
        entry["relay"] = "fleet1"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _home(_: int) -> str:
    return os.environ["HOME"]


def _sessions(fleet: SshdFleet) -> List[int]:
    return [p for h in fleet.hosts for p in fleet.session_pids(h.name)]


def test_a_relay_in_front_of_16_hosts_carries_their_runners(relay_fleet: SshdFleet,
                                                             tmp_path: Path) -> None:
    inventory = _inventory(relay_fleet, tmp_path / "hosts.yaml")
    with antnest.Cluster(inventory, known_hosts=[relay_fleet.known_hosts], procs=1) as cluster:
        states = cluster.wait_for_hosts(60)
        assert [s.state for s in states] == ["connected"] * (BEHIND + 2), \
            [(s.name, s.state, s.error) for s in states]
        behind = [s for s in states if " via fleet1" in s.address]
        assert len(behind) == BEHIND
        homes = cluster.map(_home, range(40 * (BEHIND + 2)), chunksize=1)
        seen = set(homes)
    assert seen == {str(h.home) for h in relay_fleet.hosts}, "a host behind the relay ran nothing"
    # nothing stays: no relay, no relayed ssh, no runner, on any host
    assert wait_until(lambda: not _sessions(relay_fleet), GRACE), _sessions(relay_fleet)
    assert not runners(homes={str(h.home) for h in relay_fleet.hosts})
    for host in relay_fleet.hosts:   # and nothing written in the hosts' homes
        assert not any(Path(host.home).iterdir()), list(Path(host.home).iterdir())


def test_relay_auto_through_the_cli_gives_the_job_s_output(relay_fleet: SshdFleet,
                                                           tmp_path: Path, run_cli) -> None:
    inventory = relay_fleet.write_inventory(tmp_path / "hosts.yaml")
    done = run_cli("run", *fleet_args(relay_fleet, inventory), "--relay", "auto:6",
                   JOBS / "reverse.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout == HELLO_WORLD
    listed = run_cli("inventory", *fleet_args(relay_fleet, inventory), "--relay", "auto:6")
    lines = listed.stdout.splitlines()
    assert sum("relay=fleet1" in line.split() for line in lines) == 5
    assert sum("relay=fleet7" in line.split() for line in lines) == 5
    assert sum("relay=fleet13" in line.split() for line in lines) == 5
    assert not any("relay=" in line for line in lines if line.startswith(("fleet1\t", "fleet7\t")))


def test_a_host_key_unknown_behind_the_relay_is_that_host_s_status(relay_fleet: SshdFleet,
                                                                   tmp_path: Path,
                                                                   run_cli) -> None:
    """Only the relay's key is known: the relayed hosts fail as the openssh client says."""
    inventory = relay_fleet.write_inventory(tmp_path / "hosts.yaml", names=["fleet1", "fleet2"])
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_line(relay_fleet, "fleet1") + "\n")
    done = run_cli("check", "-i", inventory, "--known-hosts", known, "--relay", "fleet1")
    assert done.returncode == 3, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("fleet2"))
    assert "host key unknown" in row and "relay fleet1" in row, done.stdout
    relay_row = next(line for line in done.stdout.splitlines() if line.startswith("fleet1"))
    assert " ok " in f" {relay_row} ", done.stdout


def test_a_relay_that_is_not_in_the_inventory_is_a_one_line_error(relay_fleet: SshdFleet,
                                                                  tmp_path: Path,
                                                                  run_cli) -> None:
    inventory = relay_fleet.write_inventory(tmp_path / "hosts.yaml", names=["fleet2"])
    document = yaml.safe_load(inventory.read_text())
    document["hosts"][0]["relay"] = "gateway9"
    inventory.write_text(yaml.safe_dump(document))
    done = run_cli("run", *fleet_args(relay_fleet, inventory), JOBS / "reverse.py")
    assert done.returncode == 2
    assert "gateway9" in done.stderr and str(inventory) in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_losing_the_relay_loses_its_hosts_and_no_taskunit(relay_fleet: SshdFleet,
                                                           tmp_path: Path) -> None:
    """The relay's sshd dies mid-run: every host behind it is lost with it, their taskunits
    go to the host left (fleet18), and each result comes exactly once."""
    inventory = _inventory(relay_fleet, tmp_path / "hosts.yaml")
    try:
        with antnest.Cluster(inventory, known_hosts=[relay_fleet.known_hosts], procs=1,
                             max_lost=100) as cluster:
            cluster.wait_for_hosts(60)
            results = []
            for value in cluster.map(_slow_square, range(400), chunksize=1):
                results.append(value)
                if len(results) == 40:   # mid-run, with every host busy
                    relay_fleet.kill_host("fleet1")
            states = {s.name: s for s in cluster.hosts}
        assert results == [i * i for i in range(400)]
        assert states["fleet18"].state == "connected"
        for i in range(1, BEHIND + 2):   # each lost its runner with the relay
            state = states[f"fleet{i}"]
            assert state.state != "connected" and state.lost >= 1, state
    finally:
        relay_fleet.restart_host("fleet1")


def _slow_square(x: int) -> int:
    import time

    time.sleep(0.05)
    return x * x


def test_the_relay_link_over_the_openssh_client(relay_fleet: SshdFleet, tmp_path: Path,
                                                run_cli) -> None:
    """The agent is forwarded over an openssh ControlMaster session as over paramiko."""
    import json

    inventory = relay_fleet.write_inventory(tmp_path / "hosts.yaml",
                                            names=["fleet1", "fleet2", "fleet3"])
    done = run_cli("check", *fleet_args(relay_fleet, inventory), "--ssh-client", "openssh",
                   "--relay", "fleet1", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["host"] if "host" in row else row["name"]: row for row in json.loads(done.stdout)}
    assert {name: row["status"] for name, row in rows.items()} == \
        {"fleet1": "ok", "fleet2": "ok", "fleet3": "ok"}
    assert "via fleet1" in json.dumps(rows["fleet2"]), rows["fleet2"]


@pytest.mark.parametrize("minor", ["3.6", "3.13"])
def test_relay_mode_on_old_and_new_pythons(minor: str) -> None:
    """The relay loop itself, on a host's 3.6 or 3.13 (a local process, no SSH): stage 2 is
    written into a stream it opens, the known_hosts token names a file in memory holding the
    lines, stdout comes back tagged with the stream id, then the EOF and the exit status."""
    from test_anypython import interpreters

    from antnest import bootstrap, runner
    from antnest.runner import FrameReader, Kind
    from antnest.transport.local import LocalProcess

    python = interpreters()[minor]
    relay = LocalProcess("relay", python, bootstrap.relay_stage2())
    try:
        relay.set_timeout(30)
        reader = FrameReader(relay.recv)
        kind, payload = reader.next()
        hello = runner.decode_hello(payload)
        assert kind == Kind.HELLO and hello["role"] == "relay"
        assert ".".join(map(str, hello["python"][:2])) == minor
        relay.send(*runner.frame(Kind.RELAY_SETUP, runner.encode_relay_setup(
            b"STAGE2", b"[10.0.0.5]:22 ssh-ed25519 AAAA\n")))
        script = f"cat {runner.KNOWN_HOSTS_TOKEN}; head -c 6; exit 3"
        relay.send(*runner.frame(Kind.RELAY_OPEN,
                                 runner.encode_relay_open(9, ["sh", "-c", script], True)))
        out = b""
        while True:
            kind, payload = reader.next()
            if kind == Kind.RELAY_DATA:
                stream, data = runner.decode_relay_data(payload)
                assert stream == 9
                out += bytes(data)
            elif kind == Kind.RELAY_EXIT:
                assert runner.decode_relay_exit(payload)[:2] == (9, 3)
                break
        assert out == b"[10.0.0.5]:22 ssh-ed25519 AAAA\nSTAGE2"
    finally:
        relay.kill()
        relay.release()

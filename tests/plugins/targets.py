"""Where a test's jobs run: local runners, or the SSH fleet through one client, as CLI
arguments and as `antnest.Cluster` keywords alike.

`target` is the conformance suite's: local, the fleet over paramiko, the fleet over the
openssh client (3 hosts x 2 runners), with the leftover guard after every test. `place`
and `ssh_target` are the fault tests': the fleet (3 hosts x 2 runners, paramiko by default)
or 3 local runners; their tests ask for the leftover check themselves (`guard`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pytest

import antnest
from antnest.testing import SshdFleet

from plugins.fleet import fleet_args
from plugins.processes import FLEET_HOMES, Leftovers, mark_runners, remember_fleet


@dataclasses.dataclass
class Target:
    """Local runners (no fleet) or the SSH fleet's hosts listed in `inventory`."""

    name: str                             # "local", "ssh" or "openssh"
    fleet: Optional[SshdFleet] = None
    inventory: Optional[Path] = None
    client: Optional[str] = None          # --ssh-client; None leaves antnest's default
    procs: Optional[int] = None           # --procs; None leaves the inventory's (or cpus)
    leftovers: Optional[Leftovers] = None

    @property
    def ssh(self) -> bool:
        return self.fleet is not None

    @property
    def hosts(self) -> Sequence[str]:
        """Host names that may appear in messages and log prefixes."""
        return tuple(h.name for h in self.fleet.hosts) if self.fleet is not None else ("local",)

    @property
    def args(self) -> List[str]:
        """CLI arguments selecting these hosts."""
        args = []
        if self.fleet is not None:
            assert self.inventory is not None
            args += fleet_args(self.fleet, self.inventory)
        if self.client is not None:
            args += ["--ssh-client", self.client]
        if self.procs is not None:
            args += ["--procs", str(self.procs)]
        return args

    @property
    def cluster_kwargs(self) -> Dict[str, Any]:
        """The same for antnest.Cluster(...)."""
        kwargs: Dict[str, Any] = {}
        if self.fleet is not None:
            kwargs.update(inventory=self.inventory, known_hosts=[self.fleet.known_hosts])
        if self.client is not None:
            kwargs["ssh_client"] = self.client
        if self.procs is not None:
            kwargs["procs"] = self.procs
        return kwargs

    def cluster(self, **options: Any) -> antnest.Cluster:
        return antnest.Cluster(**self.cluster_kwargs, **options)


@pytest.fixture(params=["local", "ssh", "openssh"])
def target(request: pytest.FixtureRequest, tmp_path: Path, fresh_home: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    """The conformance suite's transport; checks for leftovers after every test."""
    if request.param == "local":
        chosen = Target("local", leftovers=mark_runners(monkeypatch))
    else:
        fleet: SshdFleet = request.getfixturevalue("fleet")
        inventory = fleet.write_inventory(tmp_path / "hosts.yaml", procs=2)
        chosen = Target(request.param, fleet, inventory,
                        client="openssh" if request.param == "openssh" else "paramiko",
                        leftovers=mark_runners(monkeypatch, fleet))
    yield chosen
    assert chosen.leftovers is not None
    chosen.leftovers.check()


def _fault_target(kind: str, request: pytest.FixtureRequest) -> Target:
    if kind == "local":
        return Target("local", procs=3)
    fleet: SshdFleet = request.getfixturevalue("fleet")
    remember_fleet(fleet)
    return Target("ssh", fleet, request.getfixturevalue("fleet_inventory"), procs=2)


@pytest.fixture(params=["ssh", "local"])
def place(request: pytest.FixtureRequest) -> Target:
    """The fault tests' place: the fleet, 2 runners a host, or 3 local runners."""
    return _fault_target(request.param, request)


@pytest.fixture
def ssh_target(request: pytest.FixtureRequest) -> Target:
    """The fault tests' fleet alone."""
    return _fault_target("ssh", request)


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[Leftovers]:
    """The fault tests' runner guard: runners with this test's mark, or on any fleet host a
    fault test has used; whatever a failed test left running is killed, by PID, afterwards."""
    watching = mark_runners(monkeypatch, homes=FLEET_HOMES)
    yield watching
    watching.kill_runners()

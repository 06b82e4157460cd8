"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from antnest.testing import SshdFleet, find_sshd


# === SSH test fleet ==========================================================================
# Real OpenSSH daemons on 127.0.0.x (see antnest.testing), and a guard that keeps the
# developer's own ~/.ssh and ssh-agent out of every test.


@pytest.fixture(scope="session", autouse=True)
def _hide_user_ssh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point HOME at an empty directory and drop the agent, so only fleet keys can work."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.delenv("SSH_AUTH_SOCK", raising=False)
        yield home


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdFleet]:
    """Three started sshd daemons (fleet1..fleet3) shared by the whole session."""
    if find_sshd() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("sshd not installed on CI; .ci/run should have installed openssh-server")
        pytest.skip("sshd not installed; apt-get install openssh-server")
    with SshdFleet(tmp_path_factory.mktemp("fleet"), count=3) as started:
        yield started


@pytest.fixture
def fleet_inventory(fleet: SshdFleet, tmp_path: Path) -> Path:
    """A native antnest inventory listing every fleet host."""
    return fleet.write_inventory(tmp_path / "hosts.yaml")


# === end of SSH test fleet ===================================================================

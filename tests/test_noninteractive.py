"""Nothing ever prompts: an encrypted key without an agent is an error naming the fix, at once."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from antnest.testing import SshdFleet
from plugins.cli import JOBS, REPO, RunCli
from plugins.fleet import keygen


@pytest.fixture
def encrypted_key(fleet: SshdFleet, tmp_path: Path) -> Iterator[Path]:
    """A passphrase-protected key that the fleet would accept, if only it could be used."""
    key = keygen(tmp_path / "id_locked", passphrase="a secret")
    authorized = Path(fleet.authorized_keys)
    before = authorized.read_text()
    authorized.write_text(before + key.with_suffix(".pub").read_text())
    try:
        yield key
    finally:
        authorized.write_text(before)


def test_encrypted_key_without_agent_fails_at_once_without_a_prompt(
        fleet: SshdFleet, encrypted_key: Path, tmp_path: Path, run_cli: RunCli) -> None:
    host = fleet.hosts[0]
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(
        "hosts:\n"
        f"  - name: {host.name}\n    address: {host.address}\n    port: {host.port}\n"
        f"    user: {fleet.user}\n    identity_file: {encrypted_key}\n")
    # As under cron: a bare environment and no controlling terminal to prompt on.
    done = run_cli("run", "-i", inventory, "--known-hosts", fleet.known_hosts,
                   JOBS / "reverse.py", timeout=60, new_session=True,
                   env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert done.returncode == 3, done.stderr
    assert "encrypted" in done.stderr and "ssh-agent" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr

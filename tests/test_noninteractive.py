"""Nothing ever prompts: an encrypted key without an agent is an error naming the fix, at once."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from antnest.testing import SshdFleet

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def encrypted_key(fleet: SshdFleet, tmp_path: Path):
    """A passphrase-protected key that the fleet would accept, if only it could be used."""
    key = tmp_path / "id_locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "a secret", "-f", str(key)],
                   check=True, stdin=subprocess.DEVNULL)
    authorized = Path(fleet.authorized_keys)
    before = authorized.read_text()
    authorized.write_text(before + key.with_suffix(".pub").read_text())
    try:
        yield key
    finally:
        authorized.write_text(before)


def test_encrypted_key_without_agent_fails_at_once_without_a_prompt(
        fleet: SshdFleet, encrypted_key: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    host = fleet.hosts[0]
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(
        "hosts:\n"
        f"  - name: {host.name}\n    address: {host.address}\n    port: {host.port}\n"
        f"    user: {fleet.user}\n    identity_file: {encrypted_key}\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "antnest", "run", "-i", str(inventory), "--known-hosts",
         str(fleet.known_hosts), str(ROOT / "jobs" / "reverse.py")],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        start_new_session=True,  # no controlling terminal to prompt on, as under cron
    )
    assert done.returncode == 3, done.stderr
    assert "encrypted" in done.stderr and "ssh-agent" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr

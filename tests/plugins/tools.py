"""Tools a test needs from the machine: missing ones skip a test locally and fail it on CI.

CI (``CI=true``, see .ci/run) installs every tool the suite uses, so there a missing one is a
broken setup to fix, never a reason to skip.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional, TypeVar

import pytest

T = TypeVar("T")


def on_ci() -> bool:
    """True under CI=true, where nothing may be skipped for want of a tool."""
    return os.environ.get("CI", "").lower() == "true"


def require(found: Optional[T], message: str) -> T:
    """`found` when it is truthy (a path, say); otherwise fail on CI, skip elsewhere, saying
    `message`."""
    if found:
        return found
    if on_ci():
        pytest.fail(f"{message} (on CI: .ci/run should have installed it)")
    pytest.skip(message)


def ssh_binary() -> str:
    """The OpenSSH client's path (the openssh transport and ssh -G parity need it)."""
    return require(shutil.which("ssh"), "no ssh binary; apt-get install openssh-client")


@pytest.fixture
def need_ssh_binary() -> str:
    """For tests (usually a whole module, autouse) that run the ssh client."""
    return ssh_binary()

"""What a runner (or an `antnest exec` command) runs with: environment variables and a working
directory, from the command line (`--env`, `--workdir`) over the inventory (`env:`, `workdir:`).
"""
from __future__ import annotations

import os
import re
import shlex
from typing import Dict, Iterable, Mapping, Optional, Tuple

from antnest.errors import UsageError
from antnest.host import Host

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def check_name(name: str, where: str = "--env") -> str:
    if not _NAME.match(name):
        raise UsageError(f"{where} {name!r}: not an environment variable name "
                         "(letters, digits and _, not starting with a digit)")
    return name


def parse_env_options(specs: Iterable[str]) -> Dict[str, str]:
    """`--env NAME=VALUE` as given, `--env NAME` with this (the master's) value; later wins."""
    env: Dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        check_name(name)
        if not sep:
            if name not in os.environ:
                raise UsageError(f"--env {name}: {name} is not set here, so there is no value "
                                 f"to pass; give one with --env {name}=VALUE")
            value = os.environ[name]
        env[name] = value
    return env


def host_env(host: Host, override: Optional[Mapping[str, str]]) -> Tuple[Tuple[str, str], ...]:
    """The inventory's env for the host, with the command line's on top (by name)."""
    merged = dict(host.env)
    merged.update(override or {})
    return tuple(merged.items())


def host_workdir(host: Host, override: Optional[str]) -> Optional[str]:
    return override or host.workdir


def shell_prefix(env: Iterable[Tuple[str, str]], workdir: Optional[str]) -> str:
    """`cd DIR && export A=1 B=2 && ` for a POSIX login shell; '' when there is nothing to set.
    A workdir starting with ~/ stays relative to the home directory, as the runner treats it."""
    parts = []
    if workdir:
        if workdir == "~" or workdir.startswith("~/"):
            target = '"$HOME"' + (shlex.quote(workdir[1:]) if len(workdir) > 1 else "")
        else:
            target = shlex.quote(workdir)
        parts.append(f"cd {target}")
    pairs = [f"{name}={shlex.quote(value)}" for name, value in env]
    if pairs:
        parts.append("export " + " ".join(pairs))
    return "".join(part + " && " for part in parts)

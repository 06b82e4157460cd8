"""Ansible variables -> Host settings: the one table, and each value read as ansible-core reads it.

A host's variables arrive merged (group_vars, host_vars and the inventory, in Ansible's order);
this module turns them into Host settings. Where ansible-core's ssh plugin lists several
variables for one option, the last one that is set (not null) wins, so the old spellings
``ansible_ssh_host``/``_port``/``_user`` beat the new ones wherever either was set.
"""
from __future__ import annotations

import decimal
import logging
import os
import re
import shlex
import sys
from typing import Any, Dict, List, Mapping, Set, Tuple

from .values import (
    _Bad, _name, _paths, _port, _port_text, _procs, _proxy_command, _proxy_jump, _seconds, _text,
    _Vaulted
)

log = logging.getLogger(__name__)

Origin = Tuple[Any, str]   # a variable's value and where it was set, for messages

FIELDS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    # (setting, Ansible variables in ansible-core's order: the last one set wins)
    ("address", ("ansible_host", "ansible_ssh_host")),
    ("port", ("ansible_port", "ansible_ssh_port")),
    ("user", ("ansible_user", "ansible_ssh_user")),
    ("identity_files", ("ansible_private_key_file", "ansible_ssh_private_key_file")),
    ("python", ("ansible_python_interpreter",)),
    ("connect_timeout", ("ansible_timeout", "ansible_ssh_timeout")),
    ("connection", ("ansible_connection",)),
    ("ssh_common_args", ("ansible_ssh_common_args",)),
    ("ssh_extra_args", ("ansible_ssh_extra_args",)),
    ("procs", ("antnest_procs",)),
    ("relay", ("antnest_relay",)),
)
"""Every Ansible variable antnest reads; all others are Ansible's business and ignored."""

CONNECTIONS = {   # ansible_connection -> (Host.transport, Host.ssh_client)
    "ssh": ("ssh", "openssh"), "ansible.builtin.ssh": ("ssh", "openssh"),
    "smart": ("ssh", "openssh"),
    "paramiko": ("ssh", "paramiko"), "paramiko_ssh": ("ssh", "paramiko"),
    "ansible.builtin.paramiko_ssh": ("ssh", "paramiko"),
    "local": ("local", None), "ansible.builtin.local": ("local", None),
}
PYTHON_AUTO = ("auto", "auto_silent", "auto_legacy", "auto_legacy_silent")
_PLAYBOOK_PYTHON = re.compile(r"\{\{-?\s*ansible_playbook_python\s*-?\}\}")


class Refusal(Exception):
    """A host antnest cannot use as written: (problem, key) for the InventoryError."""

    def __init__(self, problem: str, key: str) -> None:
        super().__init__(problem)
        self.problem, self.key = problem, key


def settings_of(host: str, merged: Mapping[str, Origin]) -> Dict[str, Any]:
    """Host settings from one host's merged variables; raises Refusal naming the variable."""
    passwords = sorted(k for k in merged if "pass" in k and k.startswith("ansible_")
                       and merged[k][0] is not None)
    if passwords:
        log.warning("ignoring %s of %s: antnest logs in with SSH keys or ssh-agent only",
                    ", ".join(passwords), host)
    raw: Dict[str, Origin] = {}
    for setting, names in FIELDS:
        for name in names:
            if merged.get(name, (None, ""))[0] is not None:   # null = unset, as in Ansible
                raw[setting] = merged[name]
    settings: Dict[str, Any] = {}
    for setting, (value, key) in raw.items():
        try:
            value = _plain(value, setting)
            if setting in ("ssh_common_args", "ssh_extra_args"):
                continue
            if setting == "connection":
                settings.update(_connection(value))
            elif setting == "python":
                if value not in PYTHON_AUTO:
                    settings["python"] = value
            else:
                settings[setting] = _CONVERT[setting](value)
        except _Bad as bad:
            raise Refusal(f"{bad} (host {host})", key) from None
    for setting in ("ssh_common_args", "ssh_extra_args"):   # ssh: the first value given wins
        if setting in raw:
            value, key = raw[setting]
            try:
                from_args = ssh_options(_plain(value, setting))
            except _Bad as bad:
                raise Refusal(f"{bad} (host {host})", key) from None
            _under(settings, from_args)
    return settings


def _plain(value: Any, setting: str) -> Any:
    """Refuse what only Ansible can evaluate: vault values and Jinja templates."""
    if isinstance(value, _Vaulted):
        raise _Bad("encrypted with ansible-vault, which antnest cannot decrypt; put the plain "
                   "value here or in ~/.ssh/config")
    if isinstance(value, str) and ("{{" in value or "{%" in value):
        if setting == "python" and _PLAYBOOK_PYTHON.fullmatch(value.strip()):
            return sys.executable   # the interpreter running the controller: this one
        raise _Bad(f"{value!r} is a Jinja template, which antnest does not evaluate (only "
                   "'{{ ansible_playbook_python }}' for ansible_python_interpreter); "
                   "write the value")
    return value


def _connection(value: Any) -> Dict[str, Any]:
    name = _text(value)
    if name not in CONNECTIONS:
        raise _Bad(f"ansible_connection={name} is not something antnest can run on: it "
                   "reaches hosts over SSH (ssh, paramiko) or runs them locally (local)")
    transport, client = CONNECTIONS[name]
    return {"transport": transport, **({"ssh_client": client} if client else {})}


def ansible_int(value: Any) -> int:
    """ansible-core's int conversion: ints (and bools), and floats or strings whose value is
    whole ('2222', '2222.0', ' 22 '); hex strings only reach here as ints, via INI."""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, (float, str)):
        try:
            number = decimal.Decimal(value)
            if number == int(number):
                return int(number)
        except (decimal.DecimalException, ValueError, OverflowError):
            pass
    raise _Bad(f"must be a whole number, not {value!r}")


def _string(value: Any) -> str:
    """Ansible's string options take numbers too (ansible_user=1000)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return _text(value)


def _key_files(value: Any) -> Tuple[str, ...]:
    return tuple(os.path.expandvars(path) for path in _paths(_string(value)))


_CONVERT = {
    "address": _string,
    "port": lambda v: _port(ansible_int(v)),
    "user": _string,
    "identity_files": _key_files,
    "connect_timeout": lambda v: _seconds(ansible_int(v)),
    "procs": lambda v: _procs(v if v == "auto" else ansible_int(v)),
    "relay": lambda v: _name(_string(v)),
}


def _under(settings: Dict[str, Any], lower: Mapping[str, Any]) -> None:
    """Options from ssh args, behind the ones Ansible passes first (ssh: first value wins);
    identity files add up, Ansible's key first."""
    for key, value in lower.items():
        if key == "identity_files":
            settings[key] = tuple(settings.get(key, ())) + tuple(value)
        elif key == "address":   # -o HostName renames the destination Ansible passes
            settings[key] = value
        elif key in ("jump", "proxy_command"):
            if not {"jump", "proxy_command"} & set(settings):
                settings[key] = value
        else:
            settings.setdefault(key, value)


# --------------------------------------------------------------------------- ssh arguments

_WITH_ARG = set("BbcDEeFIiJLlmOoPpQRSWw")
_FLAGS = set("46AaCfGgKkMNnqsTtVvXxYy")
_OPTIONS = {   # ssh -o name (lower case) -> (setting, reader)
    "hostname": ("address", _text),
    "port": ("port", lambda v: _port_text(v.strip())),
    "user": ("user", _text),
    "identityfile": ("identity_files", lambda v: (os.path.expanduser(_text(v)),)),
    "proxyjump": ("jump", _proxy_jump),
    "proxycommand": ("proxy_command", _proxy_command),
    "connecttimeout": ("connect_timeout", lambda v: _seconds(ansible_int(v))),
    "serveraliveinterval": ("server_alive_interval",
                            lambda v: _seconds(ansible_int(v), strict=False)),
}
_LETTERS = {"p": "port", "l": "user", "i": "identityfile", "J": "proxyjump"}
_warned: Set[str] = set()


def ssh_options(args: Any) -> Dict[str, Any]:
    """Host settings from ssh command-line arguments (``ansible_ssh_common_args``): -J, -p, -l,
    -i and the -o options antnest understands; the first value of each wins, as in ssh.
    Anything else is warned about once and ignored."""
    try:
        words = shlex.split(_text(args))
    except ValueError as exc:
        raise _Bad(f"cannot split ssh arguments {args!r}: {exc}") from None
    pairs: List[Tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or len(word) < 2:
            _warn(word, "a word that is not an option")
            continue
        letters = word[1:]
        while letters:
            letter, letters = letters[0], letters[1:]
            if letter in _FLAGS:
                _warn(f"-{letter}", "an ssh flag antnest does not apply")
                continue
            if letter not in _WITH_ARG:
                raise _Bad(f"ssh has no option -{letter} (in {args!r})")
            value = letters
            if not value:
                if i >= len(words):
                    raise _Bad(f"ssh option -{letter} needs a value (in {args!r})")
                value, i = words[i], i + 1
            letters = ""
            if letter == "o":
                match = re.match(r"\s*([A-Za-z]+)\s*(?:=\s*|\s+)(.*)$", value, re.S)
                if not match:
                    raise _Bad(f"-o {value!r} is not Option=value")
                pairs.append((match.group(1).lower(), match.group(2).strip()))
            elif letter in _LETTERS:
                pairs.append((_LETTERS[letter], value))
            else:
                _warn(f"-{letter}", "an ssh option antnest does not apply")
    found: Dict[str, Any] = {}
    for name, value in pairs:
        if name not in _OPTIONS:
            _warn(f"-o {name}", "an ssh option antnest does not apply")
            continue
        setting, read = _OPTIONS[name]
        if setting == "identity_files":
            found[setting] = found.get(setting, ()) + read(value)
        elif setting in ("jump", "proxy_command"):
            if not {"jump", "proxy_command"} & set(found):
                found[setting] = read(value)
        elif setting not in found:
            found[setting] = read(value)
    return found


def _warn(option: str, what: str) -> None:
    if option not in _warned:
        _warned.add(option)
        log.warning("ansible_ssh_common_args/extra_args: ignoring %s (%s)", option, what)

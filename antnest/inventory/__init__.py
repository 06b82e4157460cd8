"""Inventories: which hosts to use and how to reach them, parsed once into frozen Host records.

Layering (later wins): built-in defaults < ssh_config < inventory defaults/group vars < host entry.

Three inventory syntaxes are read:

- native YAML: ``defaults:`` / ``groups:`` / ``hosts:`` (a list), validated strictly;
- Ansible YAML and INI, files or a directory of them, with the group_vars/ and host_vars/
  beside them, read as ansible-core reads them (``ansible.py``); which Ansible variables
  become which Host field is the one table ``ansible_vars.FIELDS``.

Each format first becomes a list of ``_Entry`` (what the file says about a host), then
``_SshConfig.resolve`` merges ``~/.ssh/config`` underneath and builds the ``Host``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from ..errors import InventoryError
from ..host import LOCAL, Host
from ..patterns import select
from . import relays
from .values import PathArg, _Entry, _yaml
from .native import _native, _parse_host_list
from .ansible import _INI_SECTION, _text_of, read_ansible
from .ssh_options import ssh_user
from .ssh_config import _SshConfig, _ssh_config_path

log = logging.getLogger(__name__)

__all__ = ["LOCAL", "Host", "describe", "load_hosts"]


# --------------------------------------------------------------------------- public API

def load_hosts(
    inventory: Optional[PathArg] = None,
    host_list: Optional[str] = None,
    limit: Optional[str] = None,
    ssh_config: Optional[PathArg] = None,
) -> List[Host]:
    """Hosts from an inventory file or directory (-i) or a host list (-H), ssh_config merged,
    --limit applied.

    With neither an inventory nor a host list there is nothing to load and the result is ``[]``
    (the caller then falls back to local workers). A host the inventory describes in a way
    antnest cannot use (say ``ansible_connection=winrm``) is an error only once selected.
    """
    if inventory is not None and host_list is not None:
        raise InventoryError("-H", f"give an inventory file ({os.fspath(inventory)}) or a host "
                             "list (-H), not both")
    members = None
    if inventory is not None:
        source = os.fspath(inventory)
        entries, members = _read_inventory(source)
    elif host_list is not None:
        source = "-H"
        entries = _parse_host_list(host_list)
    else:
        return []
    ssh = _SshConfig(_ssh_config_path(ssh_config))
    ssh.prefetch(e.name for e in entries if e.settings.get("transport", "ssh") == "ssh")
    hosts = [_finish(ssh.resolve(entry, source), entry) for entry in entries]
    wanted = {e.name: e.settings["relay"] for e in entries if "relay" in e.settings}
    if wanted:
        hosts = relays.attach(hosts, wanted, source)
    if limit is not None:
        hosts = select(hosts, limit, members)
    refused = {entry.name: entry.refusal for entry in entries if entry.refusal}
    for host in hosts:
        if host.name in refused:
            problem, key = refused[host.name]
            raise InventoryError(source, problem, key)
    return hosts


def _finish(host: Host, entry: _Entry) -> Host:
    """What ssh_config has no say in: how the host is reached at all."""
    chosen = {k: entry.settings[k] for k in ("transport", "ssh_client") if k in entry.settings}
    return replace(host, **chosen) if chosen else host


def describe(hosts: Iterable[Host]) -> List[Dict[str, Any]]:
    """JSON-ready view of hosts for ``antnest inventory``: what antnest will actually use."""
    return [
        {
            "name": h.name,
            "address": h.address,
            "port": h.port,
            "user": h.user or ssh_user(),   # None means the local user, as in ssh
            "identity_files": list(h.identity_files),
            "python": h.python,
            "procs": "auto" if h.procs is None else h.procs,
            "jump": [_hop_text(j) for j in h.jump],
            "proxy_command": h.proxy_command,
            "connect_timeout": h.connect_timeout,
            "server_alive_interval": h.server_alive_interval,
            "user_known_hosts": list(h.user_known_hosts),
            "global_known_hosts": list(h.global_known_hosts),
            "host_key_checking": h.host_key_checking,
            "identities_only": h.identities_only,
            "groups": list(h.groups),
            "env": dict(h.env),
            "workdir": h.workdir,
            "transport": h.transport,
            "ssh_client": h.ssh_client,
            "relay": h.relay.name if h.relay is not None else None,
            "source": h.source,
        }
        for h in hosts
    ]


def _hop_text(hop: Host) -> str:
    address = f"[{hop.address}]" if ":" in hop.address else hop.address
    return f"{hop.user or ssh_user()}@{address}:{hop.port}"


# --------------------------------------------------------------------------- reading a file

def _read_inventory(path: str) -> Tuple[List[_Entry], Optional[Dict[str, List[str]]]]:
    """Read ``path`` (a file, or a directory as Ansible reads one) with the reader its content
    calls for; Ansible's readers also give each group's hosts in Ansible's order, for --limit."""
    if "," in path:
        raise InventoryError(path, "a path with a comma: Ansible reads it as a list of hosts "
                             "and antnest refuses to guess; pass hosts with -H or rename it")
    if not os.path.exists(path):
        raise InventoryError(path, "cannot read the inventory: No such file or directory")
    if os.path.isdir(path):
        return read_ansible(path)
    text = _text_of(path)
    if not _INI_SECTION.match(_first_line(text)):
        yaml, loader = _yaml()
        try:
            data = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict) and data and not _is_ansible_yaml(data):
            return _native(data, path), None
    return read_ansible(path, text)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines()
                 if line.strip() and line.strip()[0] not in "#;"), "")


def _is_ansible_yaml(data: Mapping[Any, Any]) -> bool:
    if data.get("plugin"):   # an inventory plugin's config: the Ansible reader explains
        return True
    if isinstance(data.get("hosts"), list):
        return False
    return "all" in data or any(
        isinstance(body, dict) and {"hosts", "children", "vars"} & set(body)
        for body in data.values())



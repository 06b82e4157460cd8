"""Inventories: which hosts to use and how to reach them, parsed once into frozen Host records.

Layering (later wins): built-in defaults < ssh_config < inventory defaults/group vars < host entry.

Three inventory syntaxes are read, told apart by content, never by file name:

- native YAML: ``defaults:`` / ``groups:`` / ``hosts:`` (a list), validated strictly;
- Ansible YAML: group names at the top with ``hosts:`` / ``children:`` / ``vars:``;
- Ansible INI: ``[group]``, ``[group:children]``, ``[group:vars]``, ``node[01:20]`` ranges.

Ansible inventories are read for the connection variables only (``ansible_host``, ``ansible_port``,
``ansible_user``, ``ansible_ssh_private_key_file``, ``ansible_python_interpreter``,
``antnest_procs``); every other variable belongs to Ansible and is ignored.

Each format first becomes a list of ``_Entry`` (what the file says about a host), then
``_SshConfig.resolve`` merges ``~/.ssh/config`` underneath and builds the ``Host``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional

from ..errors import InventoryError
from ..host import LOCAL, Host
from ..patterns import select
from .values import PathArg, _Entry, _yaml
from .native import _native, _parse_host_list
from .ansible import _INI_SECTION, _ansible_ini, _ansible_yaml
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
    """Hosts from an inventory file (-i) or a host list (-H), ssh_config merged, --limit applied.

    With neither an inventory nor a host list there is nothing to load and the result is ``[]``
    (the caller then falls back to local workers).
    """
    if inventory is not None and host_list is not None:
        raise InventoryError("-H", f"give an inventory file ({os.fspath(inventory)}) or a host "
                             "list (-H), not both")
    if inventory is not None:
        source = os.fspath(inventory)
        entries = _read_inventory(source)
    elif host_list is not None:
        source = "-H"
        entries = _parse_host_list(host_list)
    else:
        return []
    ssh = _SshConfig(_ssh_config_path(ssh_config))
    hosts = [ssh.resolve(entry, source) for entry in entries]
    return hosts if limit is None else select(hosts, limit)


def describe(hosts: Iterable[Host]) -> List[Dict[str, Any]]:
    """JSON-ready view of hosts for ``antnest inventory``: what antnest will actually use."""
    return [
        {
            "name": h.name,
            "address": h.address,
            "port": h.port,
            "user": h.user,
            "identity_files": list(h.identity_files),
            "python": h.python,
            "procs": "auto" if h.procs is None else h.procs,
            "jump": [_hop_text(j) for j in h.jump],
            "proxy_command": h.proxy_command,
            "connect_timeout": h.connect_timeout,
            "server_alive_interval": h.server_alive_interval,
            "groups": list(h.groups),
            "source": h.source,
        }
        for h in hosts
    ]


def _hop_text(hop: Host) -> str:
    address = f"[{hop.address}]" if ":" in hop.address else hop.address
    return f"{hop.user + '@' if hop.user else ''}{address}:{hop.port}"


# --------------------------------------------------------------------------- reading a file

def _read_inventory(path: str) -> List[_Entry]:
    """Read ``path`` and hand it to the parser its content calls for."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise InventoryError(path, f"cannot read the inventory: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InventoryError(path, "not a text file (expected UTF-8 YAML or INI)") from exc
    first = next((line.strip() for line in text.splitlines()
                  if line.strip() and line.strip()[0] not in "#;"), "")
    if _INI_SECTION.match(first):
        return _ansible_ini(text, path).entries(path)
    yaml, loader = _yaml()
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        if any(_INI_SECTION.match(line.strip()) for line in text.splitlines()):
            return _ansible_ini(text, path).entries(path)
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise InventoryError(path, f"not valid YAML: {problem}",
                             f"line {mark.line + 1}" if mark else None) from exc
    if isinstance(data, str):   # INI with only ungrouped hosts reads as one YAML string
        return _ansible_ini(text, path).entries(path)
    if not isinstance(data, dict) or not data:
        raise InventoryError(path, "no hosts: expected a mapping with 'hosts:' (antnest form) "
                             "or Ansible groups ('all:') at the top level")
    if _is_ansible_yaml(data):
        return _ansible_yaml(data, path).entries(path)
    return _native(data, path)


def _is_ansible_yaml(data: Mapping[Any, Any]) -> bool:
    if isinstance(data.get("hosts"), list):
        return False
    return "all" in data or any(
        isinstance(body, dict) and {"hosts", "children", "vars"} & set(body)
        for body in data.values())



"""Ansible's YAML and INI inventories, read for the connection variables."""
from __future__ import annotations

import ast
import logging
import re
import shlex
import string
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import InventoryError
from .values import (
    _Bad, _Entry, _group_name, _name, _paths, _port, _port_text, _procs, _show, _split_port,
    _text, _Vaulted
)


# --------------------------------------------------------------------------- Ansible forms

log = logging.getLogger(__name__)

_ANSIBLE_VARS = (   # (Host field, check, variable names: a later name wins, as in Ansible)
    ("address", _text, ("ansible_ssh_host", "ansible_host")),
    ("port", _port, ("ansible_ssh_port", "ansible_port")),
    ("user", _text, ("ansible_ssh_user", "ansible_user")),
    ("identity_files", _paths, ("ansible_private_key_file", "ansible_ssh_private_key_file")),
    ("python", _text, ("ansible_python_interpreter",)),
    ("procs", _procs, ("antnest_procs",)),
)
_PYTHON_AUTO = ("auto", "auto_silent", "auto_legacy", "auto_legacy_silent")

Origin = Tuple[Any, str]   # a variable's value and where it was set, for messages


@dataclass
class _Group:
    name: str
    vars: Dict[str, Origin] = field(default_factory=dict)
    hosts: List[str] = field(default_factory=list)
    children: List[str] = field(default_factory=list)
    parents: List[str] = field(default_factory=list)


class _Ansible:
    """Groups, hosts and variables of an Ansible inventory, whichever syntax it came in."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.groups: Dict[str, _Group] = {"all": _Group("all"), "ungrouped": _Group("ungrouped")}
        self.hosts: Dict[str, Dict[str, Origin]] = {}   # host -> its own vars, in file order

    def group(self, name: Any, where: str) -> _Group:
        try:
            name = _group_name(str(name) if isinstance(name, (int, float)) else name)
        except _Bad as bad:
            raise InventoryError(self.path, f"group name {bad}", where) from None
        return self.groups.setdefault(name, _Group(name))

    def add_host(self, group: str, pattern: Any, host_vars: Dict[str, Origin],
                 where: str) -> None:
        try:
            host, port = _split_port(_text(str(pattern) if isinstance(pattern, int) else pattern))
            names = _expand_ranges(host)
            port_var = {"ansible_port": (_port_text(port), where)} if port else {}
        except _Bad as bad:
            raise InventoryError(self.path, f"host {bad}", where) from None
        for name in names:
            try:
                name = _name(name)
            except _Bad as bad:
                raise InventoryError(self.path, f"host {bad}", where) from None
            self.hosts.setdefault(name, {}).update({**port_var, **host_vars})
            if name not in self.groups[group].hosts:
                self.groups[group].hosts.append(name)

    def add_child(self, parent: str, child: str, where: str) -> None:
        self.group(child, where)
        if parent == child or parent in self._descendants(child):
            raise InventoryError(self.path, f"making {child!r} a child of {parent!r} creates a "
                                 "loop of groups", where)
        if child not in self.groups[parent].children:
            self.groups[parent].children.append(child)
            self.groups[child].parents.append(parent)

    def _descendants(self, name: str) -> List[str]:
        found: List[str] = []
        for child in self.groups[name].children:
            found += [child] + self._descendants(child)
        return found

    def entries(self, path: str) -> List[_Entry]:
        """Hosts in order of first appearance, each with the vars that win for it."""
        for top in [g.name for g in self.groups.values() if g.name != "all" and not g.parents]:
            self.add_child("all", top, "")
        member_of: Dict[str, List[str]] = {name: [] for name in self.hosts}
        for group in self.groups.values():
            for name in group.hosts:
                member_of[name] += [group.name] + self._ancestors(group.name)
        if not member_of:
            raise InventoryError(path, "no hosts: the inventory defines no host in any group")
        entries = []
        for name, host_vars in self.hosts.items():
            groups = set(member_of[name]) | {"all"}
            if groups - {"all", "ungrouped"}:   # Ansible: 'ungrouped' only holds the groupless
                groups.discard("ungrouped")
            else:
                groups.add("ungrouped")
            merged: Dict[str, Origin] = {}
            for group_name in sorted(groups, key=self._rank):
                merged.update(self.groups[group_name].vars)
            merged.update(host_vars)
            entries.append(_Entry(name, self._settings(name, merged), tuple(sorted(groups)),
                                  f"host {name}"))
        return entries

    def _ancestors(self, name: str) -> List[str]:
        found: List[str] = []
        for parent in self.groups[name].parents:
            found += [parent] + self._ancestors(parent)
        return found

    def _depth(self, name: str) -> int:
        parents = self.groups[name].parents
        return 1 + max(map(self._depth, parents)) if parents else 0

    def _rank(self, name: str) -> Tuple[int, int, str]:
        """Ansible's group order: deeper (nearer the host) later, then priority, then name."""
        priority = self.groups[name].vars.get("ansible_group_priority", (1, ""))[0]
        return self._depth(name), priority if isinstance(priority, int) else 1, name

    def _settings(self, host: str, merged: Dict[str, Origin]) -> Dict[str, Any]:
        passwords = sorted(k for k in merged if "pass" in k and k.startswith("ansible_"))
        if passwords:
            log.warning("%s: ignoring %s of %s: antnest logs in with SSH keys or ssh-agent only",
                        self.path, ", ".join(passwords), host)
        settings: Dict[str, Any] = {}
        for field_name, check, names in _ANSIBLE_VARS:
            found = [n for n in names if n in merged]
            if not found:
                continue
            value, key = merged[found[-1]]
            if isinstance(value, _Vaulted):
                raise InventoryError(self.path, f"encrypted with ansible-vault, which antnest "
                                     f"cannot decrypt (host {host}); put the plain value here "
                                     "or in ~/.ssh/config", key)
            if isinstance(value, str) and "{{" in value:
                raise InventoryError(self.path, f"{value!r} is a Jinja template, which antnest "
                                     f"does not evaluate (host {host}); write the value", key)
            if field_name == "python" and value in _PYTHON_AUTO:
                continue
            if field_name in ("port", "procs") and str(value).strip().isdigit():
                value = int(value)                  # "2222" from a YAML string
            elif check is _text and isinstance(value, (int, float)):
                value = str(value)                  # ansible_user=1000 read as a number
            try:
                settings[field_name] = check(value)
            except _Bad as bad:
                raise InventoryError(self.path, f"{bad} (host {host})", key) from None
        return settings


def _expand_ranges(pattern: str) -> List[str]:
    """Ansible host ranges: ``node[01:20]`` (zero padded), ``db-[a:c]``, ``n[0:10:2]`` (step)."""
    match = re.search(r"\[([^\]:]*):([^\]:]+)(?::([^\]:]+))?\]", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[:match.start()], pattern[match.end():]
    begin, end, step_text = match.group(1) or "0", match.group(2), match.group(3) or "1"
    if not step_text.isdigit() or int(step_text) < 1:
        raise _Bad(f"range {match.group(0)!r}: the step must be a whole number of at least 1")
    step = int(step_text)
    if begin.isdigit() and end.isdigit():
        if begin.startswith("0") and len(begin) != len(end):
            raise _Bad(f"range {match.group(0)!r}: zero padded bounds must have equal length")
        width = len(begin) if begin.startswith("0") else 0
        values = [str(i).zfill(width) for i in range(int(begin), int(end) + 1, step)]
    elif all(len(b) == 1 and b in string.ascii_letters for b in (begin, end)):
        letters = string.ascii_letters
        values = list(letters[letters.index(begin):letters.index(end) + 1:step])
    else:
        raise _Bad(f"range {match.group(0)!r} is neither [01:20] nor [a:c]")
    if not values:
        raise _Bad(f"range {match.group(0)!r} is empty: its start is after its end")
    return [head + value + rest for value in values for rest in _expand_ranges(tail)]


def _ansible_yaml(data: Mapping[Any, Any], path: str) -> _Ansible:
    """Ansible's YAML inventory: every top-level key is a group (usually just ``all``)."""
    inventory = _Ansible(path)

    def group(name: Any, body: Any, where: str, parent: Optional[str]) -> None:
        this = inventory.group(name, where).name
        if parent:
            inventory.add_child(parent, this, where)
        if body is None:
            return
        if not isinstance(body, dict):
            raise InventoryError(path, f"a group must be a mapping with hosts:, children: or "
                                 f"vars:, not {_show(body)}", where)
        for key in body:
            if key not in ("hosts", "children", "vars"):
                raise InventoryError(path, "a group holds only hosts:, children: and vars: "
                                     "(is this a host? put it under hosts:)", f"{where}.{key}")
        for key, value in _mapping(body.get("vars"), path, f"{where}.vars").items():
            inventory.groups[this].vars[str(key)] = (value, f"{where}.vars.{key}")
        for pattern, host_vars in _mapping(body.get("hosts"), path, f"{where}.hosts").items():
            host_where = f"{where}.hosts.{pattern}"
            own = _mapping(host_vars, path, host_where)
            inventory.add_host(this, pattern, {str(k): (v, f"{host_where}.{k}")
                                               for k, v in own.items()}, host_where)
        for child, child_body in _mapping(body.get("children"), path,
                                          f"{where}.children").items():
            group(child, child_body, f"{where}.children.{child}", this)

    for name, body in data.items():
        group(name, body, str(name), None)
    return inventory


def _mapping(value: Any, path: str, where: str) -> Dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InventoryError(path, f"must be a mapping (name: ...), not {_show(value)}", where)
    return value


_INI_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:[#;].*)?$")


def _ansible_ini(text: str, path: str) -> _Ansible:
    """Ansible's INI inventory; hosts above the first section are ungrouped."""
    inventory = _Ansible(path)
    group, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), 1):
        line, where = raw.strip(), f"line {number}"
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = _INI_SECTION.match(line)
            if not section or (section.group(2) or "hosts") not in ("hosts", "vars", "children"):
                raise InventoryError(path, f"{line!r} is not [group], [group:vars] or "
                                     "[group:children]", where)
            group, kind = inventory.group(section.group(1), where).name, section.group(2) or "hosts"
            continue
        if kind == "vars":
            key, equals, value = line.partition("=")
            if not equals or not key.strip():
                raise InventoryError(path, f"{line!r} is not key=value", where)
            inventory.groups[group].vars[key.strip()] = (_ini_value(value.strip()),
                                                         f"{where}: {key.strip()}")
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InventoryError(path, f"cannot split {line!r}: {exc}", where) from None
        if kind == "children":
            if len(tokens) != 1:
                raise InventoryError(path, f"{line!r}: one group name per line in "
                                     "[group:children]", where)
            inventory.add_child(group, inventory.group(tokens[0], where).name, where)
            continue
        host_vars: Dict[str, Origin] = {}
        for token in tokens[1:]:
            key, equals, value = token.partition("=")
            if not equals or not key:
                raise InventoryError(path, f"{token!r} is not key=value", where)
            host_vars[key] = (_ini_value(value), f"{where}: {key}")
        inventory.add_host(group, tokens[0], host_vars, where)
    return inventory


def _ini_value(text: str) -> Any:
    """Like Ansible: Python literals (``2222``, ``'x'``) are read as such, anything else is text."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    return value if isinstance(value, (str, int, float)) else text



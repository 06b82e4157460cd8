"""Ansible inventories as ansible-core reads them: INI and YAML files, directories of them, and
the group_vars/ and host_vars/ next to them. Checked against ansible-core by
tests/test_ansible_parity.py; which variables become which Host field is ansible_vars.FIELDS.
"""
from __future__ import annotations

import ast
import logging
import os
import re
import shlex
import string
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import InventoryError
from .ansible_vars import Origin, Refusal, settings_of
from .values import _Bad, _Entry, _group_name, _name, _port_text, _split_port, _text, _yaml

log = logging.getLogger(__name__)

VAULTED = "vault-encrypted inventory: decrypt it or pass the hosts with -H"
_YAML_EXTS = ("", ".yml", ".yaml", ".json")   # files the YAML reader tries first
_IGNORED = re.compile(r"^\.|^host_vars$|^group_vars$|^vars_plugins$"
                      r"|(\.pyc|\.pyo|\.swp|\.bak|~|\.rpm|\.md|\.txt|\.rst|\.orig|\.cfg|\.retry)$")
_INI_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
_INI_CHILD = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")
Members = Dict[str, List[str]]


@dataclass
class _Group:
    name: str
    vars: Dict[str, Origin] = field(default_factory=dict)        # from the inventory
    file_vars: Dict[str, Origin] = field(default_factory=dict)   # from group_vars/
    hosts: List[str] = field(default_factory=list)
    children: List[str] = field(default_factory=list)
    parents: List[str] = field(default_factory=list)
    priority: int = 1


class AnsibleInventory:
    """Groups, hosts and variables of one ``-i`` source, whichever files and syntax it came in."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.path = source   # the file being read, for messages
        self.groups: Dict[str, _Group] = {"all": _Group("all"), "ungrouped": _Group("ungrouped")}
        self.add_child("all", "ungrouped", "")
        self.hosts: Dict[str, Dict[str, Origin]] = {}        # host -> own inventory vars
        self.host_files: Dict[str, Dict[str, Origin]] = {}   # host -> host_vars/ vars

    # ---------------------------------------------------------------- building

    def fail(self, problem: str, where: Optional[str] = None) -> InventoryError:
        return InventoryError(self.path, problem, where)

    def group(self, name: Any, where: str) -> str:
        if not isinstance(name, str):
            raise self.fail(f"group name {name!r} is a {type(name).__name__}: Ansible refuses "
                            "it; quote it", where)
        try:
            name = _group_name(name)
        except _Bad as bad:
            raise self.fail(f"group name {bad}", where) from None
        self.groups.setdefault(name, _Group(name))
        return name

    def set_group_var(self, group: str, key: Any, value: Any, where: str) -> None:
        self.groups[group].vars[str(key)] = (value, where)
        if key == "ansible_group_priority":
            try:
                self.groups[group].priority = int(value)
            except (TypeError, ValueError):
                raise self.fail(f"ansible_group_priority must be a whole number, not "
                                f"{value!r}", where) from None

    def add_hosts(self, group: str, pattern: Any, host_vars: Mapping[Any, Any],
                  where: str, key_where: Any) -> None:
        """One host line or key: ``node[01:03]:2222`` expands, the port applies where new."""
        if not isinstance(pattern, str):
            raise self.fail(f"host name {pattern!r} is a {type(pattern).__name__}: Ansible "
                            "refuses it; quote it", where)
        try:
            host, port = _split_port(_text(pattern))
            port_number = _port_text(port)
            names = [_name(n) for n in _expand_ranges(host)]
        except _Bad as bad:
            raise self.fail(f"host {bad}", where) from None
        if not names:
            log.warning("%s: %s: the range %r names no host", self.path, where, pattern)
        for name in names:
            if name not in self.hosts:
                self.hosts[name] = {}
                if port_number is not None:   # Ansible: a port only where the host is new
                    self.hosts[name]["ansible_port"] = (port_number, where)
            if name not in self.groups[group].hosts:
                self.groups[group].hosts.append(name)
            for key, value in host_vars.items():
                self.hosts[name][str(key)] = (value, key_where(key))

    def add_child(self, parent: str, child: str, where: str) -> None:
        if parent == child or parent in self.descendants(child):
            raise self.fail(f"making {child!r} a child of {parent!r} creates a loop of groups",
                            where)
        if child not in self.groups[parent].children:
            self.groups[parent].children.append(child)
            self.groups[child].parents.append(parent)

    def descendants(self, name: str) -> List[str]:
        found: List[str] = []
        for child in self.groups[name].children:
            found += [child] + self.descendants(child)
        return found

    def ancestors(self, name: str) -> List[str]:
        found: List[str] = []
        for parent in self.groups[name].parents:
            found += [parent] + self.ancestors(parent)
        return found

    def _reconcile(self) -> None:
        """As ansible-core does after parsing: top groups under all; 'ungrouped' holds exactly
        the hosts in no other group."""
        for name in list(self.groups):
            if name != "all" and not self.groups[name].parents:
                self.add_child("all", name, "")
        ungrouped = self.groups["ungrouped"].hosts
        for host in self.hosts:
            groups = self._direct_groups(host)
            if "ungrouped" in groups and set(groups) - {"all", "ungrouped"}:
                ungrouped.remove(host)
            elif not set(groups) - {"all"}:
                ungrouped.append(host)

    def _direct_groups(self, host: str) -> List[str]:
        return [g.name for g in self.groups.values() if host in g.hosts]

    # ---------------------------------------------------------------- results

    def members(self) -> Members:
        """Each group's hosts in ansible-core's order: its own, then its children's level by
        level (the order --limit subscripts index)."""
        found: Members = {}
        for name in self.groups:
            order, level, seen = [name], list(self.groups[name].children), {name}
            while level:
                order += [g for g in level if g not in seen]
                seen |= set(level)
                level = [c for g in level for c in self.groups[g].children if c not in seen]
            hosts: List[str] = []
            for group in order:
                hosts += [h for h in self.groups[group].hosts if h not in hosts]
            found[name] = hosts
        return found

    def _depth(self, name: str) -> int:
        parents = self.groups[name].parents
        return 1 + max(map(self._depth, parents)) if parents else 0

    def entries(self) -> List[_Entry]:
        """Hosts in order of first appearance, each with the variables that win for it."""
        self._reconcile()
        if not self.hosts:
            raise InventoryError(self.source, "no hosts: the inventory defines no host in any "
                                 "group")
        entries = []
        for name in self.hosts:
            groups = set()
            for group in self._direct_groups(name):
                groups |= {group, *self.ancestors(group)}
            ranked = sorted(groups - {"all"}, key=lambda g: (self._depth(g),
                                                             self.groups[g].priority, g))
            merged: Dict[str, Origin] = {}   # ansible-core's order, nearest last:
            merged.update(self.groups["all"].vars)
            merged.update(self.groups["all"].file_vars)
            for group in ranked:
                merged.update(self.groups[group].vars)
            for group in ranked:
                merged.update(self.groups[group].file_vars)
            merged.update(self.hosts[name])
            merged.update(self.host_files.get(name, {}))
            try:
                settings, refusal = settings_of(name, merged), None
            except Refusal as bad:
                settings, refusal = {}, (bad.problem, bad.key)
            entry = _Entry(name, settings, tuple(sorted(groups | {"all"})), f"host {name}")
            entry.refusal = refusal
            entries.append(entry)
        return entries


# --------------------------------------------------------------------------- sources

def read_ansible(source: str, text: Optional[str] = None) -> Tuple[List[_Entry], Members]:
    """An ``-i`` source as ansible-core reads it: a file or a directory of them, then the
    group_vars/ and host_vars/ beside the file (or inside the directory). ``text``: the file's
    content when the caller has read it already."""
    inventory = AnsibleInventory(source)
    if os.path.isdir(source):
        _read_directory(inventory, source)
    else:
        _read_file(inventory, source, text)
    _read_vars_dirs(inventory, source if os.path.isdir(source) else os.path.dirname(source))
    entries = inventory.entries()
    return entries, inventory.members()


def _read_directory(inventory: AnsibleInventory, path: str) -> None:
    for name in sorted(os.listdir(path)):
        if _IGNORED.search(name):
            continue
        full = os.path.join(path, name)
        if os.path.isdir(full):
            _read_directory(inventory, full)
        else:
            _read_file(inventory, full)


def _text_of(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise InventoryError(path, f"cannot read the inventory: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InventoryError(path, "not a text file (expected UTF-8 YAML or INI)") from exc
    if text.lstrip().startswith("$ANSIBLE_VAULT;"):
        raise InventoryError(path, VAULTED)
    return text


def _read_file(inventory: AnsibleInventory, path: str, text: Optional[str] = None) -> None:
    """YAML first for .yml/.yaml/.json and extensionless files, INI otherwise or when the
    text is not a YAML inventory, as ansible-core's plugins take turns."""
    inventory.path = path
    text = _text_of(path) if text is None else text
    if text.startswith("#!") and os.access(path, os.X_OK):
        raise InventoryError(path, "an executable script: Ansible runs it as a dynamic "
                             "inventory; antnest does not run scripts (save its --list output "
                             "as a YAML file)")
    extension = os.path.splitext(path)[1]
    if extension == ".toml":
        raise InventoryError(path, "TOML inventories are not read; use YAML or INI")
    if extension in _YAML_EXTS:
        data = _load_yaml(text, path)
        if isinstance(data, dict) and data:
            if data.get("plugin"):
                raise InventoryError(path, f"an inventory plugin configuration (plugin: "
                                     f"{data['plugin']}): antnest does not run inventory "
                                     "plugins; save ansible-inventory --list -y as a file")
            return _ansible_yaml(inventory, data)
    _ansible_ini(inventory, text)


def _load_yaml(text: str, path: str) -> Any:
    """The YAML data, or None for INI; broken YAML that starts like YAML is reported as such."""
    yaml, loader = _yaml()
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        first = next((line for line in text.splitlines()
                      if line.strip() and line.strip()[0] not in "#;"), "")
        if not re.match(r"^(---|\{|[^\s=\[]+:\s*$|[^\s=\[]+:\s+\S)", first):
            return None
        mark = getattr(exc, "problem_mark", None)
        raise InventoryError(path, f"not valid YAML: {getattr(exc, 'problem', None) or exc}",
                             f"line {mark.line + 1}" if mark else None) from exc


def _read_vars_dirs(inventory: AnsibleInventory, base: str) -> None:
    """group_vars/<group> and host_vars/<host>: a file named so (no extension, .yml, .yaml,
    .json: the first that exists), or a directory of such files read in name order."""
    for subdir, names, store in (
            ("group_vars", list(inventory.groups),
             lambda n: inventory.groups[n].file_vars),
            ("host_vars", list(inventory.hosts),
             lambda n: inventory.host_files.setdefault(n, {}))):
        folder = os.path.join(os.path.realpath(base or "."), subdir)
        if not os.path.isdir(folder):
            continue
        for name in names:
            if name.startswith(os.path.sep):
                continue
            for path in _vars_files(folder, name):
                data = _vars_file(path)
                target = store(name)
                for key, value in data.items():
                    target[str(key)] = (value, f"{os.path.relpath(path, base or '.')}: {key}")


def _vars_files(folder: str, name: str) -> List[str]:
    for ext in _YAML_EXTS:
        path = os.path.join(folder, name + ext)
        if os.path.exists(path):
            return _dir_files(path) if os.path.isdir(path) else [path]
    return []


def _dir_files(folder: str) -> List[str]:
    found: List[str] = []
    for name in sorted(os.listdir(folder)):
        if name.startswith(".") or name.endswith("~"):
            continue
        path, ext = os.path.join(folder, name), os.path.splitext(name)[1]
        if os.path.isdir(path) and not ext:
            found += _dir_files(path)
        elif os.path.isfile(path) and ext in _YAML_EXTS:
            found.append(path)
    return found


def _vars_file(path: str) -> Dict[Any, Any]:
    text = _text_of(path)
    yaml, loader = _yaml()
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InventoryError(path, f"not valid YAML: {getattr(exc, 'problem', None) or exc}",
                             f"line {mark.line + 1}" if mark else None) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InventoryError(path, f"a vars file must be a mapping of variables, not "
                             f"{type(data).__name__}")
    return data


# --------------------------------------------------------------------------- host ranges

def _expand_ranges(pattern: str) -> List[str]:
    """Ansible host ranges: ``node[01:20]`` (zero padded), ``db-[a:c]``, ``n[0:10:2]`` (step).

    Bounds are zero padded only when the start has a leading zero and more than one digit
    (``[0:10]`` is 0..10, ``[00:10]`` is 00..10); a padded start must be as wide as the end.
    """
    match = re.search(r"\[([^\]]*)\]", pattern)
    if not match or ":" not in match.group(1):
        return [pattern]
    head, tail = pattern[:match.start()], pattern[match.end():]
    bounds = match.group(1).split(":")
    if len(bounds) not in (2, 3):
        raise _Bad(f"range {match.group(0)!r} must be [begin:end] or [begin:end:step]")
    begin, end = bounds[0] or "0", bounds[1]
    if not end:
        raise _Bad(f"range {match.group(0)!r} needs an end value")
    step_text = bounds[2] if len(bounds) == 3 else "1"
    if not step_text.isdigit() or int(step_text) < 1:
        raise _Bad(f"range {match.group(0)!r}: the step must be a whole number of at least 1")
    step = int(step_text)
    width = len(begin) if begin[0] == "0" and len(begin) > 1 else 0
    if width and width != len(end):
        raise _Bad(f"range {match.group(0)!r}: zero padded bounds must have equal length")
    letters = string.ascii_letters
    if begin in letters and end in letters and len(begin) == len(end) == 1:
        if letters.index(begin) > letters.index(end):
            raise _Bad(f"range {match.group(0)!r}: its start is after its end")
        values = list(letters[letters.index(begin):letters.index(end) + 1:step])
    elif begin.isdigit() and end.isdigit():
        values = [str(i).zfill(width) for i in range(int(begin), int(end) + 1, step)]
    else:
        raise _Bad(f"range {match.group(0)!r} is neither [01:20] nor [a:c]")
    return [name for value in values for name in _expand_ranges(head + value + tail)]


# --------------------------------------------------------------------------- YAML

def _ansible_yaml(inventory: AnsibleInventory, data: Mapping[Any, Any]) -> None:
    """Ansible's YAML inventory: every top-level key is a group (usually just ``all``)."""

    def group(name: Any, body: Any, where: str) -> Optional[str]:
        if body is not None and not isinstance(body, dict):
            log.warning("%s: skipping %s: not a group (a mapping with hosts:, children:, "
                        "vars:)", inventory.path, where)
            return None
        this = inventory.group(name, where)
        if body is None:
            return this
        for section in ("vars", "children", "hosts"):
            if isinstance(body.get(section), str):
                body = {**body, section: {body[section]: None}}
            elif not isinstance(body.get(section), (dict, type(None))):
                raise inventory.fail(f"{section}: must be a mapping (name: ...), not "
                                     f"{type(body[section]).__name__}", f"{where}.{section}")
        for key, value in body.items():
            at = f"{where}.{key}"
            if not isinstance(value, (dict, type(None))):
                log.warning("%s: skipping %s: not a mapping", inventory.path, at)
            elif value is None:
                continue
            elif key == "vars":
                for var, var_value in value.items():
                    inventory.set_group_var(this, var, var_value, f"{at}.{var}")
            elif key == "children":
                for child, child_body in value.items():
                    sub = group(child, child_body, f"{at}.{child}")
                    if sub is not None:
                        inventory.add_child(this, sub, f"{at}.{child}")
            elif key == "hosts":
                for pattern, host_vars in value.items():
                    host_at = f"{at}.{pattern}"
                    if host_vars is not None and not isinstance(host_vars, dict):
                        raise inventory.fail(f"host variables must be a mapping, not "
                                             f"{type(host_vars).__name__}", host_at)
                    inventory.add_hosts(this, pattern, host_vars or {}, host_at,
                                        lambda k, h=host_at: f"{h}.{k}")
            else:
                log.warning("%s: skipping %s: a group holds only hosts:, children: and vars: "
                            "(is this a host? put it under hosts:)", inventory.path, at)
        return this

    for name, body in data.items():
        group(name, body, str(name))


# --------------------------------------------------------------------------- INI

def _ansible_ini(inventory: AnsibleInventory, text: str) -> None:
    """Ansible's INI inventory; hosts above the first section are ungrouped."""
    group, state = "ungrouped", "hosts"
    pending: Dict[str, Tuple[str, str, List[str]]] = {}   # group -> (state, line, parents)
    for number, raw in enumerate(text.splitlines(), 1):
        line, where = raw.strip(), f"line {number}"
        if not line or line[0] in "#;":
            continue
        section = _INI_SECTION.match(line)
        if section:
            state = section.group(2) or "hosts"
            if state not in ("hosts", "vars", "children"):
                raise inventory.fail(f"{line!r} is not [group], [group:vars] or "
                                     "[group:children]", where)
            name = section.group(1)
            if name not in inventory.groups and state == "vars" and name not in pending:
                pending[name] = ("vars", where, [])
            group = inventory.group(name, where)
            if group in pending and state != "vars":
                if pending[group][0] == "children":
                    _add_pending(inventory, group, pending)
                else:
                    del pending[group]
            continue
        if line.startswith("[") and line.endswith("]"):
            raise inventory.fail(f"{line!r} is not a section: no spaces or other characters "
                                 "in [group], [group:vars], [group:children]", where)
        if state == "vars":
            key, equals, value = line.partition("=")
            if not equals:
                raise inventory.fail(f"{line!r} is not key=value", where)
            inventory.set_group_var(group, key.strip(), _ini_value(value.strip()),
                                    f"{where}: {key.strip()}")
        elif state == "children":
            child = _INI_CHILD.match(line)
            if not child:
                raise inventory.fail(f"{line!r}: one group name per line in [group:children]",
                                     where)
            name = child.group(1)
            if name in inventory.groups:
                inventory.add_child(group, name, where)
            elif name in pending:
                pending[name][2].append(group)
            else:
                pending[name] = ("children", where, [group])
        else:
            first = line.split()[0]
            if first.endswith(":"):   # YAML read as INI: say why, as Ansible refuses it too
                raise inventory.fail(
                    f"{first!r} ends in ':', reserved for a port. Is this a YAML inventory? "
                    "Ansible (and antnest) read YAML only from files named .yml, .yaml or "
                    ".json, or with no extension: rename the file", where)
            _ini_host_line(inventory, group, line, where)
    for name, (state, where, parents) in pending.items():
        if state == "vars":
            raise inventory.fail(f"[{name}:vars] is for a group that is never defined", where)
        raise inventory.fail(f"[{parents[-1]}:children] names the group {name!r}, which is "
                             f"never defined (add a [{name}] section)", where)


def _add_pending(inventory: AnsibleInventory, group: str,
                 pending: Dict[str, Tuple[str, str, List[str]]]) -> None:
    _, where, parents = pending.pop(group)
    for parent in parents:
        inventory.add_child(parent, group, where)
        if parent in pending and pending[parent][0] == "children":
            _add_pending(inventory, parent, pending)


def _ini_host_line(inventory: AnsibleInventory, group: str, line: str, where: str) -> None:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as exc:
        raise inventory.fail(f"cannot split {line!r}: {exc}", where) from None
    host_vars: Dict[str, Any] = {}
    for token in tokens[1:]:
        key, equals, value = token.partition("=")
        if not equals:
            raise inventory.fail(f"{token!r} is not key=value", where)
        host_vars[key] = _ini_value(value)
    inventory.add_hosts(group, tokens[0], host_vars, where, lambda k: f"{where}: {k}")


def _ini_value(text: str) -> Any:
    """Like Ansible: a Python literal (``2222``, ``0x10``, ``'x'``, ``None``) is read as one,
    anything else is text. Python's own warnings about odd literals stay quiet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)      # '1if', '0x1for'
            warnings.simplefilter("ignore", DeprecationWarning)  # '\\d' before Python 3.12
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return text
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, complex) or value is Ellipsis:
        return str(value) if value is not Ellipsis else "..."
    return value

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

import ast
import difflib
import functools
import getpass
import logging
import os
import re
import shlex
import string
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union

from .errors import InventoryError
from .patterns import select

log = logging.getLogger(__name__)

__all__ = ["LOCAL", "Host", "describe", "load_hosts"]


@dataclass(frozen=True)
class Host:
    """One machine as antnest will use it, after defaults, group vars and ssh_config."""

    name: str                                # alias as written in the inventory
    address: str                             # what to connect to (HostName)
    port: int = 22
    user: Optional[str] = None               # None: the local user, as ssh does
    identity_files: Tuple[str, ...] = ()     # tried in order, after ssh-agent keys
    python: str = "python3"                  # may carry a wrapper: "sudo -n python3"
    procs: Optional[int] = None              # worker processes; None = the host's CPU count
    jump: Tuple["Host", ...] = ()            # ProxyJump chain, first hop first
    proxy_command: Optional[str] = None      # ProxyCommand, %h %p %r already expanded
    connect_timeout: Optional[float] = None  # seconds
    server_alive_interval: Optional[float] = None
    groups: Tuple[str, ...] = ()
    source: str = ""                         # file the host came from, for messages
    local: bool = field(default=False)       # the embedded default: subprocesses, no SSH

    @property
    def label(self) -> str:
        """Short name for logs and tables."""
        return self.name


LOCAL = Host(name="local", address="localhost", local=True, source="(local default)")

PathArg = Union[str, "os.PathLike[str]"]
Hop = Tuple[Optional[str], str, Optional[int]]   # (user, host, port) of one ProxyJump hop


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


# --------------------------------------------------------------------------- shared values

_SETTINGS = ("address", "port", "user", "python", "procs", "identity_file", "proxy_jump",
            "proxy_command", "connect_timeout", "server_alive_interval")
"""Keys an inventory may set, per host or in ``defaults``."""


class _Bad(ValueError):
    """A value's problem, raised before the caller knows the file and key to blame."""


@dataclass
class _Entry:
    """A host as the inventory describes it, before ssh_config is merged underneath."""

    name: str
    settings: Dict[str, Any]   # Host field names -> validated values; absent = not set
    groups: Tuple[str, ...]
    key: str                   # where the host is defined, for messages


def _show(value: Any) -> str:
    return "an empty value" if value is None else f"{value!r} ({type(value).__name__})"


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"must be a non-empty string, not {_show(value)}")
    return value.strip()


def _name(value: Any) -> str:
    name = _text(value)
    if re.search(r"[\s,]", name):
        raise _Bad(f"{name!r} contains a space or a comma; host and group names cannot")
    return name


def _whole(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Bad(f"must be {what}, not {_show(value)}")
    return int(value)


def _port(value: Any) -> int:
    return _whole(value, 1, 65535, "a whole number from 1 to 65535")


def _procs(value: Any) -> Optional[int]:
    if value == "auto":
        return None
    return _whole(value, 1, 1 << 16, 'a whole number of at least 1, or "auto" (one per CPU)')


def _seconds(value: Any, low: float = 0.0, strict: bool = True) -> float:
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or value < low or (strict and value == low):
        raise _Bad(f"must be a number of seconds {'above' if strict else 'from'} {low:g}, "
                   f"not {_show(value)}")
    return float(value)


def _paths(value: Any) -> Tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise _Bad(f"must be a path or a list of paths, not {_show(value)}")
    return tuple(os.path.expanduser(_text(item)) for item in items)


def _proxy_command(value: Any) -> Optional[str]:
    command = _text(value)
    if command.lower() == "none":
        return None
    for token in re.findall(r"%.?", command, re.S):
        if token[1:] not in _PROXY_TOKENS:
            raise _Bad(f"unknown token {token!r} in {command!r}: ProxyCommand knows %h "
                       "(address), %p (port), %r (user), %n (name) and %% (a literal %)")
    return command


_PROXY_TOKENS = ("h", "p", "r", "n", "%")


def _proxy_jump(value: Any) -> Tuple[Hop, ...]:
    hops = value.split(",") if isinstance(value, str) else value
    if not isinstance(hops, list) or not hops:
        raise _Bad(f"must be a jump host, a comma separated chain or a list, not {_show(value)}")
    if len(hops) == 1 and isinstance(hops[0], str) and hops[0].strip().lower() == "none":
        return ()
    return tuple(_target(_text(hop)) for hop in hops)


_CHECKS: Dict[str, Tuple[str, Callable[[Any], Any]]] = {   # inventory key -> (Host field, check)
    "address": ("address", _text),
    "port": ("port", _port),
    "user": ("user", _text),
    "python": ("python", _text),
    "procs": ("procs", _procs),
    "identity_file": ("identity_files", _paths),
    "proxy_jump": ("jump", _proxy_jump),
    "proxy_command": ("proxy_command", _proxy_command),
    "connect_timeout": ("connect_timeout", _seconds),
    "server_alive_interval": ("server_alive_interval", lambda v: _seconds(v, strict=False)),
}


def _split_port(text: str) -> Tuple[str, Optional[str]]:
    """``host:22`` -> (host, "22"); ``[::1]:22`` -> (::1, "22"); ranges and bare IPv6 keep colons."""
    ipv6 = r"[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.%\w]*"   # two colons at least: not a range
    bracketed = re.fullmatch(rf"\[({ipv6})\](?::(.*))?", text)
    if bracketed:
        return bracketed.group(1), bracketed.group(2)
    depth, colons = 0, []
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == ":" and depth == 0:
            colons.append(i)
    if len(colons) != 1:            # no port, or a bare IPv6 address
        return text, None
    return text[:colons[0]], text[colons[0] + 1:]


def _port_text(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    if not text.isdigit():
        raise _Bad(f"port {text!r} is not a number")
    return _port(int(text))


def _target(text: str) -> Hop:
    """``[ssh://][user@]host[:port]``, the form of -H entries and ProxyJump hops."""
    rest = text[len("ssh://"):] if text.startswith("ssh://") else text
    user, at, rest = rest.rpartition("@")
    host, port = _split_port(rest)
    if not host or (at and not user):
        raise _Bad(f"{text!r} is not [user@]host[:port]")
    return user or None, _name(host), _port_text(port)


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


class _Vaulted:
    """An ansible-vault encrypted value: fine to ignore, impossible to use."""


@functools.lru_cache(maxsize=None)
def _yaml() -> Tuple[Any, Any]:
    """PyYAML and a SafeLoader that reads Ansible's ``!vault`` and ``!unsafe`` tags instead of
    failing. Imported on first use: runs without an inventory never pay for it."""
    import yaml

    class _YamlLoader(yaml.SafeLoader):
        pass

    def _unsafe(loader: Any, node: Any) -> Any:
        return loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else None

    _YamlLoader.add_constructor("!vault", lambda loader, node: _Vaulted())
    _YamlLoader.add_constructor("!unsafe", _unsafe)
    return yaml, _YamlLoader


def _check_keys(data: Mapping[Any, Any], allowed: Iterable[str], path: str, where: str) -> None:
    """Unknown keys are typos until proven otherwise; passwords are refused outright."""
    allowed = list(allowed)
    for key in data:
        key_path = f"{where}.{key}" if where else str(key)
        if "pass" in str(key).lower():
            raise InventoryError(path, "passwords never go in inventory files: antnest logs in "
                                 "with SSH keys (identity_file) or ssh-agent", key_path)
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InventoryError(path, f"unknown key; {hint}allowed: {', '.join(allowed)}",
                                 key_path)


# --------------------------------------------------------------------------- native form

def _native(data: Mapping[Any, Any], path: str) -> List[_Entry]:
    """The antnest form: strict, every mistake reported with its key path."""
    _check_keys(data, ("defaults", "groups", "hosts"), path, "")
    defaults = _native_settings(data.get("defaults") or {}, _SETTINGS, path, "defaults")
    raw_hosts = data.get("hosts")
    if not isinstance(raw_hosts, list) or not raw_hosts:
        problem = ("no hosts: list them, e.g. 'hosts: [{name: node1}]'" if not raw_hosts else
                   f"must be a list of hosts ('- name: node1'), not {_show(raw_hosts)}")
        raise InventoryError(path, problem, "hosts")
    entries: Dict[str, _Entry] = {}
    for i, raw in enumerate(raw_hosts):
        where = f"hosts[{i}]"
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict):
            raise InventoryError(path, f"must be a mapping like '{{name: node1}}', not "
                                 f"{_show(raw)}", where)
        _check_keys(raw, ("name", "groups") + _SETTINGS, path, where)
        if "name" not in raw:
            raise InventoryError(path, "missing: every host needs a name", f"{where}.name")
        name = _native_value(_name, raw["name"], path, f"{where}.name")
        if name in entries:
            raise InventoryError(path, f"{name!r} is already defined at {entries[name].key}",
                                 f"{where}.name")
        own = _native_settings({k: v for k, v in raw.items() if k in _SETTINGS}, _SETTINGS,
                               path, where)
        groups = _native_value(_names, raw.get("groups", []), path, f"{where}.groups")
        entries[name] = _Entry(name, _layer(defaults, own), groups, where)
    for group, members in _native_groups(data.get("groups"), entries, path):
        for name in members:
            entries[name].groups += (group,)
    return [_with_implicit_groups(e) for e in entries.values()]


def _native_value(check: Callable[[Any], Any], value: Any, path: str, key: str) -> Any:
    try:
        return check(value)
    except _Bad as bad:
        raise InventoryError(path, str(bad), key) from None


def _native_settings(raw: Any, allowed: Iterable[str], path: str, where: str) -> Dict[str, Any]:
    if not isinstance(raw, dict):
        raise InventoryError(path, f"must be a mapping of settings, not {_show(raw)}", where)
    _check_keys(raw, allowed, path, where)
    if "proxy_jump" in raw and "proxy_command" in raw:
        raise InventoryError(path, "set proxy_jump or proxy_command, not both (ssh uses one)",
                             f"{where}.proxy_command")
    settings = {}
    for key, value in raw.items():
        field_name, check = _CHECKS[key]
        settings[field_name] = _native_value(check, value, path, f"{where}.{key}")
    return settings


def _layer(lower: Mapping[str, Any], upper: Mapping[str, Any]) -> Dict[str, Any]:
    """``upper`` wins; ProxyJump and ProxyCommand are one choice, so setting either hides both."""
    merged = dict(lower)
    if {"jump", "proxy_command"} & set(upper):
        merged.pop("jump", None)
        merged.pop("proxy_command", None)
    merged.update(upper)
    return merged


def _group_name(value: Any) -> str:
    name = _name(value)
    if re.search(r"[:!&]", name):
        raise _Bad(f"{name!r} contains ':', '!' or '&', which --limit patterns use")
    return name


def _names(value: Any) -> Tuple[str, ...]:
    if not isinstance(value, list):
        raise _Bad(f"must be a list of group names, not {_show(value)}")
    names = tuple(_group_name(v) for v in value)
    reserved = {"all", "ungrouped"} & set(names)
    if reserved:
        raise _Bad(f"{sorted(reserved)[0]!r} is implicit: every host is in 'all'")
    return names


def _native_groups(raw: Any, entries: Mapping[str, _Entry], path: str,
                   ) -> List[Tuple[str, List[str]]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise InventoryError(path, f"must map group names to lists of host names, not "
                             f"{_show(raw)}", "groups")
    result = []
    for group, members in raw.items():
        where = f"groups.{group}"
        _native_value(lambda g: _names([g]), group, path, where)
        if not isinstance(members, list):
            raise InventoryError(path, f"must be a list of host names, not {_show(members)}",
                                 where)
        for i, name in enumerate(members):
            if not isinstance(name, str) or name not in entries:
                raise InventoryError(path, f"{name!r} is not a host in 'hosts:'",
                                     f"{where}[{i}]")
        result.append((str(group), [str(m) for m in members]))
    return result


def _with_implicit_groups(entry: _Entry) -> _Entry:
    """Every host is in ``all``; hosts in no other group are in ``ungrouped``, as in Ansible."""
    named = set(entry.groups) - {"all", "ungrouped"}
    entry.groups = tuple(sorted(named | {"all"} | (set() if named else {"ungrouped"})))
    return entry


# --------------------------------------------------------------------------- -H host list

def _parse_host_list(text: str) -> List[_Entry]:
    """``host1,user@host2:2222,[::1]:22``: user and port from the entry, the rest from ssh."""
    entries: Dict[str, _Entry] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            user, host, port = _target(item)
        except _Bad as bad:
            raise InventoryError("-H", str(bad), item) from None
        if host in entries:
            raise InventoryError("-H", f"{host!r} is listed twice", item)
        settings = {k: v for k, v in (("user", user), ("port", port)) if v is not None}
        entries[host] = _with_implicit_groups(_Entry(host, settings, (), item))
    if not entries:
        raise InventoryError("-H", f"no hosts in {text!r}; expected host1,user@host2:2222")
    return list(entries.values())


# --------------------------------------------------------------------------- Ansible forms

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


# --------------------------------------------------------------------------- ssh_config

def _ssh_config_path(ssh_config: Optional[PathArg]) -> Optional[str]:
    if ssh_config is not None:
        return os.path.expanduser(os.fspath(ssh_config))
    default = os.path.expanduser("~/.ssh/config")
    return default if os.path.isfile(default) else None


@functools.lru_cache(maxsize=None)
def _paramiko_config() -> Any:
    """paramiko's ssh_config parser, leaving ProxyCommand tokens to us: it would expand them
    with the ssh_config values instead of the final ones, and it has no ``%%``. Imported on
    first use: runs without an ssh_config never load paramiko here."""
    import paramiko

    class _ParamikoConfig(paramiko.SSHConfig):
        TOKENS_BY_CONFIG_KEY = {key: tokens for key, tokens
                                in paramiko.SSHConfig.TOKENS_BY_CONFIG_KEY.items()
                                if key != "proxycommand"}

    return _ParamikoConfig


class _SshConfig:
    """An ssh_config (parsed by paramiko) answering in Host field names, so layers merge by key."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path or ""
        self._config: Any = None
        self._cache: Dict[str, Dict[str, Any]] = {}
        if not path:
            return
        import paramiko

        try:
            self._config = _paramiko_config().from_path(path)
        except OSError as exc:
            raise InventoryError(path, f"cannot read the ssh config: {exc.strerror or exc}"
                                 ) from exc
        except paramiko.SSHException as exc:
            raise InventoryError(path, f"not a valid ssh config: {exc}") from exc

    def lookup(self, name: str) -> Dict[str, Any]:
        """What ssh_config says about ``name``; keys absent when it says nothing."""
        if self._config is None:
            return {}
        if name not in self._cache:
            self._cache[name] = self._lookup(self._config, name)
        return self._cache[name]

    def _lookup(self, config: Any, name: str) -> Dict[str, Any]:
        import paramiko

        try:
            options = config.lookup(name)
        except (paramiko.SSHException, ImportError) as exc:   # Match exec needs invoke
            raise InventoryError(self.path, f"looking up {name!r} failed: {exc}") from exc
        if "include" in options:
            log.warning("%s: Include is not followed (paramiko does not support it)", self.path)
        found: Dict[str, Any] = {"address": options["hostname"]}   # = name when unset
        readers: Dict[str, Tuple[str, Callable[[str], Any]]] = {
            "port": ("port", lambda v: _port_text(v.strip())),
            "user": ("user", _text),
            "identityfile": ("identity_files", lambda v: tuple(os.path.expanduser(p) for p in v)),
            "connecttimeout": ("connect_timeout", lambda v: _seconds(_number(v))),
            "serveraliveinterval": ("server_alive_interval",
                                    lambda v: _seconds(_number(v), strict=False)),
        }
        for option, value in options.items():
            try:
                if option in readers:
                    field_name, read = readers[option]
                    found[field_name] = read(value)
                elif option in ("proxyjump", "proxycommand") and not (
                        {"jump", "proxy_command"} & set(found)):   # ssh: the first one wins
                    if option == "proxyjump":
                        found["jump"] = _proxy_jump(value)
                    else:
                        found["proxy_command"] = value and _proxy_command(value)
            except _Bad as bad:
                raise InventoryError(self.path, str(bad), f"{option} (for host {name})"
                                     ) from None
        return found

    def resolve(self, entry: _Entry, source: str) -> Host:
        """The inventory's settings over ssh_config's over the built-in defaults."""
        settings = _layer(self.lookup(entry.name), entry.settings)
        return self._host(entry.name, settings, entry.groups, source, {entry.name})

    def _host(self, name: str, settings: Mapping[str, Any], groups: Tuple[str, ...],
              source: str, seen: Set[str]) -> Host:
        address = settings.get("address", name)
        port = settings.get("port", 22)
        user = settings.get("user")
        command = settings.get("proxy_command")
        return Host(
            name=name, address=address, port=port, user=user,
            identity_files=settings.get("identity_files", ()),
            python=settings.get("python", "python3"),
            procs=settings.get("procs"),
            jump=self._chain(settings.get("jump", ()), name, source, seen),
            proxy_command=command and _expand_proxy_command(command, name, address, port, user),
            connect_timeout=settings.get("connect_timeout"),
            server_alive_interval=settings.get("server_alive_interval"),
            groups=groups, source=source,
        )

    def _chain(self, hops: Tuple[Hop, ...], target: str, source: str, seen: Set[str],
               ) -> Tuple[Host, ...]:
        """Flatten a ProxyJump chain into Hosts, first hop first.

        As in OpenSSH, only the first hop's own ProxyJump/ProxyCommand is used (it is how that
        hop is reached); later hops are reached through the chain itself.
        """
        chain: List[Host] = []
        for i, (user, host, port) in enumerate(hops):
            if host in seen:
                raise InventoryError(self.path or source, f"ProxyJump loops back to {host!r} "
                                     f"(while resolving {target!r})")
            settings = dict(self.lookup(host))
            if i > 0:
                settings.pop("jump", None)
                settings.pop("proxy_command", None)
            settings.update({k: v for k, v in (("user", user), ("port", port)) if v is not None})
            hop = self._host(host, settings, (), source, seen | {host})
            chain += list(hop.jump) + [replace(hop, jump=())]
        return tuple(chain)


def _number(text: str) -> Union[int, str]:
    return int(text) if text.strip().isdigit() else text


def _expand_proxy_command(command: str, name: str, address: str, port: int,
                          user: Optional[str]) -> str:
    """Expand tokens as OpenSSH does; also a leading ``~``, since it may run without a shell."""
    if user is None:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):   # no login name in a bare container
            user = ""
    values = {"h": address, "p": str(port), "r": user, "n": name, "%": "%"}
    command = re.sub(r"(?<!\S)~(?=/|\s|$)", lambda _: os.path.expanduser("~"), command)
    return re.sub(r"%(.)", lambda m: values[m.group(1)], command)

"""The native antnest YAML form and the -H host list."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Tuple

from ..errors import InventoryError
from .values import (
    _Bad, _check_keys, _CHECKS, _Entry, _group_name, _layer, _name, _SETTINGS, _show, _target
)


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
        entries[name] = _Entry(name, own, groups, where)
    group_settings: Dict[str, Dict[str, Any]] = {}
    for group, members, settings in _native_groups(data.get("groups"), entries, path):
        group_settings[group] = settings
        for name in members:
            entries[name].groups += (group,)
    for entry in entries.values():  # defaults < its groups, in the file's order < the host
        layered = defaults
        for group in group_settings:
            if group in entry.groups:
                layered = _layer(layered, group_settings[group])
        entry.settings = _layer(layered, entry.settings)
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






def _names(value: Any) -> Tuple[str, ...]:
    if not isinstance(value, list):
        raise _Bad(f"must be a list of group names, not {_show(value)}")
    names = tuple(_group_name(v) for v in value)
    reserved = {"all", "ungrouped"} & set(names)
    if reserved:
        raise _Bad(f"{sorted(reserved)[0]!r} is implicit: every host is in 'all'")
    return names


_GROUP_SETTINGS = ("env", "workdir")
"""What a native group may set for its hosts (as a mapping: {hosts: [...], env: {...}})."""


def _native_groups(raw: Any, entries: Mapping[str, _Entry], path: str,
                   ) -> List[Tuple[str, List[str], Dict[str, Any]]]:
    """Each group as (name, members, settings): a list of host names, or a mapping with
    ``hosts:`` and the settings its hosts get (env, workdir)."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise InventoryError(path, f"must map group names to lists of host names, not "
                             f"{_show(raw)}", "groups")
    result = []
    for group, body in raw.items():
        where = f"groups.{group}"
        _native_value(lambda g: _names([g]), group, path, where)
        settings: Dict[str, Any] = {}
        members = body
        if isinstance(body, dict):
            _check_keys(body, ("hosts",) + _GROUP_SETTINGS, path, where)
            members = body.get("hosts", [])
            settings = _native_settings({k: v for k, v in body.items() if k != "hosts"},
                                        _GROUP_SETTINGS, path, where)
            where += ".hosts"
        if not isinstance(members, list):
            raise InventoryError(path, f"must be a list of host names, not {_show(members)}",
                                 where)
        for i, name in enumerate(members):
            if not isinstance(name, str) or name not in entries:
                raise InventoryError(path, f"{name!r} is not a host in 'hosts:'",
                                     f"{where}[{i}]")
        result.append((str(group), [str(m) for m in members], settings))
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



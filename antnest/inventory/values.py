"""Shared value checks of every inventory reader: each raises _Bad, the caller names the file and key."""
from __future__ import annotations

import difflib
import functools
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

from ..errors import InventoryError

PathArg = Union[str, "os.PathLike[str]"]
Hop = Tuple[Optional[str], str, Optional[int]]   # (user, host, port) of one ProxyJump hop


# --------------------------------------------------------------------------- shared values

_SETTINGS = ("address", "port", "user", "python", "procs", "identity_file", "proxy_jump",
            "proxy_command", "connect_timeout", "server_alive_interval", "env", "workdir",
            "ssh_client", "relay")
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
    refusal: Optional[Tuple[str, str]] = None   # (problem, key): unusable, if ever selected


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


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _env(value: Any) -> Tuple[Tuple[str, str], ...]:
    """``env: {NAME: value}``: names as a shell accepts them; numbers and booleans as text."""
    if not isinstance(value, dict):
        raise _Bad(f"must be a mapping of variable names to values, like "
                   f"'{{LANG: C.UTF-8}}', not {_show(value)}")
    pairs = []
    for name, item in value.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise _Bad(f"{name!r} is not an environment variable name (letters, digits and _, "
                       "not starting with a digit)")
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, (int, float)):
            item = str(item)
        elif not isinstance(item, str):
            raise _Bad(f"{name}: must be a string or a number, not {_show(item)}")
        pairs.append((name, item))
    return tuple(pairs)


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
    "env": ("env", _env),
    "workdir": ("workdir", _text),
    "ssh_client": ("ssh_client", lambda v: _choice(v, ("paramiko", "openssh", "auto"))),
    "relay": ("relay", _name),
}


def _choice(value: Any, choices: Tuple[str, ...]) -> str:
    if value not in choices:
        raise _Bad(f"must be one of {', '.join(choices)}, not {_show(value)}")
    return str(value)


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
    if ":" in host and not _is_ipv6(host):
        raise _Bad(f"{host!r} is neither a host name nor an IPv6 address "
                   "(write an address with a port as [::1]:2222)")
    return user or None, _name(host), _port_text(port)


def _is_ipv6(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


class _Vaulted:
    """An ansible-vault encrypted value: fine to ignore, impossible to use."""


@functools.lru_cache(maxsize=None)
def _yaml() -> Tuple[Any, Any]:
    """PyYAML and a SafeLoader that reads Ansible's ``!vault`` and ``!unsafe`` tags instead of
    failing. Imported on first use: runs without an inventory never pay for it. libyaml's
    parser when PyYAML has it (the same documents, about 10x faster: the pure-Python one
    took most of the time to read a 200-host inventory)."""
    import yaml

    class _YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
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

def _layer(lower: Mapping[str, Any], upper: Mapping[str, Any]) -> Dict[str, Any]:
    """``upper`` wins; ProxyJump and ProxyCommand are one choice, so setting either hides both."""
    merged = dict(lower)
    if {"jump", "proxy_command"} & set(upper):
        merged.pop("jump", None)
        merged.pop("proxy_command", None)
    merged.update(upper)
    if "env" in lower and "env" in upper:  # variables add up, by name; the upper value wins
        merged["env"] = tuple({**dict(lower["env"]), **dict(upper["env"])}.items())
    return merged


def _group_name(value: Any) -> str:
    name = _name(value)
    if re.search(r"[:!&]", name):
        raise _Bad(f"{name!r} contains ':', '!' or '&', which --limit patterns use")
    return name

"""ssh_config merged underneath the inventory's settings.

OpenSSH resolves it (``ssh -G``) when an ``ssh`` binary is on PATH, else antnest's reader in
``ssh_options`` does, by the same rules; ``options_to_fields`` maps either answer onto Host
fields.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple, Union

from ..errors import InventoryError
from ..host import Host
from .ssh_options import (
    DEFAULT_GLOBAL_KNOWN_HOSTS, DEFAULT_IDENTITIES, DEFAULT_USER_KNOWN_HOSTS, ConfigError,
    Options, default_ciphers, expand_path, local_user, resolve_many, ssh_home, ssh_user, tokens_for
)
from .values import (
    _Bad, _Entry, Hop, _layer, PathArg, _port_text, _proxy_command, _proxy_jump, _seconds,
    _text
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- ssh_config

def _ssh_config_path(ssh_config: Optional[PathArg]) -> Optional[str]:
    """The file given with -F, expanded; None: OpenSSH's defaults (~/.ssh/config, then
    /etc/ssh/ssh_config)."""
    if ssh_config is not None:
        return os.path.expanduser(os.fspath(ssh_config))
    return None


def _reader_choice() -> Optional[bool]:
    """``ANTNEST_SSH_CONFIG_READER``: ``ssh`` (ssh -G), ``builtin`` (the fallback reader) or
    unset (ssh -G when an ``ssh`` binary is on PATH)."""
    choice = os.environ.get("ANTNEST_SSH_CONFIG_READER", "").strip().lower()
    return {"ssh": True, "builtin": False}.get(choice)


class _SshConfig:
    """ssh_config as OpenSSH resolves it, answering in Host field names so layers merge by key.

    One lookup per name for the run: ``prefetch`` resolves every inventory name at once
    (``ssh -G`` in parallel); jump hosts found later are looked up one by one, then cached.
    """

    def __init__(self, path: Optional[str], use_ssh: Optional[bool] = None) -> None:
        self.path = path or ""
        self._given = path
        self._use_ssh = _reader_choice() if use_ssh is None else use_ssh
        self._cache: Dict[str, Dict[str, Any]] = {}
        if path is not None and path != "none" and not os.path.isfile(path):
            reason = "no such file" if not os.path.exists(path) else "not a file"
            raise InventoryError(path, f"cannot read the ssh config: {reason}")

    def prefetch(self, names: Iterable[str]) -> None:
        """Resolve every name not yet cached, in parallel."""
        wanted = [n for n in dict.fromkeys(names) if n not in self._cache]
        if not wanted:
            return
        try:
            found = resolve_many(wanted, self._given, self._use_ssh)
        except ConfigError as exc:
            raise InventoryError(exc.path, exc.problem,
                                 f"line {exc.line}" if exc.line else None) from None
        for name, options in found.items():
            self._cache[name] = self._fields(name, options)

    def lookup(self, name: str) -> Dict[str, Any]:
        """What ssh_config says about ``name``; keys absent when it says nothing."""
        if name not in self._cache:
            self.prefetch([name])
        return self._cache[name]

    def options(self, name: str) -> Options:
        """The raw options for ``name``, in ``ssh -G``'s shape (for tests and diagnostics)."""
        return resolve_many([name], self._given, self._use_ssh)[name]

    def _fields(self, name: str, options: Options) -> Dict[str, Any]:
        """ssh -G's answer as Host fields; what equals OpenSSH's default is left out, so the
        inventory and antnest's own defaults still apply."""
        return options_to_fields(name, options, self.path or "ssh_config")

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
        tokens = tokens_for(name, address, str(port), user or local_user(),
                            os.path.expanduser("~"))
        return Host(
            name=name, address=address, port=port, user=user,
            identity_files=tuple(expand_path(p, tokens) for p in
                                 settings.get("identity_files", ())),
            python=settings.get("python", "python3"),
            procs=settings.get("procs"),
            jump=self._chain(settings.get("jump", ()), name, source, seen),
            proxy_command=command and _expand_proxy_command(command, name, address, port, user),
            connect_timeout=settings.get("connect_timeout"),
            server_alive_interval=settings.get("server_alive_interval"),
            groups=groups, source=source,
            env=settings.get("env", ()), workdir=settings.get("workdir"),
            user_known_hosts=settings.get("user_known_hosts", ()),
            global_known_hosts=settings.get("global_known_hosts", ()),
            host_key_checking=settings.get("host_key_checking"),
            identities_only=settings.get("identities_only", False),
            ciphers=settings.get("ciphers"),
            ssh_config=self._given if self._given not in (None, "none") else None,
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


def options_to_fields(name: str, options: Options, path: str) -> Dict[str, Any]:
    """Options in ``ssh -G``'s shape (from ssh -G or the fallback reader) as Host fields. Values equal to OpenSSH's defaults are
    left out, so layers underneath and antnest's defaults still apply."""
    found: Dict[str, Any] = {}
    home = ssh_home()
    current = "hostname"

    def one(key: str) -> Optional[str]:
        nonlocal current
        current = key
        values = options.get(key)
        return values[0] if values else None

    try:
        hostname = one("hostname")
        if hostname is not None and hostname != name.lower():   # ssh lower-cases every name
            found["address"] = hostname
        port = one("port")
        if port is not None and port != "22":
            found["port"] = _port_text(port)
        user = one("user")
        if user is not None and user not in (local_user(), ssh_user()):
            found["user"] = _text(user)
        current = "identityfile"
        identities = options.get("identityfile")
        if identities and tuple(identities) != DEFAULT_IDENTITIES:
            found["identity_files"] = tuple(identities)
        for key, field_name, default in (
                ("userknownhostsfile", "user_known_hosts", DEFAULT_USER_KNOWN_HOSTS),
                ("globalknownhostsfile", "global_known_hosts", DEFAULT_GLOBAL_KNOWN_HOSTS)):
            text = one(key)
            if text is None:
                continue
            files = tuple(text.split())
            defaults = {tuple(expand_path(f, {}, h) for f in default)
                        for h in (home, os.path.expanduser("~"))}
            if files not in defaults:
                found[field_name] = ("/dev/null",) if files == ("none",) else files
        for key, field_name, strict in (("connecttimeout", "connect_timeout", True),
                                        ("serveraliveinterval", "server_alive_interval", False)):
            text = one(key)
            if text is not None and text not in ("none", "0"):
                if key == "serveraliveinterval" and text == "300" and (
                        one("batchmode") or "no") == "yes":
                    continue   # BatchMode's implied 300 s: antnest keeps its own dead-peer check
                found[field_name] = _seconds(_number(text), strict=strict)
        checking = one("stricthostkeychecking")
        if checking is not None and checking != "ask":
            found["host_key_checking"] = {"true": "yes", "yes": "yes", "false": "no",
                                          "no": "no", "off": "no"}.get(checking, checking)
            if found["host_key_checking"] not in ("yes", "no", "accept-new"):
                raise _Bad(f"StrictHostKeyChecking {checking!r} is not yes, no or accept-new")
        if (one("identitiesonly") or "no").lower() in ("yes", "true"):
            found["identities_only"] = True
        ciphers = one("ciphers")   # ssh -G always prints the list: set means not the default
        if ciphers is not None and ciphers.split(",") != list(default_ciphers()):
            found["ciphers"] = ciphers
        jump, command = one("proxyjump"), one("proxycommand")
        if jump is not None and jump != "none":
            found["jump"] = _proxy_jump(jump)
        elif command is not None and command != "none":
            found["proxy_command"] = _proxy_command(command)
    except _Bad as bad:
        raise InventoryError(path, str(bad), f"{current} (for host {name})") from None
    return found


def _expand_proxy_command(command: str, name: str, address: str, port: int,
                          user: Optional[str]) -> str:
    """Expand tokens as OpenSSH does; the command then runs through the user's shell."""
    values = {"h": address, "p": str(port), "r": user or local_user(), "n": name, "%": "%"}
    return re.sub(r"%(.)", lambda m: values.get(m.group(1), m.group(0)), command)


"""ssh_config merged underneath the inventory's settings."""
from __future__ import annotations

import functools
import getpass
import logging
import os
import re
from dataclasses import replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple, Union

from ..errors import InventoryError
from ..host import Host
from .values import (
    _Bad, _Entry, Hop, _layer, PathArg, _port_text, _proxy_command, _proxy_jump, _seconds,
    _text
)

log = logging.getLogger(__name__)


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
            env=settings.get("env", ()), workdir=settings.get("workdir"),
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


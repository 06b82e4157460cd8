"""Which host reaches which through a relay (antnest.transport.relay): the inventory's
``relay:`` (``antnest_relay`` in Ansible inventories), then ``--relay`` for the run.

    relay: site-a-gw          this host (or group) is reached through the host site-a-gw
    --relay auto              one relay per 32 hosts: the first of each 32 relays the other 31
    --relay auto:N            ... per N hosts
    --relay gw1,gw2           these hosts relay all the others, shared out in turn
    --relay none              every host direct, whatever the inventory says

A relay is itself a host of the run's inventory, reached directly; relays are one level deep.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Sequence

from ..errors import InventoryError, UsageError
from ..host import Host

AUTO_SHARE = 32   # hosts per relay with --relay auto: 1 relay + 31 behind it


def attach(hosts: Sequence[Host], wanted: Dict[str, str], source: str) -> List[Host]:
    """Hosts with the relay their inventory names (`wanted`: host name -> relay name)."""
    by_name = {h.name: h for h in hosts}
    out = []
    for host in hosts:
        name = wanted.get(host.name)
        if name is None or name == host.name:   # a relay for itself: it is reached directly
            out.append(host)
            continue
        relay = by_name.get(name)
        if relay is None:
            raise InventoryError(source, f"host {host.name}: its relay {name!r} is not a host "
                                 "of this inventory (a relay is reached directly, so it must "
                                 "be one)", "relay")
        problem = _unfit(relay, wanted.get(relay.name))
        if problem:
            raise InventoryError(source, f"host {host.name}: its relay {name} {problem}", "relay")
        out.append(dataclasses.replace(host, relay=relay))
    return out


def _unfit(relay: Host, relay_of_relay: Optional[str]) -> Optional[str]:
    if relay.transport != "ssh":
        return f"is reached by {relay.transport!r}, not SSH: a relay must be an SSH host"
    if relay_of_relay not in (None, relay.name) or relay.relay is not None:
        return (f"has a relay itself ({relay_of_relay or relay.relay.name}): "  # type: ignore[union-attr]
                "relays are one level deep")
    return None


def assign(hosts: Sequence[Host], spec: Optional[str]) -> List[Host]:
    """Apply ``--relay SPEC`` (see the module doc) to the selected hosts."""
    if spec is None:
        return list(hosts)
    spec = spec.strip()
    if spec == "none":
        return [dataclasses.replace(h, relay=None) for h in hosts]
    remote = [h for h in hosts if h.transport == "ssh"]
    auto = re.fullmatch(r"auto(?::(\d+))?", spec)
    if auto:
        share = int(auto.group(1) or AUTO_SHARE)
        if share < 2:
            raise UsageError(f"--relay {spec}: a relay needs at least one host behind it "
                             "(auto:N with N of 2 or more)")
        relays: Dict[str, Host] = {}
        leader = None
        for i, host in enumerate(remote):
            if i % share == 0:
                leader = dataclasses.replace(host, relay=None)
            assert leader is not None
            relays[host.name] = leader
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
        by_name = {h.name: h for h in hosts}
        missing = [n for n in names if n not in by_name]
        if not names or missing:
            raise UsageError(f"--relay {spec}: {', '.join(missing) or 'no host'} is not among "
                             "the selected hosts; name relays from the inventory (see "
                             "`antnest inventory`), or use auto, auto:N or none")
        chosen = [dataclasses.replace(by_name[n], relay=None) for n in names]
        for relay in chosen:
            problem = _unfit(relay, None)
            if problem:
                raise UsageError(f"--relay {spec}: {relay.name} {problem}")
        relays = {}
        others = [h for h in remote if h.name not in names]
        for i, host in enumerate(others):
            relays[host.name] = chosen[i % len(chosen)]
        for relay in chosen:
            relays[relay.name] = relay
    out = []
    for host in hosts:
        via = relays.get(host.name)
        if via is None:
            out.append(host)
        else:   # a relay itself is reached directly
            out.append(dataclasses.replace(host, relay=None if via.name == host.name else via))
    return out

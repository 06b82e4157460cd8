"""Ansible host patterns, for ``--limit``: pick hosts by name, group, glob and set operations.

    web1            a host or a group          all, *      every host
    web*            fnmatch glob (node[0-9]*)  a:b, a,b    union
    a:&b            intersection               a:!b        exclusion

Terms are applied in Ansible's order whatever their position: unions first, then
intersections, then exclusions (``!canary`` alone means ``all:!canary``). The result keeps the
inventory's host order. Unlike Ansible, a glob never matches the implicit groups ``all`` and
``ungrouped``: ``a*`` means hosts and groups starting with "a", not every host.
"""
from __future__ import annotations

import logging
import re
from fnmatch import fnmatchcase
from typing import List, Sequence, Set

from .errors import InventoryError
from .host import Host

log = logging.getLogger(__name__)

_GLOB = ("*", "?", "[", ".")   # Ansible also tries host names when a term has one of these
_IMPLICIT = ("all", "ungrouped")   # matched by exact name only, so "a*" is not "all"


def select(hosts: Sequence[Host], pattern: str) -> List[Host]:
    """The hosts ``pattern`` names, in inventory order; a pattern naming none is an error."""
    groups = {group for host in hosts for group in host.groups} | {"all"}
    known = groups | {host.name for host in hosts}
    terms = _terms(pattern, known)
    if not terms:
        raise InventoryError("--limit", f"{pattern!r} names no host or group")
    unions = [t for t in terms if t[0] not in "&!"] or ["all"]
    chosen: Set[str] = set()
    for term in unions:
        chosen |= _match(term, hosts, groups)
    for term in (t[1:] for t in terms if t[0] == "&"):
        chosen &= _match(term, hosts, groups)
    for term in (t[1:] for t in terms if t[0] == "!"):
        chosen -= _match(term, hosts, groups)
    result = [host for host in hosts if host.name in chosen]
    if not result:
        raise InventoryError("--limit", f"{pattern!r} matches no host; groups are: "
                             f"{', '.join(sorted(groups))}")
    return result


def _terms(pattern: str, known: Set[str]) -> List[str]:
    """Split on ',' and on ':' outside brackets, keeping whole names that contain ':' (IPv6)."""
    terms: List[str] = []
    for part in pattern.split(","):
        for piece in filter(None, (p.strip() for p in _split_colons(part, known))):
            name = piece[1:] if piece[0] in "&!" else piece
            if not name or name[0] in "&!":
                raise InventoryError("--limit", f"{pattern!r}: {piece!r} needs one '&' or '!' "
                                     "followed by a host or group name")
            terms.append(piece)
    return terms


def _split_colons(part: str, known: Set[str]) -> List[str]:
    """``a:&b:!c`` -> ``a``, ``&b``, ``!c``; pieces re-joined where they spell a known name."""
    pieces = re.split(r":(?![^\[]*\])", part)   # not the ':' of a [range]
    joined: List[str] = []
    i = 0
    while i < len(pieces):
        end = next((j for j in range(len(pieces), i + 1, -1)
                    if ":".join(pieces[i:j]).strip().lstrip("&!") in known), i + 1)
        joined.append(":".join(pieces[i:end]))
        i = end
    return joined


def _match(term: str, hosts: Sequence[Host], groups: Set[str]) -> Set[str]:
    """Names of hosts ``term`` matches: groups first, host names when no group matched."""
    if term in ("all", "*"):
        return {host.name for host in hosts}
    matched = {group for group in groups
               if group == term or (group not in _IMPLICIT and fnmatchcase(group, term))}
    names = {host.name for host in hosts if matched & set(host.groups)}
    if not matched or any(char in term for char in _GLOB):
        names |= {host.name for host in hosts if fnmatchcase(host.name, term)}
    if not names:
        log.warning("--limit: %r matches no host or group; ignoring it", term)
    return names

"""Ansible host patterns, for ``--limit``: the hosts ansible-core's ``--limit`` picks, no more.

    web1            a host or a group          all, *      every host
    web*            fnmatch glob               ~web\\d      regex (matched from the start)
    a:b, a,b        union                      a:&b, a:!b  intersection, exclusion
    app[0]          first host of group app    app[-1]     its last host
    app[1:3]        second to fourth host      app[2:]     third host to the end
    @retry.txt      one pattern per line of the file (Ansible's retry files)

The rules are ansible-core's (checked against it by tests/test_ansible_parity.py):

- With a ',' anywhere the pattern splits on commas only; otherwise on ':' outside brackets,
  unless the whole pattern is one address (IPv6 names keep their colons).
- Unions apply first, then intersections, then exclusions, whatever their position;
  ``!canary`` alone means ``all:!canary``. An empty pattern (or ``,,``) means every host.
- A term naming a host exactly picks it; otherwise it is matched against group names (``all``
  and ``ungrouped`` included, so ``a*`` is every host, as in Ansible) and, when no group
  matched or the term has a glob character or is a regex, against host names too.
- Subscripts index the term's matches in Ansible's group order (a group's own hosts, then its
  children's); ``[x:y]`` includes both ends, ``[x:0]`` is ``[x]``; an index past the end is
  an error. The removed ``[x-y]`` form warns and still acts as ``[x:y]``, as ansible-core does.

The result keeps the inventory's host order.
"""
from __future__ import annotations

import logging
import os
import re
from fnmatch import translate
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import InventoryError
from .host import Host

log = logging.getLogger(__name__)

Members = Mapping[str, Sequence[str]]   # group -> its hosts (children's included), in order

_SUBSCRIPT = re.compile(r"^(.+)\[(?:(-?[0-9]+)|([0-9]+)([:-])([0-9]*))\]$")
_SPECIAL = (".", "?", "*", "[")   # a term with one of these also tries host names
_ADDRESS = re.compile(r"\[?[0-9A-Fa-f]*:[0-9A-Fa-f:.%\[\]]*\]?(?::[0-9]+)?")


def select(hosts: Sequence[Host], pattern: str, members: Optional[Members] = None,
           ) -> List[Host]:
    """The hosts ``pattern`` names, in inventory order. A pattern selecting no host is an error;
    a term matching nothing while the others select hosts is a warning (Ansible's rule).

    ``members`` gives each group's hosts in Ansible's order (the Ansible reader knows it);
    without it, groups come from ``Host.groups`` in inventory order.
    """
    members = members if members is not None else _members(hosts)
    names = [host.name for host in hosts]
    terms = _limit_terms(pattern)
    unmatched: List[str] = []
    chosen = set(_evaluate(terms, names, members, unmatched)) if terms else set(names)
    result = [host for host in hosts if host.name in chosen]
    if not result:
        nothing = f" ({', '.join(map(repr, unmatched))} matches no host or group)" if unmatched else ""
        raise InventoryError("--limit", f"{pattern!r} matches no host{nothing}; groups are: "
                             f"{', '.join(sorted(members))}")
    for term in unmatched:  # as Ansible does: the rest of the pattern still selects hosts
        log.warning("--limit: %r matches no host or group; going on with the %d host(s) the "
                    "rest of %r selects", term, len(result), pattern)
    return result


def _members(hosts: Sequence[Host]) -> Dict[str, List[str]]:
    found: Dict[str, List[str]] = {"all": [host.name for host in hosts], "ungrouped": []}
    for host in hosts:
        for group in host.groups:
            if group != "all":
                found.setdefault(group, []).append(host.name)
    return found


def _limit_terms(pattern: str) -> List[str]:
    """Split as ``--limit`` does; ``@file`` pieces become the file's lines."""
    terms: List[str] = []
    for piece in split_pattern(pattern):
        if piece.startswith("@"):
            terms += _pattern_file(piece[1:])
        else:
            terms.append(piece)
    return terms


def split_pattern(pattern: str) -> List[str]:
    """``a,b[1], c[2:3]`` -> a, b[1], c[2:3]; without commas ``a:&b`` -> a, &b."""
    if "," in pattern:
        pieces = pattern.split(",")
    elif _ADDRESS.fullmatch(pattern.strip()) and pattern.count(":") >= 2:
        pieces = [pattern]
    else:
        pieces = re.findall(r"(?:[^\s:\[\]]|\[[^\]]*\])+", pattern)
    return [p.strip() for p in pieces if p.strip()]


def _pattern_file(path: str) -> List[str]:
    if not os.path.exists(path):
        raise InventoryError("--limit", f"no limit file {path!r} (an @ pattern names a file of "
                             "host patterns, one a line)")
    if not os.path.isfile(path):
        raise InventoryError("--limit", f"@{path} must be a file, not a directory")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f.read().split("\n")]
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError("--limit", f"cannot read limit file {path!r}: {exc}") from exc


def _evaluate(terms: List[str], names: List[str], members: Members,
              unmatched: List[str]) -> List[str]:
    """Ansible's order: unions, then intersections, then exclusions."""
    terms = [t for t in terms if t]
    for term in terms:
        if term[0] in "&!" and (len(term) == 1 or term[1] in "&!"):
            raise InventoryError("--limit", f"{term!r} needs one '&' or '!' followed by a host "
                                 "or group name")
    unions = [t for t in terms if t[0] not in "&!"] or ["all"]
    ordered = unions + [t for t in terms if t[0] == "&"] + [t for t in terms if t[0] == "!"]
    known = set(names)
    chosen: List[str] = []
    for term in ordered:
        if term in known:
            chosen.append(term)
            continue
        that = _match_one(term[1:] if term[0] in "&!" else term, names, members, unmatched)
        if term[0] == "!":
            chosen = [n for n in chosen if n not in set(that)]
        elif term[0] == "&":
            chosen = [n for n in chosen if n in set(that)]
        else:
            chosen += [n for n in that if n not in set(chosen)]
    return chosen


def _match_one(term: str, names: List[str], members: Members,
               unmatched: Optional[List[str]] = None) -> List[str]:
    expr, subscript = _split_subscript(term)
    found = _enumerate(expr, names, members, unmatched)
    if not found or subscript is None:
        return found
    start, end = subscript
    try:
        if end:
            return found[start:(len(found) - 1 if end == -1 else end) + 1]
        return [found[start]]
    except IndexError:
        raise InventoryError("--limit", f"{term!r}: the group has {len(found)} host(s), "
                             f"there is no index {start} (indexes count from 0)") from None


def _split_subscript(term: str) -> Tuple[str, Optional[Tuple[int, int]]]:
    if term.startswith("~"):
        return term, None
    match = _SUBSCRIPT.match(term)
    if not match:
        return term, None
    expr, index, start, sep, end = match.groups()
    if index:
        return expr, (int(index), 0)
    if sep == "-":
        log.warning("--limit %r: use [x:y] inclusive subscripts instead of [x-y], which "
                    "Ansible removed (read as [x:y], as ansible-core does)", term)
    return expr, (int(start), int(end) if end else -1)


def _enumerate(expr: str, names: List[str], members: Members,
               unmatched: Optional[List[str]] = None) -> List[str]:
    try:
        regex = re.compile(expr[1:] if expr.startswith("~") else translate(expr))
    except re.error as exc:
        raise InventoryError("--limit", f"{expr!r} is not a valid pattern: {exc}") from None
    found: List[str] = []
    groups = [group for group in members if regex.match(group)]
    for group in groups:
        found += members[group]
    if not groups or expr.startswith("~") or any(c in expr for c in _SPECIAL):
        found += [name for name in names if regex.match(name)]
    if not found and not groups and expr != "all" and unmatched is not None:
        unmatched.append(expr)   # select() warns, or names it in its error
    return found

"""ssh_config resolved as OpenSSH resolves it: by ``ssh -G`` when the binary exists, else by a
reader that follows OpenSSH's rules (readconf.c) for what decides where and how to connect.

Both answer in the shape ``ssh -G`` prints: lower-case option -> list of values, one per line
(``identityfile`` may repeat; ``userknownhostsfile`` is one line of space-separated files).
``antnest.inventory.ssh_config`` turns that into Host fields, the same code for both, so the
parity test can compare the two answers field by field.
"""
from __future__ import annotations

import functools
import getpass
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

Options = Dict[str, List[str]]

SYSTEM_CONFIG = "/etc/ssh/ssh_config"
MAX_INCLUDE_DEPTH = 16          # OpenSSH's READCONF_MAX_DEPTH
SSH_G_TIMEOUT = 30.0            # seconds; Match exec may run a slow command
SSH_G_AUTO_MAX = 64             # more names than this: the reader (ssh -G costs ~5 ms CPU each)

# Options whose every occurrence counts (the rest: the first value obtained wins).
_MULTI = frozenset({"identityfile", "certificatefile", "localforward", "remoteforward",
                    "dynamicforward", "sendenv", "setenv"})
# Options whose value is the rest of the line, unsplit (OpenSSH's parse_command).
_COMMANDS = frozenset({"proxycommand", "localcommand", "remotecommand", "knownhostscommand"})

DEFAULT_IDENTITIES = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ecdsa_sk",
                      "~/.ssh/id_ed25519", "~/.ssh/id_ed25519_sk", "~/.ssh/id_xmss",
                      "~/.ssh/id_dsa")
DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


class ConfigError(ValueError):
    """A problem in an ssh_config file: ``path`` and ``line`` say where."""

    def __init__(self, path: str, problem: str, line: Optional[int] = None) -> None:
        super().__init__(problem)
        self.path = path
        self.problem = problem
        self.line = line


# --------------------------------------------------------------------------- tokens

def local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):   # no login name in a bare container
        return ""


def ssh_user() -> str:
    """The local user name OpenSSH uses (the password database's, not $USER)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return local_user()


def ssh_home() -> str:
    """The home directory OpenSSH uses for ``~`` and ``%d``: the password database's."""
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return os.path.expanduser("~")


def expand_path(text: str, tokens: Dict[str, str], home: Optional[str] = None) -> str:
    """``~``, ``${VAR}`` and ``%x`` tokens, as OpenSSH expands IdentityFile and friends.

    An unknown token or variable is left as written (OpenSSH refuses the option instead).
    """
    home = home if home is not None else os.path.expanduser("~")
    if text == "~" or text.startswith("~/"):
        text = home + text[1:]
    elif text.startswith("~"):
        text = os.path.expanduser(text)
    text = re.sub(r"\$\{(\w+)\}", lambda m: os.environ.get(m.group(1), m.group(0)), text)
    return re.sub(r"%(.)", lambda m: tokens.get(m.group(1), m.group(0)), text)


def tokens_for(name: str, hostname: str, port: str, user: str, home: str) -> Dict[str, str]:
    """The ``%`` tokens OpenSSH knows for a connection (%C and %k are not offered)."""
    local = socket.gethostname()
    return {"%": "%", "d": home, "u": local_user(), "l": local, "L": local.split(".")[0],
            "h": hostname, "n": name, "p": port, "r": user, "i": str(os.getuid())}


# --------------------------------------------------------------------------- line syntax

def split_args(text: str, path: str = "", line: Optional[int] = None) -> List[str]:
    """Split like OpenSSH's argv_split: whitespace, "double" and 'single' quotes, backslash
    escapes, and a ``#`` at the start of a word ends the line."""
    args: List[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n or text[i] == "#":
            break
        arg: List[str] = []
        quote = ""
        while i < n:
            c = text[i]
            if not quote and c in " \t\r\n":
                break
            if c == "\\" and i + 1 < n and (text[i + 1] in "'\"\\"
                                            or (not quote and text[i + 1] == " ")):
                arg.append(text[i + 1])
                i += 2
                continue
            if not quote and c in "'\"":
                quote = c
            elif quote and c == quote:
                quote = ""
            else:
                arg.append(c)
            i += 1
        if quote:
            raise ConfigError(path, "unterminated quote", line)
        args.append("".join(arg))
    return args


def _keyword(line: str) -> Tuple[str, str]:
    """(keyword, rest) as OpenSSH's strdelim takes them: ``Key value``, ``Key=value``,
    ``Key = value``."""
    match = re.match(r"\s*([^\s=]*)\s*=?\s*", line)
    assert match is not None
    return match.group(1).lower(), line[match.end():]


def _pattern_match(text: str, pattern: str) -> bool:
    """OpenSSH's match_pattern: ``*`` and ``?`` only; ``[`` is a literal character."""
    if "*" not in pattern and "?" not in pattern:
        return text == pattern
    return _compiled(pattern).fullmatch(text) is not None


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str) -> "re.Pattern[str]":
    """One compiled regex per wildcard pattern (re's own cache holds 512: a fleet's ssh_config
    with thousands of Host lines would recompile every pattern for every host)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(regex, re.DOTALL)


def _literal_hosts(keyword: str, args: Sequence[str]) -> Optional[Tuple[str, ...]]:
    """The names a ``Host`` line matches when it is a plain list of names (no wildcard, no
    negation), else None: such a block applies to those names only, so lookups can skip it."""
    if keyword != "host" or not args:
        return None
    if any(c in arg for arg in args for c in "*?!"):
        return None
    return tuple(args)


def _pattern_list(text: str, patterns: Iterable[str]) -> bool:
    """A pattern list: no match if any ``!negated`` pattern matches, else any positive one."""
    found = False
    for pattern in patterns:
        if pattern.startswith("!"):
            if _pattern_match(text, pattern[1:]):
                return False
        elif _pattern_match(text, pattern):
            found = True
    return found


# --------------------------------------------------------------------------- the reader

class Reader:
    """OpenSSH's client configuration rules without the binary (the fallback of ``resolve``).

    Covered: Host (several patterns, ``!`` negation, ``*``/``?``, ``[`` literal), Match
    (host, originalhost, user, localuser, all, exec via /bin/sh, negation, canonical and
    final), Include (absolute, relative to ~/.ssh or /etc/ssh, globs, inside a Host block),
    first value wins, ``Key=value``, quotes, trailing comments, ``%h`` in HostName, host names
    lower-cased, ~/.ssh/config then /etc/ssh/ssh_config when no file is given.

    Two passes, as ssh.c makes them: when a ``Match final`` line was read anywhere (even in a
    block that did not apply) or ``CanonicalizeHostname`` is on, the files are read again with
    the HostName of the first pass fixed; ``canonical`` and ``final`` match only then, and only
    options still unset are taken. Not done: CanonicalDomains lookups (the name is kept as
    written, as ssh keeps it when no domain resolves and CanonicalizeFallbackLocal is on).
    """

    def __init__(self, path: Optional[str], home: Optional[str] = None) -> None:
        self.path = path
        self.home = home if home is not None else os.path.expanduser("~")
        self._parsed: Dict[str, List[Tuple[int, str, str, List[str]]]] = {}
        self._plans: Dict[str, "_Plan"] = {}

    def files(self) -> List[Tuple[str, bool]]:
        """(file, is the user's) in reading order."""
        if self.path is not None:
            return [] if self.path == "none" else [(self.path, True)]
        found = [(os.path.join(self.home, ".ssh", "config"), True), (SYSTEM_CONFIG, False)]
        return [(p, user) for p, user in found if os.path.isfile(p)]

    def options(self, name: str) -> Options:
        state = _State(name, self.home)
        for path, user in self.files():
            self._read(path, user, state, depth=0, never_match=False)
        canonicalize = state.values.get("canonicalizehostname", ["no"])[0].lower()
        if state.want_final or canonicalize in ("yes", "true", "always"):
            state.final_pass()
            for path, user in self.files():
                self._read(path, user, state, depth=0, never_match=False)
        return state.finish()

    def _lines(self, path: str) -> List[Tuple[int, str, str, List[str]]]:
        """(line number, keyword, raw rest, split args) of every option line, parsed once."""
        if path not in self._parsed:
            try:
                with open(path, encoding="utf-8", errors="surrogateescape") as f:
                    lines = f.read().splitlines()
            except OSError as exc:
                raise ConfigError(path, f"cannot read the ssh config: {exc.strerror or exc}"
                                  ) from exc
            parsed = []
            for number, raw in enumerate(lines, 1):
                keyword, rest = _keyword(raw.rstrip())
                if not keyword or keyword.startswith("#"):
                    continue
                args = [] if keyword in _COMMANDS else split_args(rest, path, number)
                parsed.append((number, keyword, rest, args))
            self._parsed[path] = parsed
        return self._parsed[path]

    def _plan(self, path: str) -> "_Plan":
        """The file cut into blocks at each Host/Match line, with the blocks of plain-name
        ``Host`` lines indexed by name: a lookup visits the blocks that can apply to it (the
        indexed ones for its name and every other block) in file order, so resolving N hosts
        against a config of one block per host is linear, not N x blocks."""
        if path not in self._plans:
            lines = self._lines(path)
            starts = [0] + [i for i, line in enumerate(lines)
                            if line[1] in ("host", "match") and i > 0]
            blocks = [lines[a:b] for a, b in zip(starts, starts[1:] + [len(lines)])]
            by_name: Dict[str, List[int]] = {}
            always: List[int] = []
            for i, block in enumerate(blocks):
                names = _literal_hosts(block[0][1], block[0][3]) if block else None
                if names is None or any(line[1] == "include" for line in block):
                    # an Include is read even where its block does not apply (a Match final
                    # in it asks for the second pass)
                    always.append(i)
                else:
                    for name in set(names):
                        by_name.setdefault(name, []).append(i)
            self._plans[path] = _Plan(blocks, by_name, always)
        return self._plans[path]

    def _read(self, path: str, user_conf: bool, state: "_State", depth: int,
              never_match: bool) -> None:
        state.active = not never_match
        plan = self._plan(path)
        chosen: Iterable[int]
        if never_match:   # every line is read only for its Includes' sake: keep them all
            chosen = range(len(plan.blocks))
        else:
            chosen = sorted(plan.always + plan.by_name.get(state.original, []))
        for index in chosen:
            self._read_block(plan.blocks[index], user_conf, state, depth, never_match, path)

    def _read_block(self, block: List[Tuple[int, str, str, List[str]]], user_conf: bool,
                    state: "_State", depth: int, never_match: bool, path: str) -> None:
        for number, keyword, rest, args in block:
            if keyword in _COMMANDS:
                if state.active and rest:
                    state.set(keyword, [rest])
            elif keyword == "host":
                state.active = not never_match and _pattern_list(state.original, args)
            elif keyword == "match":
                if never_match:   # ssh still notes a "final" there: it asks for the 2nd pass
                    state.want_final = state.want_final or _asks_final(args)
                state.active = not never_match and self._match(args, state, path, number)
            elif keyword == "include":
                self._include(args, user_conf, state, depth, path, number)
            elif state.active and args:
                state.set(keyword, args)

    def _include(self, args: Sequence[str], user_conf: bool, state: "_State", depth: int,
                 path: str, number: int) -> None:
        if depth >= MAX_INCLUDE_DEPTH:
            raise ConfigError(path, "Include nested too deeply", number)
        outer = state.active
        base = os.path.join(self.home, ".ssh") if user_conf else os.path.dirname(SYSTEM_CONFIG)
        for pattern in args:
            pattern = expand_path(pattern, {}, self.home)
            if not os.path.isabs(pattern):
                pattern = os.path.join(base, pattern)
            for found in sorted(glob.glob(pattern)):
                self._read(found, user_conf, state, depth + 1, never_match=not outer)
                state.active = outer

    def _match(self, args: Sequence[str], state: "_State", path: str, number: int) -> bool:
        result = True
        i = 0
        if not args:
            raise ConfigError(path, "Match needs a criterion", number)
        while i < len(args):
            word = args[i].lower()
            negate = word.startswith("!")
            word = word.lstrip("!")
            if word in ("all", "canonical", "final"):
                ok = word == "all" or state.post_canon
                if word == "final":
                    state.want_final = True
                i += 1
            else:
                if i + 1 >= len(args):
                    raise ConfigError(path, f"Match {word} needs a value", number)
                value = args[i + 1]
                i += 2
                if word == "host":
                    ok = _pattern_list(state.hostname(), value.lower().split(","))
                elif word == "originalhost":
                    ok = _pattern_list(state.original, value.lower().split(","))
                elif word == "user":
                    ok = _pattern_list(state.user(), value.split(","))
                elif word == "localuser":
                    ok = _pattern_list(local_user(), value.split(","))
                elif word == "exec":
                    ok = self._exec(value, state)
                else:
                    raise ConfigError(path, f"unsupported Match criterion {word!r}", number)
            result = result and (ok != negate)
        return result

    def _exec(self, command: str, state: "_State") -> bool:
        tokens = tokens_for(state.original, state.hostname(), state.port(), state.user(),
                            self.home)
        command = re.sub(r"%(.)", lambda m: tokens.get(m.group(1), m.group(0)), command)
        try:
            done = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=SSH_G_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0


def _asks_final(args: Sequence[str]) -> bool:
    """Whether a Match line has the ``final`` criterion (a value named final does not count)."""
    i = 0
    while i < len(args):
        word = args[i].lower().lstrip("!")
        if word == "final":
            return True
        i += 1 if word in ("all", "canonical") else 2
    return False


class _Plan:
    """One file's blocks and which of them a lookup must visit (see ``Reader._plan``)."""

    def __init__(self, blocks: List[List[Tuple[int, str, str, List[str]]]],
                 by_name: Dict[str, List[int]], always: List[int]) -> None:
        self.blocks = blocks
        self.by_name = by_name
        self.always = always


class _State:
    """Options obtained so far for one host, first value wins."""

    def __init__(self, name: str, home: str) -> None:
        self.original = name
        self.home = home
        self.active = True
        self.values: Options = {}
        self.want_final = False   # a "Match final" was read: ssh reads the files again
        self.post_canon = False   # this is that second pass: canonical and final match

    def final_pass(self) -> None:
        """Before the second pass: ssh fixes HostName to the name the first pass found (so a
        HostName in the second pass is ignored) and Match host compares against it."""
        self.values["hostname"] = [self.hostname().lower()]
        self.post_canon = True

    def set(self, keyword: str, args: List[str]) -> None:
        if keyword in _MULTI:
            value = " ".join(args)
            values = self.values.setdefault(keyword, [])
            if keyword not in ("identityfile", "certificatefile") or value not in values:
                values.append(value)   # ssh ignores a key file named twice
        elif keyword == "proxyjump":   # as OpenSSH 9: "ProxyJump none" leaves ProxyCommand free
            if "proxyjump" not in self.values and "proxycommand" not in self.values:
                self.values[keyword] = [" ".join(args)]
        elif keyword == "proxycommand":
            if "proxycommand" not in self.values and self.values.get(
                    "proxyjump", ["none"]) == ["none"]:
                self.values[keyword] = [" ".join(args)]
        elif keyword not in self.values:
            self.values[keyword] = [" ".join(args)]

    def hostname(self) -> str:
        if "hostname" in self.values:
            return self.values["hostname"][0].replace("%h", self.original).replace("%%", "%")
        return self.original

    def user(self) -> str:
        return self.values.get("user", [ssh_user()])[0]

    def port(self) -> str:
        return self.values.get("port", ["22"])[0]

    def finish(self) -> Options:
        """The answer as ``ssh -G`` prints it for what antnest reads."""
        out = dict(self.values)
        out["hostname"] = [self.hostname().lower()]
        out.setdefault("port", ["22"])
        out.setdefault("user", [ssh_user()])
        if "identityfile" not in out:
            out["identityfile"] = list(DEFAULT_IDENTITIES)
        tokens = tokens_for(self.original, out["hostname"][0], out["port"][0], out["user"][0],
                            self.home)
        for key, default in (("userknownhostsfile", DEFAULT_USER_KNOWN_HOSTS),
                             ("globalknownhostsfile", DEFAULT_GLOBAL_KNOWN_HOSTS)):
            files = out[key][0].split() if key in out else list(default)
            out[key] = [" ".join(expand_path(f, tokens, self.home) for f in files)]
        for key in ("proxyjump", "proxycommand"):
            if out.get(key) == ["none"]:
                del out[key]
        strict = out.get("stricthostkeychecking", ["ask"])[0].lower()
        out["stricthostkeychecking"] = [{"yes": "true", "no": "false", "off": "false"
                                         }.get(strict, strict)]
        for key in ("identitiesonly", "batchmode"):
            flag = out.get(key, ["no"])[0].lower()
            out[key] = [{"true": "yes", "false": "no"}.get(flag, flag)]
        if out["batchmode"] == ["yes"] and "serveraliveinterval" not in out:
            out["serveraliveinterval"] = ["300"]   # OpenSSH's default in batch mode
        return out


# --------------------------------------------------------------------------- ssh -G

def ssh_binary() -> Optional[str]:
    return shutil.which("ssh")


def ssh_g(name: str, path: Optional[str], ssh: str = "ssh") -> Options:
    """OpenSSH's own answer for ``name`` (``ssh -G [-F path] name``)."""
    argv = [ssh, "-G"] + (["-F", path] if path is not None else []) + ["--", name]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=SSH_G_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(path or "ssh_config", f"ssh -G {name} did not answer within "
                          f"{SSH_G_TIMEOUT:g} s (a slow Match exec?)") from exc
    except OSError as exc:
        raise ConfigError(path or "ssh_config", f"cannot run {ssh}: {exc}") from exc
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        useful = [ln for ln in lines if "Pseudo-terminal" not in ln]
        problem = useful[0] if useful else f"exit status {done.returncode}"
        raise ConfigError(path or "ssh_config", f"ssh -G {name} failed: {problem}")
    options: Options = {}
    for line in done.stdout.decode("utf-8", "surrogateescape").splitlines():
        key, _, value = line.partition(" ")
        if key:
            options.setdefault(key.lower(), []).append(value)
    return options


_defaults_lock = threading.Lock()


def default_ciphers() -> Tuple[str, ...]:
    """The Ciphers list of this machine's ssh when no config sets any (``ssh -G -F none``),
    asked once per process (the hosts' threads wait for the one answer); () without the
    binary or an answer."""
    with _defaults_lock:
        return _default_ciphers()


@functools.lru_cache(maxsize=None)
def _default_ciphers() -> Tuple[str, ...]:
    ssh = ssh_binary()
    if ssh is None:
        return ()
    try:
        done = subprocess.run([ssh, "-G", "-F", "none", "--", "antnest-defaults.invalid"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(" ")
        if key == "ciphers":
            return tuple(value.split(","))
    return ()


def resolve_many(names: Sequence[str], path: Optional[str], use_ssh: Optional[bool] = None,
                 workers: int = 32) -> Dict[str, Options]:
    """Every name's options, resolved in parallel (``ssh -G`` is a process per name)."""
    ssh = ssh_binary() if use_ssh is not False else None
    if use_ssh and ssh is None:
        raise ConfigError(path or "ssh_config", "no ssh binary on PATH")
    unique = list(dict.fromkeys(names))
    if use_ssh is None and len(unique) > SSH_G_AUTO_MAX:
        ssh = None   # a process per host costs seconds at this size: the proven reader instead
    if ssh is None:
        reader = Reader(path)
        return {name: reader.options(name) for name in unique}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(unique)))) as pool:
        pool.submit(default_ciphers)   # what "Ciphers not set" looks like, alongside
        return dict(zip(unique, pool.map(lambda n: ssh_g(n, path, ssh), unique)))

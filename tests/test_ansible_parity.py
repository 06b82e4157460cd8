"""antnest reads Ansible inventories as ansible-core does: proven against ansible-core itself.

For each inventory under tests/data/ansible/ the test asks ansible-core three things, in a
private environment (no user config, temporary HOME and tmp dirs, bounded in time):

- ``ansible-inventory -i SRC --list``: the hosts, their groups and their variables;
- ``ansible all -i SRC -m ping`` with a stand-in ssh that records its command line and fails:
  where and how Ansible really connects (address, port, user, keys, ProxyJump/ProxyCommand),
  which hosts it runs locally and which through paramiko, as ssh would resolve that command;
- ansible-core's own InventoryManager for the --limit corpus (the code behind ``--limit``),
  cross-checked against ``ansible-inventory --list --limit`` for a few patterns.

and asserts that antnest's Hosts agree field by field.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest

from antnest.errors import InventoryError
from antnest.host import Host
from antnest.inventory import load_hosts
from antnest.inventory.ansible import VAULTED
from plugins.tools import require

DATA = Path(__file__).parent / "data" / "ansible"
SOURCES = ["basic.ini", "basic.yml", "oldnew.ini", "sshargs.yml", "conn.ini", "dir",
           "withvars/hosts.ini", "limits.ini"]
REFUSED = sorted(p.name for p in (DATA / "refused").iterdir())
TIMEOUT = 180   # seconds for any one ansible command


def _ansible_or_skip() -> None:
    require(shutil.which("ansible-inventory") and shutil.which("ansible"),
            "ansible-core (ansible-inventory) is not installed: it is in setup.py's test extra")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """A private Ansible world: none of the user's config, all state in a temporary dir."""
    _ansible_or_skip()
    root = tmp_path_factory.mktemp("ansible")
    (root / "home").mkdir()
    (root / "ansible.cfg").write_text("")
    fake_ssh = root / "ssh"
    fake_ssh.write_text(f"#!{sys.executable}\n" + textwrap.dedent("""
        import json, sys
        sys.stderr.write("ANTNEST-ARGV" + json.dumps(sys.argv[1:]) + "ANTNEST-END\\n")
        sys.exit(255)
        """))
    fake_ssh.chmod(0o755)
    private = {
        "HOME": str(root / "home"),
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        "ANSIBLE_HOME": str(root / "home" / ".ansible"),
        "ANSIBLE_LOCAL_TEMP": str(root / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(root / "remote-tmp"),
        "ANSIBLE_SSH_EXECUTABLE": str(fake_ssh),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "True",
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.tree",
        "ANSIBLE_FORKS": "10",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "LANG": "C.UTF-8",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    return {**base, **private}


def run(argv: List[str], env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=DATA, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


@pytest.fixture(autouse=True)
def antnest_side(env: Dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """antnest reads with the same HOME (so ~ and ~/.ssh/config agree) and working dir."""
    monkeypatch.setenv("HOME", env["HOME"])
    monkeypatch.chdir(DATA)


# --------------------------------------------------------------------------- ansible's view

def groups_of(listing: Dict[str, Any]) -> Dict[str, Set[str]]:
    """Host -> every group that holds it, children included, from ``--list`` JSON."""
    def hosts_under(group: str, seen: Set[str]) -> Set[str]:
        body = listing.get(group, {})
        found = set(body.get("hosts", []))
        for child in body.get("children", []):
            if child not in seen:
                found |= hosts_under(child, seen | {child})
        return found

    result: Dict[str, Set[str]] = {}
    for group in [g for g in listing if g != "_meta"]:
        for host in hosts_under(group, {group}):
            result.setdefault(host, set()).add(group)
    for host in listing.get("_meta", {}).get("hostvars", {}):
        result.setdefault(host, set()).add("all")
    return result


def ssh_view(argv: List[str]) -> Dict[str, Any]:
    """What ssh makes of a command line: the first value of each option wins."""
    options: Dict[str, str] = {}
    keys: List[str] = []
    letters = {"-p": "port", "-l": "user", "-i": "identityfile", "-J": "proxyjump"}
    i, destination = 0, None
    while i < len(argv):
        word = argv[i]
        if word in letters or word == "-o":
            value, i = argv[i + 1], i + 2
            name, value = _option(value) if word == "-o" else (letters[word], value)
        elif word.startswith("-o"):
            name, value = _option(word[2:])
            i += 1
        elif word.startswith("-"):
            i += 1
            continue
        else:
            destination = word
            break
        name, value = name.strip().lower(), value.strip().strip('"')
        if name == "identityfile":
            keys.append(value)
        else:
            options.setdefault(name, value)
    address = options.get("hostname", str(destination)).lower()   # ssh lowercases host names
    port = int(options.get("port", 22))
    jump = [] if "proxyjump" not in options else [_hop(h) for h in
                                                     options["proxyjump"].split(",")]
    command = options.get("proxycommand")
    if command:
        command = command.replace("%h", str(address)).replace("%p", str(port))
    return {"address": address, "port": port, "user": options.get("user"),
            "identity_files": [os.path.abspath(os.path.expanduser(k)) for k in keys],
            "jump": jump, "proxy_command": command}


def _option(text: str) -> Tuple[str, str]:
    """``Name=value`` or ``Name value``, as ssh reads an -o argument."""
    match = re.match(r"\s*(\w+)\s*(?:=\s*|\s+)(.*)$", text, re.S)
    assert match, text
    return match.group(1), match.group(2)


def _hop(text: str) -> Tuple[Optional[str], str, int]:
    user, _, rest = text.rpartition("@")
    host, _, port = rest.partition(":")
    return user or None, host, int(port or 22)


def antnest_view(host: Host) -> Dict[str, Any]:
    return {"address": host.address.lower(), "port": host.port, "user": host.user,
            "identity_files": [os.path.abspath(k) for k in host.identity_files],
            "jump": [(hop.user, hop.address, hop.port) for hop in host.jump],
            "proxy_command": host.proxy_command}


def ping(source: str, env: Dict[str, str], tree: Path) -> Dict[str, Dict[str, Any]]:
    """Per host: how ``ansible -m ping`` tried to reach it (the tree callback keeps each
    host's result as JSON in ``tree``)."""
    done = run(["ansible", "all", "-i", source, "-m", "ping"],
               {**env, "ANSIBLE_CALLBACK_TREE_DIR": str(tree)})
    if not tree.is_dir():
        pytest.fail(f"ansible -m ping on {source} left no results:\n{done.stdout}\n{done.stderr}")
    results = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in tree.iterdir()}
    seen: Dict[str, Dict[str, Any]] = {}
    for name, result in results.items():
        message = json.dumps(result)
        if "ANTNEST-ARGV" in message:
            text = str(result.get("msg", ""))
            argv = json.loads(text[text.index("ANTNEST-ARGV") + 12:text.index("ANTNEST-END")])
            seen[name] = {"how": "openssh", **ssh_view(argv)}
        elif result.get("unreachable"):
            seen[name] = {"how": "paramiko"}
        else:
            seen[name] = {"how": "local"}
    return seen


# --------------------------------------------------------------------------- the parity

@pytest.mark.parametrize("source", SOURCES)
def test_hosts_groups_and_connections_match_ansible(source: str, env: Dict[str, str],
                                                    tmp_path: Path) -> None:
    listing = run(["ansible-inventory", "-i", source, "--list"], env)
    assert listing.returncode == 0, listing.stderr
    data = json.loads(listing.stdout)
    expected_groups = groups_of(data)
    hostvars = data["_meta"]["hostvars"]

    hosts = {h.name: h for h in load_hosts(source)}
    assert set(hosts) == set(expected_groups)
    for name, host in hosts.items():
        assert set(host.groups) == expected_groups[name], name

    connections = ping(source, env, tmp_path / "tree")
    assert set(connections) == set(hosts)
    for name, seen in connections.items():
        host = hosts[name]
        how = seen.pop("how")
        if how == "local":
            assert host.transport == "local", name
            continue
        assert host.transport == "ssh", name
        if how == "paramiko":
            assert host.ssh_client == "paramiko", name
            continue
        assert host.ssh_client in (None, "openssh"), name
        assert antnest_view(host) == seen, name

    for name, host in hosts.items():
        python = hostvars.get(name, {}).get("ansible_python_interpreter")
        if python is None or python.startswith("auto"):
            python = "python3"
        elif python.replace(" ", "") == "{{ansible_playbook_python}}":
            python = sys.executable
        assert host.python == python, name


def test_inventory_corpus_covers_the_issue() -> None:
    """The corpus keeps the cases the parity test is for (so a trimmed file is noticed)."""
    text = "".join(p.read_text(encoding="utf-8") for p in DATA.rglob("*") if p.is_file())
    for needle in ("[2001:db8::10]:2022", "n[0:10:5]", "0x50", "2222.0", "None", "null",
                   "ünï", "ansible_ssh_host", "ProxyJump=", "-J hop1", "ProxyCommand=",
                   "ansible_connection=local", "paramiko", "{{ ansible_playbook_python }}",
                   "auto_legacy", "ansible_group_priority", "# a trailing comment"):
        assert needle in text, needle
    assert (DATA / "dir" / "group_vars" / "web").is_dir()


def _limit_patterns() -> List[str]:
    lines = (DATA / "limits.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("#")] + ["", "web[5]"]


@pytest.fixture(scope="module")
def ansible_limits(env: Dict[str, str]) -> Dict[str, Any]:
    """ansible-core's own --limit (InventoryManager.subset) for every pattern, one process."""
    helper = textwrap.dedent("""
        import json, sys
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        out = {}
        for pattern in json.loads(sys.argv[2]):
            inventory = InventoryManager(DataLoader(), sources=[sys.argv[1]])
            try:
                inventory.subset(pattern)
                out[pattern] = sorted(h.name for h in inventory.get_hosts("all"))
            except Exception as exc:
                out[pattern] = "error: " + str(exc)
        print(json.dumps(out))
        """)
    done = run([sys.executable, "-c", helper, "limits.ini", json.dumps(_limit_patterns())], env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def antnest_limit(pattern: str) -> Any:
    try:
        return sorted(h.name for h in load_hosts("limits.ini", limit=pattern))
    except InventoryError as exc:
        return [] if "matches no host" in exc.problem else f"error: {exc.problem}"


@pytest.mark.parametrize("pattern", _limit_patterns())
def test_limit_selects_exactly_ansibles_hosts(pattern: str, ansible_limits: Dict[str, Any],
                                              ) -> None:
    expected, got = ansible_limits[pattern], antnest_limit(pattern)
    if isinstance(expected, str):
        assert isinstance(got, str), f"ansible-core: {expected}"
    else:
        assert got == expected


@pytest.mark.parametrize("pattern", ["app[1:2]", "~(app|db)1", "@retry.txt", "front[-2]"])
def test_limit_helper_agrees_with_the_ansible_inventory_cli(
        pattern: str, env: Dict[str, str], ansible_limits: Dict[str, Any]) -> None:
    done = run(["ansible-inventory", "-i", "limits.ini", "--list", "--limit", pattern], env)
    assert done.returncode == 0, done.stderr
    assert sorted(groups_of(json.loads(done.stdout))) == ansible_limits[pattern]


def test_removed_range_form_warns_like_ansible(caplog: pytest.LogCaptureFixture,
                                               ansible_limits: Dict[str, Any]) -> None:
    with caplog.at_level(logging.WARNING):
        assert antnest_limit("app[1-2]") == ansible_limits["app[1-2]"] == ["app2", "app3"]
    assert "[x:y]" in caplog.text


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("name", REFUSED)
def test_what_ansible_refuses_antnest_refuses(name: str, env: Dict[str, str]) -> None:
    source = f"refused/{name}"
    done = run(["ansible-inventory", "-i", source, "--list"], env)
    assert done.returncode != 0, done.stdout
    with pytest.raises(InventoryError) as info:
        load_hosts(source)
    if name.startswith("vaulted"):
        assert info.value.problem == VAULTED


def test_a_path_with_commas_is_refused_by_both(env: Dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "a,b"
    folder.mkdir()
    (folder / "inv.ini").write_text("[g]\nh1\n")
    done = run(["ansible-inventory", "-i", str(folder / "inv.ini"), "--list"], env)
    assert done.returncode != 0 or "h1" not in done.stdout
    with pytest.raises(InventoryError, match="comma"):
        load_hosts(folder / "inv.ini")

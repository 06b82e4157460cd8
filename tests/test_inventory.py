"""Inventory parsing, ssh_config merging and --limit patterns. No network, no real ~/.ssh."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import textwrap
from pathlib import Path
from typing import List, Optional, Sequence

import pytest
import yaml

from antnest.errors import InventoryError
from antnest.inventory import Host, describe, load_hosts
from antnest.patterns import select
from plugins.tools import ssh_binary

DATA = Path(__file__).parent / "data" / "inventories"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throwaway HOME, so the developer's ~/.ssh/config is never read."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, "tester")   # getpass.getuser() for %r
    return home


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def unsourced(hosts: List[Host]) -> List[Host]:
    return [dataclasses.replace(h, source="") for h in hosts]


def names(hosts: Sequence[Host]) -> List[str]:
    return [h.name for h in hosts]


# --------------------------------------------------------------------------- native form

def test_native_example(home: Path) -> None:
    path = DATA / "native.yaml"
    web1, web2, db1, db2 = load_hosts(path)
    assert web1 == Host(name="web1", address="10.0.0.11", user="deploy", python="/usr/bin/python3",
                        procs=None, groups=("all", "prod", "web"), source=str(path))
    assert (web2.port, web2.procs) == (2222, None)
    assert (db1.user, db1.procs, db1.groups) == ("postgres", 2, ("all", "db", "prod"))
    assert db2.identity_files == (str(home / ".ssh" / "db_key"),)
    assert db2.procs == 4 and db2.user == "admin"


def test_native_round_trips_through_describe(tmp_path: Path) -> None:
    hosts = load_hosts(DATA / "native.yaml")
    entries = []
    for d in describe(hosts):
        json.dumps(d)   # JSON-ready
        entries.append({"name": d["name"], "address": d["address"], "port": d["port"],
                        "user": d["user"], "python": d["python"], "procs": d["procs"],
                        "groups": [g for g in d["groups"] if g != "all"],
                        **({"identity_file": d["identity_files"]} if d["identity_files"] else {})})
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump({"hosts": entries}))
    assert unsourced(load_hosts(path)) == unsourced(hosts)


def test_native_minimal_forms(tmp_path: Path) -> None:
    path = write(tmp_path, "inv.yaml", """
        hosts:
          - node1
          - name: node2
            proxy_jump: bastion
            connect_timeout: 2.5
            server_alive_interval: 0
            identity_file: [~/a, /b]
        """)
    node1, node2 = load_hosts(path)
    assert node1 == Host(name="node1", address="node1", groups=("all", "ungrouped"),
                         source=str(path))
    assert [hop.address for hop in node2.jump] == ["bastion"]
    assert (node2.connect_timeout, node2.server_alive_interval) == (2.5, 0.0)
    assert node2.identity_files == (os.path.expanduser("~/a"), "/b")


def test_host_proxy_command_hides_defaults_proxy_jump(tmp_path: Path) -> None:
    path = write(tmp_path, "inv.yaml", """
        defaults: {proxy_jump: bastion}
        hosts:
          - {name: a}
          - {name: b, proxy_command: "nc %h %p"}
        """)
    a, b = load_hosts(path)
    assert names(a.jump) == ["bastion"] and a.proxy_command is None
    assert b.jump == () and b.proxy_command == "nc b 22"


NATIVE_ERRORS = [
    ("hosts: [{name: a, prot: 22}]", "hosts[0].prot", "did you mean 'port'"),
    ("hosts: [{name: a}, {name: b, port: '22x'}]", "hosts[1].port", "from 1 to 65535"),
    ("hosts: [{name: a, port: 70000}]", "hosts[0].port", "from 1 to 65535"),
    ("hosts: [{name: a, port: true}]", "hosts[0].port", "from 1 to 65535"),
    ("hosts: [{name: a, procs: 0}]", "hosts[0].procs", "at least 1"),
    ("hosts: [{name: a, procs: many}]", "hosts[0].procs", '"auto"'),
    ("hosts: [{name: a}, {address: 10.0.0.2}]", "hosts[1].name", "needs a name"),
    ("hosts: [{name: a}, {name: a}]", "hosts[1].name", "already defined at hosts[0]"),
    ("hosts: [{name: 'a b'}]", "hosts[0].name", "space"),
    ("hosts: []", "hosts", "no hosts"),
    ("defaults: {user: x}", "hosts", "no hosts"),
    ("hosts: {a: {port: 22}}", "hosts", "must be a list"),
    ("hosts: [42]", "hosts[0]", "must be a mapping"),
    ("hostz: [{name: a}]", "hostz", "did you mean 'hosts'"),
    ("hosts: [{name: a, password: hunter2}]", "hosts[0].password", "passwords never go"),
    ("defaults: {ssh_pass: x}\nhosts: [a]", "defaults.ssh_pass", "passwords never go"),
    ("defaults: {name: x}\nhosts: [a]", "defaults.name", "unknown key"),
    ("defaults: [user]\nhosts: [a]", "defaults", "must be a mapping"),
    ("hosts: [{name: a, user: ''}]", "hosts[0].user", "non-empty string"),
    ("hosts: [{name: a, identity_file: 5}]", "hosts[0].identity_file", "path"),
    ("hosts: [{name: a, connect_timeout: -1}]", "hosts[0].connect_timeout", "seconds"),
    ("hosts: [{name: a, groups: web}]", "hosts[0].groups", "list of group names"),
    ("hosts: [{name: a, groups: [all]}]", "hosts[0].groups", "implicit"),
    ("hosts: [{name: a, proxy_command: 'nc %x'}]", "hosts[0].proxy_command", "%x"),
    ("hosts: [{name: a, proxy_jump: 'u@:22'}]", "hosts[0].proxy_jump", "[user@]host[:port]"),
    ("hosts: [{name: a, proxy_jump: b, proxy_command: c}]", "hosts[0].proxy_command", "not both"),
    ("groups: {web: [a, b]}\nhosts: [a]", "groups.web[1]", "not a host"),
    ("groups: {web: a}\nhosts: [a]", "groups.web", "list of host names"),
    ("hosts:\n  - name: a\n   port: 22", "line 3", "not valid YAML"),
]


@pytest.mark.parametrize("text, key, problem", NATIVE_ERRORS)
def test_native_errors_name_file_and_key(tmp_path: Path, text: str, key: str,
                                         problem: str) -> None:
    path = write(tmp_path, "bad.yaml", text + "\n")
    with pytest.raises(InventoryError) as info:
        load_hosts(path)
    assert (info.value.path, info.value.key) == (str(path), key)
    assert problem in info.value.problem
    assert str(path) in str(info.value) and key in str(info.value)


def test_unreadable_inventory_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(InventoryError, match="cannot read") as info:
        load_hosts(path)
    assert info.value.path == str(path)


def test_inventory_and_host_list_are_exclusive() -> None:
    with pytest.raises(InventoryError, match="not both"):
        load_hosts(DATA / "native.yaml", host_list="a")
    assert load_hosts() == []


# --------------------------------------------------------------------------- Ansible forms

def test_ansible_yaml_ini_and_native_describe_the_same_hosts() -> None:
    native = unsourced(load_hosts(DATA / "native.yaml"))
    assert unsourced(load_hosts(DATA / "ansible.yaml")) == native
    assert unsourced(load_hosts(DATA / "ansible.ini")) == native
    assert load_hosts(DATA / "ansible.ini")[0].source == str(DATA / "ansible.ini")


def test_group_vars_inheritance_and_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, "inv.yaml", """
        all:
          vars: {ansible_user: from_all, ansible_port: 1000, antnest_procs: 1}
          children:
            region:
              vars: {ansible_port: 2000, ansible_python_interpreter: /region/python}
              children:
                rack:
                  vars: {ansible_port: 3000}
                  hosts:
                    near: {}
                    own: {ansible_port: 4000, ansible_python_interpreter: auto}
            aaa:
              vars: {antnest_procs: 2}
              hosts: {near: {}}
            zzz:
              vars: {antnest_procs: 3}
              hosts: {near: {}}
            low:
              vars: {antnest_procs: 9, ansible_group_priority: 10}
              hosts: {prio: {}}
            high:
              vars: {antnest_procs: 5}
              hosts: {prio: {}}
        """)
    near, own, prio = load_hosts(path)
    assert (near.user, near.port, near.python) == ("from_all", 3000, "/region/python")
    assert near.procs == 3            # same depth: later name wins, as in Ansible
    assert near.groups == ("aaa", "all", "rack", "region", "zzz")
    assert (own.port, own.python) == (4000, "python3")   # 'auto' leaves the default
    assert prio.procs == 9            # ansible_group_priority beats the name order


def test_ansible_aliases_and_ignored_vars(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                          ) -> None:
    path = write(tmp_path, "inv.ini", """
        a ansible_ssh_host=10.0.0.1 ansible_ssh_port=2200 ansible_ssh_user=old become=yes
        b ansible_ssh_host=10.0.0.2 ansible_host=10.0.0.3 ansible_password=secret
        """)
    with caplog.at_level(logging.WARNING):
        a, b = load_hosts(path)
    assert (a.address, a.port, a.user) == ("10.0.0.1", 2200, "old")
    assert b.address == "10.0.0.2"   # ansible-core: the old spelling wins wherever set
    assert "ansible_password" in caplog.text and "secret" not in caplog.text
    assert a.groups == ("all", "ungrouped")


ANSIBLE_ERRORS = [
    ("inv.yaml", "all:\n  hosts:\n    a: {ansible_port: x}\n", "all.hosts.a.ansible_port",
     "whole number"),
    ("inv.yaml", "all:\n  hosts:\n    a: {ansible_port: 70000}\n", "all.hosts.a.ansible_port",
     "from 1 to 65535"),
    ("inv.yaml", "all:\n  vars: {antnest_procs: 0}\n  hosts: {a: }\n",
     "all.vars.antnest_procs", "at least 1"),
    ("inv.yaml", "all:\n  hosts:\n    a: {ansible_host: '{{ x }}'}\n",
     "all.hosts.a.ansible_host", "Jinja"),
    ("inv.yaml", "all:\n  hosts:\n    a:\n      ansible_host: !vault |\n        $ANSIBLE\n",
     "all.hosts.a.ansible_host", "ansible-vault"),
    ("inv.yaml", "all:\n  hosts: [a, b]\n", "all.hosts", "must be a mapping"),
    ("inv.yaml", "all:\n  children:\n    web:\n      children:\n        all:\n",
     "all.children.web", "loop"),
    ("inv.ini", "[web]\na ansible_port=99999\n", "line 2: ansible_port", "from 1 to 65535"),
    ("inv.ini", "[web]\na\n[web:stuff]\n", "line 3", "[group:vars]"),
    ("inv.ini", "[web]\na port\n", "line 2", "key=value"),
    ("inv.ini", "[web:vars]\nnovalue\n[web]\na\n", "line 2", "key=value"),
    ("inv.ini", "[web:children]\ndb other\n", "line 2", "one group name"),
    ("inv.ini", "[web]\nnode[05:1]\n", "line 2", "equal length"),
    ("inv.ini", "[web]\nnode[a:5]\n", "line 2", "neither"),
    ("inv.ini", "[web]\na:ssh\n", "line 2", "not a number"),
    ("inv.ini", "[web]\n", None, "no hosts"),
]


@pytest.mark.parametrize("name, text, key, problem", ANSIBLE_ERRORS)
def test_ansible_errors_name_file_and_key(tmp_path: Path, name: str, text: str,
                                          key: Optional[str], problem: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(InventoryError) as info:
        load_hosts(path)
    assert (info.value.path, info.value.key) == (str(path), key)
    assert problem in info.value.problem


def test_ini_ranges_comments_ports_and_ungrouped(tmp_path: Path) -> None:
    path = write(tmp_path, "inv.ini", """
        ; ungrouped hosts come first
        lonely ansible_user="quoted user"   # inline comment
        # a comment
        [nodes]
        node[01:03]
        n[0:6:2]-r[a:b]
        db-[a:c]:2200

        [nodes:vars]
        ansible_user = deploy
        """)
    hosts = load_hosts(path)
    assert names(hosts) == ["lonely", "node01", "node02", "node03", "n0-ra", "n0-rb", "n2-ra",
                            "n2-rb", "n4-ra", "n4-rb", "n6-ra", "n6-rb", "db-a", "db-b", "db-c"]
    assert hosts[0].groups == ("all", "ungrouped") and hosts[0].user == "quoted user"
    assert {h.groups for h in hosts[1:]} == {("all", "nodes")}
    assert {h.user for h in hosts[1:]} == {"deploy"}
    assert [h.port for h in hosts if h.name.startswith("db-")] == [2200] * 3


@pytest.mark.parametrize("text", [
    "web1\nweb2:2222\n",                               # INI without sections
    "web1 ansible_user=u\n[db]\nweb2:2222\n",          # ungrouped hosts above a section
    "all:\n  hosts:\n    web1:\n    web2: {ansible_port: 2222}\n",
    "hosts:\n  - web1\n  - {name: web2, port: 2222}\n",
])
def test_format_is_told_by_content(tmp_path: Path, text: str) -> None:
    hosts = load_hosts(write(tmp_path, "inventory", text))
    assert [(h.name, h.port) for h in hosts] == [("web1", 22), ("web2", 2222)]


def test_vault_values_of_ignored_vars_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "inv.yaml", """
        all:
          hosts:
            a:
              secret_token: !vault |
                $ANSIBLE_VAULT;1.1;AES256
              ansible_user: !unsafe deploy
        """)
    assert load_hosts(path)[0].user == "deploy"


def test_yaml_ranges_and_ungrouped_only_when_groupless(tmp_path: Path) -> None:
    path = write(tmp_path, "inv.yaml", """
        all:
          hosts:
            both: {}
            web[1:2].example.com:
        web:
          hosts: {both: {}}
        """)
    both, web1, web2 = load_hosts(path)
    assert both.groups == ("all", "web")
    assert (web1.name, web2.name) == ("web1.example.com", "web2.example.com")
    assert web1.groups == ("all", "ungrouped")


# --------------------------------------------------------------------------- -H

def test_host_list() -> None:
    a, b, c = load_hosts(host_list=" host1, user@host2:2222 ,[::1]:22,")
    assert a == Host(name="host1", address="host1", groups=("all", "ungrouped"), source="-H")
    assert (b.name, b.address, b.user, b.port) == ("host2", "host2", "user", 2222)
    assert (c.name, c.address, c.port) == ("::1", "::1", 22)
    assert load_hosts(host_list="fe80::1")[0].address == "fe80::1"


@pytest.mark.parametrize("text, key, problem", [
    ("a,b:99999", "b:99999", "from 1 to 65535"),
    ("a,b:x", "b:x", "not a number"),
    ("a,@b", "@b", "[user@]host[:port]"),
    ("a,a", "a", "twice"),
    (" , ", None, "no hosts"),
])
def test_host_list_errors(text: str, key: Optional[str], problem: str) -> None:
    with pytest.raises(InventoryError) as info:
        load_hosts(host_list=text)
    assert (info.value.path, info.value.key) == ("-H", key)
    assert problem in info.value.problem


# --------------------------------------------------------------------------- ssh_config

SSH_CONFIG = """
    Host web1
        HostName web1.internal
        Port 2200
        User alice
        IdentityFile ~/.ssh/id_web
        IdentityFile ~/.ssh/id_other
        ProxyJump jumper@bastion1:2022,bastion2
        ConnectTimeout 7
        ServerAliveInterval 30

    Host web2
        ProxyCommand ssh -W %h:%p gateway 100%% %r %n

    Host bastion1
        HostName 192.0.2.1
        IdentityFile ~/.ssh/id_bastion

    Host bastion2
        HostName 192.0.2.2
        User hopper
        Port 2223
        ProxyCommand ignored-when-not-the-first-hop

    Host inner
        ProxyJump middle,bastion2
    Host middle
        ProxyJump outer
    Host outer
        ProxyCommand reach-outer %h %p

    Host loop1
        ProxyJump loop2
    Host loop2
        ProxyJump loop1

    Host *
        User fallback
    """


@pytest.fixture(params=["ssh", "builtin"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each ssh_config test twice: resolved by ``ssh -G`` and by antnest's fallback reader."""
    if request.param == "ssh":
        ssh_binary()
    monkeypatch.setenv("ANTNEST_SSH_CONFIG_READER", request.param)
    return str(request.param)


@pytest.fixture
def ssh_config(tmp_path: Path, reader: str) -> Path:
    return write(tmp_path, "ssh_config", SSH_CONFIG)


def test_ssh_config_fills_in_what_the_inventory_leaves_out(ssh_config: Path, home: Path,
                                                           ) -> None:
    web1, web2, plain = load_hosts(host_list="web1,web2,plain", ssh_config=ssh_config)
    ssh = home / ".ssh"
    assert (web1.address, web1.port, web1.user) == ("web1.internal", 2200, "alice")
    assert web1.identity_files == (str(ssh / "id_web"), str(ssh / "id_other"))
    assert (web1.connect_timeout, web1.server_alive_interval) == (7.0, 30.0)
    first, second = web1.jump
    assert first == Host(name="bastion1", address="192.0.2.1", port=2022, user="jumper",
                         identity_files=(str(ssh / "id_bastion"),), source="-H",
                         ssh_config=str(ssh_config))
    assert (second.address, second.port, second.user, second.jump) == (
        "192.0.2.2", 2223, "hopper", ())
    assert describe([web1])[0]["jump"] == ["jumper@192.0.2.1:2022", "hopper@192.0.2.2:2223"]
    assert web2.proxy_command == "ssh -W web2:22 gateway 100% fallback web2"
    assert (web2.address, web2.port, web2.jump) == ("web2", 22, ())
    assert (plain.address, plain.user, plain.port) == ("plain", "fallback", 22)


def test_inventory_wins_over_ssh_config(ssh_config: Path, tmp_path: Path) -> None:
    path = write(tmp_path, "inv.yaml", """
        defaults: {user: deploy}
        hosts:
          - {name: web1, address: 10.0.0.1, port: 22, identity_file: /keys/web1}
          - {name: web2, address: 10.0.0.2, port: 2022, user: root}
          - {name: inner, proxy_command: "nc %h %p"}
        """)
    web1, web2, inner = load_hosts(path, ssh_config=ssh_config)
    assert (web1.address, web1.port, web1.user, web1.identity_files) == (
        "10.0.0.1", 22, "deploy", ("/keys/web1",))
    assert web1.connect_timeout == 7.0 and len(web1.jump) == 2   # not overridden: kept
    assert web2.proxy_command == "ssh -W 10.0.0.2:2022 gateway 100% root web2"
    assert inner.jump == () and inner.proxy_command == "nc inner 22"


def test_first_jump_hop_is_reached_through_its_own_proxy_jump(ssh_config: Path) -> None:
    inner, = load_hosts(host_list="inner", ssh_config=ssh_config)
    assert names(inner.jump) == ["outer", "middle", "bastion2"]
    assert all(hop.jump == () for hop in inner.jump)
    assert [hop.proxy_command for hop in inner.jump] == ["reach-outer outer 22", None, None]
    with pytest.raises(InventoryError, match="loops back") as info:
        load_hosts(host_list="loop1", ssh_config=ssh_config)
    assert info.value.path == str(ssh_config)


def test_default_ssh_config_is_read_from_home(home: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTNEST_SSH_CONFIG_READER", "builtin")  # ssh reads the passwd home
    (home / ".ssh" / "config").write_text("Host a\n  HostName 10.9.9.9\n")
    assert load_hosts(host_list="a")[0].address == "10.9.9.9"


def test_ssh_config_errors_name_the_ssh_config(tmp_path: Path, reader: str) -> None:
    with pytest.raises(InventoryError, match="cannot read the ssh config"):
        load_hosts(host_list="a", ssh_config=tmp_path / "nope")
    bad = write(tmp_path, "bad_config", "Host a\n  Port 99999\n")
    with pytest.raises(InventoryError) as info:
        load_hosts(host_list="a", ssh_config=bad)
    assert info.value.path == str(bad)
    assert "port" in str(info.value).lower()


# --------------------------------------------------------------------------- --limit

@pytest.fixture
def example() -> List[Host]:
    return load_hosts(DATA / "native.yaml")


@pytest.mark.parametrize("pattern, expected", [
    ("web1", ["web1"]),
    ("web", ["web1", "web2"]),
    ("all", ["web1", "web2", "db1", "db2"]),
    ("*", ["web1", "web2", "db1", "db2"]),
    ("web*", ["web1", "web2"]),
    ("db[0-9]*", ["db1", "db2"]),
    ("*2", ["web2", "db2"]),
    ("db:web1", ["web1", "db1", "db2"]),            # inventory order, not pattern order
    ("db2,web1", ["web1", "db2"]),
    ("prod:&db", ["db1", "db2"]),
    ("prod:!db", ["web1", "web2"]),
    ("!web", ["db1", "db2"]),                       # exclusion alone starts from all
    ("!web2:&prod:web:db1", ["web1", "db1"]),       # unions, then &, then !, whatever order
    ("web,db:&*1", ["web1", "web2"]),               # with a comma, ':' does not split
    ("web:nosuch", ["web1", "web2"]),
    ("a*", ["web1", "web2", "db1", "db2"]),         # 'a*' matches the group 'all'
    ("web[-1]", ["web2"]),
    ("web[0:0],db[1:]", ["web1", "db2"]),
    ("~w.*1", ["web1"]),
    ("", ["web1", "web2", "db1", "db2"]),
    (",,", ["web1", "web2", "db1", "db2"]),
    ("no_such", []),
    ("ungrouped", []),
])
def test_limit(example: List[Host], pattern: str, expected: List[str]) -> None:
    if expected:
        assert names(select(example, pattern)) == expected
    else:
        with pytest.raises(InventoryError, match="matches no host"):
            select(example, pattern)


def test_limit_ungrouped() -> None:
    hosts = load_hosts(host_list="a,b")
    assert names(select(hosts, "ungrouped:!b")) == ["a"]


def test_limit_through_load_hosts() -> None:
    assert names(load_hosts(DATA / "ansible.ini", limit="db:!db2")) == ["db1"]


def test_limit_warns_about_terms_that_match_nothing(example: List[Host],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        select(example, "web:nosuch")
    assert "'nosuch'" in caplog.text


@pytest.mark.parametrize("pattern, problem", [
    ("nosuch", "'nosuch' matches no host"),
    ("web:&db", "'web:&db' matches no host"),
    ("all:!prod", "matches no host"),
    ("web[5]", "no index 5"),
    ("~(", "not a valid pattern"),
    ("@/no/such/file", "no limit file"),
    ("web:&", "needs one '&' or '!'"),
    ("web:!!db", "needs one '&' or '!'"),
])
def test_limit_errors(example: List[Host], pattern: str, problem: str) -> None:
    with pytest.raises(InventoryError) as info:
        select(example, pattern)
    assert info.value.path == "--limit"
    assert problem in info.value.problem


def test_limit_keeps_ipv6_names_whole() -> None:
    hosts = load_hosts(host_list="[::1]:22,[::2]:22")
    assert names(select(hosts, "::1")) == ["::1"]
    assert names(select(hosts, "all,!::1")) == ["::2"]


# --------------------------------------------------------------------------- Ansible specifics
# (what antnest decides on its own; parity with ansible-core is tests/test_ansible_parity.py)

def test_unusable_hosts_are_refused_only_when_selected(tmp_path: Path) -> None:
    path = write(tmp_path, "inv.ini", """
        [win]
        w1 ansible_connection=winrm
        [lin]
        l1 ansible_host="{{ lookup('env', 'X') }}"
        l2
        """)
    assert names(load_hosts(path, limit="l2")) == ["l2"]
    with pytest.raises(InventoryError) as info:
        load_hosts(path, limit="win")
    assert (info.value.key, "winrm") == ("line 2: ansible_connection", "winrm")
    assert "reaches hosts over SSH" in info.value.problem
    with pytest.raises(InventoryError, match="Jinja template"):
        load_hosts(path, limit="lin")


def test_connections_and_interpreters(tmp_path: Path) -> None:
    import sys

    path = write(tmp_path, "inv.ini", """
        here ansible_connection=local ansible_python_interpreter="{{ ansible_playbook_python }}"
        para ansible_connection=paramiko
        open ansible_connection=ssh ansible_python_interpreter=auto_legacy_silent
        plain
        """)
    here, para, open_, plain = load_hosts(path)
    assert (here.transport, here.local, here.python) == ("local", True, sys.executable)
    assert (para.transport, para.ssh_client) == ("ssh", "paramiko")
    assert (open_.ssh_client, open_.python) == ("openssh", "python3")
    assert (plain.transport, plain.ssh_client) == ("ssh", None)


def test_ssh_args_apply_what_antnest_understands(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from antnest.inventory import ansible_vars

    monkeypatch.setattr(ansible_vars, "_warned", set())   # once per process: start afresh
    path = write(tmp_path, "inv.yml", """
        all:
          vars:
            ansible_ssh_common_args: >-
              -o ProxyJump=ops@bastion:2200 -o ConnectTimeout=3 -o ServerAliveInterval=7
              -o StrictHostKeyChecking=no -v
          hosts:
            a: {}
            b: {ansible_port: 2300, ansible_ssh_extra_args: "-p 2022 -l argsuser -i /k/extra"}
            c: {ansible_ssh_common_args: "-o 'ProxyCommand=nc %h %p' -J ignored"}
        """)
    with caplog.at_level(logging.WARNING):
        a, b, c = load_hosts(path)
    assert [(j.user, j.address, j.port) for j in a.jump] == [("ops", "bastion", 2200)]
    assert (a.connect_timeout, a.server_alive_interval) == (3.0, 7.0)
    assert (b.port, b.user, b.identity_files) == (2300, "argsuser", ("/k/extra",))
    assert (c.jump, c.proxy_command) == ((), "nc c 22")   # the first of the two wins, as in ssh
    assert caplog.text.count("stricthostkeychecking") == 1   # warned once, not per host


def test_bad_ssh_args_name_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "inv.ini", "a ansible_ssh_common_args='-p'\n")
    with pytest.raises(InventoryError) as info:
        load_hosts(path)
    assert info.value.key == "line 1: ansible_ssh_common_args"
    assert "needs a value" in info.value.problem


def test_ini_values_never_leak_python_warnings(tmp_path: Path) -> None:
    import warnings

    path = write(tmp_path, "inv.ini", "a odd='1if 1 else 2' path='C:\\dir' ansible_port=0x50\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (a,) = load_hosts(path)
    assert a.port == 80
    assert [str(w.message) for w in caught] == []


def test_yaml_keys_ansible_skips_are_skipped_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "inv.yaml", """
        all:
          hosts: {a: }
          web: {hosts: {b: }}
        """)
    with caplog.at_level(logging.WARNING):
        assert names(load_hosts(path)) == ["a"]
    assert "all.web" in caplog.text and "put it under hosts:" in caplog.text


@pytest.mark.parametrize("name, text, problem", [
    ("inv.ini", "#!/bin/sh\necho '{}'\n", "does not run scripts"),
    ("inv.yml", "plugin: aws_ec2\nregions: [x]\n", "inventory plugins"),
    ("inv.toml", "[all]\n", "TOML"),
    ("inv.yml", "all:\n  hosts:\n    1.5:\n", "is a float"),
])
def test_ansible_sources_antnest_does_not_run(tmp_path: Path, name: str, text: str,
                                              problem: str) -> None:
    path = write(tmp_path, name, text)
    path.chmod(0o755)
    with pytest.raises(InventoryError, match=problem):
        load_hosts(path)


def test_vaulted_vars_files_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "inv.ini", "[web]\na\n")
    (tmp_path / "group_vars").mkdir()
    vaulted = write(tmp_path, "group_vars/web.yml", "$ANSIBLE_VAULT;1.1;AES256\n6162\n")
    with pytest.raises(InventoryError) as info:
        load_hosts(tmp_path / "inv.ini")
    assert info.value.path == str(vaulted)
    assert info.value.problem == "vault-encrypted inventory: decrypt it or pass the hosts with -H"


def test_unequal_width_ranges(tmp_path: Path) -> None:
    path = write(tmp_path, "inv.ini", "n[0:10:5]\nm[00:02]\n")
    assert names(load_hosts(path)) == ["n0", "n5", "n10", "m00", "m01", "m02"]


def test_a_yaml_inventory_under_an_ini_name_says_to_rename_it(tmp_path: Path) -> None:
    """Ansible reads YAML only from .yml/.yaml/.json (or extensionless) files, so a YAML
    inventory named hosts.inv is refused by both; antnest says why instead of 'port '''."""
    path = tmp_path / "hosts.inv"
    path.write_text("all:\n  hosts:\n    web1:\n      ansible_port: 2222\n")
    with pytest.raises(InventoryError) as caught:
        load_hosts(path)
    message = str(caught.value)
    assert "hosts.inv" in message and "line 1" in message
    assert "rename the file" in message and ".yaml" in message

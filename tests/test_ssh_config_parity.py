"""antnest's fallback ssh_config reader against the real client: ``ssh -G`` resolves a corpus of
ssh_config files for several names, the reader resolves the same, and the Host fields that
decide where and how to connect must agree."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from antnest.host import Host
from antnest.inventory.ssh_config import _SshConfig
from antnest.inventory.ssh_options import Reader, ssh_g, ssh_home, ssh_user
from antnest.inventory.values import _Entry
from plugins.tools import ssh_binary

CORPUS = Path(__file__).parent / "data" / "ssh_config"

NAMES: Dict[str, List[str]] = {
    "01_basic": ["web1", "web2", "web3", "other"],
    "02_negation": ["bastion", "app", "db-1", "dbx", "db"],
    "03_literal_bracket": ["node1", "node2", "node[12]", "nodeX", "none"],
    "04_case": ["MixedCase", "mixedcase", "lower", "LOWER"],
    "05_tokens": ["t1", "t2"],
    "06_known_hosts": ["kh1", "kh2", "kh3", "kh4", "other"],
    "07_proxy": ["pc1", "pc2", "pj1", "pj2", "gw1"],
    "08_include": ["inc1", "inc2", "inc3", "elsewhere"],
    "09_match": ["m1", "m2", "m3", "x", "mx"],
    "10_star_first": ["s1", "s2"],
    "11_match_final": ["f1", "f2", "f3", "f4", "other"],
    "12_match_canonical": ["c1", "c2", "c3"],
    "13_match_final_parse_only": ["p1", "p2"],
}
FIELDS = ("address", "port", "user", "identity_files", "jump", "proxy_command",
          "user_known_hosts", "global_known_hosts", "host_key_checking", "identities_only",
          "connect_timeout", "server_alive_interval")


@pytest.fixture(scope="module")
def ssh() -> str:
    return ssh_binary()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The corpus with its placeholders filled in; the relative Include target lives in a
    private directory under ~/.ssh (ssh reads it from the password database's home), removed
    afterwards."""
    out = tmp_path_factory.mktemp("ssh_config")
    dot_ssh = Path(ssh_home()) / ".ssh"
    made_dot_ssh = not dot_ssh.exists()
    dot_ssh.mkdir(mode=0o700, exist_ok=True)
    rel = Path(tempfile.mkdtemp(prefix="antnest-parity-", dir=dot_ssh))
    try:
        shutil.copy(CORPUS / "inc" / "rel.conf", rel / "rel.conf")
        shutil.copytree(CORPUS / "inc", out / "inc")
        for path in CORPUS.iterdir():
            if path.is_file():
                text = path.read_text().replace("@DIR@", str(out)).replace(
                    "@RELDIR@", rel.name).replace("@LOCALUSER@", ssh_user())
                (out / path.name).write_text(text)
        yield out
    finally:
        shutil.rmtree(rel)
        if made_dot_ssh:
            dot_ssh.rmdir()


@pytest.fixture(autouse=True)
def ssh_home_is_home(monkeypatch: pytest.MonkeyPatch) -> None:
    """ssh expands ~ from the password database; make Python's ~ the same for the test."""
    monkeypatch.setenv("HOME", ssh_home())


def resolved(path: str, name: str, use_ssh: bool) -> Tuple[object, ...]:
    host = _SshConfig(path, use_ssh=use_ssh).resolve(_Entry(name, {}, (), "-H"), "-H")
    return _view(host)


def _view(host: Host) -> Tuple[object, ...]:
    return tuple(getattr(host, f) if f != "jump" else tuple(_view(h) for h in host.jump)
                 for f in FIELDS)


CASES = [(file, name) for file, names in NAMES.items() for name in names]


@pytest.mark.parametrize("file, name", CASES, ids=[f"{f}:{n}" for f, n in CASES])
def test_fallback_reader_agrees_with_ssh_G(ssh: str, corpus: Path, file: str, name: str) -> None:
    path = str(corpus / file)
    by_ssh, by_reader = resolved(path, name, True), resolved(path, name, False)
    assert dict(zip(FIELDS, by_reader)) == dict(zip(FIELDS, by_ssh))


def test_the_corpus_exercises_what_it_claims(ssh: str, corpus: Path) -> None:
    """Guards the corpus itself: the cases above would agree trivially if nothing matched."""
    def host(file: str, name: str) -> Host:
        return _SshConfig(str(corpus / file), use_ssh=True).resolve(
            _Entry(name, {}, (), "-H"), "-H")

    web1 = host("01_basic", "web1")
    assert (web1.address, web1.port, web1.user) == ("10.24.0.1", 2261, "deploy")
    assert host("03_literal_bracket", "node[12]").port == 1212
    assert host("03_literal_bracket", "node1").port == 1000
    assert host("04_case", "MixedCase").address == "server.example.com"
    assert host("06_known_hosts", "kh1").host_key_checking == "accept-new"
    assert host("07_proxy", "pc1").proxy_command == "ssh -W pc1:22 gw | tee /dev/null"
    inc1, inc2 = host("08_include", "inc1"), host("08_include", "inc2")
    assert (inc1.address, inc1.port, inc1.user) == ("inside.example", 1001, "from-a")
    assert (inc2.user, inc2.connect_timeout) == ("include-star", 6.0)
    assert host("09_match", "m3").port == 3003
    assert host("09_match", "m2").identity_files[-1].endswith("m2_key")
    f1, f2, f3 = (host("11_match_final", n) for n in ("f1", "f2", "f3"))
    assert (f1.address, f1.port) == ("f1.internal", 1001)   # HostName fixed, final matched
    assert (f2.port, f2.user) == (2002, "final-f2")         # first value wins across passes
    assert (f3.user, f3.connect_timeout) == ("first-pass-f3", 33.0)
    assert host("11_match_final", "f4").port == 4004        # a final pass: canonical too
    c1, c2 = host("12_match_canonical", "c1"), host("12_match_canonical", "c2")
    assert (c1.port, c1.user, c1.server_alive_interval) == (4001, "canon", 44.0)
    assert (c2.port, c2.user) == (4002, "canon-c2")
    assert host("13_match_final_parse_only", "p1").port == 5005


def test_without_a_file_both_read_the_users_then_the_system_config(ssh: str) -> None:
    """No -F: ~/.ssh/config (if any), then /etc/ssh/ssh_config with its Includes."""
    reader = Reader(None, home=ssh_home())
    expected = [p for p in (os.path.join(ssh_home(), ".ssh", "config"), "/etc/ssh/ssh_config")
                if os.path.isfile(p)]
    assert [p for p, _ in reader.files()] == expected
    for name in ("somehost", "other.example"):
        assert resolved(None, name, False) == resolved(None, name, True)  # type: ignore[arg-type]


def test_raw_answers_have_the_same_shape(ssh: str, corpus: Path) -> None:
    path = str(corpus / "06_known_hosts")
    by_ssh, by_reader = ssh_g("kh2", path, ssh), Reader(path, home=ssh_home()).options("kh2")
    for key in ("hostname", "port", "user", "userknownhostsfile", "globalknownhostsfile",
                "stricthostkeychecking", "identitiesonly", "batchmode", "identityfile"):
        assert by_reader[key] == by_ssh[key], key


def test_antnest_inventory_shows_what_ssh_config_decided(ssh: str, corpus: Path) -> None:
    from antnest.inventory import describe, load_hosts

    kh1, = describe(load_hosts(host_list="kh1", ssh_config=corpus / "06_known_hosts"))
    assert kh1["host_key_checking"] == "accept-new"
    assert kh1["user_known_hosts"][1] == "/etc/fleet_hosts"
    assert kh1["global_known_hosts"] == ["/etc/ssh/fleet_global"]
    kh2, = describe(load_hosts(host_list="kh2", ssh_config=corpus / "06_known_hosts"))
    assert kh2["identities_only"] is True and kh2["port"] == 2202

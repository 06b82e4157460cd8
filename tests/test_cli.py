"""The `antnest` command: arguments, exit codes and one-line errors for bad input.

Everything here runs locally (no fleet): bad job files and inventories fail before any host is
contacted.
"""
from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

import antnest
from plugins.cli import JOBS, popen_cli

pytestmark = pytest.mark.usefixtures("leftovers")


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def assert_one_clear_error(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in stderr, f"{needle!r} not in {stderr!r}"


# --- general ---------------------------------------------------------------------------------


def test_version(run_cli) -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"antnest {antnest.__version__}"


def test_help_lists_the_run_options_and_exit_codes(run_cli) -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    assert "run" in top.stdout and "exit codes" in top.stdout
    run = run_cli("run", "--help")
    assert run.returncode == 0
    for option in ("--inventory", "--hosts", "--procs", "--input", "--output", "--ssh-config",
                   "--known-hosts", "--accept-new-host-keys"):
        assert option in run.stdout, option


def test_no_command_is_a_usage_error(run_cli) -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage" in result.stderr.lower()


def test_unknown_option_is_a_usage_error(run_cli) -> None:
    result = run_cli("run", "--no-such-option", JOBS / "reverse.py")
    assert result.returncode == 2


def test_inventory_and_host_list_together(run_cli, tmp_path: Path) -> None:
    hosts = write(tmp_path / "hosts.yaml", "hosts:\n  - name: a\n")
    result = run_cli("run", "-i", hosts, "-H", "b", JOBS / "reverse.py")
    assert result.returncode == 2
    assert_one_clear_error(result.stderr, "-H")


def test_procs_sizes_the_local_workers(run_cli) -> None:
    result = run_cli("run", "--procs", "3", JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (0, "olleh\ndlrow\n"), result.stderr


def test_procs_must_be_positive(run_cli) -> None:
    result = run_cli("run", "--procs", "0", JOBS / "reverse.py")
    assert result.returncode == 2
    assert_one_clear_error(result.stderr, "procs")


def test_missing_input_file(run_cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    result = run_cli("run", "--input", missing, JOBS / "reverse.py")
    assert result.returncode == 2
    assert_one_clear_error(result.stderr, str(missing))


def test_unwritable_output_file(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "no-such-dir" / "out.txt"
    result = run_cli("run", "-o", out, JOBS / "reverse.py")
    assert result.returncode == 2
    assert_one_clear_error(result.stderr, str(out))


def test_verbose_shows_the_traceback(run_cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    result = run_cli("run", "-v", "--input", missing, JOBS / "reverse.py")
    assert result.returncode == 2
    assert "Traceback" in result.stderr


# --- bad job files ---------------------------------------------------------------------------

BAD_JOBS = {
    "syntax_error": ("def processor(item)\n    return item\n", r"syntax error|line 1"),
    "no_processor": ("def split(data):\n    return data\n", r"processor"),
    "processor_not_callable": ("processor = 42\n", r"processor"),
    "processor_three_arguments": ("def processor(a, b, c):\n    return a\n",
                                  r"processor.*(3|three) arguments|argument"),
    "processor_no_arguments": ("def processor():\n    return 1\n", r"processor"),
    "split_wrong_signature": ("def split():\n    return []\n"
                              "def processor(item):\n    return item\n", r"split"),
    "combine_wrong_signature": ("def combine(a, b, c):\n    pass\n"
                                "def processor(item):\n    return item\n", r"combine"),
    "raises_on_import": ("raise RuntimeError('cannot load me')\n"
                         "def processor(item):\n    return item\n", r"cannot load me"),
}


@pytest.mark.parametrize("name", sorted(BAD_JOBS))
def test_bad_job_file_is_exit_2_naming_the_file(run_cli, tmp_path: Path, name: str) -> None:
    source, problem = BAD_JOBS[name]
    job = tmp_path / f"{name}.py"
    job.write_text(source)
    result = run_cli("run", job)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert_one_clear_error(result.stderr, str(job))
    assert re.search(problem, result.stderr, re.I), result.stderr


def test_missing_job_file(run_cli, tmp_path: Path) -> None:
    job = tmp_path / "absent.py"
    result = run_cli("run", job)
    assert result.returncode == 2
    assert_one_clear_error(result.stderr, str(job))


def test_job_without_input(run_cli, tmp_path: Path) -> None:
    job = write(tmp_path / "noinput.py", "def processor(item):\n    return item\n")
    result = run_cli("run", job)
    assert result.returncode == 2
    assert_one_clear_error(result.stderr, "input")


# --- bad inventories -------------------------------------------------------------------------

BAD_INVENTORIES = {
    "unknown_host_key": ("hosts:\n  - name: a\n    colour: red\n", "colour"),
    "unknown_top_key": ("hosts:\n  - name: a\nextra: 1\n", "extra"),
    "unknown_default_key": ("defaults:\n  prot: 22\nhosts:\n  - name: a\n", "prot"),
    "port_not_a_number": ("hosts:\n  - name: a\n    port: twenty-two\n", "port"),
    "port_out_of_range": ("hosts:\n  - name: a\n    port: 70000\n", "port"),
    "procs_not_a_number": ("hosts:\n  - name: a\n    procs: many\n", "procs"),
    "host_without_name": ("hosts:\n  - address: 10.0.0.1\n", "name"),
    "hosts_not_a_list": ("hosts: a\n", "hosts"),
    "password": ("hosts:\n  - name: a\n    password: secret\n", "password"),
    "not_yaml": ("hosts: [a\n", ""),
}


@pytest.mark.parametrize("name", sorted(BAD_INVENTORIES))
def test_bad_inventory_is_exit_2_naming_file_and_key(run_cli, tmp_path: Path, name: str) -> None:
    text, key = BAD_INVENTORIES[name]
    hosts = tmp_path / f"{name}.yaml"
    hosts.write_text(text)
    result = run_cli("run", "-i", hosts, JOBS / "reverse.py")
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert_one_clear_error(result.stderr, str(hosts), key)
    assert "secret" not in result.stderr


def test_missing_inventory_file(run_cli, tmp_path: Path) -> None:
    hosts = tmp_path / "absent.yaml"
    result = run_cli("run", "-i", hosts, JOBS / "reverse.py")
    assert result.returncode == 2
    assert_one_clear_error(result.stderr, str(hosts))


def test_bad_host_list(run_cli) -> None:
    result = run_cli("run", "-H", "user@host:notaport", JOBS / "reverse.py")
    assert result.returncode == 2
    assert_one_clear_error(result.stderr, "notaport")


def test_bad_job_is_reported_before_the_inventory_is_used(run_cli, tmp_path: Path) -> None:
    job = write(tmp_path / "bad.py", "def processor(:\n")
    hosts = write(tmp_path / "hosts.yaml",
                  "hosts:\n  - name: unreachable\n    address: 127.0.0.1\n    port: 1\n")
    result = run_cli("run", "-i", hosts, job)
    assert result.returncode == 2
    assert_one_clear_error(result.stderr, str(job))


def test_output_reader_leaving_early_stops_quietly(tmp_path: Path, fresh_home: Path) -> None:
    """`antnest run job | head -1`: no traceback, exit 141 like a command killed by SIGPIPE."""
    job = tmp_path / "many.py"
    job.write_text("input_data = list(range(200000))\ndef processor(x):\n    return x\n")
    proc = popen_cli(fresh_home, "run", job, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert first == b"0\n"
    assert "Traceback" not in err and "BrokenPipe" not in err

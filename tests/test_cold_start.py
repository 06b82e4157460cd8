"""What a fresh `antnest` process imports on its way to the first result: nothing it does not
need (how long that takes is measured in benchmarks/scale.py, never asserted here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from antnest.testing import SshdFleet
from plugins.cli import HELLO_WORLD, JOBS, REPO, cli_environment

JOB = JOBS / "reverse.py"
NOT_NEEDED = ("fabric", "invoke", "tqdm", "asyncio", "unittest")

# Runs the CLI in this fresh interpreter, then reports which top-level packages it imported.
PROBE = (
    "import json, sys\n"
    "from antnest.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('IMPORTED ' + json.dumps(sorted({m.split('.')[0] for m in sys.modules})), "
    "file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def imported(args: List[str], home: Path) -> Dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          cwd=REPO, env=cli_environment(home), timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    line = [x for x in done.stderr.splitlines() if x.startswith("IMPORTED ")][-1]
    return {"stdout": done.stdout, "modules": set(json.loads(line[len("IMPORTED "):]))}


def test_a_local_run_imports_no_ssh_yaml_or_progress_library(fresh_home: Path) -> None:
    got = imported(["run", str(JOB)], fresh_home)
    assert got["stdout"] == HELLO_WORLD
    assert got["modules"] & {"paramiko", "cryptography", "yaml", *NOT_NEEDED} == set()


def test_an_ssh_run_from_a_host_list_imports_paramiko_alone(fleet: SshdFleet,
                                                             fresh_home: Path) -> None:
    """Off a TTY, with -H (no YAML inventory): neither fabric, invoke, PyYAML nor tqdm."""
    got = imported(["run", "-H", "fleet1,fleet2", "--ssh-config", str(fleet.ssh_config),
                    "--procs", "1", str(JOB)], fresh_home)
    assert sorted(str(got["stdout"]).split()) == ["dlrow", "olleh"]
    assert "paramiko" in got["modules"]
    assert got["modules"] & {"yaml", *NOT_NEEDED} == set()


def test_paramiko_keeps_match_exec_for_other_users_of_it_in_the_process() -> None:
    """antnest imports paramiko without invoke (only paramiko's own ssh_config reader uses it,
    for Match exec); invoke then loads on first use, so paramiko behaves as it always did."""
    pytest.importorskip("invoke")
    code = (
        "import sys\n"
        "import antnest.transport.ssh\n"
        "assert 'invoke' not in sys.modules\n"
        "import paramiko\n"
        "config = paramiko.SSHConfig.from_text('Match exec true\\n    User bob\\n')\n"
        "print(config.lookup('anyhost').get('user'), 'invoke' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bob", "True"]

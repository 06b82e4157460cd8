"""Defects a new or daily user hits: results kept in place, output files kept whole, counts
that add up, status lines that say what happened (issue 18's findings, one test each)."""
from __future__ import annotations

import io
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

import antnest
from antnest.errors import JobFailed


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


ORIGINAL_FAILING = """
    def processor(self, x):
        if x == 'b':
            raise ValueError('no b')
        return x.upper()

    def split(self, input_data, processor):
        import taskunit
        for word in input_data.split():
            yield taskunit.TaskUnit(data=word, processor=processor)

    def combine(self):
        for t in self.taskunits:
            print(t.id, t.data, t.result, t.state, type(t.error).__name__)

    input_data = 'a b c d'
"""


def test_original_form_keep_going_keeps_each_result_in_its_place(tmp_path: Path) -> None:
    job = write(tmp_path / "old.py", ORIGINAL_FAILING)
    out = io.StringIO()
    with pytest.raises(JobFailed):
        antnest.run(str(job), output=out, procs=2, keep_going=True)
    assert out.getvalue().splitlines() == [
        "0 a A COMPLETED NoneType",
        "1 b None BAILED TaskError",
        "2 c C COMPLETED NoneType",
        "3 d D COMPLETED NoneType",
    ]


SLOW_WHEN_TOLD = """
    import time

    def processor(item):
        if item == 'slow':
            time.sleep(60)
        return item

    def combine(results):
        for r in results:
            print(r)
"""


def test_a_failed_run_leaves_the_old_output_whole(tmp_path: Path, run_cli) -> None:
    job = write(tmp_path / "job.py", SLOW_WHEN_TOLD)
    good = write(tmp_path / "good.txt", "a\nb\n")
    bad = write(tmp_path / "bad.txt", "a\nslow\n")
    out = tmp_path / "today.out"
    first = run_cli("run", "--procs", "1", "--input", good, "-o", out, job)
    assert first.returncode == 0, first.stderr
    assert out.read_text() == "a\nb\n"
    second = run_cli("run", "--procs", "1", "--input", bad, "-o", out, "--timeout", "2", job)
    assert second.returncode == 4, second.stderr
    assert out.read_text() == "a\nb\n"
    assert "left as it was" in second.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_output_replaces_the_file_only_when_combine_finished(tmp_path: Path, run_cli) -> None:
    job = write(tmp_path / "job.py", SLOW_WHEN_TOLD)
    out = tmp_path / "o.txt"
    out.write_text("old\n")
    out.chmod(0o640)
    done = run_cli("run", "--procs", "1", "--input", write(tmp_path / "in.txt", "x\n"),
                   "-o", out, job)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == "x\n"
    assert out.stat().st_mode & 0o777 == 0o640

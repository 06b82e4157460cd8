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

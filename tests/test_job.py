"""Job files: both forms load from any path, split/combine defaults, lazy input, clear errors.

In-process: loading and planning a job needs no runner (except the one antnest.run test).
"""
from __future__ import annotations

import io
import itertools
import sys
import textwrap
from pathlib import Path

import pytest

import antnest
from antnest.errors import JobFileError, UsageError
from plugins.cli import JOBS, TEST_JOBS


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def run_plan(job: antnest.Job, input=None) -> str:
    """Split, process here, combine: what the job would print."""
    out = io.StringIO()
    plan = job.plan(input, out)
    try:
        results = [plan.processor(item) for item in plan.items]
        value = plan.combine(iter(results), [])
    finally:
        plan.closer()
    if value is not None:
        out.write(f"{value}\n")
    return out.getvalue()


def test_modern_job() -> None:
    job = antnest.load(JOBS / "reverse.py")
    assert job.form == "modern"
    assert job.input_data == "hello\nworld"
    assert job.processor("abc") == "cba"
    assert job.path == str(JOBS / "reverse.py")
    assert run_plan(job) == "olleh\ndlrow\n"


def test_original_form_job_runs_unchanged() -> None:
    job = antnest.load(JOBS / "reverse_strings.py")
    assert job.form == "original"
    assert run_plan(job) == "olleh\ndlrow\n"


def test_original_form_taskunits_carry_id_data_result_state(tmp_path: Path) -> None:
    job = antnest.load(write(tmp_path / "old.py", """
        def processor(self, data):
            return len(data)

        def split(self, input_data, processor):
            import taskunit
            for word in input_data.split(' '):
                yield taskunit.TaskUnit(data=word, processor=processor)

        def combine(self):
            for t in self.taskunits:
                print(t.id, t.data, t.result, t.state)

        input_data = 'a bb ccc'
    """))
    assert run_plan(job) == "0 a 1 COMPLETED\n1 bb 2 COMPLETED\n2 ccc 3 COMPLETED\n"


def test_original_form_without_split_and_combine(tmp_path: Path) -> None:
    job = antnest.load(write(tmp_path / "old.py", """
        def processor(self, data):
            return data.upper()

        input_data = 'x\\ny'
    """))
    assert job.form == "original"
    assert run_plan(job) == "X\nY\n"


def test_defaults_split_lines_and_print_results(tmp_path: Path) -> None:
    job = antnest.load(write(tmp_path / "j.py", """
        def processor(item):
            return item * 2
        input_data = [1, 2, 3]
    """))
    assert run_plan(job) == "2\n4\n6\n"
    assert run_plan(job, io.StringIO("a\nb\n")) == "aa\nbb\n"


def test_combine_return_value_and_failures_form(tmp_path: Path) -> None:
    job = antnest.load(write(tmp_path / "j.py", """
        def processor(item):
            return int(item)
        def combine(results, failures):
            return sum(results) + 1000 * len(failures)
        input_data = "1\\n2\\n3"
    """))
    assert run_plan(job) == "6\n"


def test_input_file_replaces_input_data(tmp_path: Path) -> None:
    data = write(tmp_path / "in.txt", "one\ntwo\n")
    assert run_plan(antnest.load(JOBS / "reverse.py"), str(data)) == "eno\nowt\n"
    assert run_plan(antnest.load(JOBS / "reverse.py"), data) == "eno\nowt\n"


def test_input_dash_is_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("abc\nxyz\n"))
    assert run_plan(antnest.load(JOBS / "reverse.py"), "-") == "cba\nzyx\n"


class EndlessText(io.TextIOBase):
    """A text stream with no end: only a lazy reader can take a few lines from it."""

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def readline(self, size: int = -1) -> str:
        self.served += 1
        return f"line {self.served}\n"

    def read(self, size: int = -1) -> str:
        if size is None or size < 0:
            raise AssertionError("the whole input was read at once")
        return self.readline()


def test_input_is_read_lazily() -> None:
    stream = EndlessText()
    plan = antnest.load(JOBS / "reverse.py").plan(stream)
    first = list(itertools.islice(iter(plan.items), 3))
    assert first == ["line 1", "line 2", "line 3"]
    assert stream.served < 100


def test_no_input_at_all_is_a_usage_error(tmp_path: Path) -> None:
    job = antnest.load(write(tmp_path / "j.py", "def processor(item):\n    return item\n"))
    with pytest.raises(UsageError, match="input"):
        run_plan(job)


def test_relative_path_from_another_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "deep" / "er").mkdir(parents=True)
    write(tmp_path / "deep" / "er" / "job.py", "def processor(x):\n    return -x\ninput_data = [1]\n")
    monkeypatch.chdir(tmp_path / "deep")
    job = antnest.load("er/job.py")
    assert run_plan(job) == "-1\n"


def test_neighbour_module_is_importable() -> None:
    job = antnest.load(TEST_JOBS / "neighbour.py")
    assert run_plan(job) == "HELLO!\nWORLD!\n"


@pytest.mark.parametrize("source, problem", [
    ("def processor(x)\n    return x\n", "syntax error on line 1"),
    ("x = 1\n", "processor"),
    ("processor = 'not a function'\n", "processor"),
    ("def processor(a, b, c):\n    pass\n", "3 arguments"),
    ("def processor(x):\n    pass\ndef split(a, b):\n    pass\n", "split"),
    ("def processor(self, x):\n    pass\ndef combine(a, b):\n    pass\n", "combine"),
    ("import no_such_module_anywhere\ndef processor(x):\n    pass\n", "no_such_module_anywhere"),
], ids=["syntax", "no-processor", "not-callable", "arity", "split-arity",
        "original-combine-arity", "import-error"])
def test_bad_job_files_raise_job_file_error(tmp_path: Path, source: str, problem: str) -> None:
    path = tmp_path / "bad.py"
    path.write_text(source)
    with pytest.raises(JobFileError) as raised:
        antnest.load(path)
    assert raised.value.path == str(path)
    assert str(path) in str(raised.value)
    assert problem in str(raised.value)


def test_missing_job_file(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="absent.py"):
        antnest.load(tmp_path / "absent.py")


def test_one_shot_run(leftovers, tmp_path: Path) -> None:
    out = io.StringIO()
    assert antnest.run(str(JOBS / "reverse.py"), output=out, procs=2) is None
    assert out.getvalue() == "olleh\ndlrow\n"

"""Job files: the modern form (processor(item), split(input_data), combine(results)) and the
original antnest form (processor(self, data), split(self, input_data, processor) yielding
taskunit.TaskUnit, combine(self) reading self.taskunits), both loaded from any path.

A loaded job becomes a Plan: the taskunit data to send, the function the runners call, and how
to hand results to combine. The job module is registered in sys.modules under its own name, so
its functions and classes pickle by reference, and its source (with its neighbours', see
antnest.codeship) goes to the hosts, which import it from memory under the same name.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import os
import sys
import types
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from antnest import runner
from antnest import taskunit as taskunit_module
from antnest.errors import JobFileError, UsageError

PathLike = Union[str, "os.PathLike[str]"]


class _NoValue:
    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE: Any = _NoValue()   # input_data= not given (None is a value a job may want)


class _Value:
    """An input that is the data itself, not a place to read it from."""

    def __init__(self, value: Any) -> None:
        self.value = value


@dataclass
class Job:
    """A job: `processor` is required; `split`, `combine` and `input_data` are optional."""

    processor: Callable[..., Any]
    split: Optional[Callable[..., Iterable[Any]]] = None
    combine: Optional[Callable[..., Any]] = None
    input_data: Any = None
    name: str = "job"
    path: Optional[str] = None
    form: str = "modern"  # "original": the (self, ...) signatures of the first antnest
    digest: str = field(default="", repr=False)  # of the job source: journals check it
    setup: Optional[Callable[[], Any]] = None  # once per runner before its first taskunit

    def plan(self, input: Any = None, output: Optional[IO[str]] = None, *,
             input_data: Any = NO_VALUE) -> "Plan":
        """How to run this job on `input` (see open_input: a path, '-', an open file, bytes or
        an iterable of items; None: the job's input_data) or on the value `input_data`."""
        if input_data is not NO_VALUE:
            if input is not None:
                raise UsageError("give input= (a path, a file or items) or input_data= (the "
                                 "value itself), not both")
            input = _Value(input_data)
        if self.form == "original":
            return _original_plan(self, input, output)
        return _modern_plan(self, input, output)


@dataclass
class Plan:
    items: Iterable[Any]                       # taskunit data, lazily
    processor: Callable[[Any], Any]            # what a runner calls per taskunit
    combine: Callable[[Iterator[Any], List[Any]], Any]  # (results, failures) -> value
    closer: Callable[[], None] = lambda: None  # closes an input file
    # True: `results` holds a placeholder with an `.error` (a TaskError) for each failed
    # taskunit, in its place, so a combine that indexes taskunits keeps them aligned.
    failures_inline: bool = False
    setup: Optional[Callable[[], Any]] = None  # the job's setup(), run once per runner
    source: Optional[IO[str]] = None           # the input file, for progress in bytes


# -- loading ------------------------------------------------------------------------------------

def load(path: PathLike) -> Job:
    """Load a job file; every problem becomes a JobFileError naming the file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            source = handle.read()
    except OSError as exc:
        raise JobFileError(path, f"cannot read it: {exc.strerror or exc}") from None
    try:
        code = compile(source, path, "exec")
    except SyntaxError as exc:
        raise JobFileError(path, f"syntax error on line {exc.lineno}: {exc.msg}") from None
    except ValueError as exc:
        raise JobFileError(path, f"cannot compile it: {exc}") from None

    digest = hashlib.sha256(source).hexdigest()
    name = "antnest_job_" + "".join(c if c.isalnum() else "_" for c in
                                    os.path.splitext(os.path.basename(path))[0])
    module = types.ModuleType(name)
    module.__file__ = os.path.abspath(path)
    # Original-form jobs do `import taskunit` inside split(); it must find ours.
    sys.modules.setdefault("taskunit", taskunit_module)
    job_dir = os.path.dirname(os.path.abspath(path))
    sys.modules[name] = module
    sys.path.insert(0, job_dir)
    try:
        exec(code, module.__dict__)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise JobFileError(path, f"raised {type(exc).__name__} while loading: {exc}") from exc
    finally:
        sys.path.remove(job_dir)
    return from_module(module, path, digest)


def _positional_count(fn: Callable, path: str, what: str) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        raise JobFileError(path, f"{what} is not a function with a signature") from None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return -1
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               and p.default is p.empty)


def from_module(module: types.ModuleType, path: str = "<job>", digest: str = "") -> Job:
    """Check the functions a job module defines and build its Job."""
    ns = vars(module)
    processor = ns.get("processor")
    if processor is None:
        raise JobFileError(path, "it defines no processor(); a job needs at least "
                                 "`def processor(item): ...`")
    if not callable(processor):
        raise JobFileError(path, "processor is not a function")
    arity = _positional_count(processor, path, "processor")
    if arity == 2:
        form = "original"
    elif arity in (1, -1):
        form = "modern"
    else:
        raise JobFileError(path, f"processor takes {arity} arguments; it must take one "
                                 "(item) or, in the original form, two (self, data)")
    split = ns.get("split")
    combine = ns.get("combine")
    arities: Dict[str, Dict[str, Tuple[int, ...]]] = {
        "modern": {"split": (1,), "combine": (1, 2)},
        "original": {"split": (3,), "combine": (1,)},
    }
    want = arities[form]
    shape = {"modern": {"split": "split(input_data)", "combine": "combine(results)"},
             "original": {"split": "split(self, input_data, processor)",
                          "combine": "combine(self)"}}[form]
    for what, fn in (("split", split), ("combine", combine)):
        if fn is None:
            continue
        if not callable(fn):
            raise JobFileError(path, f"{what} is not a function")
        count = _positional_count(fn, path, what)
        if count != -1 and count not in want[what]:
            raise JobFileError(path, f"{what}() takes {count} arguments; with a {form}-form "
                                     f"processor it must be {shape[what]}")
    setup = ns.get("setup")
    if setup is not None:
        if not callable(setup):
            raise JobFileError(path, "setup is not a function")
        count = _positional_count(setup, path, "setup")
        if count not in (0, -1):
            raise JobFileError(path, f"setup() takes {count} arguments; it must take none "
                                     "(it runs once per runner and sets module globals)")
    if form == "original" and split is None:
        split = _original_default_split
    return Job(processor=processor, split=split, combine=combine,
               input_data=ns.get("input_data"), name=os.path.basename(path), path=path,
               form=form, digest=digest, setup=setup)


# -- input --------------------------------------------------------------------------------------

def open_input(input: Any) -> Optional[IO[str]]:
    """A path or '-' opened for lazy reading; None when the input is a value (see
    input_value) or the job's own input_data applies.

    How `input` is told apart, by type: a str or os.PathLike is a path ('-' is stdin); an object
    with read() is an open file; bytes and any other iterable (a list, a range, a generator) are
    the input itself, as if the job's input_data were that value. Text that is the input itself,
    not a file name, goes in `input_data=` instead.
    """
    if input is None or isinstance(input, _Value):
        return None
    if isinstance(input, str) and input == "-":  # decoded as a file is (the locale may not be)
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape") \
            if hasattr(sys.stdin, "buffer") else sys.stdin
    if isinstance(input, (str, os.PathLike)):
        try:
            return open(input, "r", encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            hint = "" if isinstance(input, os.PathLike) or os.sep in input else (
                f"; to run on the text itself, pass input_data={input!r}")
            raise UsageError(f"input {os.fspath(input)}: {exc.strerror or exc}{hint}") from None
    if hasattr(input, "read"):
        return input
    if isinstance(input, (bytes, bytearray)) or hasattr(input, "__iter__"):
        return None
    raise UsageError(f"input must be a path, '-', an open file, bytes or an iterable of items, "
                     f"not {type(input).__name__}")


def input_value(job: Job, input: Any) -> Any:
    """What split() gets when `input` is not read from a file: the value, or input_data."""
    if isinstance(input, _Value):
        return input.value
    if input is None:
        return job.input_data
    return input


def _is_stdin(input: Any, handle: Any) -> bool:
    """stdin stays open after a run, whichever wrapper read it."""
    return (isinstance(input, str) and input == "-") or handle in (sys.stdin,
                                                                    getattr(sys.stdin, "buffer", None))


def _lines(handle: IO[Any]) -> Iterator[Any]:
    """A file's lines without their newline: str for a text file, bytes for a binary one."""
    for line in handle:
        newline = b"\n" if isinstance(line, bytes) else "\n"
        yield line[:-1] if line.endswith(newline) else line


def default_split(input_data: Any) -> Iterable[Any]:
    """A str splits into lines, a file into its lines (lazily), any other iterable into items."""
    if input_data is None:
        raise UsageError("the job has no input: define input_data in the job file or pass --input")
    if isinstance(input_data, (str, bytes)):
        return input_data.splitlines()
    if hasattr(input_data, "readline"):
        return _lines(input_data)
    try:
        iterator = iter(input_data)
    except TypeError:
        raise UsageError(f"input_data of type {type(input_data).__name__} cannot be split "
                         "into taskunits; define split(input_data)") from None
    if hasattr(input_data, "__len__") and iterator is not input_data:
        return input_data  # sized (a list, a range): the summaries can say how many are left
    return iterator


def default_combine(results: Iterator[Any]) -> None:
    for result in results:
        print(result)


def _modern_plan(job: Job, input: Any, output: Optional[IO[str]]) -> Plan:
    handle = open_input(input)
    data = handle if handle is not None else input_value(job, input)
    split = job.split or default_split
    items = split(data) if job.split else default_split(data)
    combine: Callable[..., Any] = job.combine or default_combine
    wants_failures = job.combine is not None and _positional_count(combine, job.path or "", "combine") == 2

    def run_combine(results: Iterator[Any], failures: List[Any]) -> Any:
        with _printing_to(output):
            return combine(results, failures) if wants_failures else combine(results)

    closer = handle.close if handle is not None and not _is_stdin(input, handle) else (lambda: None)
    return Plan(items=items, processor=job.processor, combine=run_combine, closer=closer,
                setup=job.setup, source=handle)


# -- the original form --------------------------------------------------------------------------

def _original_default_split(self: Any, input_data: Any, processor: Callable) -> Iterator[Any]:
    for line in str(input_data).split("\n"):
        yield taskunit_module.TaskUnit(data=line, processor=processor)


class _OriginalJob:
    """What `self` is for an original-form split()/combine(): it holds the taskunits."""

    def __init__(self, input_data: Any) -> None:
        self.input_data = input_data
        self.taskunits: List[taskunit_module.TaskUnit] = []


def _with_self(fn: Callable) -> Callable[[Any], Any]:
    """processor(self, data) -> a one-argument callable every host can import."""
    return runner.WithSelf(fn)


def _original_plan(job: Job, input: Any, output: Optional[IO[str]]) -> Plan:
    handle = open_input(input)
    if handle is not None:
        input_data = handle.read()  # the original form's split() expects the whole text
        if not _is_stdin(input, handle):
            handle.close()
    else:
        input_data = input_value(job, input)
    if input_data is None:
        raise UsageError(f"{job.name}: the job has no input: define input_data or pass --input")
    owner = _OriginalJob(input_data)
    split = job.split or _original_default_split

    def taskunit_data() -> Iterator[Any]:
        for index, unit in enumerate(split(owner, input_data, job.processor)):
            if not isinstance(unit, taskunit_module.TaskUnit):
                unit = taskunit_module.TaskUnit(data=unit)
            unit.id = index
            unit.setstate("PENDING")
            owner.taskunits.append(unit)
            yield unit.data

    def run_combine(results: Iterator[Any], failures: List[Any]) -> Any:
        # Position by position: a failed taskunit keeps its place (and its error), so every
        # other taskunit keeps its own result.
        for index, result in enumerate(results):
            unit = owner.taskunits[index]
            error = getattr(result, "error", None) if _is_failure(result) else None
            if error is not None:
                unit.error = error
                unit.setstate("BAILED")
            else:
                unit.result = result
                unit.setstate("COMPLETED")
        if job.combine is None:
            with _printing_to(output):
                for unit in owner.taskunits:
                    print(unit.result)
            return None
        with _printing_to(output):
            return job.combine(owner)

    return Plan(items=taskunit_data(), processor=_with_self(job.processor), combine=run_combine,
                failures_inline=True, setup=job.setup)


def _is_failure(value: Any) -> bool:
    """The scheduler's placeholder for a failed taskunit (imported late: job.py stays light)."""
    from antnest.scheduler import Failure

    return type(value) is Failure


@contextlib.contextmanager
def _printing_to(output: Optional[IO[str]]) -> Iterator[None]:
    if output is None:
        yield
        return
    with contextlib.redirect_stdout(output):
        yield

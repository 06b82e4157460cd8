"""Code that travels as source: which of the master's modules go to the runners, how functions
are pickled so that every host's Python can load them, and the answers to a runner's requests
for modules its host lacks.

Bytecode never crosses Python versions (a 3.11 function pickled by value fails on 3.10 and may
crash 3.12). Instead:

    module-level function / class ──▶ by reference (module, qualname); the module's source is
                                      shipped (SOURCES) when it is local, forwarded when asked
    lambda, nested function, closure ──▶ its source text + its free variables' and globals'
                                      values (runner._rebuild_function), compiled on the host
    no source left (exec, REPL)     ──▶ cloudpickle by value, loaded only by hosts of the
                                      master's minor version; others get a CodeShippingError

"Local" modules are the master's pure-Python modules that are not installed: not under the
standard library or site-packages (the job file, its neighbours, a PYTHONPATH directory, the
user's __main__ script). They are shipped before the first call that runs there, once per
runner, and win over the host's modules of the same name. Everything else the hosts lack is
forwarded on demand, and loses to what the host has.
"""
from __future__ import annotations

import ast
import functools
import importlib
import io
import linecache
import os
import pickle
import site
import sys
import sysconfig
import threading
import types
from importlib.machinery import EXTENSION_SUFFIXES, PathFinder
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from antnest import runner

Record = Tuple[str, bool, str, bytes]  # (module name, is package, file name, source)
ForwardPolicy = Union[bool, Sequence[str]]  # True: any module; False: none; names: those packages


def _system_paths() -> Tuple[str, ...]:
    paths = {sysconfig.get_paths().get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    try:
        paths.update(site.getsitepackages())
        paths.add(site.getusersitepackages())
    except AttributeError:  # pragma: no cover - virtualenvs of old
        pass
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


_SYSTEM = _system_paths()
_OWN = os.path.dirname(os.path.realpath(__file__)) + os.sep
_lock = threading.Lock()
_records: Dict[Tuple[str, str, float], Optional[Record]] = {}


def _local_file(module: Any) -> Optional[str]:
    """The module's source file when it is a local pure-Python module, else None."""
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py"):
        return None
    return _local_path(file)


@functools.lru_cache(maxsize=None)
def _real_directory(directory: str) -> str:
    return os.path.realpath(directory)


@functools.lru_cache(maxsize=None)
def _local_path(file: str) -> Optional[str]:
    # The same answer as realpath(file), resolving each directory once: a cold process walks
    # every module imported (300+ over SSH, most in a few directories) before its first job.
    directory, name = os.path.split(file)
    path = os.path.join(_real_directory(directory), name)
    if os.path.islink(path):
        path = os.path.realpath(path)
    if path.startswith(_SYSTEM) or path.startswith(_OWN):
        return None
    return path


def _record(name: str, module: Any, path: str) -> Optional[Record]:
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return None
    key = (name, path, mtime)
    if key not in _records:
        try:
            with open(path, "rb") as handle:
                source = handle.read()
        except OSError:
            _records[key] = None
        else:
            _records[key] = (name, hasattr(module, "__path__"), path, source)
    return _records[key]


def local_sources() -> List[Record]:
    """The local modules loaded here now, and the __main__ script as MAIN_ALIAS."""
    found = []
    with _lock:
        for name, module in sys.modules.copy().items():   # other threads import meanwhile
            if name.startswith("__") or module is None:
                continue
            path = _local_file(module)
            if path is not None:
                record = _record(name, module, path)
                if record is not None:
                    found.append(record)
        main = sys.modules.get("__main__")
        path = _local_file(main)
        if path is not None:
            record = _record(runner.MAIN_ALIAS, main, path)
            if record is not None:
                found.append(record)
                # What hosts send back names MAIN_ALIAS (a class defined in the script).
                sys.modules.setdefault(runner.MAIN_ALIAS, main)  # type: ignore[arg-type]
    return found


def main_is_shipped() -> bool:
    return sys.modules.get(runner.MAIN_ALIAS) is sys.modules.get("__main__")


# -- functions ----------------------------------------------------------------------------------

class SourceUnavailable(Exception):
    """Why a function's source cannot be recovered (it then travels by value)."""


def describe(fn: Any) -> str:
    """`qualname (file:line)`, how errors name a function."""
    code = getattr(fn, "__code__", None)
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return f"{getattr(fn, '__qualname__', repr(fn))}{where}"


def _importable(obj: Any) -> bool:
    """Whether pickling obj by (module, qualname) finds it again on the hosts."""
    qualname = getattr(obj, "__qualname__", "")
    if "<" in qualname:  # <lambda>, <locals>
        return False
    module_name = getattr(obj, "__module__", None)
    module = sys.modules.get(module_name or "")
    if module is None:
        return False
    if module_name == "__main__" and (not main_is_shipped() or
                                      qualname.split(".")[0] not in _main_names()):
        return False  # defined under `if __name__ == "__main__":` it does not exist there
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target is obj


def _bound(statements: List[ast.stmt]) -> set:
    """Names a module body binds, leaving out what `if __name__ == "__main__":` holds."""
    names: set = set()
    for node in statements:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.If):
            if "__name__" not in ast.dump(node.test):
                names |= _bound(node.body) | _bound(node.orelse)
        elif isinstance(node, ast.Try):
            names |= _bound(node.body) | _bound(node.orelse) | _bound(node.finalbody)
            for handler in node.handlers:
                names |= _bound(handler.body)
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            names |= _bound(node.body)
    return names


def _main_names() -> set:
    """What the host's copy of __main__ defines when imported as MAIN_ALIAS."""
    main = sys.modules.get("__main__")
    path = _local_file(main)
    if path is None:
        return set()
    lines = linecache.getlines(path)
    try:
        tree = _tree(path, "".join(lines))
    except SourceUnavailable:
        return set()
    return _bound(tree.body)  # type: ignore[attr-defined]


_trees: Dict[Tuple[str, int], ast.AST] = {}
_ast_lock = runner.AST_LOCK   # one thread at a time builds AST objects (see runner.AST_LOCK)


def _tree(filename: str, text: str) -> ast.AST:
    key = (filename, hash(text))
    with _ast_lock:
        if key not in _trees:
            try:
                _trees[key] = ast.parse(text, filename)
            except (SyntaxError, ValueError) as exc:
                raise SourceUnavailable(f"its file does not parse here: {exc}") from None
        return _trees[key]


def _inside(node: ast.AST, spans: List[Tuple[Any, ...]]) -> bool:
    start = (node.lineno, node.col_offset)  # type: ignore[attr-defined]
    end = (node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
    return all(start <= (l, c) and (el, ec) <= end for l, c, el, ec in spans)


def _lambda_node(code: types.CodeType, candidates: List[ast.Lambda]) -> ast.Lambda:
    if len(candidates) > 1 and hasattr(code, "co_positions"):
        # Python 3.11+: the instructions' exact columns say which lambda of the line this is.
        spans = [(l, c, el, ec) for l, el, c, ec in code.co_positions()  # type: ignore[attr-defined]
                 if None not in (l, el, c, ec) and (l, c) != (code.co_firstlineno, 0)]
        if spans:
            candidates = sorted((n for n in candidates if _inside(n.body, spans)),
                                key=lambda n: (n.end_lineno or 0, n.end_col_offset or 0))[:1] or candidates
    if len(candidates) > 1:
        args = list(code.co_varnames[:code.co_argcount])
        candidates = [n for n in candidates if [a.arg for a in n.args.args] == args]
    if len(candidates) != 1:
        raise SourceUnavailable(f"{len(candidates) or 'no'} lambdas on line {code.co_firstlineno} "
                                "match it (on Python 3.11+ masters columns tell them apart)")
    return candidates[0]


def function_source(fn: types.FunctionType) -> Tuple[str, str, str, int, int]:
    """(kind, source text, file name, line, column) of a lambda or nested def."""
    code = fn.__code__
    filename = code.co_filename
    lines = linecache.getlines(filename, fn.__globals__)
    if not lines:
        raise SourceUnavailable(f"no source for {filename!r} (built with exec, or typed at a "
                                "prompt)")
    text = "".join(lines)
    tree = _tree(filename, text)
    line = code.co_firstlineno
    if code.co_name == "<lambda>":
        node: Any = _lambda_node(code, [n for n in ast.walk(tree)
                                        if isinstance(n, ast.Lambda) and n.lineno == line])
        segment = ast.get_source_segment(text, node)
        kind = "lambda"
    else:
        found = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and n.name == code.co_name
                 and line in (n.lineno, n.decorator_list[0].lineno if n.decorator_list else -1)]
        if len(found) != 1:
            raise SourceUnavailable(f"its def is not found on line {line} of {filename}")
        node = found[0]
        segment = ast.get_source_segment(text, node, padded=True)
        kind = "def"
    if segment is None:
        raise SourceUnavailable(f"cannot cut its source out of {filename}")
    return kind, segment, filename, node.lineno, node.col_offset


def _names(code: types.CodeType) -> set:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


class _Pickler(pickle.Pickler):
    """Functions and classes by reference where the hosts can import them, lambdas and closures
    by source, modules by name; by value only what has no source."""

    def __init__(self, file: io.BytesIO, protocol: int, inline: bool = False) -> None:
        super().__init__(file, protocol)
        self.protocol = protocol
        self.by_value: List[str] = []
        self.local_refs: set = set()  # local (shipped) modules named by references
        self.inline = inline  # their functions by source too (classes stay references)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType):
            if _importable(obj) and not (self.inline and _is_local(obj)):
                if _is_local(obj):
                    self.local_refs.add(obj.__module__)
                return NotImplemented
            return self._by_source(obj)
        if isinstance(obj, types.ModuleType):
            name = runner.MAIN_ALIAS if obj is sys.modules.get("__main__") else obj.__name__
            return importlib.import_module, (name,)
        if isinstance(obj, type) and obj.__module__ != "builtins":
            if not _importable(obj):
                return self._by_value(obj, "a class defined inside a function has no "
                                           "importable name")
            if _is_local(obj):
                self.local_refs.add(obj.__module__)
        return NotImplemented

    def _by_source(self, fn: types.FunctionType) -> Any:
        try:
            kind, text, filename, line, column = function_source(fn)
        except SourceUnavailable as why:
            return self._by_value(fn, str(why))
        code = fn.__code__
        values = {n: fn.__globals__[n] for n in _names(code) if n in fn.__globals__}
        for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
            try:
                values[name] = cell.cell_contents
            except ValueError:  # an empty cell: the variable was never assigned
                pass
        values.pop("__builtins__", None)
        state = (values, fn.__defaults__, fn.__kwdefaults__, dict(fn.__dict__))
        args = (kind, text, filename, line, column, fn.__name__, fn.__qualname__, fn.__module__)
        return runner._rebuild_function, args, state, None, None, runner._set_function_state

    def _by_value(self, obj: Any, why: str) -> Any:
        import cloudpickle

        what = describe(obj)
        self.by_value.append(what)
        blob = cloudpickle.dumps(obj, protocol=self.protocol)
        return runner._load_by_value, (blob, f"{what} ({why})", tuple(sys.version_info[:2]))


def _is_local(obj: Any) -> bool:
    module_name = getattr(obj, "__module__", None) or ""
    return module_name == "__main__" or _local_file(sys.modules.get(module_name)) is not None


def dumps_function(fn: Any, protocol: int) -> bytes:
    """fn pickled so that every host version can load it (see the module docstring).

    Functions of local modules go as their source with their globals' values (as computed
    here); classes by reference, so results that are instances of them unpickle here as them.
    A reference-only version follows, for functions whose source does not rebuild on a host.
    Importing a whole local module on the host (a test module importing pytest and paramiko,
    say) is thus only needed for its classes."""
    buffer = io.BytesIO()
    try:
        pickler = _Pickler(buffer, protocol)
        pickler.dump(fn)
        if pickler.local_refs:
            inline = io.BytesIO()
            try:
                _Pickler(inline, protocol, inline=True).dump(fn)
            except Exception:  # no second version: the host's ImportError stands
                return buffer.getvalue()
            # Source first: the values its globals had here (a job reading os.environ when it
            # loads), and no import of the whole module on the host; the reference second.
            return pickle.dumps(_Either(inline.getvalue(), buffer.getvalue()), protocol=protocol)
    except RecursionError:
        raise
    except Exception as exc:  # a value it uses has no pickle of its own: all of it by value
        import cloudpickle

        why = f"it uses a value that does not pickle: {type(exc).__name__}: {exc}"
        blob = cloudpickle.dumps(fn, protocol=protocol)
        return pickle.dumps(_ByValue(blob, f"{describe(fn)} ({why})"), protocol=protocol)
    return buffer.getvalue()


class _Either:
    def __init__(self, first: bytes, second: bytes) -> None:
        self.first, self.second = first, second

    def __reduce__(self) -> Any:
        return runner._first_that_loads, (self.first, self.second)


class _ByValue:
    def __init__(self, blob: bytes, what: str) -> None:
        self.blob, self.what = blob, what

    def __reduce__(self) -> Any:
        return runner._load_by_value, (self.blob, self.what, tuple(sys.version_info[:2]))


def dumps_data(obj: Any, protocol: int) -> bytes:
    """Taskunit data: classes by reference, as functions (their modules are shipped). Only a
    `__main__` that cannot be shipped (a REPL, `python -c`) sends its classes by value."""
    blob = pickle.dumps(obj, protocol=protocol)
    if b"__main__" in blob and not main_is_shipped():
        from antnest import byvalue

        return byvalue.dumps(obj, protocol)
    return blob


# -- forwarding modules on request --------------------------------------------------------------

def _find_spec(name: str) -> Any:
    """Where `name` is on the master's sys.path, without importing it (or its parents)."""
    parts = name.split(".")
    path: Optional[List[str]] = None
    spec = None
    for i in range(len(parts)):
        sub = ".".join(parts[:i + 1])
        module = sys.modules.get(sub)
        if module is not None and getattr(module, "__spec__", None) is not None:
            spec = module.__spec__
        else:
            spec = PathFinder.find_spec(sub, path)
        if spec is None:
            return None
        path = list(spec.submodule_search_locations or [])
    return spec


def _allowed(name: str, policy: ForwardPolicy) -> Optional[str]:
    """None when `name` may be forwarded, else why not."""
    if policy is True:
        return None
    if not policy:
        return "module forwarding is off (--no-forward / forward_modules=False)"
    top = name.split(".")[0]
    if top in policy:
        return None
    return f"it is not among the forwarded packages ({', '.join(policy)})"


_distributions: Dict[str, List[str]] = {}


def _distribution(top: str) -> str:
    """The name pip knows a top-level module by (`_cffi_backend` comes with `cffi`)."""
    if not _distributions:
        try:
            from importlib.metadata import packages_distributions  # type: ignore[attr-defined]

            _distributions.update(packages_distributions())
        except Exception:  # Python 3.9, or broken metadata: the module's own name
            _distributions[""] = []
    return (_distributions.get(top) or [top])[0]


_metadata: Dict[str, Optional[Tuple[str, str]]] = {}


def distribution_metadata(name: str) -> Optional[Tuple[str, str]]:
    """(distribution name, its METADATA headers) for a top-level module the master forwards:
    a package that reads its own version (`importlib.metadata.version("invoke")`) then works
    on a host that has only its source. The description after the headers stays home."""
    if "." in name:
        return None
    if name not in _metadata:
        found: Optional[Tuple[str, str]] = None
        try:
            from importlib import metadata

            dist = metadata.distribution(_distribution(name))
            text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
            headers = text.split("\n\n", 1)[0]
            if headers:
                found = (dist.metadata["Name"] or name, headers + "\n")
        except Exception:  # no metadata on the master either: the package goes without
            found = None
        _metadata[name] = found
    return _metadata[name]


def module_answer(name: str, host: str, python: str, policy: ForwardPolicy
                  ) -> Tuple[Optional[Record], str]:
    """The MODULE answer to a runner asking for `name`: (record, "") or (None, an ImportError
    message naming the module, the host and the fix)."""
    why = None if name.split(".")[0] == "antnest" else _allowed(name, policy)
    origin = None
    if why is None:
        spec = _find_spec(name)
        origin = getattr(spec, "origin", None)
        if spec is None:
            why = "the master does not have it either"
        elif origin and origin.endswith(tuple(EXTENSION_SUFFIXES)):
            why = f"it is a C extension ({origin}), and only pure-Python modules travel"
        elif origin in (None, "built-in", "frozen") and spec.submodule_search_locations is None:
            why = "it is built into the master's Python"
        else:
            is_package = spec.submodule_search_locations is not None
            filename = origin if origin and origin.endswith(".py") else f"<{name} namespace>"
            source = b""
            if origin and origin.endswith(".py"):
                try:
                    with open(origin, "rb") as handle:
                        source = handle.read()
                except OSError as exc:
                    why = f"cannot read {origin}: {exc.strerror or exc}"
            elif origin and origin not in ("namespace",):
                why = f"it is not a Python source file ({origin})"
            if why is None:
                return (name, is_package, filename, source), ""
    top = _distribution(name.split(".")[0])
    minor = ".".join(python.split(".")[:2])
    return None, (f"No module named {name!r} on host {host} (Python {python}), and the master "
                  f"cannot forward it: {why}. Install it on the host (python{minor} -m pip "
                  f"install {top}) or keep it out of the code that runs there")

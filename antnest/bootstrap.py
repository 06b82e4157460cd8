"""Stage 1 (a short `python3 -c` loader) and stage 2 (the runner, plus cloudpickle's source).

Stage 1 reads one decimal length line and that many bytes of zlib-compressed stage 2 from stdin,
and exec()s it in memory: nothing is written to the remote disk. The master sends nothing after
stage 2 until the runner says HELLO, so the loader's buffered stdin never holds protocol bytes.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import marshal
import pkgutil
import shlex
import threading
import zlib
from typing import Dict, Tuple

import cloudpickle

from antnest import runner

# Kept short and visible: this is what shows up in `ps` on the host.
STAGE1 = (
    "import sys,zlib;i=sys.stdin.buffer;"
    "exec(zlib.decompress(i.read(int(i.readline()))))  # antnest-runner"
)


def command(python: str = "python3") -> str:
    """The shell command a host runs; `python` may carry a wrapper such as `sudo -n python3`."""
    return f"{python} -B -c {shlex.quote(STAGE1)}"  # -B: not even a .pyc lands on the host


def argv(python: str) -> list:
    """The same command as an argv list for a local subprocess."""
    return [python, "-B", "-c", STAGE1]


def _cloudpickle_modules() -> Dict[str, Tuple[bool, str, bytes]]:
    """cloudpickle's modules as (is_package, source, marshalled bytecode)."""
    modules = {}
    names = [("cloudpickle", True)] + [
        (info.name, info.ispkg) for info in pkgutil.iter_modules(cloudpickle.__path__, "cloudpickle.")
    ]
    for name, is_package in names:
        module = importlib.import_module(name)
        source = inspect.getsource(module)
        code = compile(source, f"<antnest shipped {name}>", "exec")
        modules[name] = (is_package, source, marshal.dumps(code))
    return modules


_lock = threading.Lock()


def stage2() -> bytes:
    """Length line + compressed stage 2, built once per master process (thread-safe: the
    first runners of many hosts ask at the same moment)."""
    with _lock:
        return _build_stage2()


def prepare() -> None:
    """Build stage 2 in the background while the hosts are being dialled."""
    threading.Thread(target=stage2, name="antnest-stage2", daemon=True).start()


@functools.lru_cache(maxsize=None)
def _build_stage2() -> bytes:
    """Length line + compressed runner source; computed once per master process.

    cloudpickle travels as source and as bytecode: a host with the master's bytecode magic
    (the same minor version, which antnest requires anyway) skips compiling it, ~30 ms of CPU.
    """
    source = inspect.getsource(runner)
    shipped = {"magic": importlib.util.MAGIC_NUMBER, "modules": _cloudpickle_modules()}
    body = zlib.compress(_PRELUDE.format(source=source, shipped=shipped,
                                         version=cloudpickle.__version__).encode("utf-8"), 6)
    return b"%d\n" % len(body) + body  # level 9: 4x the time, 2% smaller


@functools.lru_cache(maxsize=None)
def relay_stage2() -> bytes:
    """Stage 2 of a relay (antnest.transport.relay): the same runner source, started in relay
    mode; no cloudpickle, since a relay runs no task."""
    body = zlib.compress(_RELAY_PRELUDE.format(source=inspect.getsource(runner)).encode("utf-8"), 6)
    return b"%d\n" % len(body) + body


# The runner becomes the module `antnest.runner` on the host, as it is here: pickles name its
# helpers (Star, WithSelf, _rebuild_function) by that module on both sides.
_PRELUDE = """import sys, types
_package = types.ModuleType("antnest")
_package.__path__ = []
_runner = _package.runner = types.ModuleType("antnest.runner")
sys.modules["antnest"] = _package
sys.modules["antnest.runner"] = _runner
exec(compile({source!r}, "<antnest runner>", "exec"), _runner.__dict__)
_runner.main(shipped={shipped!r}, cloudpickle_version={version!r})
"""
_RELAY_PRELUDE = _PRELUDE.split("_runner.main(")[0] + "_runner.relay_main()\n"

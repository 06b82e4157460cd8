"""Stage 1 (a short `python3 -c` loader) and stage 2 (the runner, plus cloudpickle's source).

Stage 1 reads one decimal length line and that many bytes of zlib-compressed stage 2 from stdin,
and exec()s it in memory: nothing is written to the remote disk. The master sends nothing after
stage 2 until the runner says HELLO, so the loader's buffered stdin never holds protocol bytes.
"""
from __future__ import annotations

import functools
import inspect
import pkgutil
import shlex
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


def _cloudpickle_sources() -> Dict[str, Tuple[bool, str]]:
    sources = {"cloudpickle": (True, inspect.getsource(cloudpickle))}
    for info in pkgutil.iter_modules(cloudpickle.__path__, "cloudpickle."):
        module = __import__(info.name, fromlist=["_"])
        sources[info.name] = (info.ispkg, inspect.getsource(module))
    return sources


@functools.lru_cache(maxsize=None)
def stage2() -> bytes:
    """Length line + compressed runner source; computed once per master process."""
    source = inspect.getsource(runner)
    call = "\nmain(shipped=%r, cloudpickle_version=%r)\n" % (
        _cloudpickle_sources(),
        cloudpickle.__version__,
    )
    body = zlib.compress((source + call).encode("utf-8"), 9)
    return b"%d\n" % len(body) + body

"""Taskunit data and results whose classes live only here (the user's script, a module next to
it) travel by value, as functions from there already do: the hosts cannot import them.

The stdlib pickler runs first (fast, C); only a payload naming `__main__` or a local module is
pickled again with cloudpickle, after registering those modules by value.
"""
from __future__ import annotations

import os
import pickle
import sys
import sysconfig
from typing import Any, Dict, Tuple

import cloudpickle

_SYSTEM_PATHS = tuple(
    os.path.realpath(p) for p in {sysconfig.get_paths().get(k, "") for k in
                                  ("stdlib", "platstdlib", "purelib", "platlib")} if p
)
_OWN_PATH = os.path.dirname(os.path.realpath(__file__))
_seen: Dict[str, Tuple[Any, bool]] = {}   # module name -> (module, local?)


def is_local(module: Any) -> bool:
    """A module the hosts cannot import: a file outside the stdlib, site-packages and antnest."""
    file = getattr(module, "__file__", None)
    if not file or module.__name__ == "__main__":
        return False
    path = os.path.realpath(file)
    return not path.startswith(_SYSTEM_PATHS) and not path.startswith(_OWN_PATH)


def ship_module(module: Any) -> None:
    """Pickle what `module` defines by value from now on (idempotent)."""
    try:
        cloudpickle.register_pickle_by_value(module)
    except ValueError:  # not in sys.modules under that name: leave it by reference
        pass


def _local_names() -> list:
    for name, module in sys.modules.copy().items():   # other threads import meanwhile
        entry = _seen.get(name)
        if entry is None or entry[0] is not module:
            _seen[name] = (module, module is not None and is_local(module))
    return [name for name, (_, local) in _seen.items() if local]


def dumps(obj: Any, protocol: int = 5) -> bytes:
    """Pickle taskunit data so that the hosts can load it."""
    blob = pickle.dumps(obj, protocol=protocol)
    needed = [name for name in _local_names() if name.encode() in blob]
    if not needed and b"__main__" not in blob:
        return blob
    for name in needed:
        ship_module(sys.modules[name])
    return cloudpickle.dumps(obj, protocol=protocol)

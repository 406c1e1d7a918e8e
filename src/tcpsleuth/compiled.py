"""The one decorator for compiled loops, shared by sources and detectors.

``@njit(...)`` marks a function for numba, without importing numba: importing numba
and loading its cached machine code costs about a third of a second, more than a
small capture takes to analyse in plain Python. The first call compiles every marked
function at once (each module's global name is rebound to numba's dispatcher, so
that compiled functions calling each other are compiled together: a compiled
function calls one of another module through that module, ``module.func``, not a
name imported from it, which would still be this wrapper), unless
:func:`use_python` asked for plain Python, which a command does for small inputs.
Without numba installed, everything runs as plain Python (same results, slower).

A compiled loop that allocates no array, and the helpers it calls with arrays, take
``_nrt=False``: otherwise numba counts a reference to each array handed to a helper
on every call. Measured on bench_pcap's capture (2 million segments, 2026-12-07): the
connection tracker cut into passes and helpers took 0.35 s against 0.27 s whole with
the counts, 0.25 s against 0.25 s without them.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from collections.abc import Callable
from typing import Any

import numpy

# Below this size an input (a capture) is handled in plain Python: about 80 us a packet,
# less than loading numba and its compiled loops (0.3 s) for up to a few thousand packets.
PLAIN_PYTHON_BYTES = 128 << 10

_MARKED: list[Compiled] = []
_PLAIN = {"python": False}
_COMPILING = threading.Lock()
_AS_PYTHON = threading.local()  # inside a marked function run as Python (its errstate)


class Compiled:
    """A function compiled by numba on first use, or run as Python."""

    def __init__(self, func: Callable[..., Any], options: dict[str, Any]) -> None:
        functools.update_wrapper(self, func)
        self.py_func = func
        self.options = options
        self.dispatcher: Callable[..., Any] | None = None
        _MARKED.append(self)

    def __call__(self, *args: Any) -> Any:
        if self.dispatcher is not None:
            return self.dispatcher(*args)
        if _PLAIN["python"] or not _compile_all() or self.dispatcher is None:
            if getattr(_AS_PYTHON, "inside", False):  # a marked function calling another
                return self.py_func(*args)
            # compiled integer arithmetic wraps silently; numpy's scalars warn first
            with numpy.errstate(over="ignore"):
                _AS_PYTHON.inside = True
                try:
                    return self.py_func(*args)
                finally:
                    _AS_PYTHON.inside = False
        return self.dispatcher(*args)


def njit(**options: Any) -> Callable[[Callable[..., Any]], Compiled]:
    """Mark a function for numba's ``njit`` with these options (e.g. ``cache=True``)."""

    def mark(func: Callable[..., Any]) -> Compiled:
        return Compiled(func, options)

    return mark


def use_python(plain: bool = True) -> None:
    """Run marked functions as Python until the first compiled call (small inputs)."""
    _PLAIN["python"] = plain


def use_python_for(size: int) -> None:
    """Plain Python for an input of ``size`` bytes up to :data:`PLAIN_PYTHON_BYTES` (0:
    a size not known beforehand, a pipe: compiled)."""
    use_python(0 < size <= PLAIN_PYTHON_BYTES)


def plain() -> bool:
    """True when marked functions run as Python: asked for, or numba is missing (then
    threads gain nothing, the GIL being held throughout)."""
    return _PLAIN["python"] or not numba_available()


@functools.cache
def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def _compile_all() -> bool:
    """Hand every marked function not yet compiled to numba; False without numba."""
    if not numba_available():
        return False
    with _COMPILING:  # the first compiled calls may come from several threads
        return _compile_marked()


def _compile_marked() -> bool:
    import numba

    fresh = [marked for marked in _MARKED if marked.dispatcher is None]
    for marked in fresh:
        marked.dispatcher = numba.njit(**marked.options)(marked.py_func)
    for marked in fresh:
        # compiled callers find their callees under the module's global names
        namespace = marked.py_func.__globals__
        if namespace.get(marked.py_func.__name__) is marked:
            namespace[marked.py_func.__name__] = marked.dispatcher
    return True

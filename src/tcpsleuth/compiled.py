"""numba's ``njit`` where numba is installed, else a decorator that leaves the
function as plain Python (same results, slower). The one place compiled code gets
its decorator, so that sources and detectors share it without importing each
other."""

from __future__ import annotations

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; this keeps it optional

    def njit(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        def wrap(func):  # type: ignore[no-untyped-def]
            return func

        return wrap

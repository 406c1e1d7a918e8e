"""Built-in example bundles shipped inside the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tcpsleuth.errors import InputError

DEFAULT = "incident-broker"


def names() -> list[str]:
    root = resources.files("tcpsleuth") / "examples"
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir())


def path(name: str) -> Path:
    if name not in names():
        raise InputError(f"no built-in example {name!r}; there are: {', '.join(names())}")
    return Path(str(resources.files("tcpsleuth") / "examples" / name))

"""``nstat -az`` output: one counter a line, ``Name value rate``.

``nstat`` prints ``#kernel`` first (``#<pid>`` when it reports increments
against a history file: absolute values need ``-a``). Old and new iproute2
write the same columns; the rate column is absent in some builds.
"""

from __future__ import annotations

import re
from pathlib import Path

from tcpsleuth.errors import InputError
from tcpsleuth.model.text import shortened, to_int
from tcpsleuth.sources.textfile import file_line, read_text

# ASCII digits only: `\d` would take `٣` (and int() read it as 3)
_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\s+(-?[0-9]+)(?:\s+-?[0-9.]+)?\s*$")


def parse_nstat(text: str, source: Path | str) -> dict[str, int]:
    counters: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise InputError(
                f"{file_line(source, number)}: not an `nstat` line (expected 'CounterName value')"
            )
        value = to_int(match.group(2))
        if value is None:
            raise InputError(
                f"{file_line(source, number)}: counter {match.group(1)} has value "
                f"'{shortened(match.group(2))}', more digits than any counter has"
            )
        counters[match.group(1)] = value
    if not counters:
        raise InputError(f"{source}: no counters; expected `nstat -az` output")
    return counters


def read_nstat_file(path: Path) -> dict[str, int]:
    return parse_nstat(read_text(path, "`nstat -az` output"), path)

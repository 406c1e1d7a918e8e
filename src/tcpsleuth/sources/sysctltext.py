"""``sysctl -a`` output (``name = value`` per line), as collected on other hosts."""

from __future__ import annotations

import re
from pathlib import Path

from tcpsleuth.errors import InputError
from tcpsleuth.sources.textfile import file_line, read_text

_LINE = re.compile(r"^([A-Za-z0-9_][\w.\-/:+@]*)\s*=\s?(.*)$")


def parse_sysctl(text: str, source: Path | str) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("sysctl:"):
            # `sysctl -a 2>&1` interleaves "sysctl: permission denied on key ..." lines.
            continue
        match = _LINE.match(line)
        if match is None:
            raise InputError(
                f"{file_line(source, number)}: not a `sysctl -a` line (expected 'name = value')"
            )
        key, value = match.group(1), " ".join(match.group(2).split())
        # A value of several lines is printed as several lines with the same name.
        values[key] = f"{values[key]} {value}" if key in values else value
    if not values:
        raise InputError(f"{source}: no 'name = value' lines; expected `sysctl -a` output")
    return values


def read_sysctl_file(path: Path) -> dict[str, str]:
    return parse_sysctl(read_text(path, "`sysctl -a` output"), path)

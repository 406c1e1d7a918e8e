"""One JSON document per command: the command's own data plus a ``findings`` list.

No document carries ``NaN`` or ``Infinity``: Python's json writes them, but they are
not JSON (RFC 8259), and ``jq``, browsers and most other readers refuse the whole
document. A value that is not finite (an RTT read as ``nan``, a rate divided by a
zero interval) is written as ``null``: unknown.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from typing import Any

from tcpsleuth import __version__
from tcpsleuth.model.findings import Finding


def document(command: str, findings: Iterable[Finding], **data: Any) -> dict[str, Any]:
    return {
        "tool": "tcpsleuth",
        "version": __version__,
        "command": command,
        **data,
        "findings": [finding.to_dict() for finding in findings],
    }


def finite(value: Any) -> Any:
    """``value`` with every float that is not finite, at any depth, made None (a copy
    where one was replaced; dicts, lists and tuples are walked, anything else kept)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, indent: int | None = None) -> str:
    """JSON text of ``value``, never with NaN or Infinity (they become null).

    The common case costs nothing more: the document is written once with
    ``allow_nan=False``, by the C encoder when ``indent`` is None; only a document
    that holds a non-finite number is walked (:func:`finite`) and written again."""
    try:
        return json.dumps(value, indent=indent, default=str, allow_nan=False)
    except ValueError:
        # the only ValueError json raises for our documents is a non-finite float; a
        # circular reference would be a bug, and it raises again below
        return json.dumps(finite(value), indent=indent, default=str, allow_nan=False)


def emit(doc: dict[str, Any], indent: int | None = 2) -> None:
    """``indent=None`` writes one compact line: json's C encoder only runs without
    indentation, about five times faster on documents of 100k records."""
    # JSON holds no control character (json escapes them): past the stdout guard's scan
    write = getattr(sys.stdout, "write_rendered", sys.stdout.write)
    write(dumps(doc, indent))
    write("\n")

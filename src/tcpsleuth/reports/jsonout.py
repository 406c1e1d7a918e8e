"""One JSON document per command: the command's own data plus a ``findings`` list."""

from __future__ import annotations

import json
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


def emit(doc: dict[str, Any], indent: int | None = 2) -> None:
    """``indent=None`` writes one compact line: json's C encoder only runs without
    indentation, about five times faster on documents of 100k records."""
    sys.stdout.write(json.dumps(doc, indent=indent, default=str))
    sys.stdout.write("\n")

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


def emit(doc: dict[str, Any]) -> None:
    json.dump(doc, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")

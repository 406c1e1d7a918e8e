"""A self-contained HTML report: findings, the numbers behind them and the graphs,
with the pictures embedded so that the one file can be mailed or attached."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcpsleuth import __version__
from tcpsleuth.model.findings import Finding
from tcpsleuth.model.text import printable

STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.critical { color: #b00; font-weight: bold; } .warning { color: #a60; } .info { color: #068; }
.ok { color: #060; font-weight: bold; }
.verdict { border-left: 4px solid #999; padding: 0.2em 1em; margin: 1em 0; }
.evidence { color: #555; font-size: 0.85em; } .advice { color: #060; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #444; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


@dataclass
class Section:
    title: str
    facts: Sequence[tuple[str, Any]]
    findings: Sequence[Finding]
    tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[Any]]]] = ()
    pictures: Sequence[tuple[str, Path]] = field(default_factory=list)
    facts_title: str = "Capture"
    verdict: Mapping[str, Any] | None = None  # detectors/verdict.py's, as JSON


def _e(value: Any) -> str:
    """A value as HTML text: markup escaped, and control characters shown as escapes
    (``\\x1b``): HTML allows none in text, and a page read with ``cat`` or ``less``
    must not drive the terminal (a ``client.id`` carries what its client chose)."""
    return html.escape(printable("—" if value is None else str(value), keep_newlines=True))


def _evidence(evidence: Mapping[str, Any]) -> str:
    return "; ".join(
        f"{_e(k)}={_e(v)}"
        for k, v in evidence.items()
        if v is not None and not isinstance(v, dict | list)
    )


def _findings(findings: Sequence[Finding]) -> str:
    if not findings:
        return "<p>No findings: nothing of concern was seen.</p>"
    rows = []
    for f in findings:
        rows.append(
            f"<tr><td class='{f.severity.value}'>{_e(f.severity.value)}</td><td>{_e(f.kind)}</td>"
            f"<td>{_e(' → '.join(f.subject.values()))}</td><td>{_e(f.summary)}"
            f"<div class='evidence'>{_evidence(f.evidence)}</div>"
            f"<div class='advice'>→ {_e(f.advice)}</div></td></tr>"
        )
    return (
        "<table><tr><th>severity</th><th>kind</th><th>about</th><th>what, evidence and what "
        "to do</th></tr>" + "".join(rows) + "</table>"
    )


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<h3>{_e(title)}</h3><table><tr>{head}</tr>{body}</table>"


def _picture(caption: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _verdict(verdict: Mapping[str, Any]) -> str:
    """The verdict first: at risk or not and the numbers, then the actions, numbered."""
    head, _, numbers = str(verdict.get("summary", "")).partition("\n")
    style = "critical" if verdict.get("at_risk") else "ok"
    actions = "".join(f"<li>{_e(a)}</li>" for a in verdict.get("actions") or ())
    return (
        f"<div class='verdict'><p class='{style}'>{_e(head)}</p><p>{_e(numbers)}</p>"
        + (f"<p><b>What to do:</b></p><ol>{actions}</ol>" if actions else "")
        + "</div>"
    )


def render(title: str, sections: Sequence[Section]) -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{_e(title)}</h1><p>tcpsleuth {_e(__version__)}</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{_e(section.title)}</h2>")
        if section.verdict:
            parts.append(_verdict(section.verdict))
        parts.append(_table(section.facts_title, ["", ""], list(section.facts)))
        parts.append("<h3>Findings</h3>" + _findings(section.findings))
        for table_title, columns, rows in section.tables:
            parts.append(_table(table_title, columns, rows))
        for caption, path in section.pictures:
            parts.append(_picture(caption, path))
    parts.append("</body></html>")
    return "\n".join(parts)

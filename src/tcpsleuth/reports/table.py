"""Terminal rendering with rich: findings first, then the data behind them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tcpsleuth.model.findings import Finding, Severity

SEVERITY_STYLE = {Severity.CRITICAL: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def plain(value: Any) -> str:
    """Text from a user's file, a capture or a host (a path, a hostname, a sysctl value)
    made safe for rich: ``[red]`` or ``[/x]`` in it is shown as written, not taken for
    markup (which dropped it or crashed the table)."""
    return escape(str(value))


def console(stderr: bool = False) -> Console:
    return Console(highlight=False, soft_wrap=False, stderr=stderr)


def _subject(subject: Mapping[str, str]) -> str:
    if "client" in subject and "server" in subject:
        return f"{subject['client']} → {subject['server']}"
    return " ".join(f"{value}" for value in subject.values())


def _evidence(evidence: Mapping[str, Any], limit: int = 8) -> str:
    items = [
        f"{key}={value}"
        for key, value in evidence.items()
        if value is not None and not isinstance(value, list | dict)
    ]
    return "  ".join(items[:limit])


def findings_table(findings: Sequence[Finding], title: str = "Findings") -> Table | Text:
    if not findings:
        return Text("No findings: nothing of concern was seen.", style="green")
    table = Table(title=plain(title), title_justify="left", show_lines=True, expand=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("about", overflow="fold", max_width=28)
    table.add_column("what, evidence and what to do", ratio=1)
    for finding in findings:
        body = Text(finding.summary)
        evidence = _evidence(finding.evidence)
        if evidence:
            body.append("\n" + evidence, style="dim")
        if finding.advice:
            body.append("\n→ " + finding.advice, style="green")
        table.add_row(
            Text(finding.severity.value, style=SEVERITY_STYLE[finding.severity]),
            plain(finding.kind),
            plain(_subject(finding.subject)),
            body,
        )
    return table


def key_values(title: str, rows: Iterable[tuple[str, Any]]) -> Table:
    table = Table(
        title=plain(title), title_justify="left", show_header=False, box=None, pad_edge=False
    )
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(plain(key), "—" if value is None else plain(value))
    return table


def records_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    table = Table(title=plain(title), title_justify="left")
    for index, column in enumerate(columns):
        table.add_column(plain(column), justify="left" if index == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*("—" if cell is None else plain(cell) for cell in row))
    return table

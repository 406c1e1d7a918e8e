"""Terminal rendering with rich: findings first, then the data behind them.

Every table, line and progress display of every command is written by a console made
here (:func:`console`), which shows control characters as escapes (``\\x1b``) in all
the text it writes, whatever the view that built it: a process name, a hostname in a
bundle or a Kafka ``client.id`` that carries escape sequences cannot move the cursor,
retitle the terminal or hide a line. Only the styles rich itself adds reach the
terminal as such. :func:`plain` does the same earlier, before layout, so that columns
are measured on what will be shown.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from tcpsleuth.model.findings import Finding, Severity
from tcpsleuth.model.text import printable

SEVERITY_STYLE = {Severity.CRITICAL: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def plain(value: Any) -> str:
    """Text from a user's file, a capture or a host (a path, a hostname, a sysctl value)
    made safe for rich: ``[red]`` or ``[/x]`` in it is shown as written, not taken for
    markup (which dropped it or crashed the table), and its control characters as
    escapes."""
    return escape(printable(str(value), keep_newlines=True))


def _neutralised(segments: Iterable[Segment]) -> Iterator[Segment]:
    for segment in segments:
        if segment.control is None and not segment.text.isprintable():
            yield Segment(printable(segment.text, keep_newlines=True), segment.style)
        else:
            yield segment  # plain text, or rich's own cursor moves (Live, Progress)


class SafeConsole(Console):
    """A rich console that writes no control character it did not make itself."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        # every print, log, Live and Progress refresh ends here, after layout: the
        # one place no view can bypass (rich's Text drops \r and BEL, but keeps ESC)
        return super()._render_buffer(_neutralised(buffer))


def console(stderr: bool = False) -> Console:
    if stderr:
        # past the guard main() puts on sys.stderr (cli/output.py): it would escape
        # the styles rich writes to a terminal; this console escapes on its own
        stream = getattr(sys.stderr, "unguarded", sys.stderr)
        return SafeConsole(highlight=False, soft_wrap=False, file=stream)
    return SafeConsole(highlight=False, soft_wrap=False)


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
        body = Text(printable(finding.summary, keep_newlines=True))
        evidence = printable(_evidence(finding.evidence))
        if evidence:
            body.append("\n" + evidence, style="dim")
        if finding.advice:
            body.append("\n→ " + printable(finding.advice, keep_newlines=True), style="green")
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

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.markup import escape
from rich.measure import Measurement
from rich.padding import Padding
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


class _Rendered:
    """Standard output for a console: past the guard's escaping (cli/output.py), which
    would escape the styles rich writes to a terminal; the console escapes on its own."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.write = getattr(stream, "write_rendered", stream.write)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def console(stderr: bool = False) -> Console:
    if stderr:
        # past the guard main() puts on sys.stderr, for the same reason
        stream = getattr(sys.stderr, "unguarded", sys.stderr)
        return SafeConsole(highlight=False, soft_wrap=False, file=stream)
    return SafeConsole(highlight=False, soft_wrap=False, file=_Rendered(sys.stdout))


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


def findings_table(findings: Sequence[Finding], title: str = "Findings") -> Fitted | Text:
    if not findings:
        return Text("No findings: nothing of concern was seen.", style="green")
    rows = []
    for finding in findings:
        body = Text(printable(finding.summary, keep_newlines=True))
        evidence = printable(_evidence(finding.evidence))
        if evidence:
            body.append("\n" + evidence, style="dim")
        if finding.advice:
            body.append("\n→ " + printable(finding.advice, keep_newlines=True), style="green")
        rows.append(
            [
                Text(finding.severity.value, style=SEVERITY_STYLE[finding.severity]),
                Text(printable(finding.kind)),
                Text(printable(_subject(finding.subject))),
                body,
            ]
        )
    return Fitted(
        title,
        ["severity", "kind", "about", "what, evidence and what to do"],
        rows,
        show_lines=True,
        expand=True,
        listing=_finding_listing,
    )


def _finding_listing(row: Sequence[Text]) -> RenderableType:
    head = _fold(Text("  ").join(row[:3]))
    return Group(head, Padding(_fold(row[3]), (0, 0, 0, 2)), Text(""))


def key_values(title: str, rows: Iterable[tuple[str, Any]]) -> Fitted:
    return Fitted(
        title,
        ["", ""],
        [[Text(printable(key), style="bold"), _cell(value)] for key, value in rows],
        show_header=False,
        box=False,
    )


def _cell(value: Any) -> Text:
    if isinstance(value, Text):
        return value
    return Text("—" if value is None else printable(str(value), keep_newlines=True))


def records_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Fitted:
    return Fitted(
        title,
        [printable(column) for column in columns],
        [[_cell(cell) for cell in row] for row in rows],
        justify=["left"] + ["right"] * (len(columns) - 1),
    )


def _fold(text: str | Text) -> Text:
    out = text.copy() if isinstance(text, Text) else Text(text)
    out.overflow = "fold"  # only a word wider than the whole screen is ever broken
    return out


def _share(least: Sequence[int], most: Sequence[int], room: int) -> list[int]:
    """Widths from ``least`` up, the ``room`` left over given out in proportion to what
    each column lacks of ``most`` (``sum(least) <= room < sum(most)``)."""
    widths = list(least)
    lacking = [max(0, high - low) for low, high in zip(least, most, strict=True)]
    spare = room - sum(widths)
    total = sum(lacking)
    if spare <= 0 or total == 0:
        return widths
    for index, lack in enumerate(lacking):
        widths[index] += min(lack, spare * lack // total)
    spare = room - sum(widths)
    for index, _lack in sorted(enumerate(lacking), key=lambda item: -item[1]):
        if spare <= 0:
            break
        if widths[index] < most[index]:
            widths[index] += 1
            spare -= 1
    return widths


class Fitted:
    """A table when every column fits without breaking a word, else a plain list.

    A piped or narrow output gets the list: rich's table would cut cells with "…" or
    fold an address, a path or a setting name inside itself, and those are the values
    a reader copies. The title is a line of its own, never wrapped to the table's
    width (``tcpsleuth pcap FILE | head -1`` prints the file's whole name)."""

    def __init__(
        self,
        title: str | None,
        columns: Sequence[str],
        rows: Sequence[Sequence[Text]],
        *,
        show_header: bool = True,
        box: bool = True,
        justify: Sequence[str] | None = None,
        show_lines: bool = False,
        expand: bool = False,
        listing: Callable[[Sequence[Text]], RenderableType] | None = None,
    ) -> None:
        self.show_lines, self.expand = show_lines, expand
        self.title = title
        self.columns = list(columns)
        self.rows = [list(row) for row in rows]
        self.show_header = show_header
        self.box = box
        self.justify = list(justify) if justify else ["left"] * len(self.columns)
        self.listing = listing or self._listing

    def table(self) -> Table:
        kwargs: dict[str, Any] = {} if self.box else {"box": None, "pad_edge": False}
        table = Table(
            show_header=self.show_header, show_lines=self.show_lines, expand=self.expand, **kwargs
        )
        for name, justify in zip(self.columns, self.justify, strict=True):
            table.add_column(Text(name), justify=justify)  # type: ignore[arg-type]
        for row in self.rows:
            table.add_row(*row)
        return table

    def fits(self, console: Console, options: ConsoleOptions) -> Table | None:
        """The table, each column at least as wide as its longest word, or None when
        those widths do not fit."""
        table = self.table()
        least = [
            table._measure_column(console, options, column).minimum for column in table.columns
        ]
        if sum(least) + table._extra_width > options.max_width:
            return None
        for column, width in zip(table.columns, least, strict=True):
            # rich narrows columns below their longest word when it collapses a table;
            # a minimum on each column stops that
            column.min_width = width - table._get_padding_width(column._index)
        room = options.max_width - table._extra_width
        if sum(table._calculate_column_widths(console, options.update_width(room))) > room:
            # rich's collapse narrows the widest column only, and the minimum above then
            # widens it again past the screen's edge (where it is cut): share the room
            # out, each column between its longest word and its longest line
            most = [
                table._measure_column(console, options, column).maximum for column in table.columns
            ]
            for column, width in zip(table.columns, _share(least, most, room), strict=True):
                column.width = width - table._get_padding_width(column._index)
        return table

    def _listing(self, row: Sequence[Text]) -> RenderableType:
        head = _fold(row[0]) if row else Text()
        head.stylize("bold")
        parts = []
        for name, cell in zip(self.columns[1:], row[1:], strict=False):
            if self.show_header:
                parts.append(Text.assemble((name, "dim"), " ", cell))
            else:
                parts.append(cell)
        if not parts:
            return head
        body = _fold(Text(" · ").join(parts))
        if not self.show_header and len(self.columns) == 2:
            # key and value: one line, the value wrapped under itself
            return _fold(Text.assemble(head, ": ", body))
        return Group(head, Padding(body, (0, 0, 0, 2)))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.title:
            yield _fold(Text(printable(self.title), style="bold" if self.box else "italic"))
        table = self.fits(console, options)
        if table is not None:
            yield table
            return
        for row in self.rows:
            yield self.listing(row)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, options.max_width)

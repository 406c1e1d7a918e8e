"""What ``tcpsleuth watch`` shows: counter rates, listen queues and recent events,
redrawn every interval, or as JSON lines."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import IO, Any

from rich.console import Group, RenderableType
from rich.text import Text

from tcpsleuth.model.findings import Finding
from tcpsleuth.model.records import Listener
from tcpsleuth.model.text import printable
from tcpsleuth.reports import jsonout
from tcpsleuth.reports.table import SEVERITY_STYLE, Fitted


def clock(wall_time: float) -> str:
    return datetime.datetime.fromtimestamp(wall_time, datetime.UTC).strftime("%H:%M:%S")


def iso(wall_time: float) -> str:
    return datetime.datetime.fromtimestamp(wall_time, datetime.UTC).isoformat(
        timespec="milliseconds"
    )


def _row(cells: Sequence[str], style: str) -> list[Text]:
    return [Text(printable(cell), style=style) for cell in cells]


def rates_table(
    title: str,
    names: Sequence[str],
    totals: Mapping[str, int],
    per_second: Mapping[str, float],
    grown: Mapping[str, int],
    alarming: frozenset[str] = frozenset(),
) -> Fitted:
    """The counters' rates: a table where every column fits without breaking a counter's
    name, else one entry per counter (reports/table.py's :class:`Fitted`)."""
    rows = []
    for name in names:
        if name not in totals:
            continue
        rate = per_second.get(name)
        style = "bold yellow" if grown.get(name) and name in alarming else ""
        cells = [
            name,
            str(totals[name]),
            str(grown.get(name, "—")),
            "—" if rate is None else f"{rate:.1f}",
        ]
        rows.append(_row(cells, style))
    return Fitted(
        title,
        ["counter", "total", "last interval", "per second"],
        rows,
        justify=["left", "right", "right", "right"],
    )


def listeners_table(listeners: Sequence[Listener], limit: int = 15) -> RenderableType:
    ordered = sorted(listeners, key=lambda x: (-x.accept_queue / max(x.backlog, 1), x.local))
    rows = []
    for listener in ordered[:limit]:
        full = listener.backlog > 0 and listener.accept_queue >= listener.backlog
        cells = [listener.local, str(listener.backlog), str(listener.accept_queue)]
        rows.append(_row(cells, "bold yellow" if full else ""))
    shown = Fitted(
        "Listeners (fullest accept queue first)",
        ["listener", "backlog", "accept queue"],
        rows,
        justify=["left", "right", "right"],
    )
    if len(ordered) <= limit:
        return shown
    return Group(shown, Text(f"{len(ordered) - limit} more not shown", style="dim"))


def event_line(wall_time: float, event: Finding) -> Text:
    line = Text(clock(wall_time) + " ")
    line.append(event.severity.value, style=SEVERITY_STYLE[event.severity])
    line.append(f" {printable(event.kind)}: {printable(event.summary)}")
    line.overflow = "fold"  # wrapped between words; only a word wider than the screen breaks
    return line


def screen(
    rates: RenderableType,
    listeners: RenderableType,
    events: Sequence[tuple[float, Finding]],
    keep: int = 10,
) -> Group:
    recent = [event_line(at, event) for at, event in events[-keep:]]
    body: list[Any] = [rates, listeners, Text("Events", style="bold")]
    body.extend(recent or [Text("none yet", style="green")])
    return Group(*body)


def write_json_line(out: IO[str], record: Mapping[str, Any]) -> None:
    out.write(jsonout.dumps(record) + "\n")
    out.flush()


def sample_record(
    wall_time: float,
    seconds: float,
    totals: Mapping[str, int],
    per_second: Mapping[str, float],
    names: Sequence[str],
    listeners: Sequence[Listener],
) -> dict[str, Any]:
    return {
        "type": "sample",
        "time": iso(wall_time),
        "seconds": round(seconds, 3),
        "counters": {name: totals[name] for name in names if name in totals},
        "per_second": {name: round(per_second[name], 3) for name in names if name in per_second},
        "listeners": [
            {"listener": x.local, "backlog": x.backlog, "accept_queue": x.accept_queue}
            for x in listeners
        ],
    }


def event_record(wall_time: float, event: Finding) -> dict[str, Any]:
    return {"type": "event", "time": iso(wall_time), **event.to_dict()}

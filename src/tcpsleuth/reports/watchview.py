"""What ``tcpsleuth watch`` shows: counter rates, listen queues and recent events,
redrawn every interval, or as JSON lines."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import IO, Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tcpsleuth.model.findings import Finding
from tcpsleuth.model.records import Listener
from tcpsleuth.reports import jsonout
from tcpsleuth.reports.table import SEVERITY_STYLE


def clock(wall_time: float) -> str:
    return datetime.datetime.fromtimestamp(wall_time, datetime.UTC).strftime("%H:%M:%S")


def iso(wall_time: float) -> str:
    return datetime.datetime.fromtimestamp(wall_time, datetime.UTC).isoformat(
        timespec="milliseconds"
    )


def rates_table(
    title: str,
    names: Sequence[str],
    totals: Mapping[str, int],
    per_second: Mapping[str, float],
    grown: Mapping[str, int],
    alarming: frozenset[str] = frozenset(),
) -> Table:
    table = Table(title=escape(title), title_justify="left")
    table.add_column("counter")
    table.add_column("total", justify="right")
    table.add_column("last interval", justify="right")
    table.add_column("per second", justify="right")
    for name in names:
        if name not in totals:
            continue
        rate = per_second.get(name)
        style = "bold yellow" if grown.get(name) and name in alarming else ""
        table.add_row(
            name,
            str(totals[name]),
            str(grown.get(name, "—")),
            "—" if rate is None else f"{rate:.1f}",
            style=style,
        )
    return table


def listeners_table(listeners: Sequence[Listener], limit: int = 15) -> Table:
    table = Table(title="Listeners (fullest accept queue first)", title_justify="left")
    table.add_column("listener")
    table.add_column("backlog", justify="right")
    table.add_column("accept queue", justify="right")
    ordered = sorted(listeners, key=lambda x: (-x.accept_queue / max(x.backlog, 1), x.local))
    for listener in ordered[:limit]:
        full = listener.backlog > 0 and listener.accept_queue >= listener.backlog
        table.add_row(
            listener.local,
            str(listener.backlog),
            str(listener.accept_queue),
            style="bold yellow" if full else "",
        )
    if len(ordered) > limit:
        table.caption = f"{len(ordered) - limit} more not shown"
    return table


def event_line(wall_time: float, event: Finding) -> Text:
    line = Text(clock(wall_time) + " ")
    line.append(event.severity.value, style=SEVERITY_STYLE[event.severity])
    line.append(f" {event.kind}: {event.summary}")
    return line


def screen(
    rates: Table, listeners: Table, events: Sequence[tuple[float, Finding]], keep: int = 10
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

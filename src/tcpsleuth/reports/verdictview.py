"""A verdict rendered: one or two lines saying at risk or not, of what and on which
numbers, then the actions, numbered. The same for every command that judges a host or
an incident (``doctor``, ``audit``, ``report``, ``pcap``); rendered from the verdict's
JSON form, so that ``report`` shows an incident analysed elsewhere the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from tcpsleuth.model.text import printable


def render(verdict: Mapping[str, Any]) -> Group:
    at_risk = bool(verdict.get("at_risk"))
    head, _, numbers = str(verdict.get("summary", "")).partition("\n")
    parts: list[Any] = [
        Text(printable(head), style="bold red" if at_risk else "bold green", overflow="fold")
    ]
    if numbers:
        parts.append(Text(printable(numbers), overflow="fold"))
    actions = list(verdict.get("actions") or ())
    if actions:
        parts.append(Text("What to do:", style="bold"))
        steps = Table.grid(padding=(0, 1), expand=True)
        steps.add_column(justify="right", no_wrap=True)
        steps.add_column(ratio=1)
        for number, action in enumerate(actions, 1):
            steps.add_row(f"{number}.", Text(printable(str(action)), overflow="fold"))
        parts.append(steps)
    parts.append(Text(""))
    return Group(*parts)

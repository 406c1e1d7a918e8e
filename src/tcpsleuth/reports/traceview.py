"""``tcpsleuth trace`` rendered: the live table of traced sockets."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table

from tcpsleuth.detectors.tracing import TracedSocket
from tcpsleuth.reports import table


def sockets_table(sockets: Iterable[TracedSocket], title: str) -> Table:
    rows = sorted(sockets, key=lambda s: -s.wait_ns)[:20]
    return table.records_table(
        title,
        [
            "local",
            "remote",
            "snd_wscale",
            "rcv_wscale",
            "believed window",
            "offered window",
            "segments",
            "waiting ms",
        ],
        [
            (
                s.local,
                s.remote,
                s.last.snd_wscale,
                s.last.rcv_wscale,
                s.believed_window,
                s.offered_window,
                s.last.segs,
                round(s.wait_ns / 1e6, 1),
            )
            for s in rows
        ],
    )

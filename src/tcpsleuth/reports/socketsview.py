"""``tcpsleuth sockets`` rendered: its JSON document and its tables, from one
:class:`SocketsResult` (``tcpsleuth compare`` shares the table helpers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group

from tcpsleuth.model.findings import Finding
from tcpsleuth.model.records import Listener, TcpConnection
from tcpsleuth.model.units import ms_from_us
from tcpsleuth.reports import table

FINDINGS_SHOWN = 30
# JSON with more connections than this is written on one line (see jsonout.emit)
COMPACT_JSON_FROM = 1000
SUMMARY_ROWS = 15
TABLE_ROWS = 20


@dataclass(frozen=True)
class SocketsResult:
    """What ``sockets`` found in one snapshot, in the order the user asked for."""

    origin: str
    connections: Sequence[TcpConnection]
    listeners: Sequence[Listener] | None
    findings: list[Finding]
    by_peer: list[dict[str, Any]]
    by_port: list[dict[str, Any]]
    sort_by: str
    limit: int | None


def rwnd_share(conn: TcpConnection) -> float:
    if not conn.busy_time or conn.rwnd_limited is None:
        return 0.0
    return conn.rwnd_limited / conn.busy_time


def connection_row(conn: TcpConnection) -> tuple[Any, ...]:
    share = rwnd_share(conn)
    return (
        conn.local if conn.state == "ESTAB" else f"{conn.local} {conn.state}",
        conn.remote,
        None if conn.snd_wscale is None else f"{conn.snd_wscale},{conn.rcv_wscale}",
        conn.rtt,
        conn.mss,
        conn.cwnd,
        conn.snd_wnd,
        conn.rcv_space,
        f"{conn.recv_q}/{conn.send_q}",
        None if conn.rwnd_limited is None else f"{ms_from_us(conn.rwnd_limited, 0)} ({share:.0%})",
    )


CONNECTION_COLUMNS = [
    "local",
    "remote",
    "wscale",
    "rtt ms",
    "mss",
    "cwnd",
    "snd_wnd",
    "rcv_space",
    "recv/send-q",
    "rwnd_limited ms",
]


def summary_rows(rows: list[dict[str, Any]], first: list[str]) -> list[tuple[Any, ...]]:
    return [
        (
            *(row[name] for name in first),
            row["connections"],
            " ".join(f"{k}×{v}" for k, v in row["wscale"].items()) or None,
            row["rtt_ms_median"],
            row["snd_wnd_median"],
            row["rwnd_limited_connections"],
            row["recv_q"],
            row["send_q"],
        )
        for row in rows[:SUMMARY_ROWS]
    ]


SUMMARY_COLUMNS = [
    "connections",
    "wscale (snd,rcv)",
    "rtt ms median",
    "snd_wnd median",
    "rwnd-limited",
    "recv-q",
    "send-q",
]


def endpoints_table(
    title: str, columns: list[str], rows: list[tuple[Any, ...]], endpoints: int
) -> Any:
    """records_table: its addresses are never cut (a shortened address is no use to an
    operator); records_table lists the rows instead of cutting any value."""
    del endpoints
    return table.records_table(title, columns, rows)


def findings_block(findings: list[Finding]) -> list[Any]:
    parts: list[Any] = [table.findings_table(findings[:FINDINGS_SHOWN])]
    if len(findings) > FINDINGS_SHOWN:
        parts.append(
            f"[dim]{len(findings) - FINDINGS_SHOWN} more findings: see --format json[/dim]"
        )
    return parts


def listener_dict(x: Listener) -> dict[str, Any]:
    return {
        "local": x.local,
        "local_ip": x.local_ip,
        "local_port": x.local_port,
        "backlog": x.backlog,
        "accept_queue": x.accept_queue,
    }


def document_data(result: SocketsResult, connection_dict: Any) -> dict[str, Any]:
    """The command's own part of the JSON document (beside ``findings``)."""
    shown = result.connections if result.limit is None else result.connections[: result.limit]
    listeners = result.listeners
    return {
        "origin": result.origin,
        "counts": {
            "connections": len(result.connections),
            "listeners": None if listeners is None else len(listeners),
            "shown": len(shown),
        },
        "listeners": None if listeners is None else [listener_dict(x) for x in listeners],
        "summary": {"by_peer": result.by_peer, "by_port": result.by_port},
        "connections": [connection_dict(c) for c in shown],
    }


def tables(result: SocketsResult) -> Group:
    connections, listeners = result.connections, result.listeners
    rows = connections[: TABLE_ROWS if result.limit is None else result.limit]
    parts: list[Any] = [
        table.key_values(
            "Sockets",
            [
                ("source", result.origin),
                ("connections", len(connections)),
                ("listeners", None if listeners is None else len(listeners)),
            ],
        ),
    ]
    if rows:
        parts.append(
            endpoints_table(
                f"Connections ({len(rows)} of {len(connections)}, by {result.sort_by})",
                CONNECTION_COLUMNS,
                [connection_row(c) for c in rows],
                endpoints=2,
            )
        )
    if listeners:
        parts.append(
            table.records_table(
                "Listeners",
                ["listener", "backlog", "accept queue"],
                [
                    (x.local, x.backlog, x.accept_queue)
                    for x in sorted(listeners, key=lambda x: (x.local_port, x.local_ip))
                ][:SUMMARY_ROWS],
            )
        )
    if connections:
        parts.append(
            endpoints_table(
                "By peer",
                ["peer", *SUMMARY_COLUMNS],
                summary_rows(result.by_peer, ["peer"]),
                endpoints=1,
            )
        )
        parts.append(
            table.records_table(
                "By port",
                ["port", "side", "peers", *SUMMARY_COLUMNS],
                summary_rows(result.by_port, ["port", "side", "peers"]),
            )
        )
    parts.extend(findings_block(result.findings))
    return Group(*parts)

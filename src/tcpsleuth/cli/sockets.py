"""``tcpsleuth sockets``: TCP connections as ``ss -tni`` shows them, with findings."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import click
from rich.console import Group

from tcpsleuth.cli.options import exclusive, format_option, netns_option
from tcpsleuth.detectors import sockets as detect
from tcpsleuth.detectors.compare import socket_findings
from tcpsleuth.model.findings import Finding, exit_status, ranked
from tcpsleuth.model.records import TcpConnection
from tcpsleuth.reports import jsonout, table
from tcpsleuth.sources import socketsnap

FINDINGS_SHOWN = 30
# JSON with more connections than this is written on one line (see jsonout.emit)
COMPACT_JSON_FROM = 1000
SUMMARY_ROWS = 15


def _share(conn: TcpConnection) -> float:
    if not conn.busy_time or conn.rwnd_limited is None:
        return 0.0
    return conn.rwnd_limited / conn.busy_time


# sort keys: worst (or largest) first
SORTS: dict[str, Callable[[TcpConnection], Any]] = {
    "rwnd": lambda c: (-_share(c), -(c.rwnd_limited or 0)),
    "rtt": lambda c: -(c.rtt or 0),
    "snd_wnd": lambda c: (c.snd_wnd is None, c.snd_wnd or 0),
    "busy": lambda c: -(c.busy_time or 0),
    "bytes": lambda c: -((c.bytes_acked or 0) + (c.bytes_received or 0)),
    "recv_q": lambda c: -c.recv_q,
    "send_q": lambda c: -c.send_q,
    "peer": lambda c: (c.remote_ip, c.remote_port),
    "port": lambda c: (c.local_port, c.remote_port),
}


def port_list(values: tuple[int, ...]) -> frozenset[int] | None:
    return frozenset(values) if values else None


def address_list(values: tuple[str, ...]) -> frozenset[str] | None:
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise click.BadParameter(
                f"{value!r} is not an IP address", param_hint="--address"
            ) from None
    return frozenset(values) if values else None


def ports_option(func: Any) -> Any:
    return click.option(
        "--port",
        "ports",
        type=click.IntRange(0, 65535),
        multiple=True,
        metavar="PORT",
        help="Only connections with this local or remote port (repeatable).",
    )(func)


def address_option(func: Any) -> Any:
    return click.option(
        "--address",
        "addresses",
        multiple=True,
        metavar="IP",
        help="Only connections with this local or remote address (repeatable).",
    )(func)


def _ms(us: int | None) -> float | None:
    return None if us is None else round(us / 1000)


def connection_row(conn: TcpConnection) -> tuple[Any, ...]:
    share = _share(conn)
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
        None if conn.rwnd_limited is None else f"{_ms(conn.rwnd_limited)} ({share:.0%})",
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
    """records_table whose first ``endpoints`` columns (IP:PORT) are never cut:
    a shortened address is no use to an operator."""
    built = table.records_table(title, columns, rows)
    for index in range(endpoints):
        width = max((len(str(row[index])) for row in rows), default=0)
        built.columns[index].min_width = max(width, len(columns[index]))
        built.columns[index].no_wrap = True
    return built


def findings_block(findings: list[Finding]) -> list[Any]:
    parts: list[Any] = [table.findings_table(findings[:FINDINGS_SHOWN])]
    if len(findings) > FINDINGS_SHOWN:
        parts.append(
            f"[dim]{len(findings) - FINDINGS_SHOWN} more findings: see --format json[/dim]"
        )
    return parts


@click.command("sockets")
@click.argument("source", required=False, default=None)
@netns_option
@ports_option
@address_option
@click.option(
    "--sort",
    "sort_by",
    type=click.Choice(list(SORTS)),
    default="rwnd",
    show_default=True,
    help="Order of the connection table (worst or largest first).",
)
@click.option(
    "--limit",
    type=click.IntRange(0),
    default=None,
    help="Rows of the connection table [default: 20; all in json].",
)
@format_option
def sockets_command(
    source: str | None,
    netns: str | None,
    ports: tuple[int, ...],
    addresses: tuple[str, ...],
    sort_by: str,
    limit: int | None,
    output_format: str,
) -> int:
    """Show TCP connections with their window scale, windows, RTT and how long
    each sender waited at its peer's receive window, summarised by peer and by
    port, and report what looks wrong: senders held back by the peer's window
    (rwnd-limited), windows under two segments (tiny-window), and window-scale
    anomalies visible from one end.

    SOURCE is `live` (default: this host, over sock_diag), `netns:NAME`, a file
    of `ss -tni` output from any host (old or new iproute2; `-` for stdin), a
    bundle directory, or a `tcpsleuth sockets --format json` document.

    \b
    Examples:
      tcpsleuth sockets --port 9092
      sudo tcpsleuth sockets --netns blue --sort rtt
      ss -tni > broker-17.txt; tcpsleuth sockets broker-17.txt
      tcpsleuth sockets --format json > snap.json   # input for `compare`
    """
    exclusive(source=source, netns=netns)
    spec = f"{socketsnap.NETNS_PREFIX}{netns}" if netns else (source or socketsnap.LIVE)
    snap = socketsnap.load(spec, port_list(ports), address_list(addresses))
    connections = sorted(snap.connections, key=SORTS[sort_by])
    listening = detect.server_ports(snap.listeners)
    findings = ranked(socket_findings(connections, snap.listeners))
    by_peer = detect.summary_by_peer(connections, listening)
    by_port = detect.summary_by_port(connections, listening)
    if output_format == "json":
        shown = connections if limit is None else connections[:limit]
        jsonout.emit(
            jsonout.document(
                "sockets",
                findings,
                origin=snap.origin,
                counts={
                    "connections": len(connections),
                    "listeners": None if snap.listeners is None else len(snap.listeners),
                    "shown": len(shown),
                },
                listeners=None
                if snap.listeners is None
                else [
                    {
                        "local": x.local,
                        "local_ip": x.local_ip,
                        "local_port": x.local_port,
                        "backlog": x.backlog,
                        "accept_queue": x.accept_queue,
                    }
                    for x in snap.listeners
                ],
                summary={"by_peer": by_peer, "by_port": by_port},
                connections=[socketsnap.connection_dict(c) for c in shown],
            ),
            indent=2 if len(shown) <= COMPACT_JSON_FROM else None,
        )
        return exit_status(findings)
    rows = connections[: 20 if limit is None else limit]
    parts: list[Any] = [
        table.key_values(
            "Sockets",
            [
                ("source", snap.origin),
                ("connections", len(connections)),
                ("listeners", None if snap.listeners is None else len(snap.listeners)),
            ],
        ),
    ]
    if rows:
        parts.append(
            endpoints_table(
                f"Connections ({len(rows)} of {len(connections)}, by {sort_by})",
                CONNECTION_COLUMNS,
                [connection_row(c) for c in rows],
                endpoints=2,
            )
        )
    if snap.listeners:
        parts.append(
            table.records_table(
                "Listeners",
                ["listener", "backlog", "accept queue"],
                [
                    (x.local, x.backlog, x.accept_queue)
                    for x in sorted(snap.listeners, key=lambda x: (x.local_port, x.local_ip))
                ][:SUMMARY_ROWS],
            )
        )
    if connections:
        parts.append(
            endpoints_table(
                "By peer", ["peer", *SUMMARY_COLUMNS], summary_rows(by_peer, ["peer"]), endpoints=1
            )
        )
        parts.append(
            table.records_table(
                "By port",
                ["port", "side", "peers", *SUMMARY_COLUMNS],
                summary_rows(by_port, ["port", "side", "peers"]),
            )
        )
    parts.extend(findings_block(findings))
    table.console().print(Group(*parts))
    return exit_status(findings)

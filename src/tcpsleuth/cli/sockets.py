"""``tcpsleuth sockets``: TCP connections as ``ss -tni`` shows them, with findings."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import click

from tcpsleuth.cli.options import exclusive, format_option, netns_option
from tcpsleuth.detectors import sockets as detect
from tcpsleuth.detectors.compare import socket_findings
from tcpsleuth.model.findings import exit_status, ranked
from tcpsleuth.model.records import TcpConnection
from tcpsleuth.reports import jsonout, socketsview, table
from tcpsleuth.reports.socketsview import COMPACT_JSON_FROM, SocketsResult, rwnd_share
from tcpsleuth.sources import socketsnap

# sort keys: worst (or largest) first
SORTS: dict[str, Callable[[TcpConnection], Any]] = {
    "rwnd": lambda c: (-rwnd_share(c), -(c.rwnd_limited or 0)),
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

    SOURCE is `live` (default: this host, over sock_diag), `netns:NAME` (NAME as
    for --netns: an `ip netns` name, pid:N or container:NAME), a file
    of `ss -tni` output from any host (old or new iproute2; `-` for stdin), a
    bundle directory, or a `tcpsleuth sockets --format json` document.

    \b
    Examples:
      tcpsleuth sockets --port 9092
      sudo tcpsleuth sockets --netns blue --sort rtt
      sudo tcpsleuth sockets --netns container:kafka1 --port 9092
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
    result = SocketsResult(
        snap.origin, connections, snap.listeners, findings, by_peer, by_port, sort_by, limit
    )
    if output_format == "json":
        data = socketsview.document_data(result, socketsnap.connection_dict)
        jsonout.emit(
            jsonout.document("sockets", findings, **data),
            indent=2 if data["counts"]["shown"] <= COMPACT_JSON_FROM else None,
        )
        return exit_status(findings)
    table.console().print(socketsview.tables(result))
    return exit_status(findings)

"""``tcpsleuth compare CLIENT SERVER``: one connection seen from both of its ends."""

from __future__ import annotations

import click

from tcpsleuth.cli.options import format_option
from tcpsleuth.cli.sockets import address_list, address_option, port_list, ports_option
from tcpsleuth.detectors import compare as detect
from tcpsleuth.model.findings import exit_status, ranked
from tcpsleuth.reports import compareview, jsonout, table
from tcpsleuth.reports.compareview import CompareResult
from tcpsleuth.reports.socketsview import COMPACT_JSON_FROM
from tcpsleuth.sources import socketsnap


@click.command("compare")
@click.argument("client")
@click.argument("server")
@ports_option
@address_option
@click.option(
    "--nat",
    is_flag=True,
    help="NAT between the hosts: also pair connections whose addresses differ by their "
    "two ports (only where that pairing is unique).",
)
@format_option
def compare_command(
    client: str,
    server: str,
    ports: tuple[int, ...],
    addresses: tuple[str, ...],
    nat: bool,
    output_format: str,
) -> int:
    """Join a snapshot taken at the client with one taken at the server, connection
    by connection (by 4-tuple), and report every connection whose two ends
    disagree on the window-scale shift (wscale-mismatch): the client then reads
    each window the server advertises 2**(actual - announced) times too small.
    Also reports each side's rwnd-limited senders and tiny windows, now with the
    other end's receive queue in view. Connections without a partner (NAT, other
    hosts, opened between the two snapshots) are counted.

    CLIENT and SERVER are each `live`, `netns:NAME` (an `ip netns` name, pid:N or
    container:NAME), a file of `ss -tni` output
    (any iproute2), a bundle directory, or a `tcpsleuth sockets --format json`
    document.

    \b
    Examples:
      # on the client host:  ss -tni > client.txt
      # on the broker:       ss -tni > server.txt
      tcpsleuth compare client.txt server.txt --port 9092
      sudo tcpsleuth compare netns:producer netns:broker
      sudo tcpsleuth compare netns:container:producer netns:pid:4242
      tcpsleuth compare client.txt live --format json
      tcpsleuth compare client.txt server.txt --nat  # addresses rewritten in between
    """
    if client == server:
        raise click.UsageError(
            "CLIENT and SERVER name the same snapshot; for connections whose two ends "
            f"are both in it, run `tcpsleuth sockets {client}`"
        )
    wanted_ports, wanted_addresses = port_list(ports), address_list(addresses)
    client_snap = socketsnap.load(client, wanted_ports, wanted_addresses)
    server_snap = socketsnap.load(server, wanted_ports, wanted_addresses)
    result = detect.join(client_snap.connections, server_snap.connections, by_ports=nat)
    findings = ranked(detect.compare_findings(result, client_snap.listeners, server_snap.listeners))
    view = CompareResult(client_snap, server_snap, result, findings, nat)
    if output_format == "json":
        jsonout.emit(
            jsonout.document("compare", findings, **compareview.document_data(view)),
            indent=2 if len(result.pairs) <= COMPACT_JSON_FROM else None,
        )
        return exit_status(findings)
    table.console().print(compareview.tables(view))
    return exit_status(findings)

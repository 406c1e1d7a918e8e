"""``tcpsleuth compare CLIENT SERVER``: one connection seen from both of its ends."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Group

from tcpsleuth.cli.options import format_option
from tcpsleuth.cli.sockets import (
    COMPACT_JSON_FROM,
    address_list,
    address_option,
    endpoints_table,
    findings_block,
    port_list,
    ports_option,
)
from tcpsleuth.detectors import compare as detect
from tcpsleuth.model.findings import exit_status, key, ranked
from tcpsleuth.reports import jsonout, table
from tcpsleuth.sources import socketsnap

PAIRS_SHOWN = 20


def pair_dict(pair: detect.Pair) -> dict[str, Any]:
    client, server = pair.client, pair.server
    # each end as it names itself (with NAT the client knows the server by another address)
    client_end, server_end = key(client)[0], key(server)[0]
    return {
        "client": client_end,
        "server": server_end,
        "client_wscale": [client.snd_wscale, client.rcv_wscale],
        "server_wscale": [server.snd_wscale, server.rcv_wscale],
        "client_snd_wnd": client.snd_wnd,
        "server_rcv_space": server.rcv_space,
        "client_mss": client.mss,
        "client_rtt_ms": client.rtt,
        "client_rwnd_limited_us": client.rwnd_limited,
        "client_busy_us": client.busy_time,
        "server_recv_q": server.recv_q,
        "matched_by": pair.matched_by,
        "agree": (client.snd_wscale or 0) == (server.rcv_wscale or 0)
        and (server.snd_wscale or 0) == (client.rcv_wscale or 0),
    }


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

    CLIENT and SERVER are each `live`, `netns:NAME`, a file of `ss -tni` output
    (any iproute2), a bundle directory, or a `tcpsleuth sockets --format json`
    document.

    \b
    Examples:
      # on the client host:  ss -tni > client.txt
      # on the broker:       ss -tni > server.txt
      tcpsleuth compare client.txt server.txt --port 9092
      sudo tcpsleuth compare netns:producer netns:broker
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
    mismatched = sum(1 for p in result.pairs if not pair_dict(p)["agree"])
    if output_format == "json":
        jsonout.emit(
            jsonout.document(
                "compare",
                findings,
                client={"origin": client_snap.origin, "connections": len(client_snap.connections)},
                server={"origin": server_snap.origin, "connections": len(server_snap.connections)},
                counts={**result.counts(), "wscale_mismatched": mismatched},
                pairs=[pair_dict(p) for p in result.pairs],
            ),
            indent=2 if len(result.pairs) <= COMPACT_JSON_FROM else None,
        )
        return exit_status(findings)
    counts = result.counts()
    shown = sorted(result.pairs, key=lambda p: pair_dict(p)["agree"])[:PAIRS_SHOWN]
    parts: list[Any] = [
        table.key_values(
            "Compare",
            [
                ("client", f"{client_snap.origin} ({len(client_snap.connections)} connections)"),
                ("server", f"{server_snap.origin} ({len(server_snap.connections)} connections)"),
                ("matched", counts["matched"]),
                *([("matched by ports (--nat)", counts["matched_by_ports"])] if nat else []),
                ("wscale mismatched", mismatched),
                ("client only", counts["client_only"]),
                ("server only", counts["server_only"]),
                ("ambiguous", counts["ambiguous"]),
            ],
        ),
        endpoints_table(
            f"Connections seen from both ends ({len(shown)} of {len(result.pairs)}, "
            "disagreements first)",
            [
                "client",
                "server",
                "client wscale",
                "server wscale",
                "client snd_wnd",
                "server rcv_space",
                "client rwnd_limited ms",
                "server recv-q",
            ],
            [
                (
                    p.client.local,
                    p.server.local,
                    f"{p.client.snd_wscale},{p.client.rcv_wscale}",
                    f"{p.server.snd_wscale},{p.server.rcv_wscale}",
                    p.client.snd_wnd,
                    p.server.rcv_space,
                    None if p.client.rwnd_limited is None else round(p.client.rwnd_limited / 1000),
                    p.server.recv_q,
                )
                for p in shown
            ],
            endpoints=2,
        ),
    ]
    parts.extend(findings_block(findings))
    table.console().print(Group(*parts))
    return exit_status(findings)

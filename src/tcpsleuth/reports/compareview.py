"""``tcpsleuth compare`` rendered: its JSON document and its tables, from one
:class:`CompareResult`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group

from tcpsleuth.detectors import compare as detect
from tcpsleuth.model.findings import Finding, key
from tcpsleuth.model.units import ms_from_us
from tcpsleuth.reports import table
from tcpsleuth.reports.socketsview import endpoints_table, findings_block


@dataclass(frozen=True)
class CompareResult:
    """Two snapshots (anything with ``origin`` and ``connections``), joined."""

    client_snap: Any
    server_snap: Any
    join: detect.Join
    findings: list[Finding]
    nat: bool


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
        # milliseconds, as every finding's rwnd_limited_ms (tcp_info counts microseconds)
        "client_rwnd_limited_ms": ms_from_us(client.rwnd_limited),
        "client_busy_ms": ms_from_us(client.busy_time),
        "server_recv_q": server.recv_q,
        "matched_by": pair.matched_by,
        "agree": (client.snd_wscale or 0) == (server.rcv_wscale or 0)
        and (server.snd_wscale or 0) == (client.rcv_wscale or 0),
    }


def _mismatched(join: detect.Join) -> int:
    return sum(1 for p in join.pairs if not pair_dict(p)["agree"])


def document_data(view: CompareResult) -> dict[str, Any]:
    """The command's own part of the JSON document (beside ``findings``)."""
    client_snap, server_snap, result = view.client_snap, view.server_snap, view.join
    return {
        "client": {"origin": client_snap.origin, "connections": len(client_snap.connections)},
        "server": {"origin": server_snap.origin, "connections": len(server_snap.connections)},
        "counts": {**result.counts(), "wscale_mismatched": _mismatched(result)},
        "pairs": [pair_dict(p) for p in result.pairs],
    }


def tables(view: CompareResult) -> Group:
    client_snap, server_snap, result = view.client_snap, view.server_snap, view.join
    findings, nat, mismatched = view.findings, view.nat, _mismatched(view.join)
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
    return Group(*parts)

"""``tcpsleuth pcap`` rendered: the JSON document of one capture, its terminal tables and
its section of the HTML report, all from the same :class:`CaptureResult`.

The result's ``capture`` is what reading the capture told (``model.capture.
CaptureFacts``: the file, its format and link types, the reader's warnings, the
packets by what became of them); the source itself stays with the command.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.text import Text

from tcpsleuth.detectors import verdict
from tcpsleuth.detectors.capture import cookies as capture_cookies
from tcpsleuth.detectors.capture.kafka import KafkaRequests
from tcpsleuth.detectors.capture.run import CaptureResult
from tcpsleuth.detectors.capture.selection import ranked_streams
from tcpsleuth.detectors.verdict import Verdict
from tcpsleuth.model.text import printable
from tcpsleuth.reports import cookiecounts, html, table, verdictview

KAFKA_COLUMNS = ("client", "server", "api", "requests")
HTML_ROWS = 50
KAFKA_TIMES = ("send_ms_p50", "send_ms_p99", "broker_ms_p50", "broker_ms_p99")


def kafka_rows(summary: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """One row per client, server and API: counts, then send and broker times."""
    return [
        (*(s[c] for c in KAFKA_COLUMNS), *(ms_cell(s[t]) for t in KAFKA_TIMES)) for s in summary
    ]


def slowest_rows(
    summary: Sequence[Mapping[str, Any]], limit: int
) -> tuple[list[Mapping[str, Any]], str]:
    """The summary rows a table shows, in their order: all of them, or the ``limit``
    whose sends were slowest (send p99, then most requests) where there are more (a
    capture of thousands of clients); and what to add to the table's title."""
    if len(summary) <= limit:
        return list(summary), ""

    def slowness(i: int) -> tuple[float, int]:
        p99 = summary[i]["send_ms_p99"]
        return (-(p99 if p99 is not None else -1.0), -summary[i]["requests"])

    keep = set(sorted(range(len(summary)), key=slowness)[:limit])
    shown = [row for i, row in enumerate(summary) if i in keep]
    return shown, f" ({limit} of {len(summary)}, the slowest sends; --format json has all)"


def verdict_lines(requests: KafkaRequests) -> list[str]:
    """One line per Kafka port where some connections were not decoded because they
    are not Kafka or are TLS (none where every connection was Kafka)."""
    lines = []
    for port, counts in sorted(requests.verdicts_by_port.items()):
        if not (counts["not_kafka"] or counts["tls"]):
            continue
        parts = [f"{counts['kafka']} Kafka"]
        if counts["not_kafka"]:
            parts.append(f"{counts['not_kafka']} not Kafka (no valid request header)")
        if counts["tls"]:
            parts.append(f"{counts['tls']} TLS (encrypted)")
        if counts["undecided"]:
            parts.append(f"{counts['undecided']} undecided")
        lines.append(f"Port {port}: connections {', '.join(parts)}; only Kafka ones are decoded")
    return lines


UNKNOWN_CELL = "–"


def ms_cell(value: float | None) -> float | str:
    """A time for a table: the value, or a dash where it is unknown (see missing_note)."""
    return UNKNOWN_CELL if value is None else value


def missing_note(rows: list[dict[str, Any]]) -> str | None:
    """The words for the dashes of a summary table, when it has any."""
    send = any(row["send_ms_p50"] is None for row in rows)
    broker = any(row["broker_ms_p50"] is None for row in rows)
    if not (send or broker):
        return None
    said = []
    if broker:
        said.append("broker time unknown: no response in the capture")
    if send:
        said.append("send time unknown: the request's last byte is not in the capture")
    return f"{UNKNOWN_CELL} " + "; ".join(said)


def document(
    result: CaptureResult,
    streams: Sequence[int],
    series: Mapping[int, tuple[list[tuple[float, int]], list[tuple[float, int]]]],
    all_connections: bool,
) -> dict[str, Any]:
    """The JSON of one capture: what was read and skipped, the connections ``streams``
    with their window series, verdicts and Kafka requests."""
    capture, analysis, counts = result.capture, result.analysis, result.capture.counts
    connections = []
    for stream in streams:
        entry = analysis.connections[stream].summary()
        entry["server_window_series"], entry["client_window_series"] = series[stream]
        entry["syn_cookie"] = result.cookies.of(stream).to_dict()
        entry["wscale_verdict"] = result.wscale.of(analysis, stream)
        connections.append(entry)
    listed = result.requests.records() if all_connections else result.requests.of_streams(streams)
    return {
        "file": capture.path,
        "verdict": capture_verdict(result).to_dict(),
        "format": capture.kind,
        "gzip": capture.compressed,
        "linktypes": sorted(capture.linktypes),
        "packets": counts.packets,
        "tcp_segments": counts.tcp,
        "ip_fragments": {"read": counts.fragments, "datagrams_reassembled": counts.reassembled},
        "skipped": {
            "not_ip": counts.not_ip,
            "not_tcp": counts.not_tcp,
            "truncated_headers": counts.truncated_headers,
            "ip_fragments": counts.fragments_incomplete,
            "unsupported_link_type": counts.unsupported_linktype,
            "undecodable": counts.undecodable,
        },
        "warnings": list(capture.warnings),
        "connections_total": len(analysis.connections),
        "connections_listed": len(connections),
        "connections": connections,
        "syn_cookies": capture_cookies.per_server(result.cookies, result.requests.client_ids()),
        "kafka": {
            "connections_by_port": {
                str(port): n for port, n in result.requests.verdicts_by_port.items()
            },
            "summary": result.kafka_summary,
            "requests_total": len(result.requests),
            "requests": [r.to_dict() for r in listed],
        },
    }


def capture_verdict(result: CaptureResult) -> Verdict:
    """The verdict on one capture (detectors/verdict.py)."""
    agreeing = int((result.wscale.mismatch == 0).sum())
    return verdict.capture_verdict(result.findings, len(result.analysis.connections), agreeing)


def table_streams(result: CaptureResult, limit: int) -> list[int]:
    """The connections a table lists: those the window-scale bug hit first, then the
    longest window waits and most bytes (selection.ranked_streams)."""
    hit = np.flatnonzero(result.wscale.mismatch == 1)[:limit].tolist()
    rest = [s for s in ranked_streams(result.analysis, limit + len(hit)) if s not in set(hit)]
    return (hit + rest)[:limit]


def cookie_cell(cookie: Mapping[str, Any]) -> str:
    """A connection's SYN-cookie verdict in a word: yes, no, or ? (cannot tell)."""
    if cookie["cookie"] is None:
        return "?"
    if not cookie["cookie"]:
        return "no"
    return "yes" if cookie["confidence"] == "high" else f"yes ({cookie['confidence']})"


def wscale_cell(verdict_: Mapping[str, Any]) -> str:
    """The shift the SYN-ACK announced against the one the server's windows show."""
    announced, inferred = verdict_["announced"], verdict_["inferred"]
    shown = f"{'—' if announced is None else announced}→{'?' if inferred is None else inferred}"
    if verdict_["mismatch"]:
        return f"{shown} HIT"
    return shown + (" ok" if verdict_["mismatch"] is False else "")


def hit_lines(result: CaptureResult) -> list[str]:
    """The clients and client.ids the window-scale bug hit (the wscale-mismatch
    findings' own counts)."""
    lines = []
    for finding in result.findings:
        if finding.kind != "wscale-mismatch":
            continue
        ev = finding.evidence
        clients = ", ".join(f"{k} ({v})" for k, v in (ev.get("clients") or {}).items())
        ids = ", ".join(f"{k} ({v})" for k, v in (ev.get("client_ids") or {}).items())
        lines.append(
            f"Hit on {_where(finding.subject)}: {ev.get('connections')} connections; clients "
            f"{clients or 'unknown'}; client.ids {ids or 'not in the capture'}"
        )
    return lines


def cookie_rows(result: CaptureResult) -> list[tuple[str, Any]]:
    """The SYN-cookie verdicts of the capture's connections: cookie, ordinary and
    undecided with why, then per server the syn-cookies-seen finding's own counts (of its
    handshakes). A capture holds no kernel counter: what it could not attribute is for the
    recorder's report, which has TcpExtSyncookiesSent."""
    totals = capture_cookies.totals(result.cookies)
    out = cookiecounts.rows(totals, totals["connections"])
    for finding in result.findings:
        if finding.kind == "syn-cookies-seen":
            ev = finding.evidence
            counts = cookiecounts.verdicts_text(
                ev["cookie_connections"],
                ev["ordinary_connections"],
                ev["undecided_connections"],
                ev["handshakes"],
                "handshakes",
            )
            out.append((f"on {_where(finding.subject)}", counts))
    return out


def _where(subject: Mapping[str, str]) -> str:
    return subject.get("server") or subject.get("listener") or "?"


def connection_rows(result: CaptureResult, shown: Sequence[int]) -> list[tuple[Any, ...]]:
    ids = result.requests.client_ids()
    rows = []
    for stream in shown:
        r = result.analysis.connections[stream]
        rows.append(
            (
                r.stream,
                r.client,
                r.server,
                ids.get(stream, "—"),
                cookie_cell(result.cookies.of(stream).to_dict()),
                wscale_cell(result.wscale.of(result.analysis, stream)),
                r.packets_c2s + r.packets_s2c,
                r.bytes_c2s,
                r.retransmissions_c2s + r.retransmissions_s2c,
                r.zero_windows_c2s + r.zero_windows_s2c,
                round((r.rwnd_limited_ns_c2s + r.rwnd_limited_ns_s2c) / 1e6, 1),
            )
        )
    return rows


CONNECTION_COLUMNS = (
    "stream", "client", "server", "client.id", "SYN cookie", "shift announced→used",
    "pkts", "bytes c→s", "retrans", "zero win", "rwnd-limited ms",
)  # fmt: skip


def print_tables(
    console: Console, result: CaptureResult, shown: Sequence[int], kafka_limit: int
) -> None:
    """The terminal view: the file, its verdict, what was read, the connections
    ``shown`` (hit ones first) with their verdicts, who was hit, Kafka timing (at most
    ``kafka_limit`` rows, the slowest sends), and the findings."""
    capture = result.capture
    compressed = " (gzip)" if capture.compressed else ""
    console.print(Text(printable(capture.path), style="bold", overflow="fold"))
    console.print(verdictview.render(capture_verdict(result).to_dict()))
    console.print(
        table.key_values(
            "",
            [
                ("format", capture.kind + compressed),
                ("packets", capture.counts.packets),
                ("TCP segments", capture.counts.tcp),
                ("connections", len(result.analysis.connections)),
                ("Kafka requests", len(result.requests)),
                *cookie_rows(result),
            ],
        )
    )
    hit = int((result.wscale.mismatch == 1).sum())
    order = "hit by the window-scale bug first, then " if hit else ""
    console.print(
        table.records_table(
            f"Connections ({len(shown)} of {len(result.analysis.connections)}, {hit} hit; "
            f"{order}by window waits and bytes)",
            CONNECTION_COLUMNS,
            connection_rows(result, shown),
        )
    )
    for line in hit_lines(result):
        console.print(Text(printable(line), overflow="fold"))
    summary = result.kafka_summary
    if summary:
        rows, cut = slowest_rows(summary, kafka_limit)
        console.print(
            table.records_table(
                f"Kafka requests: send time (client → wire) versus broker time{cut}",
                ["client", "server", "api", "requests", "send p50 ms", "send p99 ms",
                 "broker p50 ms", "broker p99 ms"],
                kafka_rows(rows),
            )
        )  # fmt: skip
    note = missing_note(summary)
    if note:
        console.print(note, soft_wrap=True)
    for line in verdict_lines(result.requests):
        console.print(line, soft_wrap=True)
    console.print(table.findings_table(result.findings))


def _signature(result: CaptureResult, stream: int, ids: Mapping[int, str]) -> tuple[Any, ...]:
    """What makes two connections' graphs tell the same story: their verdicts, their
    client and how they fared (retransmissions, zero windows, window waits)."""
    r = result.analysis.connections[stream]
    cookie = result.cookies.of(stream)
    wscale = result.wscale.of(result.analysis, stream)
    return (
        cookie.cookie,
        wscale["announced"],
        wscale["inferred"],
        wscale["mismatch"],
        r.client.rsplit(":", 1)[0],
        r.server,
        ids.get(stream),
        r.retransmissions_c2s + r.retransmissions_s2c > 0,
        r.zero_windows_c2s + r.zero_windows_s2c > 0,
        r.rwnd_limited_ns_c2s + r.rwnd_limited_ns_s2c > 0,
    )


def plot_groups(result: CaptureResult, streams: Sequence[int]) -> dict[int, list[int]]:
    """The connections ``streams`` to draw, one per group of look-alikes (same
    verdicts, client and fate), each with the streams it stands for."""
    ids = result.requests.client_ids()
    groups: dict[tuple[Any, ...], list[int]] = {}
    for stream in streams:
        groups.setdefault(_signature(result, stream, ids), []).append(stream)
    return {members[0]: members for members in groups.values()}


def plot_caption(result: CaptureResult, stream: int, members: Sequence[int]) -> str:
    """What a connection's time-sequence graph shows and why it matters."""
    r = result.analysis.connections[stream]
    wscale = result.wscale.of(result.analysis, stream)
    cookie = result.cookies.of(stream).cookie
    like = (
        f" It stands for {len(members)} connections that look alike (streams "
        f"{', '.join(str(m) for m in members[:8])}"
        f"{f' and {len(members) - 8} more' if len(members) > 8 else ''})."
        if len(members) > 1
        else ""
    )
    shows = (
        f"Stream {stream}, {r.client} → {r.server}: the client's data (black strokes, "
        "retransmissions red), the server's ACKs (green) and the right edge of the window "
        "the server offers as the client reads it (orange)."
    )
    made = "made by SYN cookie" if cookie else "made by an ordinary SYN-ACK"
    if wscale["mismatch"]:
        why = (
            f" Why it matters: this connection was {made}; its SYN-ACK announced window "
            f"scale {wscale['announced']} but the server scales its windows by "
            f"{wscale['inferred']}, so the orange edge sits just above the data: the client "
            "may send only a sliver and waits for every ACK, a round trip each time."
        )
    elif wscale["mismatch"] is False:
        why = (
            f" Why it matters: this connection was {made} and uses the window scale its "
            f"SYN-ACK announced ({wscale['announced']}); the orange edge stays well above "
            "the data, so the window did not hold the client back."
        )
    else:
        why = (
            " The capture cannot tell its window scale (no server window after the "
            "handshake): a gap between the data and the orange edge means the window did "
            "not hold the client back."
        )
    return shows + why + like


def html_section(result: CaptureResult, pictures: list[tuple[str, Path]]) -> html.Section:
    """One capture's part of the HTML report: its verdict, the connections with their
    verdicts (hit first), the clients and client.ids hit, Kafka timing, the graphs."""
    summary = result.kafka_summary
    rows, cut = slowest_rows(summary, HTML_ROWS)
    kafka = (
        f"Kafka requests: send time versus broker time (ms){cut}",
        ["client", "server", "api", "requests", "send p50", "send p99", "broker p50",
         "broker p99"],
        kafka_rows(rows),
    )  # fmt: skip
    shown = table_streams(result, HTML_ROWS)
    connections = (
        f"Connections ({len(shown)} of {len(result.analysis.connections)}, the window-scale "
        "bug's first)",
        list(CONNECTION_COLUMNS),
        connection_rows(result, shown),
    )
    tables = [connections]
    hit = [f for f in result.findings if f.kind == "wscale-mismatch"]
    if hit:
        rows = [
            (_where(f.subject), kind, name, count)
            for f in hit
            for kind, key in (("client", "clients"), ("client.id", "client_ids"))
            for name, count in (f.evidence.get(key) or {}).items()
        ]
        tables.append(("Clients and client.ids hit", ["server", "by", "name", "connections"], rows))
    if summary:
        tables.append(kafka)
    return html.Section(
        title=result.capture.path,
        facts=[
            ("format", result.capture.kind),
            ("packets", result.capture.counts.packets),
            ("connections", len(result.analysis.connections)),
            ("Kafka requests", len(result.requests)),
            *cookie_rows(result),
        ],
        findings=result.findings,
        tables=tables,
        pictures=pictures,
        verdict=capture_verdict(result).to_dict(),
    )

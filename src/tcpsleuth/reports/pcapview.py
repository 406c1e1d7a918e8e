"""``tcpsleuth pcap`` rendered: the JSON document of one capture, its terminal tables and
its section of the HTML report, all from the same :class:`CaptureResult`.

The result's ``capture`` is what the source read (a ``sources.pcap.CaptureStream``);
it is read here only through the attributes every capture source has: ``path``,
``report`` (format, compression, link types, warnings) and ``counts``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from tcpsleuth.detectors.capture import cookies as capture_cookies
from tcpsleuth.detectors.capture import kafka_summary as kafka_timing
from tcpsleuth.detectors.capture.run import CaptureResult
from tcpsleuth.reports import html, table

KAFKA_COLUMNS = ("client", "server", "api", "requests")
KAFKA_TIMES = ("send_ms_p50", "send_ms_p99", "broker_ms_p50", "broker_ms_p99")


def kafka_rows(summary: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """One row per client, server and API: counts, then send and broker times."""
    return [
        (*(s[c] for c in KAFKA_COLUMNS), *(kafka_timing.ms_cell(s[t]) for t in KAFKA_TIMES))
        for s in summary
    ]


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
        "format": capture.report.kind,
        "gzip": capture.report.compressed,
        "linktypes": sorted(capture.report.linktypes),
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
        "warnings": capture.report.warnings,
        "connections_total": len(analysis.connections),
        "connections_listed": len(connections),
        "connections": connections,
        "syn_cookies": capture_cookies.per_server(result.cookies, result.requests.client_ids()),
        "kafka": {
            "connections_by_port": {
                str(port): n for port, n in result.requests.verdicts_by_port.items()
            },
            "summary": kafka_timing.summary(result.requests),
            "requests_total": len(result.requests),
            "requests": [r.to_dict() for r in listed],
        },
    }


def print_tables(console: Console, result: CaptureResult, shown: Sequence[int]) -> None:
    """The terminal view: what was read, the connections ``shown``, Kafka timing, and
    the findings."""
    capture = result.capture
    compressed = " (gzip)" if capture.report.compressed else ""
    console.print(
        table.key_values(
            capture.path,
            [
                ("format", capture.report.kind + compressed),
                ("packets", capture.counts.packets),
                ("TCP segments", capture.counts.tcp),
                ("connections", len(result.analysis.connections)),
                ("Kafka requests", len(result.requests)),
            ],
        )
    )
    records = [result.analysis.connections[s] for s in shown]
    console.print(
        table.records_table(
            f"Connections (top {len(records)} by window waits and bytes)",
            ["stream", "client", "server", "wscale c/s", "mss c/s", "pkts", "bytes c→s",
             "retrans", "zero win", "rwnd-limited ms"],
            [
                (
                    r.stream,
                    r.client,
                    r.server,
                    f"{r.syn.wscale if r.syn else '?'}/{r.synack.wscale if r.synack else '?'}",
                    f"{r.syn.mss if r.syn else '?'}/{r.synack.mss if r.synack else '?'}",
                    r.packets_c2s + r.packets_s2c,
                    r.bytes_c2s,
                    r.retransmissions_c2s + r.retransmissions_s2c,
                    r.zero_windows_c2s + r.zero_windows_s2c,
                    round((r.rwnd_limited_ns_c2s + r.rwnd_limited_ns_s2c) / 1e6, 1),
                )
                for r in records
            ],
        )
    )  # fmt: skip
    summary = kafka_timing.summary(result.requests)
    if summary:
        console.print(
            table.records_table(
                "Kafka requests: send time (client → wire) versus broker time",
                ["client", "server", "api", "requests", "send p50 ms", "send p99 ms",
                 "broker p50 ms", "broker p99 ms"],
                kafka_rows(summary),
            )
        )  # fmt: skip
    note = kafka_timing.missing_note(summary)
    if note:
        console.print(note, soft_wrap=True)
    for line in kafka_timing.verdict_lines(result.requests):
        console.print(line, soft_wrap=True)
    console.print(table.findings_table(result.findings))


def html_section(result: CaptureResult, pictures: list[tuple[str, Path]]) -> html.Section:
    """One capture's part of the HTML report."""
    summary = kafka_timing.summary(result.requests)
    kafka = (
        "Kafka requests: send time versus broker time (ms)",
        ["client", "server", "api", "requests", "send p50", "send p99", "broker p50",
         "broker p99"],
        kafka_rows(summary),
    )  # fmt: skip
    return html.Section(
        title=result.capture.path,
        facts=[
            ("format", result.capture.report.kind),
            ("packets", result.capture.counts.packets),
            ("connections", len(result.analysis.connections)),
            ("Kafka requests", len(result.requests)),
        ],
        findings=result.findings,
        tables=[kafka] if summary else [],
        pictures=pictures,
    )

"""An incident the recorder kept (``report.json``), rendered: tables for the terminal
and a self-contained HTML page with a timeline of the storm."""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Group

from tcpsleuth.model.findings import Finding
from tcpsleuth.model.incident import Capture, IncidentReport, Trace, Window
from tcpsleuth.reports import cookiecounts, html, table, verdictview

ROWS = 15
TIMELINE_COUNTERS = (
    ("TcpExtSyncookiesSent", "SYN cookies sent"),
    ("TcpExtListenOverflows", "accept-queue overflows"),
    ("TcpPassiveOpens", "connections accepted"),
)


def clock(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-4] + " UTC"


def findings_of(report: IncidentReport) -> list[Finding]:
    return [Finding.from_dict(f) for f in report.findings]


def _capture_text(capture: Capture) -> str:
    def given(name: str, otherwise: Any) -> Any:
        return otherwise if name in capture.absent else getattr(capture, name)

    drops = capture.kernel_drops
    return (
        f"{given('packets_kept', given('packets', 0))} packets, {given('bytes', 0)} bytes"
        + (", payload past the Kafka header cut" if capture.payload_cut else "")
        + (f", {drops} dropped by the kernel" if drops is not None else "")
    )


def facts(report: IncidentReport) -> list[tuple[str, Any]]:
    window = report.window or Window()
    capture = report.capture
    kinds = sorted({e.get("kind", "?") for e in report.events})
    sockets = report.sockets
    return [
        ("host", report.host or "—"),
        ("ports", ", ".join(str(p) for p in report.ports)),
        ("first event", clock(window.first_event)),
        ("last event", clock(window.last_event)),
        ("window kept", f"{clock(window.start)} to {clock(window.end)}"),
        ("events", f"{len(report.events)} ({', '.join(kinds)})"),
        *cookiecounts.rows(report.syn_cookies.counts, capture.connections),
        ("window-scale mismatches", report.wscale_mismatch.count),
        ("window-limited connections", report.rwnd_limited.count),
        ("capture", _capture_text(capture)),
        (
            "sockets (sock_diag)",
            f"{sockets.during.connections} during, {sockets.later.connections} later",
        ),
        ("trace", _trace_text(report.trace)),
    ]


def _trace_text(trace: Trace | None) -> str:
    if trace is None or trace.absent >= {"skipped", "samples", "connections"}:
        return "—"
    if trace.skipped is not None:
        return f"skipped: {trace.skipped}"
    return f"{trace.samples} samples of {trace.connections} connections"


def mismatch_rows(report: IncidentReport, limit: int = ROWS) -> list[tuple[Any, ...]]:
    return [
        (
            r.client,
            r.server,
            r.announced_wscale,
            r.inferred_wscale,
            r.server_rcv_wscale,
            "yes" if r.syn_cookie else "no",
        )
        for r in report.wscale_mismatch.connections[:limit]
    ]


MISMATCH_COLUMNS = (
    "client",
    "server",
    "SYN-ACK wscale",
    "inferred from windows",
    "server socket rcv_wscale",
    "SYN cookie",
)
LIMITED_COLUMNS = ("client", "server", "sender", "waited ms", "share", "min window", "client.id")


def limited_rows(report: IncidentReport, limit: int = ROWS) -> list[tuple[Any, ...]]:
    return [
        (
            r.client,
            r.server,
            r.sender,
            round(r.rwnd_limited_ms),
            f"{r.rwnd_limited_share:.0%}",
            r.min_window_bytes,
            r.client_id or "—",
        )
        for r in report.rwnd_limited.connections[:limit]
    ]


EVENT_COLUMNS = ("event", "samples", "first", "last", "the largest")


MEASURE = {
    "syn-cookies-rate": "TcpExtSyncookiesSent",
    "listen-overflows-rate": "TcpExtListenOverflows",
    "accept-queue-full": "accept_queue",
    "rwnd-limited-rate": "rwnd_limited_connections",
}


def _size(event: dict[str, Any]) -> float:
    value = (event.get("evidence") or {}).get(MEASURE.get(str(event.get("kind")), ""), 0)
    return value if isinstance(value, int | float) else 0


def event_rows(events: list[dict[str, Any]], limit: int = ROWS) -> list[tuple[Any, ...]]:
    """One row per kind of event: how many samples had it, when, and the largest."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        kinds.setdefault(str(event.get("kind")), []).append(event)
    rows = []
    for kind, same in kinds.items():
        largest = max(same, key=_size)
        rows.append(
            (
                kind,
                len(same),
                clock(same[0].get("time"))[11:22],
                clock(same[-1].get("time"))[11:22],
                largest.get("summary"),
            )
        )
    return rows[:limit]


def render(report: IncidentReport, verdict: dict[str, Any] | None = None) -> Group:
    """The incident as tables, its verdict (``cli/report.py`` judges it) first."""
    parts: list[Any] = [verdictview.render(verdict)] if verdict else []
    parts += [
        table.key_values(f"{report.incident}: what the recorder kept", facts(report)),
        table.records_table("Events", EVENT_COLUMNS, event_rows(report.events)),
    ]
    mismatches = report.wscale_mismatch.count
    if mismatches:
        parts.append(
            table.records_table(
                f"Window-scale mismatches ({min(mismatches, ROWS)} of {mismatches})",
                MISMATCH_COLUMNS,
                mismatch_rows(report),
            )
        )
    limited = report.rwnd_limited.count
    if limited:
        parts.append(
            table.records_table(
                f"Senders held back by the peer's window ({min(limited, ROWS)} of {limited})",
                LIMITED_COLUMNS,
                limited_rows(report),
            )
        )
    for note in report.notes:
        parts.append(f"[dim]note: {table.plain(note)}[/dim]")
    parts.append(table.findings_table(findings_of(report)))
    return Group(*parts)


def timeline_plot(report: IncidentReport, path: Path) -> Path | None:
    """Counters per second over the incident's window, with its events marked."""
    points = report.timeline
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = points[0]["time"]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for name, label in TIMELINE_COUNTERS:
        xs = [p["time"] - start for p in points[1:]]
        ys = [p["grown"].get(name, 0) / (p.get("seconds") or 1) for p in points[1:]]
        if any(ys):
            ax.plot(xs, ys, label=label, drawstyle="steps-pre")
    for event in report.events:
        ax.axvline(event["time"] - start, color="#b00", alpha=0.25, linewidth=1)
    ax.set_xlabel(f"seconds since {clock(start)} (red lines: events)")
    ax.set_ylabel("per second")
    ax.set_title(f"{report.incident}: the kernel's counters, sampled by the recorder")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def html_sections(
    report: IncidentReport,
    pictures: Sequence[tuple[str, Path]],
    verdict: dict[str, Any] | None = None,
) -> list[html.Section]:
    tables: list[tuple[str, Sequence[str], Sequence[Sequence[Any]]]] = [
        ("Events", EVENT_COLUMNS, event_rows(report.events, 100))
    ]
    mismatches = report.wscale_mismatch.count
    if mismatches:
        tables.append(
            (
                f"Window-scale mismatches ({min(mismatches, 100)} of {mismatches})",
                MISMATCH_COLUMNS,
                mismatch_rows(report, 100),
            )
        )
    limited = report.rwnd_limited.count
    if limited:
        tables.append(
            (
                f"Senders held back by the peer's window ({min(limited, 100)} of {limited})",
                LIMITED_COLUMNS,
                limited_rows(report, 100),
            )
        )
    kafka = report.capture.kafka or []
    if kafka:
        tables.append(
            (
                "Kafka requests: time to put on the wire against broker time (ms)",
                ("client", "server", "api", "requests", "send p50", "send p99", "broker p50"),
                [
                    (
                        s["client"],
                        s["server"],
                        s["api"],
                        s["requests"],
                        s["send_ms_p50"],
                        s["send_ms_p99"],
                        s["broker_ms_p50"],
                    )
                    for s in kafka[:100]
                ],
            )
        )
    if report.notes:
        tables.append(("Notes", ("what the recorder could not do",), [(n,) for n in report.notes]))
    return [
        html.Section(
            title=f"{report.incident} on {report.host}",
            facts=facts(report),
            findings=findings_of(report),
            tables=tables,
            pictures=list(pictures),
            facts_title="What the recorder kept",
            verdict=verdict,
        )
    ]


def html_page(report: IncidentReport, verdict: dict[str, Any] | None = None) -> str:
    """The incident's self-contained HTML page (its timeline drawn in a scratch
    directory of its own); the caller writes it (``tcpsleuth.safefile``)."""
    with tempfile.TemporaryDirectory(prefix="tcpsleuth-incident-") as scratch:
        picture = timeline_plot(report, Path(scratch) / "timeline.png")
        pictures = [("The storm as the kernel counted it", picture)] if picture else []
        return html.render(
            f"tcpsleuth incident {report.incident}", html_sections(report, pictures, verdict)
        )

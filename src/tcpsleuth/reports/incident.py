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


def findings_of(doc: dict[str, Any]) -> list[Finding]:
    return [Finding.from_dict(f) for f in doc.get("findings", [])]


def facts(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    window = doc.get("window") or {}
    capture = doc.get("capture") or {}
    cookies = doc.get("syn_cookies") or {}
    kinds = sorted({e.get("kind", "?") for e in doc.get("events", [])})
    drops = capture.get("kernel_drops")
    return [
        ("host", doc.get("host") or "—"),
        ("ports", ", ".join(str(p) for p in doc.get("ports", []))),
        ("first event", clock(window.get("first_event"))),
        ("last event", clock(window.get("last_event"))),
        ("window kept", f"{clock(window.get('start'))} to {clock(window.get('end'))}"),
        ("events", f"{len(doc.get('events', []))} ({', '.join(kinds)})"),
        *cookiecounts.rows({"sent": None, **cookies}, capture.get("connections")),
        ("window-scale mismatches", (doc.get("wscale_mismatch") or {}).get("count")),
        ("window-limited connections", (doc.get("rwnd_limited") or {}).get("count")),
        (
            "capture",
            f"{capture.get('packets_kept', capture.get('packets', 0))} packets, "
            f"{capture.get('bytes', 0)} bytes"
            + (", payload past the Kafka header cut" if capture.get("payload_cut") else "")
            + (f", {drops} dropped by the kernel" if drops is not None else ""),
        ),
        (
            "sockets (sock_diag)",
            f"{doc['sockets']['during']['connections']} during, "
            f"{doc['sockets']['later']['connections']} later"
            if doc.get("sockets")
            else "—",
        ),
        ("trace", _trace_text(doc.get("trace"))),
    ]


def _trace_text(trace: dict[str, Any] | None) -> str:
    if not trace:
        return "—"
    if "skipped" in trace:
        return f"skipped: {trace['skipped']}"
    return f"{trace['samples']} samples of {trace['connections']} connections"


def mismatch_rows(doc: dict[str, Any], limit: int = ROWS) -> list[tuple[Any, ...]]:
    rows = (doc.get("wscale_mismatch") or {}).get("connections", [])
    return [
        (
            r["client"],
            r["server"],
            r["announced_wscale"],
            r["inferred_wscale"],
            r["server_rcv_wscale"],
            "yes" if r["syn_cookie"] else "no",
        )
        for r in rows[:limit]
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


def limited_rows(doc: dict[str, Any], limit: int = ROWS) -> list[tuple[Any, ...]]:
    rows = (doc.get("rwnd_limited") or {}).get("connections", [])
    return [
        (
            r["client"],
            r["server"],
            r["sender"],
            round(r["rwnd_limited_ms"]),
            f"{r['rwnd_limited_share']:.0%}",
            r["min_window_bytes"],
            r.get("client_id") or "—",
        )
        for r in rows[:limit]
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


def event_rows(doc: dict[str, Any], limit: int = ROWS) -> list[tuple[Any, ...]]:
    """One row per kind of event: how many samples had it, when, and the largest."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for event in doc.get("events", []):
        kinds.setdefault(str(event.get("kind")), []).append(event)
    rows = []
    for kind, events in kinds.items():
        largest = max(events, key=_size)
        rows.append(
            (
                kind,
                len(events),
                clock(events[0].get("time"))[11:22],
                clock(events[-1].get("time"))[11:22],
                largest.get("summary"),
            )
        )
    return rows[:limit]


def render(doc: dict[str, Any]) -> Group:
    parts: list[Any] = [verdictview.render(doc["verdict"])] if doc.get("verdict") else []
    parts += [
        table.key_values(f"{doc.get('incident')}: what the recorder kept", facts(doc)),
        table.records_table("Events", EVENT_COLUMNS, event_rows(doc)),
    ]
    mismatches = (doc.get("wscale_mismatch") or {}).get("count") or 0
    if mismatches:
        parts.append(
            table.records_table(
                f"Window-scale mismatches ({min(mismatches, ROWS)} of {mismatches})",
                MISMATCH_COLUMNS,
                mismatch_rows(doc),
            )
        )
    limited = (doc.get("rwnd_limited") or {}).get("count") or 0
    if limited:
        parts.append(
            table.records_table(
                f"Senders held back by the peer's window ({min(limited, ROWS)} of {limited})",
                LIMITED_COLUMNS,
                limited_rows(doc),
            )
        )
    for note in doc.get("notes", []):
        parts.append(f"[dim]note: {table.plain(note)}[/dim]")
    parts.append(table.findings_table(findings_of(doc)))
    return Group(*parts)


def timeline_plot(doc: dict[str, Any], path: Path) -> Path | None:
    """Counters per second over the incident's window, with its events marked."""
    points = doc.get("timeline") or []
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
    for event in doc.get("events", []):
        ax.axvline(event["time"] - start, color="#b00", alpha=0.25, linewidth=1)
    ax.set_xlabel(f"seconds since {clock(start)} (red lines: events)")
    ax.set_ylabel("per second")
    ax.set_title(f"{doc.get('incident')}: the kernel's counters, sampled by the recorder")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def html_sections(doc: dict[str, Any], pictures: Sequence[tuple[str, Path]]) -> list[html.Section]:
    tables: list[tuple[str, Sequence[str], Sequence[Sequence[Any]]]] = [
        ("Events", EVENT_COLUMNS, event_rows(doc, 100))
    ]
    mismatches = (doc.get("wscale_mismatch") or {}).get("count") or 0
    if mismatches:
        tables.append(
            (
                f"Window-scale mismatches ({min(mismatches, 100)} of {mismatches})",
                MISMATCH_COLUMNS,
                mismatch_rows(doc, 100),
            )
        )
    limited = (doc.get("rwnd_limited") or {}).get("count") or 0
    if limited:
        tables.append(
            (
                f"Senders held back by the peer's window ({min(limited, 100)} of {limited})",
                LIMITED_COLUMNS,
                limited_rows(doc, 100),
            )
        )
    kafka = (doc.get("capture") or {}).get("kafka") or []
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
    if doc.get("notes"):
        tables.append(("Notes", ("what the recorder could not do",), [(n,) for n in doc["notes"]]))
    return [
        html.Section(
            title=f"{doc.get('incident')} on {doc.get('host')}",
            facts=facts(doc),
            findings=findings_of(doc),
            tables=tables,
            pictures=list(pictures),
            facts_title="What the recorder kept",
            verdict=doc.get("verdict"),
        )
    ]


def html_page(doc: dict[str, Any]) -> str:
    """The incident's self-contained HTML page (its timeline drawn in a scratch
    directory of its own); the caller writes it (``tcpsleuth.safefile``)."""
    with tempfile.TemporaryDirectory(prefix="tcpsleuth-incident-") as scratch:
        picture = timeline_plot(doc, Path(scratch) / "timeline.png")
        pictures = [("The storm as the kernel counted it", picture)] if picture else []
        return html.render(
            f"tcpsleuth incident {doc.get('incident')}", html_sections(doc, pictures)
        )

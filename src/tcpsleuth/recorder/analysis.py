"""An incident's evidence through tcpsleuth's own detectors: the capture analyzer on
its capture, the SYN-ACKs held against the server's sockets, the audit on its host
bundle, the trace detectors on its trace, and the counters over its window.

Nothing here decides anything on its own: it reads the incident's files with the
sources every command uses and hands them to the detectors, then collects what they
said into one document (``report.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tcpsleuth import __version__, safefile
from tcpsleuth.detectors import handshakes
from tcpsleuth.detectors.audit import audit
from tcpsleuth.detectors.capture import cookies as capture_cookies
from tcpsleuth.detectors.capture.cookies import COOKIE
from tcpsleuth.detectors.capture.run import CaptureResult, analyse_stream
from tcpsleuth.detectors.capture.windows import rwnd_senders
from tcpsleuth.detectors.compare import socket_findings
from tcpsleuth.detectors.counters import AUDIT_COUNTERS
from tcpsleuth.detectors.kernel import assess_kernel
from tcpsleuth.detectors.tracing import fold, trace_findings
from tcpsleuth.errors import InputError
from tcpsleuth.model.findings import Finding, ranked
from tcpsleuth.model.incident import (
    Capture,
    IncidentReport,
    LimitedRow,
    MismatchRow,
    RwndLimited,
    Snapshot,
    Sockets,
    SynCookies,
    Trace,
    Window,
    WscaleMismatch,
)
from tcpsleuth.model.records import TcpConnection
from tcpsleuth.recorder import freeze, schema
from tcpsleuth.sources.bundle import read_bundle
from tcpsleuth.sources.pcap import open_capture

_NO_COUNTS = frozenset({"by_capture", "by_server_socket", "handshakes_joined_to_sockets"})
LISTED = 5000  # connections listed per table in report.json
COUNTERS = (*AUDIT_COUNTERS, "TcpPassiveOpens")


def _counters(samples: list[dict[str, Any]]) -> dict[str, Any]:
    if not samples:
        return {}
    first, last = samples[0]["counters"], samples[-1]["counters"]
    return {
        "from": samples[0]["time"],
        "to": samples[-1]["time"],
        "first": {k: first[k] for k in COUNTERS if k in first},
        "last": {k: last[k] for k in COUNTERS if k in last},
        "during": {
            k: last[k] - first[k] if last[k] >= first[k] else last[k]
            for k in COUNTERS
            if k in first and k in last
        },
    }


def _by_wscale(connections: list[TcpConnection], ports: frozenset[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in connections:
        if c.state == "ESTAB" and c.local_port in ports and c.snd_wscale is not None:
            name = f"{c.snd_wscale},{c.rcv_wscale}"
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class _CaptureAnalysis:
    """What the capture's analysis adds to the report: its counts (into ``capture``),
    the cookie verdicts, the window-scale mismatches and the held-back senders."""

    facts: dict[str, Any]
    cookies: dict[str, Any]
    mismatches: WscaleMismatch
    limited: RwndLimited
    findings: list[Finding]


def _mismatches(
    result: CaptureResult[Any], later: list[TcpConnection], during: list[TcpConnection]
) -> tuple[WscaleMismatch, list[Finding]]:
    analysis = result.analysis
    streams = list(range(len(analysis.connections)))
    ends = analysis.connections.endpoints_of(streams)
    cookie = np.asarray(result.cookies.verdict) == COOKIE
    announced = np.asarray(result.wscale.announced)
    inferred = np.asarray(result.wscale.inferred)
    mismatch = np.asarray(result.wscale.mismatch) == 1
    # the SYN-ACK's shift against the server's socket (later snapshot first: the
    # connections are established and carrying data by then)
    shakes = [
        handshakes.Handshake(
            ends[s][0], ends[s][1], int(announced[s]) if announced[s] >= 0 else None
        )
        for s in streams
    ]
    sockets = {(c.local, c.remote): c for c in [*during, *later]}
    found, joined = handshakes.disagreements(shakes, sockets.values())
    mismatched = sorted(set(np.flatnonzero(mismatch).tolist()) | {d.index for d in found})
    rows = []
    for s in mismatched[:LISTED]:
        client, server = ends[s]
        sock = sockets.get((server, client))
        rows.append(
            MismatchRow(
                client=client,
                server=server,
                announced_wscale=int(announced[s]) if announced[s] >= 0 else None,
                inferred_wscale=int(inferred[s]) if inferred[s] >= 0 else None,
                server_rcv_wscale=sock.rcv_wscale if sock else None,
                syn_cookie=bool(cookie[s]),
            )
        )
    section = WscaleMismatch(
        count=len(mismatched),
        by_capture=int(np.count_nonzero(mismatch)),
        by_server_socket=len(found),
        handshakes_joined_to_sockets=joined,
        connections=rows,
    )
    return section, handshakes.mismatch_findings(found, joined)


def _limited(result: CaptureResult[Any]) -> RwndLimited:
    cookie = np.asarray(result.cookies.verdict) == COOKIE
    client_ids = result.requests.client_ids()
    rows = [
        LimitedRow(
            client=f.subject["client"],
            server=f.subject["server"],
            sender="client" if f.evidence["direction"] == "c2s" else "server",
            rwnd_limited_ms=f.evidence["rwnd_limited_ms"],
            rwnd_limited_share=f.evidence["rwnd_limited_share"],
            min_window_bytes=f.evidence["min_window_bytes"],
            client_id=client_ids.get(stream),
            syn_cookie=bool(cookie[stream]),
        )
        for stream, f in rwnd_senders(result.analysis)
    ]
    rows.sort(key=lambda r: -r.rwnd_limited_ms)
    return RwndLimited(count=len(rows), connections=rows[:LISTED])


def _capture(
    result: CaptureResult[Any], later: list[TcpConnection], during: list[TcpConnection]
) -> _CaptureAnalysis:
    capture = result.capture
    mismatches, mismatch_findings = _mismatches(result, later, during)
    facts = {
        "packets": capture.counts.packets,
        "tcp_segments": capture.counts.tcp,
        "connections": len(result.analysis.connections),
        "handshakes": int(np.count_nonzero(np.asarray(result.wscale.announced) >= 0)),
        "warnings": list(capture.warnings),
        "kafka_requests": len(result.requests),
        "kafka": result.kafka_summary,
    }
    return _CaptureAnalysis(
        facts=facts,
        # every connection's verdict: cookie, ordinary or undecided (with the reasons why)
        cookies=capture_cookies.totals(result.cookies),
        mismatches=mismatches,
        limited=_limited(result),
        findings=[*result.findings, *mismatch_findings],
    )


def _as_json(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The findings as report.json holds them, so that the report read back is the
    report written (JSON's keys are text: a count per second keyed by 0 reads back
    keyed by "0")."""
    plain: list[dict[str, Any]] = json.loads(json.dumps(findings, default=str, allow_nan=False))
    return plain


def _snapshot(taken: float | None, sockets: list[TcpConnection], ports: frozenset[int]) -> Snapshot:
    return Snapshot(taken=taken, connections=len(sockets), by_wscale=_by_wscale(sockets, ports))


def _trace(directory: Path, ports: frozenset[int]) -> tuple[Trace | None, list[Finding]]:
    trace = directory / freeze.TRACE
    if trace.exists():
        sockets = fold(freeze.read_trace(trace))
        samples = sum(len(s.samples) for s in sockets)
        kept = Trace(samples=samples, connections=len(sockets), absent=frozenset({"skipped"}))
        return kept, trace_findings(sockets, ports)
    if (directory / freeze.TRACE_SKIPPED).exists():
        skipped = safefile.read_file(directory / freeze.TRACE_SKIPPED, 1 << 16)
        why = skipped.decode(errors="replace").strip()
        return Trace(skipped=why, absent=frozenset({"samples", "connections"})), []
    return None, []


def _analysed_capture(
    directory: Path,
    ports: frozenset[int],
    later: list[TcpConnection],
    during: list[TcpConnection],
    capture_doc: dict[str, Any],
    notes: list[str],
) -> _CaptureAnalysis | None:
    """The analysis of the incident's capture, its facts added to ``capture_doc``;
    None, with a note why, where there is no capture or it cannot be read."""
    capture_file = directory / freeze.CAPTURE
    if capture_file.exists() and capture_file.stat().st_size > 24:
        try:
            found = _capture(analyse_stream(open_capture(capture_file), ports), later, during)
            capture_doc.update(found.facts)
        except InputError as problem:
            notes.append(f"capture not analysed: {problem}")
            return None
        return found
    notes.append(
        "no capture in this incident"
        + (f" ({capture_doc['why']})" if capture_doc.get("why") else "")
    )
    return None


def _bundle(directory: Path, notes: list[str]) -> tuple[dict[str, Any] | None, list[Finding]]:
    """The audit of the incident's host bundle: what the report says of the host and
    the findings; None and none where there is no bundle, with a note where it cannot
    be read."""
    if not (directory / freeze.BUNDLE).is_dir():
        return None, []
    try:
        host = read_bundle(directory / freeze.BUNDLE)
    except InputError as problem:
        notes.append(f"bundle not analysed: {problem}")
        return None, []
    found = audit(host, assess_kernel(host.kernel_release, host.proc_version))
    return {"kernel_release": host.kernel_release, "hostname": host.hostname}, found


def analyse(directory: Path) -> IncidentReport:
    """The report of the incident in ``directory``; an InputError (one line) for an
    incident holding what the recorder never writes: a symbolic link, a FIFO or a
    device anywhere in it, or a file not of the recorder's shape (:mod:`.schema`)."""
    safefile.check_tree(directory)
    meta = freeze.read_meta(directory)
    ports = frozenset(meta["ports"])
    notes: list[str] = list(meta.get("notes", []))
    findings: list[Finding] = []
    samples = freeze.read_lines(directory / freeze.SAMPLES, schema.SAMPLE)
    events = freeze.read_lines(directory / freeze.EVENTS, schema.EVENT)
    _, during, during_at = freeze.read_snapshot(directory / freeze.DURING)
    listeners, later, later_at = freeze.read_snapshot(directory / freeze.LATER)
    counters = _counters(samples)
    capture_doc: dict[str, Any] = dict(meta.get("capture", {}))
    found = _analysed_capture(directory, ports, later, during, capture_doc, notes)
    if found is not None:
        findings += found.findings
    sent = counters.get("during", {}).get("TcpExtSyncookiesSent")
    cookies = found.cookies if found else {}
    # the counter's cookies the capture attributes to no connection
    cookies["sent_not_in_capture"] = capture_cookies.not_attributed(
        sent, cookies.get("cookie_connections")
    )
    served = [c for c in (later or during) if c.local_port in ports]
    if served:
        # the service's own sockets: on a host that is also its client, the client
        # ends are another story (and thousands of findings)
        findings += socket_findings(served, listeners)
    bundle, bundle_found = _bundle(directory, notes)
    findings += bundle_found
    trace, trace_found = _trace(directory, ports)
    findings += trace_found
    return IncidentReport(
        tool="tcpsleuth",
        version=__version__,
        command="record",
        incident=directory.name,
        host=meta.get("host"),
        netns=meta.get("netns"),
        ports=sorted(ports),
        window=Window.from_dict(meta["window"], "recorder.json.window")
        if meta.get("window") is not None
        else None,
        events=events,
        counters=counters,
        timeline=[
            {"time": s["time"], "seconds": s.get("seconds"), "grown": s.get("grown", {})}
            for s in samples
        ],
        sockets=Sockets(
            during=_snapshot(during_at, during, ports), later=_snapshot(later_at, later, ports)
        ),
        capture=Capture.from_dict(capture_doc, "capture"),
        syn_cookies=SynCookies(sent=sent, extra=cookies),
        wscale_mismatch=found.mismatches if found else WscaleMismatch(0, [], absent=_NO_COUNTS),
        rwnd_limited=found.limited if found else RwndLimited(count=0, connections=[]),
        notes=notes,
        findings=_as_json([f.to_dict() for f in ranked(findings)]),
        bundle=bundle,
        trace=trace,
        absent=frozenset({"bundle"} if bundle is None else set())
        | frozenset({"trace"} if trace is None else set()),
    )

"""An incident's evidence through tcpsleuth's own detectors: the capture analyzer on
its capture, the SYN-ACKs held against the server's sockets, the audit on its host
bundle, the trace detectors on its trace, and the counters over its window.

Nothing here decides anything on its own: it reads the incident's files with the
sources every command uses and hands them to the detectors, then collects what they
said into one document (``report.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tcpsleuth import __version__, safefile
from tcpsleuth.detectors import handshakes
from tcpsleuth.detectors.audit import audit
from tcpsleuth.detectors.capture import cookies as capture_cookies
from tcpsleuth.detectors.capture import kafka_summary as kafka_timing
from tcpsleuth.detectors.capture.cookies import COOKIE
from tcpsleuth.detectors.capture.run import CaptureResult, analyse_stream
from tcpsleuth.detectors.capture.windows import _rwnd_per_connection
from tcpsleuth.detectors.compare import socket_findings
from tcpsleuth.detectors.counters import AUDIT_COUNTERS
from tcpsleuth.detectors.kernel import assess_kernel
from tcpsleuth.detectors.tracing import fold, trace_findings
from tcpsleuth.errors import InputError
from tcpsleuth.model.findings import Finding, ranked
from tcpsleuth.model.records import TcpConnection
from tcpsleuth.recorder import freeze, schema
from tcpsleuth.sources.bundle import read_bundle
from tcpsleuth.sources.pcap import open_capture

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


def _capture(
    result: CaptureResult[Any], later: list[TcpConnection], during: list[TcpConnection]
) -> tuple[dict[str, Any], list[Finding]]:
    analysis = result.analysis
    total = len(analysis.connections)
    streams = list(range(total))
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
    by_client = {d.client: d for d in found}
    mismatched = sorted(
        set(np.flatnonzero(mismatch).tolist()) | {s for s in streams if ends[s][0] in by_client}
    )
    rows = []
    for s in mismatched[:LISTED]:
        client, server = ends[s]
        sock = sockets.get((server, client))
        rows.append(
            {
                "client": client,
                "server": server,
                "announced_wscale": int(announced[s]) if announced[s] >= 0 else None,
                "inferred_wscale": int(inferred[s]) if inferred[s] >= 0 else None,
                "server_rcv_wscale": sock.rcv_wscale if sock else None,
                "syn_cookie": bool(cookie[s]),
            }
        )
    client_ids = result.requests.client_ids()
    limited = []
    for f in _rwnd_per_connection(analysis):
        stream = f.evidence["stream"]
        limited.append(
            {
                **f.subject,
                "sender": "client" if f.evidence["direction"] == "c2s" else "server",
                "rwnd_limited_ms": f.evidence["rwnd_limited_ms"],
                "rwnd_limited_share": f.evidence["rwnd_limited_share"],
                "min_window_bytes": f.evidence["min_window_bytes"],
                "client_id": client_ids.get(stream),
                "syn_cookie": bool(cookie[stream]),
            }
        )
    limited.sort(key=lambda r: -r["rwnd_limited_ms"])
    capture = result.capture
    doc = {
        "packets": capture.counts.packets,
        "tcp_segments": capture.counts.tcp,
        "connections": total,
        "handshakes": int(np.count_nonzero(announced >= 0)),
        "warnings": capture.report.warnings,
        "kafka_requests": len(result.requests),
        "kafka": kafka_timing.summary(result.requests),
    }
    # every connection's verdict: cookie, ordinary or undecided (with the reasons why)
    cookies = capture_cookies.totals(result.cookies)
    mismatches = {
        "count": len(mismatched),
        "by_capture": int(np.count_nonzero(mismatch)),
        "by_server_socket": len(found),
        "handshakes_joined_to_sockets": joined,
        "connections": rows,
    }
    doc["syn_cookies"], doc["wscale_mismatch"] = cookies, mismatches
    doc["rwnd_limited"] = {"count": len(limited), "connections": limited[:LISTED]}
    return doc, [*result.findings, *handshakes.mismatch_findings(found, joined)]


def analyse(directory: Path) -> dict[str, Any]:
    """The report document of the incident in ``directory``; an InputError (one line)
    for an incident holding what the recorder never writes: a symbolic link, a FIFO or
    a device anywhere in it, or a file not of the recorder's shape (:mod:`.schema`)."""
    safefile.check_tree(directory)
    meta = freeze.read_meta(directory)
    ports = frozenset(meta["ports"])
    notes: list[str] = list(meta.get("notes", []))
    findings: list[Finding] = []
    samples = freeze.read_lines(directory / freeze.SAMPLES, schema.SAMPLE)
    events = freeze.read_lines(directory / freeze.EVENTS, schema.EVENT)
    _, during, during_at = freeze.read_snapshot(directory / freeze.DURING)
    listeners, later, later_at = freeze.read_snapshot(directory / freeze.LATER)
    doc: dict[str, Any] = {
        "tool": "tcpsleuth",
        "version": __version__,
        "command": "record",
        "incident": directory.name,
        "host": meta.get("host"),
        "netns": meta.get("netns"),
        "ports": sorted(ports),
        "window": meta.get("window"),
        "events": events,
        "counters": _counters(samples),
        "timeline": [
            {"time": s["time"], "seconds": s.get("seconds"), "grown": s.get("grown", {})}
            for s in samples
        ],
        "sockets": {
            "during": {
                "taken": during_at,
                "connections": len(during),
                "by_wscale": _by_wscale(during, ports),
            },
            "later": {
                "taken": later_at,
                "connections": len(later),
                "by_wscale": _by_wscale(later, ports),
            },
        },
    }
    capture_file = directory / freeze.CAPTURE
    capture_doc: dict[str, Any] = dict(meta.get("capture", {}))
    if capture_file.exists() and capture_file.stat().st_size > 24:
        try:
            result = analyse_stream(open_capture(capture_file), ports)
            found, found_findings = _capture(result, later, during)
            capture_doc.update(found)
            findings += found_findings
        except InputError as problem:
            notes.append(f"capture not analysed: {problem}")
    else:
        notes.append(
            "no capture in this incident"
            + (f" ({capture_doc['why']})" if capture_doc.get("why") else "")
        )
    doc["capture"] = capture_doc
    doc["syn_cookies"] = {
        "sent": doc["counters"].get("during", {}).get("TcpExtSyncookiesSent"),
        **capture_doc.pop("syn_cookies", {}),
    }
    # the counter's cookies the capture attributes to no connection
    doc["syn_cookies"]["sent_not_in_capture"] = capture_cookies.not_attributed(
        doc["syn_cookies"]["sent"], doc["syn_cookies"].get("cookie_connections")
    )
    doc["wscale_mismatch"] = capture_doc.pop("wscale_mismatch", {"count": 0, "connections": []})
    doc["rwnd_limited"] = capture_doc.pop("rwnd_limited", {"count": 0, "connections": []})
    served = [c for c in (later or during) if c.local_port in ports]
    if served:
        # the service's own sockets: on a host that is also its client, the client
        # ends are another story (and thousands of findings)
        findings += socket_findings(served, listeners)
    bundle = directory / freeze.BUNDLE
    if bundle.is_dir():
        try:
            host = read_bundle(bundle)
            findings += audit(host, assess_kernel(host.kernel_release, host.proc_version))
            doc["bundle"] = {"kernel_release": host.kernel_release, "hostname": host.hostname}
        except (InputError, TypeError) as problem:
            notes.append(f"bundle not analysed: {problem}")
    trace = directory / freeze.TRACE
    if trace.exists():
        sockets = fold(freeze.read_trace(trace))
        findings += trace_findings(sockets, ports)
        doc["trace"] = {
            "connections": len(sockets),
            "samples": sum(len(s.samples) for s in sockets),
        }
    elif (directory / freeze.TRACE_SKIPPED).exists():
        skipped = safefile.read_file(directory / freeze.TRACE_SKIPPED, 1 << 16)
        doc["trace"] = {"skipped": skipped.decode(errors="replace").strip()}
    doc["notes"] = notes
    doc["findings"] = [f.to_dict() for f in ranked(findings)]
    return doc

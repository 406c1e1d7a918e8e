"""What a lab run shows: latency before and after the restart, the kernel's counters,
and the findings of tcpsleuth's own sources and detectors on what the run collected.

Nothing here decides what is wrong: the findings come from the same detectors a
user runs (audit on the broker namespace's state, compare on the two socket
snapshots, the capture analyzer on the broker-side capture).
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from tcpsleuth.detectors.audit import audit
from tcpsleuth.detectors.capture import cookies as capture_cookies
from tcpsleuth.detectors.capture.run import CaptureResult, analyse_stream
from tcpsleuth.detectors.compare import compare_findings, join
from tcpsleuth.detectors.counters import AUDIT_COUNTERS
from tcpsleuth.detectors.kernel import assess_kernel
from tcpsleuth.lab.runner import PORT, RunArtifacts, percentiles
from tcpsleuth.model.findings import Finding, ranked
from tcpsleuth.model.records import HostSnapshot
from tcpsleuth.sources import procfs
from tcpsleuth.sources.pcap import open_capture

COUNTERS = AUDIT_COUNTERS


def _window(artifacts: RunArtifacts, name: str) -> tuple[float, float]:
    """A phase's window; with --heal "after" (the restart) ends when heal starts."""
    w = artifacts.window
    if name == "before":
        return w["before_start"], w["restart"]
    if name == "after_heal":
        return w["after_heal_start"], w["after_heal_end"]
    return w["after_start"], w.get("after_end", w["end"])


def _phases(artifacts: RunArtifacts) -> tuple[str, ...]:
    return (
        ("before", "after", "after_heal")
        if "after_heal_end" in artifacts.window
        else (
            "before",
            "after",
        )
    )


def latency(artifacts: RunArtifacts) -> dict[str, Any]:
    """Percentiles of measured produce requests sent in each window. A request still
    unanswered at the end counts with the time it had waited (a lower bound)."""
    lines = artifacts.client_lines
    result: dict[str, Any] = {}
    for phase in _phases(artifacts):
        start, end = _window(artifacts, phase)
        chosen = [
            x for x in lines if x["type"] in ("latency", "pending") and start <= x["sent"] < end
        ]
        values = [x.get("latency_ms", x.get("waited_ms")) for x in chosen]
        result[phase] = {
            **percentiles(values),
            "unanswered": sum(1 for x in chosen if x["type"] == "pending"),
            "errors": sum(1 for x in chosen if x.get("error")),
            "by_library": {
                library: percentiles(
                    [
                        x.get("latency_ms", x.get("waited_ms"))
                        for x in chosen
                        if x["library"] == library
                    ]
                )
                for library in sorted({x["library"] for x in chosen})
            },
        }
    before, after = result["before"]["p50"], result["after"]["p50"]
    result["p50_ratio"] = round(after / before, 2) if before and after else None
    return result


def broker_latency(artifacts: RunArtifacts) -> dict[str, Any] | None:
    """A real Kafka broker's own view of the same windows, from its request log: the
    percentiles of Produce TotalTimeMs for the requests it received in each window, all
    of them and the measured producers' (as large as theirs), with the median of each
    part of the time. None for the lab's own broker."""
    log = artifacts.workdir / "kafka" / "request.log"
    if not log.is_file():
        return None
    from tcpsleuth.lab.kafka_metrics import logged_requests

    requests = logged_requests(log)
    result: dict[str, Any] = {}
    for phase in _phases(artifacts):
        start, end = _window(artifacts, phase)
        chosen = [r for r in requests if start <= r.received < end]
        measured = [r for r in chosen if r.records_bytes >= artifacts.size.message_bytes]
        result[phase] = {
            "produce_total": percentiles([r.times_ms["TotalTimeMs"] for r in chosen]),
            "measured_total": percentiles([r.times_ms["TotalTimeMs"] for r in measured]),
            "median_parts": {
                name: round(statistics.median(r.times_ms[name] for r in chosen), 3)
                for name in (chosen[0].times_ms if chosen else {})
            },
        }
    before, after = (
        result["before"]["produce_total"]["p99"],
        result["after"]["produce_total"]["p99"],
    )
    result["p99_ratio"] = round(after / before, 2) if before and after else None
    return result


def librdkafka_split(artifacts: RunArtifacts) -> dict[str, Any]:
    """librdkafka's own view, per window: waiting in the queue (int_latency), waiting to
    be sent (outbuf_latency), and sent to answered (rtt), medians in milliseconds."""
    out: dict[str, Any] = {}
    stats = [x for x in artifacts.client_lines if x["type"] == "librdkafka"]
    for phase in _phases(artifacts):
        start, end = _window(artifacts, phase)
        chosen = [x for x in stats if start <= x["t"] < end]
        out[phase] = {
            name: round(statistics.median(x[f"{name}_us"] for x in chosen) / 1000, 3)
            if chosen
            else None
            for name in ("int_latency", "outbuf_latency", "rtt")
        }
    return out


def counters(artifacts: RunArtifacts) -> dict[str, Any]:
    before, after = artifacts.counters_before, artifacts.counters_after
    return {
        "before_restart": {k: before.get(k) for k in COUNTERS if k in before},
        "after_restart": {k: after.get(k) for k in COUNTERS if k in after},
        "during_restart": {k: after.get(k, 0) - before.get(k, 0) for k in COUNTERS if k in after},
    }


def _shift_counts(table: Any, shift: str, broker_side: bool) -> dict[str, int]:
    counts = Counter(
        getattr(c, shift)
        for c in table.connections
        if c.state == "ESTAB" and (c.local_port if broker_side else c.remote_port) == PORT
    )
    return {str(k): v for k, v in sorted(counts.items())}


def shifts(artifacts: RunArtifacts) -> dict[str, dict[str, int]]:
    """How many connections to the broker use each window-scale shift, at each end."""
    out: dict[str, dict[str, int]] = {}
    if artifacts.client_sockets is not None:
        out["client_snd_wscale"] = _shift_counts(artifacts.client_sockets, "snd_wscale", False)
    if artifacts.server_sockets is not None:
        out["server_rcv_wscale"] = _shift_counts(artifacts.server_sockets, "rcv_wscale", True)
    return out


def broker_host(artifacts: RunArtifacts, sysctls: dict[str, str]) -> HostSnapshot:
    server = artifacts.server_sockets
    return HostSnapshot(
        origin="lab broker namespace",
        hostname="lab-broker",
        kernel_release=procfs.kernel_release(),
        sysctls=sysctls,
        counters=artifacts.counters_after,
        listeners=server.listeners if server else None,
        connections=server.connections if server else None,
    )


def capture(artifacts: RunArtifacts) -> CaptureResult | None:
    """The broker-side capture through the capture analyzer; None without one."""
    if artifacts.capture.exists() and artifacts.capture.stat().st_size > 24:
        return analyse_stream(open_capture(artifacts.capture), frozenset({PORT}))
    return None


def syn_cookies(artifacts: RunArtifacts, result: CaptureResult | None) -> dict[str, Any]:
    """The SYN cookies of the run: the kernel's count during the restart (``sent``) and,
    where a capture was analysed, its connections' verdicts (cookie, ordinary, undecided
    and why: ``cookies.totals``) and the counted cookies it attributes to no connection."""
    sent = counters(artifacts)["during_restart"].get("TcpExtSyncookiesSent")
    if result is None:
        return {"sent": sent}
    totals = capture_cookies.totals(result.cookies)
    return {
        "sent": sent,
        **totals,
        "sent_not_in_capture": capture_cookies.not_attributed(sent, totals["cookie_connections"]),
    }


def findings(
    artifacts: RunArtifacts, sysctls: dict[str, str], captured: CaptureResult | None = None
) -> list[Finding]:
    """Findings of the audit, the two-sided socket check and the capture analyzer
    (``captured``: the capture already analysed, else it is analysed here)."""
    found: list[Finding] = []
    host = broker_host(artifacts, sysctls)
    found += audit(host, assess_kernel(host.kernel_release))
    if artifacts.client_sockets is not None and artifacts.server_sockets is not None:
        result = join(artifacts.client_sockets.connections, artifacts.server_sockets.connections)
        found += compare_findings(
            result, artifacts.client_sockets.listeners, artifacts.server_sockets.listeners
        )
    if captured is None:
        captured = capture(artifacts)
    if captured is not None:
        found += captured.findings
    return ranked(found)


def findings_summary(found: list[Finding]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = {}
    for finding in found:
        counts.setdefault(finding.kind, Counter())[finding.severity.value] += 1
    return {kind: dict(c) for kind, c in sorted(counts.items())}


# A mitigation "brings the clients back near the baseline" when their p50 after the
# restart is within this factor of the baseline's at the same point of the timeline.
NEAR_BASELINE = 2.0


def mitigations(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Each run's clients' produce p50 after the restart against the baseline run's (same
    window of the timeline, no restart), overall and per client library, beside the
    broker's own Produce p99 where a real Kafka reported it. None without a baseline run."""
    baseline = next((r for r in reports if r["scenario"] == "baseline"), None)
    if baseline is None:
        return None
    base = baseline["latency_ms"]["after"]
    base_p50 = base["p50"]

    def ratio(value: float | None, reference: float | None) -> float | None:
        return round(value / reference, 2) if value and reference else None

    rows = []
    for report in reports:
        after = report["latency_ms"]["after"]
        own = report.get("broker_latency_ms") or {}
        versus = ratio(after["p50"], base_p50)
        rows.append(
            {
                "scenario": report["scenario"],
                "settings": report["settings"],
                "p50_after_ms": after["p50"],
                "vs_baseline": versus,
                "near_baseline": None if versus is None else versus <= NEAR_BASELINE,
                "by_library": {
                    library: {
                        "p50_after_ms": stats["p50"],
                        "vs_baseline": ratio(
                            stats["p50"], base["by_library"].get(library, {}).get("p50")
                        ),
                    }
                    for library, stats in after["by_library"].items()
                },
                "broker_produce_p99_after_ms": (own.get("after") or {})
                .get("produce_total", {})
                .get("p99"),
                "note": report.get("mitigation_note"),
            }
        )
    return {"baseline_p50_ms": base_p50, "near_baseline_factor": NEAR_BASELINE, "runs": rows}


def lost(artifacts: RunArtifacts) -> dict[str, Any] | None:
    """Messages the timed producers sent and did not get acknowledged, as they counted
    them (their ``counts`` lines: failed, or still waiting when the run ended); None
    when no producer reported its counts."""
    counts = [x for x in artifacts.client_lines if x["type"] == "counts"]
    if not counts:
        return None
    by_library: dict[str, dict[str, int]] = {}
    for x in counts:
        mine = by_library.setdefault(x["library"], Counter())
        for name in ("sent", "acknowledged", "failed", "pending", "lost"):
            mine[name] += x[name]
    return {
        "lost": sum(x["lost"] for x in counts),
        "by_library": {k: dict(v) for k, v in sorted(by_library.items())},
    }


def heal(
    artifacts: RunArtifacts, lat: dict[str, Any], own: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The heal phase (``lab run --heal``): heal's own counts, the broker's connections
    with the bug's shift after it, what the timed producers lost, and the clients' p50
    of each phase (``lat`` is ``latency(artifacts)``: the same figures); with a real
    Kafka, its own Produce p50 and p99 of each phase beside them (``own`` is
    ``broker_latency(artifacts)``)."""
    run = artifacts.heal
    if run is None:
        return None
    doc = run.document or {}
    counts = doc.get("counts") or {}
    producers = lost(artifacts)
    before = lat["before"]["p50"]
    p50 = {
        "before": before,
        "after_restart": lat["after"]["p50"],
        "after_heal": lat.get("after_heal", {}).get("p50"),
    }
    return {
        "method": doc.get("method") or run.method,
        "method_asked": run.method,
        "exit_status": run.status,
        "error": run.error,
        "refused": doc.get("refused"),
        "stopped": doc.get("stopped"),
        "kernel_told": run.kernel_status,
        "kernel_verdict": doc.get("kernel"),
        **{name: counts.get(name) for name in ("hit", "ended", "came_back", "not_back", "gone")},
        "hit_after": run.hit_after,
        "cookies_during": doc.get("cookies_during"),
        "lost": None if producers is None else producers["lost"],
        "lost_by_library": None if producers is None else producers["by_library"],
        "p50_ms": p50,
        "after_heal_ratio": round(p50["after_heal"] / before, 2)
        if before and p50["after_heal"]
        else None,
        "broker_ms": None
        if own is None
        else {
            key: {
                phase: own[name]["produce_total"][key]
                for phase, name in (
                    ("before", "before"),
                    ("after_restart", "after"),
                    ("after_heal", "after_heal"),
                )
            }
            for key in ("p50", "p99")
        },
        "shifts_after": run.shifts_after,
        "per_second": doc.get("per_second"),
        "seconds": round(run.seconds, 1),
    }

"""Every capture detector over one pass of a capture: connections, Kafka requests,
SYN-cookie verdicts, inferred window scales, and the findings they give.

The ``pcap`` command, the lab and the benchmarks all analyse captures through
``analyse_stream``, so a capture gives the same findings whoever reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tcpsleuth import compiled
from tcpsleuth.detectors.capture import cookie_options, kafka, kafka_summary
from tcpsleuth.detectors.capture import cookies as capture_cookies
from tcpsleuth.detectors.capture import wscale as wscale_inference
from tcpsleuth.detectors.capture.connections import SERIES_POINTS, Analysis
from tcpsleuth.detectors.capture.shards import MAX_SHARDS, follow_sharded, rows_again, usable_cores
from tcpsleuth.detectors.capture.tracking import ConnectionTracker, DetailPass
from tcpsleuth.detectors.capture.windows import SeriesPass, rwnd_findings
from tcpsleuth.model.capture import CaptureFacts, SegmentSource, TcpColumns
from tcpsleuth.model.findings import Finding, ranked


@dataclass
class CaptureResult:
    capture: CaptureFacts  # what reading the capture told: file, format, counts, warnings
    analysis: Analysis
    findings: list[Finding]
    requests: kafka.KafkaRequests
    cookies: capture_cookies.CookieVerdicts
    inferences: list[wscale_inference.WindowInference]
    wscale: wscale_inference.WscaleVerdicts
    # per client address, server and API (kafka_summary.summary)
    kafka_summary: list[dict[str, Any]]


def follow(
    stream: SegmentSource,
    kafka_ports: frozenset[int],
    capacity: int | None = None,
    shards: int | None = None,
) -> tuple[Analysis, kafka.KafkaRequests]:
    """One pass over the capture: connections and Kafka messages, chunk by chunk
    (``capacity``: the tracker's first table size, its default when None). With
    ``shards`` > 1 (by default one per usable core, up to four, when the loops are
    compiled) the connections are split by 4-tuple over that many threads
    (:mod:`.shards`), with the same result."""
    if shards is None:
        shards = 1 if compiled.plain() else min(usable_cores(), MAX_SHARDS)
    if shards > 1:
        return follow_sharded(iter(stream.chunks), kafka_ports, shards)
    tracker = ConnectionTracker() if capacity is None else ConnectionTracker(capacity)
    follower = kafka.KafkaFollower(kafka_ports)
    for tcp in stream.chunks:
        rows = tracker.feed(tcp)
        follower.feed(tcp, rows, tracker)
    analysis = tracker.finish()
    return analysis, follower.finish(analysis)


def analyse_stream(stream: SegmentSource, kafka_ports: frozenset[int]) -> CaptureResult:
    """Read ``stream`` once and run every capture detector on what it held."""
    analysis, requests = follow(stream, kafka_ports)
    wscale = wscale_inference.verdicts(analysis)
    inferences = wscale_inference.infer(analysis, wscale)
    cleared = cookie_options.judge(analysis)
    cookies = capture_cookies.classify(analysis, cleared)
    client_ids = requests.client_ids()
    by_group = kafka_summary.grouped(requests)
    findings = [
        *wscale_inference.findings(analysis, inferences, client_ids, cleared.cookie),
        *cookie_options.findings(analysis, cleared, client_ids),
        *capture_cookies.findings(cookies, client_ids),
        *rwnd_findings(analysis, client_ids),
        *kafka_summary.findings(requests, by_group),
    ]
    return CaptureResult(
        stream.facts(),
        analysis,
        ranked(findings),
        requests,
        cookies,
        inferences,
        wscale,
        kafka_summary.summary(requests, by_group),
    )


@dataclass
class SecondPass:
    """What another pass over a capture gives for chosen connections: their window
    series (the JSON) and every segment of some (the graphs)."""

    series: dict[int, tuple[list[tuple[float, int]], list[tuple[float, int]]]]
    detail: Analysis | None


def second_pass(
    chunks: Iterable[TcpColumns],
    analysis: Analysis,
    series_of: Iterable[int] = (),
    detail_of: Iterable[int] | None = None,
) -> SecondPass:
    """One more read of the capture ``analysis`` came from (``chunks``), for what the
    first pass could not keep without holding every segment: the window series of
    ``series_of`` and, unless ``detail_of`` is None, every segment of those streams.
    Both come from the same read."""
    series = SeriesPass(analysis, series_of, SERIES_POINTS)
    detail = DetailPass(analysis, detail_of) if detail_of is not None else None
    for tcp, rows in rows_again(chunks, analysis):
        series.feed(tcp, rows)
        if detail is not None:
            detail.feed(tcp, rows)
    return SecondPass(series.finish(), detail.finish() if detail is not None else None)

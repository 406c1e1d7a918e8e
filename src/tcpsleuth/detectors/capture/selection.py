"""Which connections a report shows in detail: those its findings point at, then
those that waited longest at the window and sent most."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tcpsleuth.detectors.capture.connections import Analysis
from tcpsleuth.detectors.capture.kafka import KafkaRequests
from tcpsleuth.model.findings import Finding


def streams_named(findings: Sequence[Finding], requests: KafkaRequests, limit: int) -> list[int]:
    """Connections the findings point at (their ``stream``/``streams`` evidence, and the
    slowest requests of clients named by ``kafka-send-time``), worst findings first."""
    streams: list[int] = []
    for finding in findings:
        evidence = finding.evidence
        named = [evidence.get("stream"), *(evidence.get("streams") or [])]
        if finding.kind == "kafka-send-time":
            named += requests.slowest_streams(str(finding.subject.get("client")), 3)
        for stream in named:
            if isinstance(stream, int) and stream not in streams:
                streams.append(stream)
    return streams[:limit]


def ranked_streams(analysis: Analysis, limit: int) -> list[int]:
    """Streams with the longest window waits, then the most bytes sent by clients."""
    cols = analysis.columns
    if not len(cols):
        return []
    waited = cols.rwnd_limited_ns.sum(axis=1)
    sent = cols.bytes[:, 0]
    order = np.lexsort((-sent, -waited))
    return order[:limit].tolist()

"""Which connections a report shows in detail: those its findings point at."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tcpsleuth.model.findings import Finding


class KafkaRequestsLike(Protocol):
    def slowest_streams(self, client: str, count: int) -> list[int]: ...


class KafkaRequestLike(Protocol):
    stream: int
    client: str
    send_ms: float | None


def streams_named(
    findings: Sequence[Finding],
    requests: KafkaRequestsLike | Sequence[KafkaRequestLike],
    limit: int,
) -> list[int]:
    """Connections the findings point at (their ``stream``/``streams`` evidence, and the
    slowest requests of clients named by ``kafka-send-time``), worst findings first."""
    streams: list[int] = []
    for finding in findings:
        evidence = finding.evidence
        for stream in [evidence.get("stream"), *evidence.get("streams", [])]:
            if isinstance(stream, int) and stream not in streams:
                streams.append(stream)
        if finding.kind == "kafka-send-time":
            client = finding.subject.get("client")
            if hasattr(requests, "slowest_streams"):
                slowest = requests.slowest_streams(str(client), 3)
            else:
                slow = sorted(
                    (r for r in requests if r.client.rsplit(":", 1)[0] == client and r.send_ms),
                    key=lambda r: -(r.send_ms or 0),
                )
                slowest = [r.stream for r in slow[:3]]
            for stream in slowest:
                if stream not in streams:
                    streams.append(stream)
    return streams[:limit]

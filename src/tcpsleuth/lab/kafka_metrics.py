"""What a real Kafka broker says of its own requests: its request log and the Prometheus
page of its JMX exporter.

A lab broker (lab/kafka_broker.py) logs every request it completes when asked
(``kafka.request.logger`` at DEBUG: one JSON document a line, with the parts of the
request's time) and exposes Kafka's RequestMetrics histograms through the JMX exporter
(deploy/kafka/jmx-exporter.yaml names them). Both are read here, as pure functions of
their text, so a kept run's files are read the same as a live broker's.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

# The parts of a request's time Kafka measures (RequestMetrics <Part>TimeMs), each with
# the name the JMX exporter configuration gives it (kafka_network_request_<name>_time_ms)
# and the one the request log gives it.
REQUEST_TIMES = {
    "TotalTimeMs": ("total", "totalTimeMs"),
    "RequestQueueTimeMs": ("requestqueue", "requestQueueTimeMs"),
    "LocalTimeMs": ("local", "localTimeMs"),
    "RemoteTimeMs": ("remote", "remoteTimeMs"),
    "ResponseQueueTimeMs": ("responsequeue", "responseQueueTimeMs"),
    "ResponseSendTimeMs": ("responsesend", "sendTimeMs"),
}


@dataclass(frozen=True)
class LoggedRequest:
    """One request as Kafka's request log (kafka.request.logger at DEBUG) records it."""

    received: float  # epoch seconds: completion minus totalTimeMs
    times_ms: dict[str, float]  # by RequestMetrics name (TotalTimeMs, LocalTimeMs, ...)
    records_bytes: int  # Produce: the size of its record batches
    client_id: str


def logged_requests(path: Path, api: str = "PRODUCE") -> list[LoggedRequest]:
    """The ``api`` requests in a request log written by a lab broker."""
    found: list[LoggedRequest] = []
    if not path.is_file():
        return found
    marker = f'"requestApiKeyName":"{api}"'
    with path.open(errors="replace") as lines:
        for line in lines:
            if marker not in line or "Completed request:" not in line:
                continue
            stamp, _, rest = line.partition("] Completed request:")
            try:
                done = datetime.datetime.strptime(stamp.lstrip("["), "%Y-%m-%d %H:%M:%S,%f")
                entry = json.loads(rest)
            except ValueError:
                continue  # a line cut short when the broker was killed
            times = {name: float(entry.get(key, 0.0)) for name, (_, key) in REQUEST_TIMES.items()}
            size = sum(
                partition.get("recordsSizeInBytes", 0)
                for topic in entry.get("request", {}).get("topicData", [])
                for partition in topic.get("partitionData", [])
            )
            found.append(
                LoggedRequest(
                    done.timestamp() - times["TotalTimeMs"] / 1000,
                    times,
                    size,
                    entry.get("requestHeader", {}).get("clientId", ""),
                )
            )
    return found


def metric_values(page: str, name: str, **labels: str) -> list[float]:
    """Values of the samples called ``name`` whose labels include ``labels``, from a
    Prometheus text page (parsed by prometheus-client)."""
    return _select(_samples(page), name, labels)


def _samples(page: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(page) for sample in family.samples]


def _select(samples: list[Sample], name: str, labels: dict[str, str]) -> list[float]:
    return [
        sample.value
        for sample in samples
        if sample.name == name
        and all(sample.labels.get(key) == wanted for key, wanted in labels.items())
    ]


def request_metrics(page: str, request: str = "Produce") -> dict[str, dict[str, float]]:
    """Kafka's own view of ``request``s on a JMX exporter page: count, mean, p50, p99
    and max of each part of the request time (ms), since the JVM started."""
    parsed = _samples(page)
    only = {"request": request}
    out: dict[str, dict[str, float]] = {}
    for part, (exported, _) in REQUEST_TIMES.items():
        name = f"kafka_network_request_{exported}_time_ms"
        values = {
            "count": _select(parsed, f"{name}_count", only),
            "mean": _select(parsed, f"{name}_mean", only),
            "p50": _select(parsed, name, {**only, "quantile": "0.50"}),
            "p99": _select(parsed, name, {**only, "quantile": "0.99"}),
            "max": _select(parsed, f"{name}_max", only),
        }
        out[part] = {key: round(found[0], 3) for key, found in values.items() if found}
    return out

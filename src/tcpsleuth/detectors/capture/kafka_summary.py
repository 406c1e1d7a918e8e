"""Kafka request timing summed up per client, server and API, and the finding it
supports: ``kafka-send-time``, requests that take longer to put on the wire than the
broker takes to answer them (latency the broker's own metrics do not show).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tcpsleuth.detectors.capture.connections import mix as _mix
from tcpsleuth.detectors.capture.kafka import KafkaRequests, api_name
from tcpsleuth.model.findings import Finding, Severity, connection_subject
from tcpsleuth.model.units import ms_or_none

# A client whose requests spend this long being sent (median) is reported.
SEND_SLOW_MS = 10.0
SEND_SHARE = 0.5


def _quantiles(group: np.ndarray, values: np.ndarray, groups: int, q: float) -> np.ndarray:
    """Per group, the value at rank int(q * count) of its non-NaN values (NaN: none)."""
    valid = ~np.isnan(values)
    group, values = group[valid], values[valid]
    order = np.lexsort((values, group))
    counts = np.bincount(group, minlength=groups)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rank = np.minimum(counts - 1, np.floor(q * counts).astype(np.int64))
    out = np.full(groups, np.nan)
    has = counts > 0
    out[has] = values[order[starts[has] + rank[has]]]
    return out


Grouped = tuple[list[tuple[int, dict[str, Any]]], np.ndarray]


def summary(requests: KafkaRequests, by_group: Grouped | None = None) -> list[dict[str, Any]]:
    """Per client address, server and api key: counts, the client.ids seen (with
    counts) and send/broker time quantiles (ms, None where unknown), computed on
    the columns (``by_group``: :func:`grouped` of the same requests, if made)."""
    return [row for _, row in (grouped(requests) if by_group is None else by_group)[0]]


def grouped(requests: KafkaRequests) -> Grouped:
    """The summary rows, each with its group number, and each request's group."""
    if not len(requests):
        return [], np.zeros(0, dtype=np.int64)
    cols = requests.analysis.columns
    client_key = cols.client_addr_key[requests.stream]
    server_key = cols.server_key[requests.stream]
    key = _mix_keys(client_key, server_key, requests.api_key)
    unique, first, group = np.unique(key, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    groups = len(unique)
    send, broker = requests.send_ms(), requests.broker_ms()
    counts = np.bincount(group, minlength=groups)
    answered = np.bincount(group, weights=~np.isnan(broker), minlength=groups)
    columns = {
        "send_ms_p50": _quantiles(group, send, groups, 0.5),
        "send_ms_p99": _quantiles(group, send, groups, 0.99),
        "broker_ms_p50": _quantiles(group, broker, groups, 0.5),
        "broker_ms_p99": _quantiles(group, broker, groups, 0.99),
    }
    client_ids = _ids_per_group(requests, group, groups)
    ends = requests.analysis.connections.endpoints_of(requests.stream[first].tolist())
    rows = []
    for g, (stream, api_key) in enumerate(
        zip(requests.stream[first].tolist(), requests.api_key[first].tolist(), strict=True)
    ):
        client, server = ends[stream]
        rows.append(
            (
                g,
                {
                    "client": client.rsplit(":", 1)[0],
                    "server": server,
                    "api_key": api_key,
                    "api": api_name(api_key),
                    "requests": int(counts[g]),
                    "answered": int(answered[g]),
                    "client_ids": client_ids[g],
                    **{name: ms_or_none(values[g]) for name, values in columns.items()},
                },
            )
        )
    rows.sort(key=lambda item: (item[1]["client"], item[1]["server"], item[1]["api_key"]))
    return rows, group


def _ids_per_group(requests: KafkaRequests, group: np.ndarray, groups: int) -> list[dict[str, int]]:
    """Per group, how many of its requests carry each client.id, most first."""
    out: list[dict[str, int]] = [{} for _ in range(groups)]
    codes = requests.client_id_code
    if not len(codes):
        return out
    known = codes >= 0
    width = len(requests.client_id_names) + 1
    pairs = group[known] * width + codes[known]
    if groups * width <= 4 * len(pairs) + 1024:
        counts = np.bincount(pairs, minlength=groups * width)
        unique = np.flatnonzero(counts)
        counts = counts[unique]
    else:
        unique, counts = np.unique(pairs, return_counts=True)
    for pair, count in sorted(
        zip(unique.tolist(), counts.tolist(), strict=True), key=lambda item: -item[1]
    ):
        out[pair // width][requests.client_id_names[pair % width]] = count
    return out


def _mix_keys(*keys: np.ndarray) -> np.ndarray:
    out = np.zeros(len(keys[0]), dtype=np.uint64)
    for key in keys:
        out = _mix(out ^ key.astype(np.uint64))
    return out


def findings(requests: KafkaRequests, by_group: Grouped | None = None) -> list[Finding]:
    """``kafka-send-time``: a client's requests spend longer being sent than the broker
    spends answering them: the latency the producer sees and the broker does not.
    Its evidence names the client.ids of the slow requests, with counts."""
    out = []
    rows, group = grouped(requests) if by_group is None else by_group
    send_all = requests.send_ms() if rows else np.zeros(0)
    for g, row in rows:
        send, broker = row["send_ms_p50"], row["broker_ms_p50"]
        if send is None or send < SEND_SLOW_MS:
            continue
        total = send + (broker or 0.0)
        if total and send / total < SEND_SHARE:
            continue
        slow = np.flatnonzero((group == g) & (send_all >= SEND_SLOW_MS))
        broker_text = (
            f"against {broker} ms in the broker"
            if broker is not None
            else "with no response in the capture, so the broker's time is unknown"
        )
        out.append(
            Finding(
                kind="kafka-send-time",
                severity=Severity.WARNING,
                subject=connection_subject(row["client"], row["server"]),
                summary=(
                    f"{row['api']} requests took {send} ms (median) to put on the wire "
                    f"{broker_text}: latency the broker's metrics do not show"
                ),
                evidence={
                    **row,
                    "slow_requests": len(slow),
                    "slow_client_ids": requests.client_id_counts(slow),
                },
                advice=(
                    "Look at the same connections' rwnd-limited and wscale findings: a "
                    "sender held at a small receive window sends a large request one "
                    "segment per round trip"
                ),
            )
        )
    return out

"""Kafka request timing from a capture: time on the wire versus time in the broker.

Every Kafka request and response starts with a 4-byte big-endian size; a request
header goes on with api_key (int16), api_version (int16) and correlation_id
(int32), a response header with correlation_id (the protocol guide,
kafka.apache.org/protocol). The byte streams are followed through sequence
numbers, so headers split across segments, several requests in one segment and
segments cut short by a snap length are all handled; only the header bytes must
have been captured.

For each request: when its first and its last byte were sent, and when the
response's first byte came. ``send`` (first to last byte) is what the client
spent putting the request on the wire, window waits included; ``broker`` (last
request byte to first response byte) is what the broker and the network took.
A producer's request latency is the sum; the broker's own metrics see only the
second part.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from tcpsleuth.detectors.capture import Analysis
from tcpsleuth.model.findings import Finding, Severity, connection_subject

try:  # api key names from kio, the project's Kafka protocol library
    from kio.schema.index import api_key_map as _API_NAMES
except ImportError:  # pragma: no cover - kio is a dependency; names are cosmetic
    _API_NAMES = {}

REQUEST_HEADER = struct.Struct(">iHhi")  # size, api_key, api_version, correlation_id
RESPONSE_HEADER = struct.Struct(">ii")  # size, correlation_id
MAX_MESSAGE = 1 << 30  # a larger size means we are not at a message boundary
# A client whose requests spend this long being sent (median) is reported.
SEND_SLOW_MS = 10.0
SEND_SHARE = 0.5


def api_name(api_key: int) -> str:
    return _API_NAMES.get(api_key, f"api-{api_key}")


@dataclass(frozen=True)
class KafkaRequest:
    stream: int
    client: str
    server: str
    api_key: int
    api_version: int
    correlation_id: int
    size: int  # the request's size field (bytes after it)
    frame: int  # frame with the request's first byte
    first_byte_ns: int
    last_frame: int | None
    last_byte_ns: int | None
    response_frame: int | None
    response_ns: int | None
    response_size: int | None

    @property
    def send_ms(self) -> float | None:
        if self.last_byte_ns is None:
            return None
        return (self.last_byte_ns - self.first_byte_ns) / 1e6

    @property
    def broker_ms(self) -> float | None:
        if self.response_ns is None or self.last_byte_ns is None:
            return None
        return (self.response_ns - self.last_byte_ns) / 1e6

    @property
    def total_ms(self) -> float | None:
        if self.response_ns is None:
            return None
        return (self.response_ns - self.first_byte_ns) / 1e6

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "client": self.client,
            "api_key": self.api_key,
            "api": api_name(self.api_key),
            "api_version": self.api_version,
            "correlation_id": self.correlation_id,
            "size": self.size,
            "frame": self.frame,
            "last_frame": self.last_frame,
            "response_frame": self.response_frame,
            "send_ms": _round(self.send_ms),
            "broker_ms": _round(self.broker_ms),
            "total_ms": _round(self.total_ms),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(frozen=True)
class KafkaResponse:
    stream: int
    correlation_id: int
    size: int
    frame: int
    ts_ns: int


@dataclass
class _Message:
    start: int  # relative sequence number of its size field
    end: int  # one past its last byte
    header: bytes
    frame: int
    ts_ns: int
    last_frame: int | None = None
    last_ns: int | None = None


def _messages(
    segments: list[tuple[int, int, bytes, int, int]], header_size: int, first: int
) -> list[_Message]:
    """Split one direction's byte stream into messages, the first starting at ``first``.

    ``segments`` are (relative seq, length, captured payload, frame, ts) in capture
    order. Retransmitted bytes are skipped; a gap in the capture over a header the
    stream depends on stops the decoding of this direction (we lost our place).
    """
    messages: list[_Message] = []
    pending: list[_Message] = []
    next_start = first
    high = first  # one past the highest byte seen
    partial = bytearray()
    partial_frame = partial_ts = 0
    for rel, length, payload, frame, ts in segments:
        seg_end = rel + length
        if seg_end <= high:
            continue
        if rel > high and next_start < rel and next_start + header_size > high:
            break  # the header we need was in a segment the capture lacks
        if pending:
            for message in pending:
                if message.end <= seg_end:
                    message.last_frame, message.last_ns = frame, ts
            pending = [m for m in pending if m.last_ns is None]
        begin = max(rel, high)
        high = seg_end
        lost = False
        while next_start < seg_end:
            if next_start < begin and not partial:
                lost = True
                break
            at = max(next_start + len(partial), begin) - rel
            need = header_size - len(partial)
            if not partial:
                partial_frame, partial_ts = frame, ts
            partial += payload[at : at + need]
            if len(partial) < header_size:
                # the rest of the header is in the next segment, unless the snap
                # length cut it off here
                lost = rel + len(payload) < seg_end
                break
            (size,) = struct.unpack_from(">i", partial)
            if size < 0 or size > MAX_MESSAGE:
                lost = True
                break
            message = _Message(
                next_start, next_start + 4 + size, bytes(partial), partial_frame, partial_ts
            )
            partial.clear()
            if message.end <= seg_end:
                message.last_frame, message.last_ns = frame, ts
            else:
                pending.append(message)
            messages.append(message)
            next_start = message.end
        if lost:
            break
    return messages


def timeline(analysis: Analysis, kafka_ports: frozenset[int]) -> list[KafkaRequest]:
    """Every Kafka request on connections to one of ``kafka_ports``."""
    tcp = analysis.tcp
    n = len(analysis.order)
    if not n or not kafka_ports:
        return []
    records = analysis.connections
    watched = np.isin(analysis.columns["server_port"], np.array(sorted(kafka_ports)))
    conn = analysis.conn
    order = analysis.order
    paylen = tcp.paylen[order]
    flags = tcp.flags[order]
    c2s = analysis.c2s
    # Where each direction's byte stream starts: after its SYN, or at its first
    # data segment when the capture began mid-connection.
    bucket = conn * 2 + (~c2s)
    # rows are in connection order, capture order within: the first row of each
    # bucket is where the bucket number is seen for the first time
    first_of_bucket = np.full(2 * len(records), n, dtype=np.int64)
    seen, first_rows = np.unique(bucket, return_index=True)
    first_of_bucket[seen] = first_rows
    positions = np.flatnonzero(watched[conn] & (paylen > 0))
    if not len(positions):
        return []
    positions = positions[np.argsort(bucket[positions], kind="stable")]
    keys_array = bucket[positions]
    cuts = np.flatnonzero(np.diff(keys_array)) + 1
    keys = keys_array.tolist()
    starts_flags = flags[np.minimum(first_of_bucket, n - 1)].tolist()
    rows = order[positions]
    rel = analysis.rel_seq[positions].tolist()
    lengths = paylen[positions].tolist()
    frames = tcp.frame[rows].tolist()
    stamps = tcp.ts_ns[rows].tolist()
    payloads = [tcp.payloads.get(r, b"") for r in rows.tolist()]
    sent: dict[int, list[_Message]] = {}
    answered: dict[int, list[_Message]] = {}
    for lo, hi in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(positions)].tolist(), strict=True):
        key = keys[lo]
        c, from_server = divmod(key, 2)
        first = 1 if starts_flags[key] & 0x02 else rel[lo]
        segments = list(
            zip(
                rel[lo:hi],
                lengths[lo:hi],
                payloads[lo:hi],
                frames[lo:hi],
                stamps[lo:hi],
                strict=True,
            )
        )
        if from_server:
            answered[c] = _messages(segments, RESPONSE_HEADER.size, first)
        else:
            sent[c] = _messages(segments, REQUEST_HEADER.size, first)
    requests: list[KafkaRequest] = []
    ends = records.endpoints_of(list(sent))
    for c, messages in sent.items():
        client, server = ends[c]
        responses: dict[int, _Message] = {}
        for message in answered.get(c, []):
            _, correlation_id = RESPONSE_HEADER.unpack_from(message.header)
            responses.setdefault(correlation_id, message)
        for message in messages:
            size, api_key, api_version, correlation_id = REQUEST_HEADER.unpack_from(message.header)
            response = responses.get(correlation_id)
            requests.append(
                KafkaRequest(
                    stream=c,
                    client=client,
                    server=server,
                    api_key=api_key,
                    api_version=api_version,
                    correlation_id=correlation_id,
                    size=size,
                    frame=message.frame,
                    first_byte_ns=message.ts_ns,
                    last_frame=message.last_frame,
                    last_byte_ns=message.last_ns,
                    response_frame=response.frame if response else None,
                    response_ns=response.ts_ns if response else None,
                    response_size=(response.end - response.start - 4) if response else None,
                )
            )
    return requests  # in stream order, each stream's in the order they were sent


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def summary(requests: list[KafkaRequest]) -> list[dict[str, Any]]:
    """Per client and api key: counts and send/broker time quantiles (ms)."""
    groups: dict[tuple[str, str, int], list[KafkaRequest]] = defaultdict(list)
    for request in requests:
        groups[(request.client.rsplit(":", 1)[0], request.server, request.api_key)].append(request)
    rows = []
    for (client, server, key), group in sorted(groups.items()):
        send = [r.send_ms for r in group if r.send_ms is not None]
        broker = [r.broker_ms for r in group if r.broker_ms is not None]
        rows.append(
            {
                "client": client,
                "server": server,
                "api_key": key,
                "api": api_name(key),
                "requests": len(group),
                "answered": len(broker),
                "send_ms_p50": _quantile(send, 0.5),
                "send_ms_p99": _quantile(send, 0.99),
                "broker_ms_p50": _quantile(broker, 0.5),
                "broker_ms_p99": _quantile(broker, 0.99),
            }
        )
    return rows


def findings(requests: list[KafkaRequest]) -> list[Finding]:
    """``kafka-send-time``: a client's requests spend longer being sent than the broker
    spends answering them: the latency the producer sees and the broker does not."""
    out = []
    for row in summary(requests):
        send, broker = row["send_ms_p50"], row["broker_ms_p50"]
        if send is None or send < SEND_SLOW_MS:
            continue
        total = send + (broker or 0.0)
        if total and send / total < SEND_SHARE:
            continue
        out.append(
            Finding(
                kind="kafka-send-time",
                severity=Severity.WARNING,
                subject=connection_subject(row["client"], row["server"]),
                summary=(
                    f"{row['api']} requests took {send} ms (median) to put on the wire against "
                    f"{broker} ms in the broker: latency the broker's metrics do not show"
                ),
                evidence=row,
                advice=(
                    "Look at the same connections' rwnd-limited and wscale findings: a "
                    "sender held at a small receive window sends a large request one "
                    "segment per round trip"
                ),
            )
        )
    return out

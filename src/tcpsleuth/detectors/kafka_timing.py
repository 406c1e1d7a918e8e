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

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tcpsleuth.detectors.capture import Analysis, ChunkRows, ConnectionTracker, _mix
from tcpsleuth.model.findings import Finding, Severity, connection_subject
from tcpsleuth.sources.pcap.decode import TcpColumns
from tcpsleuth.sources.pcap.walk import njit

try:  # api key names from kio, the project's Kafka protocol library
    from kio.schema.index import api_key_map as _API_NAMES
except ImportError:  # pragma: no cover - kio is a dependency; names are cosmetic
    _API_NAMES = {}

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


# Per direction of a connection (``state[c, d, field]``): where the next message
# starts (relative sequence number; -1: at the first data segment, -2: direction
# not seen yet), one past the highest byte seen, header bytes collected so far and
# the frame and time of the first of them, the message still waiting for its last
# byte (-1: none), and whether decoding stopped (we lost our place).
S_NEXT, S_HIGH, S_PARTIAL, S_FRAME, S_TS, S_PENDING, S_DEAD = range(7)
STATE_FIELDS = 7
STATE_INITIAL = np.array([-2, 0, 0, 0, 0, -1, 0], dtype=np.int64)
# Message columns (``messages[m, field]``)
(
    M_CONN,
    M_REQUEST,
    M_SIZE,
    M_API_KEY,
    M_API_VERSION,
    M_CORRELATION,
    M_FRAME,
    M_TS,
    M_END,
    M_LAST_FRAME,
    M_LAST_TS,
) = range(11)
MESSAGE_FIELDS = 11
_HEADER = 12  # bytes kept of a header: a request's (a response's is 8)


@njit(cache=True, nogil=True)
def _int32(partial, at):  # type: ignore[no-untyped-def]
    value = (
        (np.int64(partial[at]) << 24)
        | (np.int64(partial[at + 1]) << 16)
        | (np.int64(partial[at + 2]) << 8)
        | np.int64(partial[at + 3])
    )
    return value - (1 << 32) if value >= (1 << 31) else value


@njit(cache=True, nogil=True)
def follow(  # type: ignore[no-untyped-def]
    start,
    conn,
    direction,
    rel_seq,
    flags,
    paylen,
    frame,
    ts_ns,
    payload_at,
    payload_cap,
    data,
    client_dir,
    state,
    partial,
    messages,
    count,
):
    """Split the byte streams of watched connections (``client_dir`` >= 0: the
    client's direction) into messages, from segment ``start`` of the chunk on.

    Retransmitted bytes are skipped; a gap in the capture over a header the stream
    depends on stops the decoding of that direction. Returns where it stopped: the
    chunk's length, or earlier when ``messages`` might not hold the next segment's
    messages (the caller makes room and calls again from there)."""
    for i in range(start, len(conn)):
        c = conn[i]
        who = client_dir[c]
        if who < 0:
            continue
        d = direction[i]
        st = state[c, d]
        if st[S_NEXT] == -2:
            # the stream starts after the SYN, or at the first data segment when
            # the capture began mid-connection
            st[S_NEXT] = 1 if flags[i] & 0x02 else -1
            st[S_HIGH] = st[S_NEXT]
        length = np.int64(paylen[i])
        if length <= 0 or st[S_DEAD]:
            continue
        captured = np.int64(payload_cap[i])
        if count[0] + captured // 4 + 2 > len(messages):
            return i
        header = 12 if d == who else 8
        rel = rel_seq[i]
        if st[S_NEXT] == -1:
            st[S_NEXT] = rel
            st[S_HIGH] = rel
        seg_end = rel + length
        if seg_end <= st[S_HIGH]:
            continue
        if rel > st[S_HIGH] and st[S_NEXT] < rel and st[S_NEXT] + header > st[S_HIGH]:
            st[S_DEAD] = 1  # the header we need was in a segment the capture lacks
            continue
        pending = st[S_PENDING]
        if pending >= 0 and messages[pending, M_END] <= seg_end:
            messages[pending, M_LAST_FRAME] = frame[i]
            messages[pending, M_LAST_TS] = ts_ns[i]
            st[S_PENDING] = -1
        begin = max(rel, st[S_HIGH])
        st[S_HIGH] = seg_end
        lost = False
        while st[S_NEXT] < seg_end:
            have = st[S_PARTIAL]
            if st[S_NEXT] < begin and have == 0:
                lost = True
                break
            at = max(st[S_NEXT] + have, begin) - rel
            need = header - have
            if have == 0:
                st[S_FRAME] = frame[i]
                st[S_TS] = ts_ns[i]
            take = min(need, captured - at) if at < captured else 0
            base = payload_at[i] + at
            for k in range(take):
                partial[c, d, have + k] = data[base + k]
            have += take
            st[S_PARTIAL] = have
            if have < header:
                # the rest of the header is in the next segment, unless the snap
                # length cut it off here
                lost = rel + captured < seg_end
                break
            size = _int32(partial[c, d], 0)
            if size < 0 or size > MAX_MESSAGE:
                lost = True
                break
            m = count[0]
            count[0] += 1
            messages[m, M_CONN] = c
            messages[m, M_REQUEST] = 1 if d == who else 0
            messages[m, M_SIZE] = size
            if d == who:
                messages[m, M_API_KEY] = (np.int64(partial[c, d, 4]) << 8) | partial[c, d, 5]
                version = (np.int64(partial[c, d, 6]) << 8) | partial[c, d, 7]
                messages[m, M_API_VERSION] = version - 65536 if version >= 32768 else version
                messages[m, M_CORRELATION] = _int32(partial[c, d], 8)
            else:
                messages[m, M_API_KEY] = -1
                messages[m, M_API_VERSION] = -1
                messages[m, M_CORRELATION] = _int32(partial[c, d], 4)
            messages[m, M_FRAME] = st[S_FRAME]
            messages[m, M_TS] = st[S_TS]
            end = st[S_NEXT] + 4 + size
            messages[m, M_END] = end
            if end <= seg_end:
                messages[m, M_LAST_FRAME] = frame[i]
                messages[m, M_LAST_TS] = ts_ns[i]
            else:
                messages[m, M_LAST_FRAME] = -1
                messages[m, M_LAST_TS] = -1
                st[S_PENDING] = m
            st[S_PARTIAL] = 0
            st[S_NEXT] = end
        if lost:
            st[S_DEAD] = 1
    return len(conn)


class KafkaFollower:
    """Kafka messages of the connections to ``ports``, followed chunk by chunk next to
    a :class:`ConnectionTracker`. State per connection direction is fixed (where
    the next header starts, up to 12 header bytes); messages are kept as columns
    (88 bytes each) until :meth:`finish` pairs requests with responses."""

    def __init__(self, ports: frozenset[int]) -> None:
        self.ports = np.array(sorted(ports), dtype=np.int64)
        self.client_dir = np.full(1024, -1, dtype=np.int64)
        self.state = np.zeros((1024, 2, STATE_FIELDS), dtype=np.int64)
        self.partial = np.zeros((1024, 2, _HEADER), dtype=np.uint8)
        self.messages = np.zeros((1024, MESSAGE_FIELDS), dtype=np.int64)
        self.count = np.zeros(1, dtype=np.int64)
        self.known = 0  # connections whose client direction is set

    def feed(self, tcp: TcpColumns, rows: ChunkRows, tracker: ConnectionTracker) -> None:
        if not len(self.ports) or not len(tcp):
            return
        nconn = tracker.connection_count
        if nconn > len(self.client_dir):
            size = max(nconn, len(self.client_dir) * 3 // 2)
            self.client_dir = np.r_[self.client_dir, np.full(size - len(self.client_dir), -1)]
            state = np.empty((size, 2, STATE_FIELDS), dtype=np.int64)
            state[: len(self.state)] = self.state
            state[len(self.state) :] = STATE_INITIAL
            self.state = state
            partial = np.zeros((size, 2, _HEADER), dtype=np.uint8)
            partial[: len(self.partial)] = self.partial
            self.partial = partial
        if nconn > self.known:
            client, server_port = tracker.server_ports(self.known, nconn)
            self.client_dir[self.known : nconn] = np.where(
                np.isin(server_port, self.ports), client, -1
            )
            self.state[self.known : nconn] = STATE_INITIAL
            self.known = nconn
        at = 0
        while True:
            at = follow(
                at,
                rows.conn,
                rows.direction,
                rows.rel_seq,
                tcp.flags,
                tcp.paylen,
                tcp.frame,
                tcp.ts_ns,
                tcp.payload_at,
                tcp.payload_cap,
                tcp.data,
                self.client_dir,
                self.state,
                self.partial,
                self.messages,
                self.count,
            )
            if at >= len(tcp):
                return
            grown = np.zeros((len(self.messages) * 2 + 1024, MESSAGE_FIELDS), dtype=np.int64)
            grown[: len(self.messages)] = self.messages
            self.messages = grown

    def finish(self, analysis: Analysis) -> KafkaRequests:
        """The requests, in stream order (each stream's in the order they were sent),
        each with the first response carrying its correlation id."""
        found = self.messages[: int(self.count[0])]
        requests = found[found[:, M_REQUEST] == 1]
        responses = found[found[:, M_REQUEST] == 0]
        requests = requests[np.argsort(requests[:, M_CONN], kind="stable")]
        # the first response of each (stream, correlation id)
        response_key = (responses[:, M_CONN] << 32) | (responses[:, M_CORRELATION] & 0xFFFFFFFF)
        by_key = np.argsort(response_key, kind="stable")
        keys = response_key[by_key]
        request_key = (requests[:, M_CONN] << 32) | (requests[:, M_CORRELATION] & 0xFFFFFFFF)
        at = np.searchsorted(keys, request_key)
        at_c = np.minimum(at, max(len(keys) - 1, 0))
        answered = (at < len(keys)) & (keys[at_c] == request_key) if len(keys) else at < 0
        response = (
            responses[by_key[at_c]]
            if len(keys)
            else np.zeros((len(requests), MESSAGE_FIELDS), dtype=np.int64)
        )
        return KafkaRequests(
            analysis=analysis,
            stream=requests[:, M_CONN],
            api_key=requests[:, M_API_KEY],
            api_version=requests[:, M_API_VERSION],
            correlation_id=requests[:, M_CORRELATION],
            size=requests[:, M_SIZE],
            frame=requests[:, M_FRAME],
            first_byte_ns=requests[:, M_TS],
            last_frame=requests[:, M_LAST_FRAME],
            last_byte_ns=requests[:, M_LAST_TS],
            response_frame=np.where(answered, response[:, M_FRAME], -1),
            response_ns=np.where(answered, response[:, M_TS], -1),
            response_size=np.where(answered, response[:, M_SIZE], -1),
        )


def _or_none(value: int) -> int | None:
    return None if value < 0 else value


@dataclass
class KafkaRequests:
    """Every request of a capture as columns (-1: none); :class:`KafkaRequest`
    records are made only for those asked for."""

    analysis: Analysis
    stream: np.ndarray
    api_key: np.ndarray
    api_version: np.ndarray
    correlation_id: np.ndarray
    size: np.ndarray
    frame: np.ndarray
    first_byte_ns: np.ndarray
    last_frame: np.ndarray
    last_byte_ns: np.ndarray
    response_frame: np.ndarray
    response_ns: np.ndarray
    response_size: np.ndarray

    def __len__(self) -> int:
        return len(self.stream)

    def send_ms(self) -> np.ndarray:
        """Per request, first to last byte (NaN where the last byte was not seen)."""
        done = self.last_byte_ns >= 0
        return np.where(done, (self.last_byte_ns - self.first_byte_ns) / 1e6, np.nan)

    def broker_ms(self) -> np.ndarray:
        done = (self.last_byte_ns >= 0) & (self.response_ns >= 0)
        return np.where(done, (self.response_ns - self.last_byte_ns) / 1e6, np.nan)

    def records(self, index: np.ndarray | None = None) -> list[KafkaRequest]:
        """Records of the requests at ``index`` (all when None), in that order."""
        rows = np.arange(len(self)) if index is None else np.asarray(index, dtype=np.int64)
        if not len(rows):
            return []
        columns = [
            getattr(self, name)[rows].tolist()
            for name in (
                "stream",
                "api_key",
                "api_version",
                "correlation_id",
                "size",
                "frame",
                "first_byte_ns",
                "last_frame",
                "last_byte_ns",
                "response_frame",
                "response_ns",
                "response_size",
            )
        ]
        ends = self.analysis.connections.endpoints_of(sorted(set(columns[0])))
        out = []
        for stream, key, version, cid, size, frame, first, last_f, last, rf, rns, rsize in zip(
            *columns, strict=True
        ):
            client, server = ends[stream]
            out.append(
                KafkaRequest(
                    stream=stream,
                    client=client,
                    server=server,
                    api_key=key,
                    api_version=version,
                    correlation_id=cid,
                    size=size,
                    frame=frame,
                    first_byte_ns=first,
                    last_frame=_or_none(last_f),
                    last_byte_ns=_or_none(last),
                    response_frame=_or_none(rf),
                    response_ns=_or_none(rns),
                    response_size=_or_none(rsize),
                )
            )
        return out

    def of_streams(self, streams: Iterable[int]) -> list[KafkaRequest]:
        wanted = np.array(sorted(set(streams)), dtype=np.int64)
        return self.records(np.flatnonzero(np.isin(self.stream, wanted)))

    def slowest_streams(self, client: str, count: int) -> list[int]:
        """Streams of the ``count`` slowest-to-send requests of a client address."""
        send = self.send_ms()
        candidates = np.flatnonzero(send > 0)
        if not len(candidates):
            return []
        streams = self.stream[candidates]
        unique = np.unique(streams).tolist()
        ends = self.analysis.connections.endpoints_of(unique)
        mine = np.array([ends[s][0].rsplit(":", 1)[0] == client for s in unique])
        keep = candidates[np.isin(streams, np.array(unique)[mine])]
        slow = keep[np.argsort(-send[keep], kind="stable")][:count]
        return self.stream[slow].tolist()


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


def _ms(value: float) -> float | None:
    return None if value != value else round(float(value), 3)


def summary(requests: KafkaRequests) -> list[dict[str, Any]]:
    """Per client address, server and api key: counts and send/broker time quantiles
    (ms), computed on the columns."""
    if not len(requests):
        return []
    cols = requests.analysis.columns
    client_key = cols["client_addr_key"][requests.stream]
    server_key = cols["server_key"][requests.stream]
    key = _mix_keys(client_key, server_key, requests.api_key)
    unique, first, group = np.unique(key, return_index=True, return_inverse=True)
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
    ends = requests.analysis.connections.endpoints_of(requests.stream[first].tolist())
    rows = []
    for g, (stream, api_key) in enumerate(
        zip(requests.stream[first].tolist(), requests.api_key[first].tolist(), strict=True)
    ):
        client, server = ends[stream]
        rows.append(
            {
                "client": client.rsplit(":", 1)[0],
                "server": server,
                "api_key": api_key,
                "api": api_name(api_key),
                "requests": int(counts[g]),
                "answered": int(answered[g]),
                **{name: _ms(values[g]) for name, values in columns.items()},
            }
        )
    rows.sort(key=lambda row: (row["client"], row["server"], row["api_key"]))
    return rows


def _mix_keys(*keys: np.ndarray) -> np.ndarray:
    out = np.zeros(len(keys[0]), dtype=np.uint64)
    for key in keys:
        out = _mix(out ^ key.astype(np.uint64))
    return out


def findings(requests: KafkaRequests) -> list[Finding]:
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

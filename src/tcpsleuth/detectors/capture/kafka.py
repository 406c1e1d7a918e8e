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

Only what is Kafka is decoded. A request header is accepted when its api key is
one Apache Kafka defines, its version at most that key's highest defined version
plus ``VERSION_HEADROOM`` (for versions newer than the table), its size between
8 bytes and 100 MiB (the broker's default ``socket.request.max.bytes``) and its
client_id length (-1 to 32767) inside the request. A connection whose first request
fails is judged not Kafka, one whose first bytes are a TLS record is judged TLS, and
neither is decoded further (nor are its responses); one the capture joined
mid-stream and whose first bytes fail stays undecided (they may merely not start a
message). Each connection's ``client.id`` is read from its first request header, as
far as the capture kept its bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tcpsleuth.detectors.capture import kafka_framing as wire
from tcpsleuth.detectors.capture.connections import Analysis
from tcpsleuth.detectors.capture.kafka_framing import (
    ID_CAP,
    KAFKA,
    NOT_KAFKA,
    UNDECIDED,
    VERDICT_NAMES,
)
from tcpsleuth.detectors.capture.tracking import ChunkRows, ConnectionTracker
from tcpsleuth.model.capture import TcpColumns
from tcpsleuth.model.kafka_api import API_NAMES as _API_NAMES

# keys Kafka 4.0 removed (inter-broker requests of ZooKeeper clusters)
_REMOVED_NAMES = {
    4: "leader_and_isr",
    5: "stop_replica",
    6: "update_metadata",
    7: "controlled_shutdown",
}


def api_name(api_key: int) -> str:
    return _API_NAMES.get(api_key) or _REMOVED_NAMES.get(api_key, f"api-{api_key}")


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
    client_id: str | None = None  # ends with "…" where the capture cut it short

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
            "client_id": self.client_id,
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


class KafkaFollower:
    """Kafka messages of the connections to ``ports``, followed chunk by chunk next to
    a :class:`ConnectionTracker`. State per connection direction is fixed (where
    the next header starts, up to 14 header bytes, the verdict), plus up to
    ``ID_CAP`` bytes of each connection's client.id; messages are kept as columns
    (88 bytes each) until :meth:`finish` pairs requests with responses."""

    def __init__(self, ports: frozenset[int]) -> None:
        self.port_list = sorted(ports)
        self.ports = np.array(self.port_list, dtype=np.int64)
        self.client_dir = np.full(1024, -1, dtype=np.int64)
        self.server_port = np.zeros(1024, dtype=np.int64)
        self.state = np.zeros((1024, 2, wire.STATE_FIELDS), dtype=np.int64)
        self.partial = np.zeros((1024, 2, wire._HEADER), dtype=np.uint8)
        self.idstate = np.zeros((1024, wire.ID_FIELDS), dtype=np.int64)
        self.messages = np.zeros((1024, wire.MESSAGE_FIELDS), dtype=np.int64)
        self.ids = np.zeros(4096, dtype=np.uint8)
        self.count = np.zeros(2, dtype=np.int64)  # messages, client.id bytes
        self.known = 0  # connections whose client direction is set

    def feed(self, tcp: TcpColumns, rows: ChunkRows, tracker: ConnectionTracker) -> None:
        if not len(self.ports) or not len(tcp):
            return
        nconn = tracker.connection_count
        if nconn > len(self.client_dir):
            # in place (rows past the known connections are set when they become known)
            size = max(nconn, len(self.client_dir) * 3 // 2)
            for array in (self.client_dir, self.server_port, self.state, self.partial):
                array.resize((size, *array.shape[1:]), refcheck=False)
            self.idstate.resize((size, wire.ID_FIELDS), refcheck=False)
        if nconn > self.known:
            client, server_port = tracker.server_ports(self.known, nconn)
            self.client_dir[self.known : nconn] = np.where(
                np.isin(server_port, self.ports), client, -1
            )
            self.server_port[self.known : nconn] = server_port
            self.state[self.known : nconn] = wire.STATE_INITIAL
            self.idstate[self.known : nconn] = wire.ID_INITIAL
            self.known = nconn
        at = 0
        while True:
            at = wire.follow(
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
                self.idstate,
                self.ids,
                self.count,
            )
            if at >= len(tcp):
                return
            if self.count[1] + ID_CAP > len(self.ids):
                self.ids.resize(2 * len(self.ids), refcheck=False)
            if self.count[0] + int(tcp.payload_cap[at]) // 4 + 2 > len(self.messages):
                grown = np.zeros(
                    (len(self.messages) * 2 + 1024, wire.MESSAGE_FIELDS), dtype=np.int64
                )
                grown[: len(self.messages)] = self.messages
                self.messages = grown

    def verdicts(self) -> np.ndarray:
        """Per connection: UNDECIDED, KAFKA, NOT_KAFKA or TLS (-1: not on a Kafka port).
        The client's direction decides; where it could not, a server direction
        judged not Kafka or TLS does."""
        n = self.known
        client_dir = self.client_dir[:n]
        first, second = self.state[:n, 0, wire.S_KIND], self.state[:n, 1, wire.S_KIND]
        kind = np.where(client_dir == 1, second, first)
        server = np.where(client_dir == 1, first, second)
        kind = np.where((kind == UNDECIDED) & (server >= NOT_KAFKA), server, kind)
        return np.where(client_dir >= 0, kind, -1)

    def finish(self, analysis: Analysis) -> KafkaRequests:
        """The requests, in stream order (each stream's in the order they were sent),
        each with the first response carrying its correlation id. Only connections
        judged Kafka give messages."""
        kind = self.verdicts()
        by_port = {}
        for port in self.port_list:
            counts = np.bincount(kind[self.server_port[: self.known] == port] + 1, minlength=5)
            by_port[port] = {name: int(counts[k + 1]) for k, name in enumerate(VERDICT_NAMES)}
        found = self.messages[: int(self.count[0])]
        # a request is kept only where its direction was judged Kafka; responses
        # count only where the requests are Kafka
        requests = found[found[:, wire.M_REQUEST] == 1]
        responses = found[found[:, wire.M_REQUEST] == 0]
        kafka = kind[responses[:, wire.M_CONN]] == KAFKA
        if not kafka.all():
            responses = responses[kafka]
        requests = requests[np.argsort(requests[:, wire.M_CONN], kind="stable")]
        # the first response of each (stream, correlation id)
        response_key = (responses[:, wire.M_CONN] << 32) | (
            responses[:, wire.M_CORRELATION] & 0xFFFFFFFF
        )
        by_key = np.argsort(response_key, kind="stable")
        keys = response_key[by_key]
        request_key = (requests[:, wire.M_CONN] << 32) | (
            requests[:, wire.M_CORRELATION] & 0xFFFFFFFF
        )
        at = np.searchsorted(keys, request_key)
        at_c = np.minimum(at, max(len(keys) - 1, 0))
        answered = (at < len(keys)) & (keys[at_c] == request_key) if len(keys) else at < 0
        response = (
            responses[by_key[at_c]]
            if len(keys)
            else np.zeros((len(requests), wire.MESSAGE_FIELDS), dtype=np.int64)
        )
        id_code, id_names = self._client_ids(requests[:, wire.M_CONN])
        return KafkaRequests(
            analysis=analysis,
            stream=requests[:, wire.M_CONN],
            api_key=requests[:, wire.M_API_KEY],
            api_version=requests[:, wire.M_API_VERSION],
            correlation_id=requests[:, wire.M_CORRELATION],
            size=requests[:, wire.M_SIZE],
            frame=requests[:, wire.M_FRAME],
            first_byte_ns=requests[:, wire.M_TS],
            last_frame=requests[:, wire.M_LAST_FRAME],
            last_byte_ns=requests[:, wire.M_LAST_TS],
            response_frame=np.where(answered, response[:, wire.M_FRAME], -1),
            response_ns=np.where(answered, response[:, wire.M_TS], -1),
            response_size=np.where(answered, response[:, wire.M_SIZE], -1),
            client_id_code=id_code,
            client_id_names=id_names,
            verdicts_by_port=by_port,
        )

    def _client_ids(self, streams: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Per request (its stream in ``streams``), an index into the client.id names
        (-1: not captured, or null), and the names."""
        if not len(streams):
            return np.zeros(0, dtype=np.int64), []
        ist = self.idstate[: self.known]
        at, have, length = ist[:, wire.I_AT], ist[:, wire.I_HAVE], ist[:, wire.I_LEN]
        keys = wire._id_keys(at, have, length, self.ids)[streams]
        known = keys >= 0
        _, first, inverse = np.unique(keys[known], return_index=True, return_inverse=True)
        code = np.full(len(streams), -1, dtype=np.int64)
        code[known] = inverse
        names = []
        for c in streams[known][first].tolist():
            text = bytes(self.ids[at[c] : at[c] + have[c]]).decode("utf-8", "replace")
            names.append(text + ("…" if have[c] < length[c] else ""))
        return code, names


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
    # per request, an index into client_id_names (-1: not captured, or null)
    client_id_code: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    client_id_names: list[str] = field(default_factory=list)
    # per Kafka port: how many connections were judged kafka, not_kafka, tls, undecided
    verdicts_by_port: dict[int, dict[str, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.stream)

    def client_id(self, index: int) -> str | None:
        """The client.id of request ``index``, as far as the capture kept it (ends
        with "…" where the snap length cut it short); None: not captured, or null."""
        code = int(self.client_id_code[index]) if len(self.client_id_code) else -1
        return self.client_id_names[code] if code >= 0 else None

    def client_ids(self) -> dict[int, str]:
        """Per stream, the client.id of its requests (streams without one left out)."""
        if not len(self.client_id_code):
            return {}
        known = np.flatnonzero(self.client_id_code >= 0)
        streams, first = np.unique(self.stream[known], return_index=True)
        codes = self.client_id_code[known[first]]
        names = self.client_id_names
        return {s: names[c] for s, c in zip(streams.tolist(), codes.tolist(), strict=True)}

    def client_id_counts(self, index: np.ndarray) -> dict[str, int]:
        """How many of the requests at ``index`` carry each client.id, most first."""
        if not len(self.client_id_code):
            return {}
        codes = self.client_id_code[np.asarray(index, dtype=np.int64)]
        counted = Counter(codes[codes >= 0].tolist())
        return {self.client_id_names[c]: n for c, n in counted.most_common()}

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
        for row, (
            stream,
            key,
            version,
            cid,
            size,
            frame,
            first,
            last_f,
            last,
            rf,
            rns,
            rsize,
        ) in zip(rows.tolist(), zip(*columns, strict=True), strict=True):
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
                    client_id=self.client_id(row),
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

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

from tcpsleuth.compiled import njit
from tcpsleuth.detectors.capture.connections import Analysis
from tcpsleuth.detectors.capture.connections import mix as _mix
from tcpsleuth.detectors.capture.tracking import ChunkRows, ConnectionTracker
from tcpsleuth.model.capture import SYN, TcpColumns
from tcpsleuth.model.findings import Finding, Severity, connection_subject

try:  # api key names from kio, the project's Kafka protocol library
    from kio.schema.index import api_key_map as _API_NAMES
except ImportError:  # pragma: no cover - kio is a dependency; names are cosmetic
    _API_NAMES = {}

MAX_MESSAGE = 1 << 30  # a larger response size means we are not at a message boundary
MIN_REQUEST = 8  # api_key, api_version, correlation_id
MAX_REQUEST = 100 << 20  # the broker's default socket.request.max.bytes
# Highest version Apache Kafka defines for each api key 0..92 (the schemas of kio
# 0.6.5, i.e. Kafka 4.x, plus keys 4..7 with their last versions before Kafka 4.0
# removed them). A version up to VERSION_HEADROOM above is still accepted: a newer
# client or broker than this table.
_MAX_VERSIONS = (
    "13 18 11 13 7 4 8 3 10 10 "  # 0..9
    "6 9 4 5 5 6 5 1 4 7 "  # 10..19
    "6 2 6 4 5 4 5 2 5 3 "  # 20..29
    "3 3 4 2 2 5 2 3 3 2 "  # 30..39
    "2 3 2 2 1 1 0 0 1 1 "  # 40..49
    "0 0 2 1 1 2 3 2 0 1 "  # 50..59
    "2 0 4 2 0 0 2 0 1 1 "  # 60..69
    "0 0 0 0 1 0 1 1 2 2 "  # 70..79
    "1 0 0 0 0 1 0 1 0 0 "  # 80..89
    "1 0 0"  # 90..92
)
API_MAX_VERSION = np.array(_MAX_VERSIONS.split(), dtype=np.int64)
VERSION_HEADROOM = 4
ID_CAP = 64  # bytes of a client.id kept (a -s 128 capture keeps at most ~48)
# What a connection (or one direction of it) was judged to carry
UNDECIDED, KAFKA, NOT_KAFKA, TLS = 0, 1, 2, 3
VERDICT_NAMES = ("undecided", "kafka", "not_kafka", "tls")
# A client whose requests spend this long being sent (median) is reported.
SEND_SLOW_MS = 10.0
SEND_SHARE = 0.5


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


# Per direction of a connection (``state[c, d, field]``): where the next message
# starts (relative sequence number; -1: at the first data segment, -2: direction
# not seen yet), one past the highest byte seen, header bytes collected so far and
# the frame and time of the first of them, the message still waiting for its last
# byte (-1: none), whether decoding stopped (we lost our place, or it is not
# Kafka), the verdict on the direction (UNDECIDED, KAFKA, NOT_KAFKA, TLS) and
# whether it was seen from its SYN.
S_NEXT, S_HIGH, S_PARTIAL, S_FRAME, S_TS, S_PENDING, S_DEAD, S_KIND, S_FROM_SYN = range(9)
STATE_FIELDS = 9
STATE_INITIAL = np.array([-2, 0, 0, 0, 0, -1, 0, UNDECIDED, 0], dtype=np.int64)
# Per connection (``idstate[c, field]``), its client.id: where its bytes are kept in
# ``ids`` (-1: nowhere), its length field (-2: not read yet, -1: null), how many
# bytes were kept and the stream position of the next one (-1: no more to collect).
I_AT, I_LEN, I_HAVE, I_POS = range(4)
ID_FIELDS = 4
ID_INITIAL = np.array([-1, -2, 0, -1], dtype=np.int64)
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
_HEADER = 14  # header bytes read: a request's up to its client_id length (a response's: 8)


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
def _int16(partial, at):  # type: ignore[no-untyped-def]
    value = (np.int64(partial[at]) << 8) | np.int64(partial[at + 1])
    return value - (1 << 16) if value >= (1 << 15) else value


@njit(cache=True, nogil=True)
def _request_ok(header, size):  # type: ignore[no-untyped-def]
    """Whether a request header (its first 14 bytes, size field included) is one
    Kafka defines: see the module's docstring."""
    if size < MIN_REQUEST or size > MAX_REQUEST:
        return False
    key = (np.int64(header[4]) << 8) | np.int64(header[5])
    version = (np.int64(header[6]) << 8) | np.int64(header[7])
    if key >= len(API_MAX_VERSION) or version > API_MAX_VERSION[key] + VERSION_HEADROOM:
        return False
    if key == 7 and version == 0:
        return True  # request header v0 (ControlledShutdown v0) has no client_id
    id_len = _int16(header, 12)
    return id_len >= -1 and 10 + max(id_len, 0) <= size


@njit(cache=True, nogil=True)
def _tls(header):  # type: ignore[no-untyped-def]
    """Whether the bytes start a TLS record (content type 20..23, version 3.0..3.4)."""
    return 0x14 <= header[0] <= 0x17 and header[1] == 3 and header[2] <= 4


@njit(cache=True, nogil=True)
def _collect_id(ist, ids, data, base, rel, length, captured):  # type: ignore[no-untyped-def]
    """Keep the bytes of the client.id ``ist`` still waits for that this segment
    (stream position ``rel``, ``length`` bytes, the ``captured`` first ones at
    ``data[base:]``) holds; stop where the capture lacks them or cut them off."""
    pos = ist[I_POS]
    if pos >= rel + length:
        return  # in a later segment
    at = pos - rel
    if at < 0 or at >= captured:
        ist[I_POS] = -1
        return
    want = min(ist[I_LEN], ID_CAP)
    take = min(want - ist[I_HAVE], captured - at)
    out = ist[I_AT] + ist[I_HAVE]
    for k in range(take):
        ids[out + k] = data[base + at + k]
    ist[I_HAVE] += take
    ist[I_POS] = pos + take if ist[I_HAVE] < want else -1


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
    idstate,
    ids,
    count,
):
    """Split the byte streams of watched connections (``client_dir`` >= 0: the
    client's direction) into messages, from segment ``start`` of the chunk on.

    Retransmitted bytes are skipped; a gap in the capture over a header the stream
    depends on stops the decoding of that direction, and so does a header Kafka
    would not send (the direction's first one decides whether it is Kafka at all).
    Each connection's client.id goes to ``ids`` (``count[1]``: bytes used). Returns
    where it stopped: the chunk's length, or earlier when ``messages`` or ``ids``
    might not hold the next segment's (the caller makes room and calls again)."""
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
            st[S_NEXT] = 1 if flags[i] & SYN else -1
            st[S_HIGH] = st[S_NEXT]
            st[S_FROM_SYN] = 1 if flags[i] & SYN else 0
        length = np.int64(paylen[i])
        if length <= 0 or st[S_DEAD]:
            continue
        if d != who and state[c, who, S_KIND] >= NOT_KAFKA:
            st[S_DEAD] = 1  # responses only where the requests are Kafka
            continue
        captured = np.int64(payload_cap[i])
        if count[0] + captured // 4 + 2 > len(messages) or count[1] + ID_CAP > len(ids):
            return i
        header = _HEADER if d == who else 8
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
        ist = idstate[c]
        if ist[I_POS] >= 0:
            _collect_id(ist, ids, data, payload_at[i], rel, length, captured)
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
            head = partial[c, d]
            size = _int32(head, 0)
            ok = _request_ok(head, size) if d == who else 4 <= size <= MAX_MESSAGE
            if st[S_KIND] == UNDECIDED:
                if _tls(head):
                    st[S_KIND] = TLS
                    ok = False
                elif ok:
                    st[S_KIND] = KAFKA
                elif st[S_FROM_SYN]:
                    # at the stream's first byte: not a Kafka message (mid-stream,
                    # we may merely not be at a message boundary)
                    st[S_KIND] = NOT_KAFKA
            if not ok:
                lost = True
                break
            m = count[0]
            count[0] += 1
            messages[m, M_CONN] = c
            messages[m, M_REQUEST] = 1 if d == who else 0
            messages[m, M_SIZE] = size
            if d == who:
                key = (np.int64(head[4]) << 8) | head[5]
                version = (np.int64(head[6]) << 8) | head[7]
                messages[m, M_API_KEY] = key
                messages[m, M_API_VERSION] = version
                messages[m, M_CORRELATION] = _int32(head, 8)
                if ist[I_LEN] == -2 and not (key == 7 and version == 0):
                    id_len = _int16(head, 12)
                    ist[I_LEN] = id_len
                    if id_len >= 0:
                        ist[I_AT] = count[1]
                        count[1] += min(id_len, ID_CAP)
                        ist[I_HAVE] = 0
                        ist[I_POS] = st[S_NEXT] + _HEADER if id_len > 0 else -1
                        if id_len > 0:
                            _collect_id(ist, ids, data, payload_at[i], rel, length, captured)
            else:
                messages[m, M_API_KEY] = -1
                messages[m, M_API_VERSION] = -1
                messages[m, M_CORRELATION] = _int32(head, 4)
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


@njit(cache=True, nogil=True)
def _id_keys(at, have, length, ids):  # type: ignore[no-untyped-def]
    """Per connection, a key equal for equal client.id bytes kept (and equally cut
    short), -1 where none was kept: two polynomial hashes modulo primes below 2**31."""
    out = np.full(len(at), -1, dtype=np.int64)
    for c in range(len(at)):
        if at[c] < 0:
            continue
        one = np.int64(7)
        two = np.int64(11)
        for k in range(have[c]):
            b = np.int64(ids[at[c] + k]) + 1
            one = (one * 257 + b) % 2147483647
            two = (two * 263 + b) % 2147483629
        one = (one * 257 + have[c] + 1) % 2147483647
        two = (two * 263 + (1 if have[c] < length[c] else 0) + 1) % 2147483629
        out[c] = one * 2147483629 + two
    return out


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
        self.state = np.zeros((1024, 2, STATE_FIELDS), dtype=np.int64)
        self.partial = np.zeros((1024, 2, _HEADER), dtype=np.uint8)
        self.idstate = np.zeros((1024, ID_FIELDS), dtype=np.int64)
        self.messages = np.zeros((1024, MESSAGE_FIELDS), dtype=np.int64)
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
            self.idstate.resize((size, ID_FIELDS), refcheck=False)
        if nconn > self.known:
            client, server_port = tracker.server_ports(self.known, nconn)
            self.client_dir[self.known : nconn] = np.where(
                np.isin(server_port, self.ports), client, -1
            )
            self.server_port[self.known : nconn] = server_port
            self.state[self.known : nconn] = STATE_INITIAL
            self.idstate[self.known : nconn] = ID_INITIAL
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
                self.idstate,
                self.ids,
                self.count,
            )
            if at >= len(tcp):
                return
            if self.count[1] + ID_CAP > len(self.ids):
                self.ids.resize(2 * len(self.ids), refcheck=False)
            if self.count[0] + int(tcp.payload_cap[at]) // 4 + 2 > len(self.messages):
                grown = np.zeros((len(self.messages) * 2 + 1024, MESSAGE_FIELDS), dtype=np.int64)
                grown[: len(self.messages)] = self.messages
                self.messages = grown

    def verdicts(self) -> np.ndarray:
        """Per connection: UNDECIDED, KAFKA, NOT_KAFKA or TLS (-1: not on a Kafka port).
        The client's direction decides; where it could not, a server direction
        judged not Kafka or TLS does."""
        n = self.known
        client_dir = self.client_dir[:n]
        first, second = self.state[:n, 0, S_KIND], self.state[:n, 1, S_KIND]
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
        requests = found[found[:, M_REQUEST] == 1]
        responses = found[found[:, M_REQUEST] == 0]
        kafka = kind[responses[:, M_CONN]] == KAFKA
        if not kafka.all():
            responses = responses[kafka]
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
        id_code, id_names = self._client_ids(requests[:, M_CONN])
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
        at, have, length = ist[:, I_AT], ist[:, I_HAVE], ist[:, I_LEN]
        keys = _id_keys(at, have, length, self.ids)[streams]
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
    """Per client address, server and api key: counts, the client.ids seen (with
    counts) and send/broker time quantiles (ms, None where unknown), computed on
    the columns."""
    return [row for _, row in _summary(requests)[0]]


def _summary(requests: KafkaRequests) -> tuple[list[tuple[int, dict[str, Any]]], np.ndarray]:
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
                    **{name: _ms(values[g]) for name, values in columns.items()},
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


def findings(requests: KafkaRequests) -> list[Finding]:
    """``kafka-send-time``: a client's requests spend longer being sent than the broker
    spends answering them: the latency the producer sees and the broker does not.
    Its evidence names the client.ids of the slow requests, with counts."""
    out = []
    rows, group = _summary(requests)
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


def verdict_lines(requests: KafkaRequests) -> list[str]:
    """One line per Kafka port where some connections were not decoded because they
    are not Kafka or are TLS (none where every connection was Kafka)."""
    lines = []
    for port, counts in sorted(requests.verdicts_by_port.items()):
        if not (counts["not_kafka"] or counts["tls"]):
            continue
        parts = [f"{counts['kafka']} Kafka"]
        if counts["not_kafka"]:
            parts.append(f"{counts['not_kafka']} not Kafka (no valid request header)")
        if counts["tls"]:
            parts.append(f"{counts['tls']} TLS (encrypted)")
        if counts["undecided"]:
            parts.append(f"{counts['undecided']} undecided")
        lines.append(f"Port {port}: connections {', '.join(parts)}; only Kafka ones are decoded")
    return lines


UNKNOWN_CELL = "–"


def ms_cell(value: float | None) -> float | str:
    """A time for a table: the value, or a dash where it is unknown (see missing_note)."""
    return UNKNOWN_CELL if value is None else value


def missing_note(rows: list[dict[str, Any]]) -> str | None:
    """The words for the dashes of a summary table, when it has any."""
    send = any(row["send_ms_p50"] is None for row in rows)
    broker = any(row["broker_ms_p50"] is None for row in rows)
    if not (send or broker):
        return None
    said = []
    if broker:
        said.append("broker time unknown: no response in the capture")
    if send:
        said.append("send time unknown: the request's last byte is not in the capture")
    return f"{UNKNOWN_CELL} " + "; ".join(said)

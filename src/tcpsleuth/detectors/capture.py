"""Connections out of a capture's TCP segments, with what TCP did to each of them.

Pure: TCP header columns in (:class:`tcpsleuth.sources.pcap.TcpColumns`), records
and findings out. The work is done on whole columns with NumPy; Python loops
only over connections (handshake options) never over segments.

A connection is not a 4-tuple: a SYN with a new initial sequence number on a
4-tuple seen before starts a new connection (loopback and busy servers reuse
4-tuples once TIME_WAIT is over), as tshark numbers its ``tcp.stream``.
Connections are numbered by their first segment in the file, as tshark does.

Windows are in bytes as the peer computes them: the raw field shifted by the
shift the sender announced in its SYN or SYN-ACK, when both sides announced one
(RFC 7323 2.2); windows of SYN segments are never scaled.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

import numpy as np

from tcpsleuth.detectors import capture_kernels as kernels
from tcpsleuth.model.findings import Finding, Severity, connection_subject
from tcpsleuth.sources.pcap.decode import ACK, CWR, ECE, FIN, RST, SYN, TcpColumns
from tcpsleuth.sources.pcap.options import SynOptions
from tcpsleuth.sources.pcap.walk import OPT_MSS, OPT_WSCALE

SEQ_SPACE = 1 << 32
# A sender is waiting at the window when what it has in flight leaves less than
# one segment of the peer's window; counted only when it sends again right after
# the peer's next segment, i.e. it had data waiting.
RWND_LIMITED_SHARE = 0.2
RWND_LIMITED_MIN_NS = 20_000_000
RWND_LIMITED_MIN_WAITS = 5
SERIES_POINTS = 100


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread 64-bit hash of 64-bit values."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _endpoint_hash(hi: np.ndarray, lo: np.ndarray, port: np.ndarray, af: np.ndarray) -> np.ndarray:
    tail = (port.astype(np.uint64) << np.uint64(8)) | af.astype(np.uint64)
    return _mix(_mix(_mix(hi) ^ lo) ^ tail)


class _Addresses:
    """Address text, made once per address: a busy capture has few addresses and
    many connections. IPv4-mapped IPv6 addresses are written as IPv4, as
    :func:`tcpsleuth.model.findings.endpoint` does."""

    def __init__(self) -> None:
        self.text: dict[tuple[int, int, int], tuple[str, bool]] = {}

    def __call__(self, af: int, hi: int, lo: int) -> tuple[str, bool]:
        key = (af, hi, lo)
        known = self.text.get(key)
        if known is None:
            if af == 4:
                known = (str(ipaddress.IPv4Address(lo & 0xFFFFFFFF)), False)
            else:
                addr = ipaddress.IPv6Address((hi << 64) | lo)
                if addr.ipv4_mapped is not None:
                    known = (str(addr.ipv4_mapped), False)
                else:
                    known = (addr.compressed, True)
            self.text[key] = known
        return known


def _endpoint_text(address: tuple[str, bool], port: int) -> str:
    text, bracket = address
    return f"[{text}]:{port}" if bracket else f"{text}:{port}"


@dataclass(frozen=True)
class CaptureConnection:
    """One TCP connection as the capture shows it. ``c2s`` is client to server.
    The client is the side that sent the first SYN (``opened_by`` = "syn"); with
    no SYN in the capture, the receiver of a SYN-ACK ("syn-ack") or else the side
    with the higher port ("port-guess")."""

    stream: int
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    client: str  # IP:PORT, IPv6 in brackets
    server: str
    opened_by: str
    first_frame: int
    first_ts_ns: int
    last_ts_ns: int
    syn: SynOptions | None
    synack: SynOptions | None
    syn_frame: int | None
    synack_frame: int | None
    packets_c2s: int
    packets_s2c: int
    bytes_c2s: int
    bytes_s2c: int
    handshake_rtt_ms: float | None
    retransmissions_c2s: int
    retransmissions_s2c: int
    zero_windows_c2s: int  # zero windows advertised by the client
    zero_windows_s2c: int
    window_probes_c2s: int
    window_probes_s2c: int
    server_window_min: int | None  # bytes, as the client computes them
    server_window_max: int | None
    client_window_min: int | None
    client_window_max: int | None
    rwnd_limited_ns_c2s: int
    rwnd_limited_ns_s2c: int
    rwnd_waits_c2s: int
    rwnd_waits_s2c: int
    data_span_ns_c2s: int
    data_span_ns_s2c: int

    @property
    def scaling(self) -> bool:
        """Both sides announced window scaling, so both apply it (RFC 7323 2.2)."""
        return bool(
            self.syn
            and self.synack
            and self.syn.wscale is not None
            and self.synack.wscale is not None
        )

    def summary(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "client": self.client,
            "server": self.server,
            "opened_by": self.opened_by,
            "first_frame": self.first_frame,
            "start_ns": self.first_ts_ns,
            "duration_ms": round((self.last_ts_ns - self.first_ts_ns) / 1e6, 3),
            "syn": self.syn.to_dict() if self.syn else None,
            "synack": self.synack.to_dict() if self.synack else None,
            "packets": {"c2s": self.packets_c2s, "s2c": self.packets_s2c},
            "bytes": {"c2s": self.bytes_c2s, "s2c": self.bytes_s2c},
            "handshake_rtt_ms": self.handshake_rtt_ms,
            "retransmissions": {"c2s": self.retransmissions_c2s, "s2c": self.retransmissions_s2c},
            "zero_windows": {"client": self.zero_windows_c2s, "server": self.zero_windows_s2c},
            "window_probes": {"c2s": self.window_probes_c2s, "s2c": self.window_probes_s2c},
            "server_window_bytes": [self.server_window_min, self.server_window_max],
            "client_window_bytes": [self.client_window_min, self.client_window_max],
            "rwnd_limited_ms": {
                "c2s": round(self.rwnd_limited_ns_c2s / 1e6, 3),
                "s2c": round(self.rwnd_limited_ns_s2c / 1e6, 3),
            },
        }


class Connections(Sequence[CaptureConnection]):
    """The connections of an analysis as records, each made when first asked for: a
    capture may hold hundreds of thousands, and most questions need a few."""

    def __init__(self, analysis: Analysis | None) -> None:
        self._analysis = analysis
        self._made: dict[int, CaptureConnection] = {}
        self._addresses = _Addresses()

    def __len__(self) -> int:
        if self._analysis is None:
            return 0
        return len(self._analysis.starts)

    @overload
    def __getitem__(self, index: int) -> CaptureConnection: ...

    @overload
    def __getitem__(self, index: slice) -> list[CaptureConnection]: ...

    def __getitem__(self, index: int | slice) -> CaptureConnection | list[CaptureConnection]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        record = self._made.get(index)
        if record is None:
            record = self._made[index] = self._make(index)
        return record

    def endpoints(self, c: int) -> tuple[str, str]:
        """(client, server) as IP:PORT, without making the whole record."""
        record = self._made.get(c)
        if record is not None:
            return record.client, record.server
        assert self._analysis is not None
        cols = self._analysis.columns
        a_f = int(cols["af"][c])
        src = self._addresses(a_f, int(cols["src_hi"][c]), int(cols["src_lo"][c]))
        dst = self._addresses(a_f, int(cols["dst_hi"][c]), int(cols["dst_lo"][c]))
        sport, dport = int(cols["sport"][c]), int(cols["dport"][c])
        if cols["first_c2s"][c]:
            return _endpoint_text(src, sport), _endpoint_text(dst, dport)
        return _endpoint_text(dst, dport), _endpoint_text(src, sport)

    def endpoints_of(self, streams: list[int]) -> dict[int, tuple[str, str]]:
        """(client, server) of many connections at once (one conversion per column)."""
        if not streams or self._analysis is None:
            return {}
        cols = self._analysis.columns
        index = np.array(streams, dtype=np.int64)
        af = cols["af"][index].tolist()
        src = np.stack([cols["src_hi"][index], cols["src_lo"][index]], axis=1).tolist()
        dst = np.stack([cols["dst_hi"][index], cols["dst_lo"][index]], axis=1).tolist()
        sport, dport = cols["sport"][index].tolist(), cols["dport"][index].tolist()
        first_c2s = cols["first_c2s"][index].tolist()
        out = {}
        for i, c in enumerate(streams):
            a = self._addresses(af[i], *src[i])
            b = self._addresses(af[i], *dst[i])
            one, two = _endpoint_text(a, sport[i]), _endpoint_text(b, dport[i])
            out[c] = (one, two) if first_c2s[i] else (two, one)
        return out

    def _make(self, c: int) -> CaptureConnection:
        assert self._analysis is not None
        col = {name: values[c].tolist() for name, values in self._analysis.columns.items()}
        a_f = col["af"]
        src = self._addresses(a_f, col["src_hi"], col["src_lo"])
        dst = self._addresses(a_f, col["dst_hi"], col["dst_lo"])
        if col["first_c2s"]:
            client, client_port, server, server_port = src, col["sport"], dst, col["dport"]
        else:
            client, client_port, server, server_port = dst, col["dport"], src, col["sport"]
        syn = synack = None
        if col["has_syn"]:
            f = col["syn_flags"]
            syn = _syn_options(
                self._analysis.hs_syn[c].tolist(),
                col["syn_window"],
                (f & (ECE | CWR)) == (ECE | CWR),
            )
        if col["has_synack"]:
            f = col["synack_flags"]
            synack = _syn_options(
                self._analysis.hs_synack[c].tolist(),
                col["synack_window"],
                bool(f & ECE) and not f & CWR,
            )
        wmin, wmax = col["wmin"], col["wmax"]
        return CaptureConnection(
            stream=c,
            client_ip=client[0],
            client_port=client_port,
            server_ip=server[0],
            server_port=server_port,
            client=_endpoint_text(client, client_port),
            server=_endpoint_text(server, server_port),
            opened_by=("syn", "syn-ack", "port-guess")[col["opened_by"]],
            first_frame=col["first_frame"],
            first_ts_ns=col["first_ts"],
            last_ts_ns=col["last_ts"],
            syn=syn,
            synack=synack,
            syn_frame=col["syn_frame"] if col["has_syn"] else None,
            synack_frame=col["synack_frame"] if col["has_synack"] else None,
            packets_c2s=col["packets"][0],
            packets_s2c=col["packets"][1],
            bytes_c2s=col["bytes"][0],
            bytes_s2c=col["bytes"][1],
            handshake_rtt_ms=round(col["rtt_ns"] / 1e6, 3) if col["rtt_ns"] >= 0 else None,
            retransmissions_c2s=col["retrans"][0],
            retransmissions_s2c=col["retrans"][1],
            zero_windows_c2s=col["zero"][0],
            zero_windows_s2c=col["zero"][1],
            window_probes_c2s=col["probe"][0],
            window_probes_s2c=col["probe"][1],
            server_window_min=None if wmin[1] < 0 else wmin[1],
            server_window_max=None if wmax[1] < 0 else wmax[1],
            client_window_min=None if wmin[0] < 0 else wmin[0],
            client_window_max=None if wmax[0] < 0 else wmax[0],
            rwnd_limited_ns_c2s=col["wait_ns"][0],
            rwnd_limited_ns_s2c=col["wait_ns"][1],
            rwnd_waits_c2s=col["waits"][0],
            rwnd_waits_s2c=col["waits"][1],
            data_span_ns_c2s=col["span_c2s"],
            data_span_ns_s2c=col["span_s2c"],
        )


@dataclass
class Analysis:
    """Per-segment arrays in connection order (``order`` maps back to the columns)
    plus the connection records; plots and the Kafka and inference detectors read
    it."""

    tcp: TcpColumns
    order: np.ndarray  # rows of ``tcp`` grouped by connection, capture order within
    conn: np.ndarray  # connection index (stream) of each row of ``order``
    c2s: np.ndarray  # bool: sent by the client
    win_bytes: np.ndarray  # advertised window in bytes as the peer computes it
    starts: np.ndarray  # first position in ``order`` of each connection (by stream)
    ends: np.ndarray
    first_syn: np.ndarray  # position in ``order`` of the client's SYN, or -1
    first_synack: np.ndarray  # position of the server's SYN-ACK, or -1
    rel_seq: np.ndarray  # sequence number relative to the first one seen in its direction
    # per-connection columns (by stream), and the handshake options (walk.syn_options rows)
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    hs_syn: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), dtype=np.int64))
    hs_synack: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), dtype=np.int64))
    connections: Connections = field(default_factory=lambda: Connections(None))

    def rows(self, stream: int) -> np.ndarray:
        """Rows of ``tcp`` of one connection, in capture order."""
        return self.order[self.starts[stream] : self.ends[stream]]

    def window_series(
        self, stream: int, from_server: bool = True, points: int = SERIES_POINTS
    ) -> list[tuple[float, int]]:
        """The window one side advertised over time, in bytes as its peer computes
        them: (ms since the connection's first packet, bytes) at each change, thinned
        evenly to at most ``points``."""
        lo, hi = int(self.starts[stream]), int(self.ends[stream])
        rows = self.order[lo:hi]
        side = ~self.c2s[lo:hi] if from_server else self.c2s[lo:hi]
        flags = self.tcp.flags[rows]
        use = side & ((flags & (SYN | RST)) == 0)
        if not use.any():
            return []
        ts = self.tcp.ts_ns[rows][use]
        win = self.win_bytes[lo:hi][use]
        change = np.r_[True, win[1:] != win[:-1]]
        ts, win = ts[change], win[change]
        if len(ts) > points:
            pick = np.linspace(0, len(ts) - 1, points).astype(np.int64)
            ts, win = ts[pick], win[pick]
        start = int(self.tcp.ts_ns[rows[0]])
        return [
            (round((t - start) / 1e6, 3), w) for t, w in zip(ts.tolist(), win.tolist(), strict=True)
        ]


def _handshake_options(
    tcp: TcpColumns, order: np.ndarray, first: np.ndarray, has: np.ndarray
) -> np.ndarray:
    """Options of each connection's SYN (or SYN-ACK) at ``first``; -1 rows where none."""
    out = np.full((len(first), 5), -1, dtype=np.int64)
    present = np.flatnonzero(has)
    if len(present):
        rows = order[first[present]]
        index = np.searchsorted(tcp.syn_rows, rows)
        out[present] = tcp.syn_options[index]
    return out


def _syn_options(opts: list[int], window: int, ecn: bool) -> SynOptions:
    mss, wscale, sack, timestamps, tsval = opts
    return SynOptions(
        mss=None if mss < 0 else mss,
        wscale=None if wscale < 0 else wscale,
        sack_permitted=bool(sack),
        timestamps=bool(timestamps),
        tsval=None if tsval < 0 else tsval,
        ecn=ecn,
        window=window,
    )


def _group_first(values: np.ndarray, starts: np.ndarray, fill: int) -> np.ndarray:
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.minimum.reduceat(np.where(values >= 0, values, fill), starts)


def analyse(tcp: TcpColumns) -> Analysis:
    n = len(tcp)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Analysis(
            tcp, empty, empty, empty.astype(bool), empty, empty, empty, empty, empty, empty
        )
    ea = _endpoint_hash(tcp.src_hi, tcp.src_lo, tcp.sport, tcp.af)
    eb = _endpoint_hash(tcp.dst_hi, tcp.dst_lo, tcp.dport, tcp.af)
    low_side = ea < eb
    key = _mix(np.minimum(ea, eb)) ^ np.maximum(ea, eb)
    order = np.argsort(key, kind="stable")
    ks = key[order]
    flags = tcp.flags[order]
    seq = tcp.seq[order]
    group_start = np.empty(n, dtype=bool)
    group_start[0] = True
    group_start[1:] = ks[1:] != ks[:-1]
    # A SYN (no ACK) with a sequence number other than the previous SYN's on this
    # 4-tuple opens a new connection; a retransmitted SYN keeps the old one.
    pure_syn = (flags & (SYN | ACK)) == SYN
    syn_pos = np.flatnonzero(pure_syn)
    new_conn = group_start.copy()
    if len(syn_pos) > 1:
        same_tuple = ks[syn_pos[1:]] == ks[syn_pos[:-1]]
        same_seq = seq[syn_pos[1:]] == seq[syn_pos[:-1]]
        new_conn[syn_pos[1:]] |= ~(same_tuple & same_seq)
    conn_sorted = np.cumsum(new_conn) - 1
    starts_sorted = np.flatnonzero(new_conn)
    # Number connections by their first segment in the file, as tshark does.
    first_row = order[starts_sorted]
    by_first = np.argsort(first_row, kind="stable")
    stream_of = np.empty(len(by_first), dtype=np.int64)
    stream_of[by_first] = np.arange(len(by_first))
    # Reorder the grouped rows so that connections come in stream order.
    counts = np.diff(np.r_[starts_sorted, n])
    new_starts = np.zeros(len(counts), dtype=np.int64)
    new_starts[1:] = np.cumsum(counts[by_first])[:-1]
    shift = np.repeat(new_starts[stream_of] - starts_sorted, counts)
    position = np.arange(n) + shift
    new_order = np.empty(n, dtype=np.int64)
    new_order[position] = order
    order = new_order
    conn = np.empty(n, dtype=np.int64)
    conn[position] = stream_of[conn_sorted]
    starts = new_starts
    ends = starts + counts[by_first]

    flags = tcp.flags[order]
    pure_syn = (flags & (SYN | ACK)) == SYN
    synack = (flags & (SYN | ACK)) == (SYN | ACK)
    side = low_side[order]
    pos = np.arange(n)
    big = np.int64(n + 1)
    first_syn = _group_first(np.where(pure_syn, pos, -1), starts, big)
    first_synack = _group_first(np.where(synack, pos, -1), starts, big)
    has_syn = first_syn < big
    has_synack = first_synack < big
    sport = tcp.sport[order]
    dport = tcp.dport[order]
    first_pos = starts
    # client side: sender of the SYN, else receiver of the SYN-ACK, else higher port
    client_low = np.where(
        has_syn,
        side[np.minimum(first_syn, n - 1)],
        np.where(
            has_synack,
            ~side[np.minimum(first_synack, n - 1)],
            np.where(sport[first_pos] > dport[first_pos], side[first_pos], ~side[first_pos]),
        ),
    )
    opened_by = np.where(has_syn, 0, np.where(has_synack, 1, 2))
    c2s = side == client_low[conn]
    # SYN-ACK must come from the server to count as the handshake's
    server_synack = synack & ~c2s
    first_synack = _group_first(np.where(server_synack, pos, -1), starts, big)
    has_synack = first_synack < big
    client_syn = pure_syn & c2s
    first_syn = _group_first(np.where(client_syn, pos, -1), starts, big)
    has_syn = first_syn < big

    nconn = len(starts)
    paylen = tcp.paylen[order].astype(np.int64)
    bucket = conn * 2 + (~c2s).astype(np.int64)  # 0: c2s, 1: s2c
    packets = np.bincount(bucket, minlength=2 * nconn).reshape(nconn, 2)
    nbytes = np.bincount(bucket, weights=paylen, minlength=2 * nconn).reshape(nconn, 2)
    ts = tcp.ts_ns[order]

    # Handshake options: one parse per SYN and SYN-ACK of the handshake.
    window = tcp.window[order].astype(np.int64)
    hs_syn = _handshake_options(tcp, order, first_syn, has_syn)
    hs_synack = _handshake_options(tcp, order, first_synack, has_synack)
    both_scale = (hs_syn[:, OPT_WSCALE] >= 0) & (hs_synack[:, OPT_WSCALE] >= 0)
    # RFC 7323 2.3: shifts above 14 are used as 14
    client_shift = np.where(both_scale, np.minimum(hs_syn[:, OPT_WSCALE], 14), 0)
    server_shift = np.where(both_scale, np.minimum(hs_synack[:, OPT_WSCALE], 14), 0)
    is_syn = (flags & SYN) != 0
    sender_shift = np.where(c2s, client_shift[conn], server_shift[conn])
    win_bytes = np.where(is_syn, window, window << sender_shift)

    # Handshake RTT: from the SYN to the client's first ACK after the SYN-ACK.
    ack_only = c2s & ((flags & (SYN | ACK)) == ACK)
    after_synack = pos > first_synack[conn]
    first_ack = _group_first(np.where(ack_only & after_synack, pos, -1), starts, big)
    rtt_ok = has_syn & has_synack & (first_ack < big)
    rtt_ns = np.where(
        rtt_ok, ts[np.minimum(first_ack, n - 1)] - ts[np.minimum(first_syn, n - 1)], -1
    )

    # Each direction's byte stream: relative sequence numbers, the highest byte sent
    # before each segment, and the other side's latest segment (its ACK and window).
    seq = tcp.seq[order]
    ack = tcp.ack[order]
    rel_by_pos, before, peer = kernels.sequence_pass(conn, c2s, seq, paylen, flags)
    peer_ok = peer >= 0
    peer = np.maximum(peer, 0)
    peer_zero = peer_ok & (win_bytes[peer] == 0) & ((flags[peer] & RST) == 0)
    probe = peer_zero & (paylen <= 1) & ((flags & (SYN | FIN | RST)) == 0)
    retrans = (paylen > 0) & (rel_by_pos + paylen <= before) & ~probe
    zero = (window == 0) & ((flags & (RST | SYN)) == 0)
    retrans_n = np.bincount(bucket, weights=retrans, minlength=2 * nconn).reshape(nconn, 2)
    zero_n = np.bincount(bucket, weights=zero, minlength=2 * nconn).reshape(nconn, 2)
    probe_n = np.bincount(bucket, weights=probe, minlength=2 * nconn).reshape(nconn, 2)

    # Window range each side advertised (bytes), SYNs excluded.
    not_syn = ~is_syn & ((flags & RST) == 0)
    wmin, wmax = kernels.bucket_min_max(bucket, win_bytes, not_syn, 2 * nconn)
    wmin = wmin.reshape(nconn, 2)
    wmax = wmax.reshape(nconn, 2)

    # Waiting at the window: after this data segment less than one segment of the
    # peer's window is left, and the sender sends again right after the peer's next
    # segment (it had data waiting).
    data = (paylen > 0) & ~retrans
    _unused, seg_size = kernels.bucket_min_max(bucket, paylen, data, 2 * nconn)
    seg_size = np.maximum(seg_size, 0)
    # A capture on the sending host shows TSO super-segments; the segment the
    # receiver's window must fit is at most the MSS the receiver announced.
    peer_mss = np.stack(
        [
            np.where(hs_synack[:, OPT_MSS] > 0, hs_synack[:, OPT_MSS], 1 << 16),
            np.where(hs_syn[:, OPT_MSS] > 0, hs_syn[:, OPT_MSS], 1 << 16),
        ],
        axis=1,
    )
    seg = np.minimum(seg_size, peer_mss.ravel())[bucket]
    peer_ack = ack[peer]
    in_flight = (seq + paylen - peer_ack) % SEQ_SPACE
    in_flight = np.where(in_flight > (1 << 31), 0, in_flight)
    peer_win = win_bytes[peer]
    at_edge = data & peer_ok & ((flags[peer] & ACK) != 0) & (in_flight + seg > peer_win)
    nxt_other, nxt_own = kernels.next_pass(conn, c2s, data, big)
    other_ok = nxt_other < n
    own_ok = nxt_own < n
    waits = at_edge & other_ok & own_ok & (nxt_own > nxt_other)
    # The wait ends with the peer's next segment, or, when the window it opens is
    # still below two segments (sender-side silly-window avoidance and persist
    # timer hold the sender back), with the sender's next data segment.
    nxt_own_c = np.minimum(nxt_own, n - 1)
    small_after = win_bytes[peer[nxt_own_c]] < 2 * seg
    wait_end = np.where(small_after, ts[nxt_own_c], ts[np.minimum(nxt_other, n - 1)])
    wait_ns = np.where(waits, wait_end - ts, 0)
    wait_sum = np.bincount(bucket, weights=wait_ns, minlength=2 * nconn).reshape(nconn, 2)
    wait_n = np.bincount(bucket, weights=waits, minlength=2 * nconn).reshape(nconn, 2)
    # Span of each direction's data transfer: first data segment to the
    # connection's last segment.
    first_data = _group_first(np.where(data & c2s, pos, -1), starts, big)
    first_data_s = _group_first(np.where(data & ~c2s, pos, -1), starts, big)
    last_ts = ts[ends - 1]
    span_c2s = np.where(first_data < big, last_ts - ts[np.minimum(first_data, n - 1)], 0)
    span_s2c = np.where(first_data_s < big, last_ts - ts[np.minimum(first_data_s, n - 1)], 0)

    analysis = Analysis(
        tcp,
        order,
        conn,
        c2s,
        win_bytes,
        starts,
        ends,
        np.where(has_syn, first_syn, -1),
        np.where(has_synack, first_synack, -1),
        rel_by_pos,
    )
    src_addr_key = _mix(_mix(tcp.src_hi[order][starts]) ^ tcp.src_lo[order][starts])
    dst_addr_key = _mix(_mix(tcp.dst_hi[order][starts]) ^ tcp.dst_lo[order][starts])
    analysis.columns = {
        "af": tcp.af[order][starts],
        "src_hi": tcp.src_hi[order][starts],
        "src_lo": tcp.src_lo[order][starts],
        "dst_hi": tcp.dst_hi[order][starts],
        "dst_lo": tcp.dst_lo[order][starts],
        "sport": sport[starts],
        "dport": dport[starts],
        "first_c2s": c2s[starts],
        "first_frame": tcp.frame[order][starts],
        "first_ts": ts[starts],
        "last_ts": ts[ends - 1],
        "opened_by": opened_by,
        "has_syn": has_syn,
        "has_synack": has_synack,
        "syn_frame": tcp.frame[order][np.minimum(first_syn, n - 1)],
        "synack_frame": tcp.frame[order][np.minimum(first_synack, n - 1)],
        "syn_window": window[np.minimum(first_syn, n - 1)],
        "synack_window": window[np.minimum(first_synack, n - 1)],
        "syn_flags": flags[np.minimum(first_syn, n - 1)],
        "synack_flags": flags[np.minimum(first_synack, n - 1)],
        "rtt_ns": np.where(rtt_ok, rtt_ns, -1),
        "packets": packets,
        "bytes": nbytes.astype(np.int64),
        "retrans": retrans_n.astype(np.int64),
        "zero": zero_n.astype(np.int64),
        "probe": probe_n.astype(np.int64),
        "wmin": np.where((wmax >= 0) & (wmin != np.iinfo(np.int64).max), wmin, -1),
        "wmax": wmax,
        "wait_ns": wait_sum.astype(np.int64),
        "waits": wait_n.astype(np.int64),
        "span_c2s": span_c2s,
        "span_s2c": span_s2c,
        "server_port": np.where(c2s[starts], dport[starts], sport[starts]),
        # hashes that group connections by server endpoint and by server address
        "server_key": np.where(c2s[starts], eb[order][starts], ea[order][starts]),
        "server_addr_key": np.where(c2s[starts], dst_addr_key, src_addr_key),
        "client_addr_key": np.where(c2s[starts], src_addr_key, dst_addr_key),
    }
    analysis.hs_syn, analysis.hs_synack = hs_syn, hs_synack
    analysis.connections = Connections(analysis)
    return analysis


def rwnd_findings(analysis: Analysis) -> list[Finding]:
    """``rwnd-limited``: a sender that kept data waiting while its peer's window was
    full, for a large share of the time it was sending."""
    out: list[Finding] = []
    if not analysis.columns:
        return out
    waited_ns = analysis.columns["wait_ns"]
    spans = np.stack([analysis.columns["span_c2s"], analysis.columns["span_s2c"]], axis=1)
    candidate = (
        (analysis.columns["waits"] >= RWND_LIMITED_MIN_WAITS)
        & (waited_ns >= RWND_LIMITED_MIN_NS)
        & (spans > 0)
        & (waited_ns >= RWND_LIMITED_SHARE * np.maximum(spans, 1))
    ).any(axis=1)
    for c in np.flatnonzero(candidate).tolist():
        record = analysis.connections[c]
        for direction, waited, waits, span, window, sender, receiver in (
            (
                "c2s",
                record.rwnd_limited_ns_c2s,
                record.rwnd_waits_c2s,
                record.data_span_ns_c2s,
                record.server_window_min,
                "client",
                "server",
            ),
            (
                "s2c",
                record.rwnd_limited_ns_s2c,
                record.rwnd_waits_s2c,
                record.data_span_ns_s2c,
                record.client_window_min,
                "server",
                "client",
            ),
        ):
            if waits < RWND_LIMITED_MIN_WAITS or waited < RWND_LIMITED_MIN_NS or span <= 0:
                continue
            share = waited / span
            if share < RWND_LIMITED_SHARE:
                continue
            out.append(
                Finding(
                    kind="rwnd-limited",
                    severity=Severity.WARNING,
                    subject=connection_subject(record.client, record.server),
                    summary=(
                        f"The {sender} waited {waited / 1e6:.0f} ms ({share:.0%} of its sending "
                        f"time) with data ready and the {receiver}'s window full, {waits} times"
                    ),
                    evidence={
                        "stream": record.stream,
                        "direction": direction,
                        "rwnd_limited_ms": round(waited / 1e6, 3),
                        "rwnd_limited_share": round(share, 3),
                        "waits": waits,
                        "min_window_bytes": window,
                        "syn_wscale": record.syn.wscale if record.syn else None,
                        "synack_wscale": record.synack.wscale if record.synack else None,
                    },
                    advice=(
                        f"The {receiver}'s advertised window holds the {sender} back: check "
                        "the wscale findings for this server, the receiver's buffer settings "
                        "(tcp_rmem, SO_RCVBUF) and whether the receiving application reads "
                        "fast enough"
                    ),
                )
            )
    return out


class KafkaRequestLike(Protocol):
    stream: int
    client: str
    send_ms: float | None


def streams_named(
    findings: Sequence[Finding],
    requests: Sequence[KafkaRequestLike],
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
            slow = sorted(
                (r for r in requests if r.client.rsplit(":", 1)[0] == client and r.send_ms),
                key=lambda r: -(r.send_ms or 0),
            )
            for request in slow[:3]:
                if request.stream not in streams:
                    streams.append(request.stream)
    return streams[:limit]

"""Connections out of a capture's TCP segments, with what TCP did to each of them.

Pure: TCP header columns in (:class:`tcpsleuth.model.capture.TcpColumns`), one
chunk of the capture at a time, records and findings out. A compiled loop
(:mod:`.capture_kernels`) keeps running values per connection and nothing per
segment, so memory grows with the connections, not with the capture; the
segments of the few connections shown in detail (window series, plots) are
gathered by a second pass (:func:`detail`). Records are made only for the
connections asked for.

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
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, overload

import numpy as np

from tcpsleuth.detectors import capture_kernels as kernels
from tcpsleuth.model.capture import ACK, COLUMN_TYPES, CWR, ECE, RST, SYN, SynOptions, TcpColumns
from tcpsleuth.model.findings import Finding, Severity, connection_subject, listener_subject

SEQ_SPACE = 1 << 32
# A sender is waiting at the window when what it has in flight leaves less than
# one segment of the peer's window; counted only when it sends again right after
# the peer's next segment, i.e. it had data waiting.
RWND_LIMITED_SHARE = 0.2
RWND_LIMITED_MIN_NS = 20_000_000
RWND_LIMITED_MIN_WAITS = 5
# more rwnd-limited connections than this to one server make one finding for it
RWND_PER_LISTENER = 10
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
    """The connections of a capture as columns (by stream) plus a table of segments.

    The segments are, in the analysis of a whole capture, only the few rows of each
    connection's handshake the SYN-cookie detector reads (its first segment, the
    client's SYNs, the server's SYN-ACK and its next segment with a TSval); in a
    :func:`detail` analysis, every segment of the connections asked for, which the
    window series and the plots read. ``order`` lists rows of ``tcp`` grouped by
    connection, capture order within; ``starts``/``ends`` bound each stream's part.
    """

    tcp: TcpColumns
    order: np.ndarray
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
    detailed: bool = False  # every segment of the connections it covers

    def rows(self, stream: int) -> np.ndarray:
        """Rows of ``tcp`` of one connection, in capture order."""
        return self.order[self.starts[stream] : self.ends[stream]]

    def window_series(
        self, stream: int, from_server: bool = True, points: int = SERIES_POINTS
    ) -> list[tuple[float, int]]:
        """The window one side advertised over time, in bytes as its peer computes
        them: (ms since the connection's first packet, bytes) at each change, thinned
        evenly to at most ``points``. Needs a :func:`detail` analysis."""
        assert self.detailed, "window series need every segment: use detail()"
        lo, hi = int(self.starts[stream]), int(self.ends[stream])
        rows = self.order[lo:hi]
        if not len(rows):
            return []
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


@dataclass
class ChunkRows:
    """What the tracker found for each segment of one chunk."""

    conn: np.ndarray  # int64: connection (stream)
    direction: np.ndarray  # int8: 0 = the direction of the connection's first segment
    rel_seq: np.ndarray  # int64
    win_bytes: np.ndarray  # int64


class ConnectionTracker:
    """Connections followed through a capture chunk by chunk, in capture order.

    Per connection a fixed set of running values (see :mod:`.capture_kernels`); no
    per-segment state, so memory grows with the number of connections and
    4-tuples only. :meth:`finish` turns them into an :class:`Analysis`.
    """

    def __init__(self, capacity: int = 1 << 12) -> None:
        self.counts = np.zeros(2, dtype=np.int64)  # tuples, connections
        self.conn_state = np.zeros((capacity, kernels.CONN_FIELDS), dtype=np.int64)
        self.dir_state = np.zeros((capacity, 2, kernels.DIR_FIELDS), dtype=np.int64)
        self.dir_small = np.zeros((capacity, 2, kernels.SMALL_FIELDS), dtype=np.int32)
        self.tuple_addr = np.zeros((capacity, 4), dtype=np.uint64)
        self.tuple_info = np.zeros((capacity, 5), dtype=np.int64)
        self.table = np.zeros(2 * capacity, dtype=np.int64)

    @property
    def connection_count(self) -> int:
        return int(self.counts[1])

    def _grow(self) -> None:
        """A quarter more room for connections and 4-tuples, as they fill up."""
        ntuples, nconn = int(self.counts[0]), int(self.counts[1])
        if nconn >= len(self.conn_state):
            size = len(self.conn_state) * 5 // 4 + 16
            self.conn_state = _grown(self.conn_state, size)
            self.dir_state = _grown(self.dir_state, size)
            self.dir_small = _grown(self.dir_small, size)
        if ntuples >= min(len(self.tuple_info), len(self.table) // 2):
            size = len(self.tuple_info) * 5 // 4 + 16
            self.tuple_addr = _grown(self.tuple_addr, size)
            self.tuple_info = _grown(self.tuple_info, size)
            # open addressing stays fast below half full
            self.table = np.zeros(1 << int(2 * size - 1).bit_length(), dtype=np.int64)
            kernels.rehash(self.table, self.tuple_addr, self.tuple_info, ntuples)

    def feed(self, tcp: TcpColumns) -> ChunkRows:
        n = len(tcp)
        opt_index = np.full(n, -1, dtype=np.int64)
        opt_index[tcp.syn_rows] = np.arange(len(tcp.syn_rows))
        out = ChunkRows(
            np.empty(n, dtype=np.int64),
            np.empty(n, dtype=np.int8),
            np.empty(n, dtype=np.int64),
            np.empty(n, dtype=np.int64),
        )
        at, first = 0, True
        while at < n:
            if not first:
                self._grow()
            first = False
            at = kernels.track(
                at,
                tcp.frame,
                tcp.ts_ns,
                tcp.af,
                tcp.src_hi,
                tcp.src_lo,
                tcp.dst_hi,
                tcp.dst_lo,
                tcp.sport,
                tcp.dport,
                tcp.seq,
                tcp.ack,
                tcp.flags,
                tcp.window,
                tcp.paylen,
                tcp.tsval,
                opt_index,
                tcp.syn_options,
                self.table,
                self.tuple_addr,
                self.tuple_info,
                self.counts,
                self.conn_state,
                self.dir_state,
                self.dir_small,
                kernels.DIR_INITIAL,
                kernels.SMALL_INITIAL,
                out.conn,
                out.direction,
                out.rel_seq,
                out.win_bytes,
            )
        return out

    def server_ports(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """For connections ``first`` to ``last`` - 1: the direction of the client as
        their first segment tells, and the server's port."""
        state = self.conn_state[first:last]
        info = self.tuple_info[state[:, K.K_TUPLE]]
        client = state[:, K.K_CLIENT]
        client_is_a = (state[:, K.K_FIRST_A] == 1) == (client == 0)
        server_port = np.where(client_is_a, info[:, K.T_BPORT], info[:, K.T_APORT])
        return client, server_port

    def finish(self) -> Analysis:
        """The analysis; the tracker is spent after it."""
        return _finish(self)

    def release(self) -> None:
        self.dir_state = np.zeros((0, 2, kernels.DIR_FIELDS), dtype=np.int64)
        self.dir_small = np.zeros((0, 2, kernels.SMALL_FIELDS), dtype=np.int32)
        self.tuple_addr = np.zeros((0, 4), dtype=np.uint64)
        self.table = np.zeros(0, dtype=np.int64)


def _grown(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with room for ``size`` rows, new ones zero. Resized in place: for
    large arrays the C library moves the pages (mremap) instead of copying them,
    so growing never holds the old and the new table at once. Nothing keeps a
    view of these arrays between calls."""
    array.resize((size, *array.shape[1:]), refcheck=False)
    return array


K = kernels


class _Side:
    """One side's fields of every connection, by name, picked one field at a time (a
    copy of the whole state would double the memory the connections take)."""

    def __init__(self, dirs: np.ndarray, small: np.ndarray, who: np.ndarray) -> None:
        self.dirs, self.small = dirs, small
        self.first = who == 0
        self.kept: dict[str, np.ndarray] = {}

    def keep(self, names: list[str]) -> None:
        """Pick these fields now and let go of the state."""
        self.kept = {name: self[:, name] for name in names}
        self.dirs = self.small = np.zeros((0, 2, 0), dtype=np.int64)

    def __getitem__(self, key: tuple[Any, str | list[str]]) -> np.ndarray:
        rows, name = key
        if isinstance(name, list):
            return np.stack([self[rows, one] for one in name], axis=1)
        if name in self.kept:
            return self.kept[name][rows]
        if hasattr(K, "S_" + name):
            source, index = self.small, getattr(K, "S_" + name)
        else:
            source, index = self.dirs, getattr(K, "D_" + name)
        values = np.where(self.first, source[:, 0, index], source[:, 1, index])
        return values[rows].astype(np.int64)


def _finish(tracker: ConnectionTracker) -> Analysis:
    nconn = tracker.connection_count
    state = tracker.conn_state[:nconn]
    dirs = tracker.dir_state[:nconn]
    small = tracker.dir_small[:nconn]
    tuples = state[:, K.K_TUPLE]
    info = tracker.tuple_info[tuples]
    addr = tracker.tuple_addr[tuples]
    first_a = state[:, K.K_FIRST_A] == 1

    # client side: sender of the SYN, else receiver of the SYN-ACK, else higher port
    kind = small[:, :, K.S_HS_KIND]
    hs_frame = dirs[:, :, K.D_HS_FRAME]
    syn0, syn1 = kind[:, 0] == 1, kind[:, 1] == 1
    syn_dir = np.where(
        syn0 & (~syn1 | (hs_frame[:, 0] <= hs_frame[:, 1])), 0, np.where(syn1, 1, -1)
    )
    sa0, sa1 = kind[:, 0] == 2, kind[:, 1] == 2
    sa_dir = np.where(sa0 & (~sa1 | (hs_frame[:, 0] <= hs_frame[:, 1])), 0, np.where(sa1, 1, -1))
    sport = np.where(first_a, info[:, K.T_APORT], info[:, K.T_BPORT])
    dport = np.where(first_a, info[:, K.T_BPORT], info[:, K.T_APORT])
    guess = np.where(sport > dport, 0, 1)
    client = np.where(syn_dir >= 0, syn_dir, np.where(sa_dir >= 0, 1 - sa_dir, guess))
    opened_by = np.where(syn_dir >= 0, 0, np.where(sa_dir >= 0, 1, 2))
    server = 1 - client
    cs = _Side(dirs, small, client)  # the client's direction's fields
    ss = _Side(dirs, small, server)
    has_syn = cs[:, "HS_KIND"] == 1
    has_synack = ss[:, "HS_KIND"] == 2
    option_fields = ["HS_MSS", "HS_WS", "HS_SACK", "HS_TSOK", "HS_TSVAL"]
    hs_syn = np.where(has_syn[:, None], cs[:, option_fields], -1)
    hs_synack = np.where(has_synack[:, None], ss[:, option_fields], -1)

    src_hi = np.where(first_a, addr[:, 0], addr[:, 2])
    src_lo = np.where(first_a, addr[:, 1], addr[:, 3])
    dst_hi = np.where(first_a, addr[:, 2], addr[:, 0])
    dst_lo = np.where(first_a, addr[:, 3], addr[:, 1])
    af = info[:, K.T_AF].astype(np.uint8)
    first_c2s = client == 0
    src_addr_key = _mix(_mix(src_hi) ^ src_lo)
    dst_addr_key = _mix(_mix(dst_hi) ^ dst_lo)
    server_hi = np.where(first_c2s, dst_hi, src_hi)
    server_lo = np.where(first_c2s, dst_lo, src_lo)
    server_port = np.where(first_c2s, dport, sport)
    last_ts = state[:, K.K_LAST_TS]
    rtt_ok = has_syn & has_synack & (cs[:, "RTT_TS"] >= 0)

    def pair(name: str) -> np.ndarray:
        return np.stack([cs[:, name], ss[:, name]], axis=1)

    def span(side: _Side) -> np.ndarray:
        first_data = side[:, "FIRST_DATA_TS"]
        return np.where(first_data >= 0, last_ts - first_data, 0)

    columns = {
        "af": af,
        "src_hi": src_hi,
        "src_lo": src_lo,
        "dst_hi": dst_hi,
        "dst_lo": dst_lo,
        "sport": sport,
        "dport": dport,
        "first_c2s": first_c2s,
        "first_frame": state[:, K.K_FIRST_FRAME],
        "first_ts": state[:, K.K_FIRST_TS],
        "last_ts": last_ts,
        "opened_by": opened_by,
        "has_syn": has_syn,
        "has_synack": has_synack,
        "syn_frame": cs[:, "HS_FRAME"],
        "synack_frame": ss[:, "HS_FRAME"],
        "syn_window": cs[:, "HS_WIN"],
        "synack_window": ss[:, "HS_WIN"],
        "syn_flags": cs[:, "HS_FLAGS"],
        "synack_flags": ss[:, "HS_FLAGS"],
        "syn_seq": cs[:, "HS_SEQ"],
        "rtt_ns": np.where(rtt_ok, cs[:, "RTT_TS"] - cs[:, "HS_TS"], -1),
        "packets": pair("PKTS"),
        "bytes": pair("BYTES"),
        "retrans": pair("RETRANS"),
        "zero": pair("ZERO"),
        "probe": pair("PROBE"),
        "wmin": pair("WMIN"),
        "wmax": pair("WMAX"),
        "wait_ns": pair("WAIT_NS"),
        "window_changes": pair("WIN_CHANGES"),
        "waits": pair("WAITS"),
        "span_c2s": span(cs),
        "span_s2c": span(ss),
        # the server's first window after its SYN-ACK (window-scale inference)
        "first_window_frame": np.where(has_synack, ss[:, "INF_FRAME"], -1),
        "first_window": ss[:, "INF_WIN"],
        "first_window_ack": ss[:, "INF_ACK"],
        "server_port": server_port,
        # SYN-cookie evidence: handshake times, the server's clock after its SYN-ACK,
        # its repeated SYN-ACKs (see capture_kernels)
        "syn_ts": np.where(has_syn, cs[:, "HS_TS"], -1),
        "last_syn_ts": np.where(
            has_syn & (cs[:, "LSYN_FRAME"] >= 0),
            cs[:, "LSYN_TS"],
            np.where(has_syn, cs[:, "HS_TS"], -1),
        ),
        "synack_ts": np.where(has_synack, ss[:, "HS_TS"], -1),
        "synack_seq": ss[:, "HS_SEQ"],
        "later_best_ns": np.where(has_synack, ss[:, "LATER_BEST"], K.NO_RUN),
        "synacks": ss[:, "SYNACKS"],
        "synacks_same_seq": ss[:, "SYNACK_SAME_SEQ"],
        "synacks_renewed": ss[:, "SYNACK_RENEWED"],
        "repeat_ts": np.where(has_synack, ss[:, "REP_TS"], -1),
        "repeat_tsval": np.where(has_synack, ss[:, "REP_TSVAL"], -1),
        # hashes that group connections by server endpoint and by server address
        "server_key": _endpoint_hash(server_hi, server_lo, server_port, af),
        "server_addr_key": np.where(first_c2s, dst_addr_key, src_addr_key),
        "client_addr_key": np.where(first_c2s, src_addr_key, dst_addr_key),
    }
    # the state is no longer needed: free it before the handshake table is built
    cs.keep(["HS_FRAME", "HS_TS", "LSYN_FRAME", "LSYN_TS"])
    ss.keep(["HS_FRAME", "HS_TS", "LATER_FRAME", "LATER_TS", "LATER_TSVAL"])
    del dirs, small, hs_frame, kind
    tracker.release()
    analysis = _handshake_rows(columns, cs, ss, has_syn, has_synack)
    analysis.columns = columns
    analysis.hs_syn, analysis.hs_synack = hs_syn, hs_synack
    analysis.connections = Connections(analysis)
    return analysis


# kinds of handshake rows, in the order they sort within one frame
_FIRST, _SYN, _LAST_SYN, _SYNACK, _LATER = range(5)


def _handshake_rows(
    columns: dict[str, np.ndarray],
    cs: _Side,
    ss: _Side,
    has_syn: np.ndarray,
    has_synack: np.ndarray,
) -> Analysis:
    """The segment table of a whole-capture analysis: per connection its first
    segment (a placeholder matching nothing), the client's first and last SYN
    before the SYN-ACK, the server's SYN-ACK and its next segment with a TSval."""
    nconn = len(has_syn)
    index = np.arange(nconn)
    last_syn = has_syn & (cs[:, "LSYN_FRAME"] >= 0) & (cs[:, "LSYN_FRAME"] != cs[:, "HS_FRAME"])
    later = has_synack & (ss[:, "LATER_FRAME"] >= 0)
    parts = [
        (index, columns["first_frame"], columns["first_ts"], 0, -1, True, _FIRST),
        (index[has_syn], cs[has_syn, "HS_FRAME"], cs[has_syn, "HS_TS"], SYN, -1, True, _SYN),
        (
            index[last_syn],
            cs[last_syn, "LSYN_FRAME"],
            cs[last_syn, "LSYN_TS"],
            SYN,
            -1,
            True,
            _LAST_SYN,
        ),
        (
            index[has_synack],
            ss[has_synack, "HS_FRAME"],
            ss[has_synack, "HS_TS"],
            SYN | ACK,
            -1,
            False,
            _SYNACK,
        ),
        (
            index[later],
            ss[later, "LATER_FRAME"],
            ss[later, "LATER_TS"],
            ACK,
            ss[later, "LATER_TSVAL"],
            False,
            _LATER,
        ),
    ]
    conn = np.concatenate([p[0] for p in parts])
    frame = np.concatenate([p[1] for p in parts])
    ts = np.concatenate([p[2] for p in parts])
    flags = np.concatenate([np.full(len(p[0]), p[3], dtype=np.int32) for p in parts])
    tsval = np.concatenate(
        [np.broadcast_to(np.asarray(p[4], dtype=np.int64), len(p[0])) for p in parts]
    )
    c2s = np.concatenate([np.full(len(p[0]), p[5]) for p in parts])
    kinds = np.concatenate([np.full(len(p[0]), p[6], dtype=np.int8) for p in parts])
    order = np.lexsort((kinds, frame, conn))
    conn, c2s, kinds = conn[order], c2s[order], kinds[order]
    n = len(order)
    tcp = _segment_table(frame[order], ts[order], flags[order], tsval[order])
    starts = np.searchsorted(conn, index, side="left")
    ends = np.searchsorted(conn, index, side="right")
    first_syn = np.full(nconn, -1, dtype=np.int64)
    first_synack = np.full(nconn, -1, dtype=np.int64)
    pos = np.arange(n)
    first_syn[conn[kinds == _SYN]] = pos[kinds == _SYN]
    first_synack[conn[kinds == _SYNACK]] = pos[kinds == _SYNACK]
    zeros = np.zeros(n, dtype=np.int64)
    return Analysis(
        tcp=tcp,
        order=pos,
        conn=conn,
        c2s=c2s,
        win_bytes=zeros,
        starts=starts,
        ends=ends,
        first_syn=first_syn,
        first_synack=first_synack,
        rel_seq=zeros,
    )


def _segment_table(
    frame: np.ndarray,
    ts_ns: np.ndarray,
    flags: np.ndarray,
    tsval: np.ndarray,
    **given: np.ndarray,
) -> TcpColumns:
    """A TcpColumns with these columns (and ``given`` ones); zeros in the others."""
    n = len(frame)
    columns = {name: np.zeros(n, dtype=kind) for name, kind in COLUMN_TYPES.items()}
    columns.update(frame=frame, ts_ns=ts_ns, flags=flags, tsval=tsval, **given)
    return TcpColumns(
        **columns,
        syn_rows=np.zeros(0, dtype=np.int64),
        syn_options=np.zeros((0, 5), dtype=np.int64),
        payload_at=np.full(n, -1, dtype=np.int64),
        payload_cap=np.zeros(n, dtype=np.int32),
        data=np.zeros(0, dtype=np.uint8),
    )


def analyse(tcp: TcpColumns) -> Analysis:
    """The analysis of segments already in memory (:func:`read_capture`)."""
    tracker = ConnectionTracker()
    tracker.feed(tcp)
    return tracker.finish()


def window_series(
    chunks: Iterable[TcpColumns],
    analysis: Analysis,
    streams: Iterable[int],
    points: int = SERIES_POINTS,
) -> dict[int, tuple[list[tuple[float, int]], list[tuple[float, int]]]]:
    """Per stream, the windows the server and the client advertised over time, in
    bytes as the peer computes them: (ms since the connection's first packet,
    bytes) at each change, thinned evenly to at most ``points``. A second pass
    over the same capture; the first counted the changes, so this one keeps only
    the points it returns."""
    chosen = sorted(set(streams))
    if not chosen:
        return {}
    cols = analysis.columns
    changes = cols["window_changes"][chosen]  # (streams, [c2s, s2c])
    first_c2s = cols["first_c2s"][chosen]
    # by direction of the first segment (d = 0) rather than client/server
    by_dir = np.where(first_c2s[:, None], changes, changes[:, ::-1])
    picks = np.full((len(chosen), 2, points), -1, dtype=np.int64)
    for s, counts in enumerate(by_dir.tolist()):
        for d, count in enumerate(counts):
            if count > points:
                picks[s, d] = np.linspace(0, count - 1, points).astype(np.int64)
            else:
                picks[s, d, :count] = np.arange(count)
    slot = np.full(len(analysis.connections) + 1, -1, dtype=np.int64)
    slot[chosen] = np.arange(len(chosen))
    done = np.zeros((len(chosen), 2), dtype=np.int64)
    last = np.zeros((len(chosen), 2), dtype=np.int64)
    taken = np.zeros((len(chosen), 2), dtype=np.int64)
    out = np.zeros((len(chosen), 2, points, 2), dtype=np.int64)
    tracker = ConnectionTracker()
    for tcp in chunks:
        rows = tracker.feed(tcp)
        kernels.series_pass(
            np.minimum(rows.conn, len(slot) - 1),
            rows.direction,
            tcp.flags,
            tcp.ts_ns,
            rows.win_bytes,
            slot,
            picks,
            done,
            last,
            taken,
            out,
        )
    result = {}
    for s, stream in enumerate(chosen):
        start = int(cols["first_ts"][stream])
        series = [
            [(round((t - start) / 1e6, 3), w) for t, w in out[s, d, : taken[s, d]].tolist()]
            for d in (0, 1)
        ]
        client_first = bool(first_c2s[s])
        server, client = (series[1], series[0]) if client_first else (series[0], series[1])
        result[stream] = (server, client)
    return result


def detail(chunks: Iterable[TcpColumns], analysis: Analysis, streams: Iterable[int]) -> Analysis:
    """Every segment of ``streams`` (a second pass over the same capture, whose
    connections are numbered the same way): for window series and plots. Memory
    grows with the segments of those connections only."""
    wanted = np.zeros(len(analysis.connections) + 1, dtype=bool)
    chosen = np.array(sorted(set(streams)), dtype=np.int64)
    wanted[chosen] = True
    tracker = ConnectionTracker()
    kept: list[tuple[TcpColumns, ChunkRows, np.ndarray]] = []
    for tcp in chunks:
        rows = tracker.feed(tcp)
        keep = np.flatnonzero(wanted[np.minimum(rows.conn, len(wanted) - 1)])
        if len(keep):
            kept.append((tcp, rows, keep))
    names = [name for name in COLUMN_TYPES if name not in ("frame", "ts_ns", "flags", "tsval")]

    def gather(get: Callable[[TcpColumns, ChunkRows], np.ndarray], kind: type) -> np.ndarray:
        if not kept:
            return np.zeros(0, dtype=kind)
        return np.concatenate([get(tcp, rows)[keep] for tcp, rows, keep in kept]).astype(kind)

    conn = gather(lambda _t, r: r.conn, np.int64)
    direction = gather(lambda _t, r: r.direction, np.int8)
    tcp = _segment_table(
        gather(lambda t, _r: t.frame, np.int64),
        gather(lambda t, _r: t.ts_ns, np.int64),
        gather(lambda t, _r: t.flags, np.int32),
        gather(lambda t, _r: t.tsval, np.int64),
        **{
            name: gather(lambda t, _r, name=name: getattr(t, name), COLUMN_TYPES[name])
            for name in names
        },
    )
    order = np.argsort(conn, kind="stable")
    conn_sorted = conn[order]
    index = np.arange(len(analysis.connections))
    first_c2s = analysis.columns["first_c2s"] if analysis.columns else np.zeros(0, dtype=bool)
    c2s = (direction[order] == 0) == first_c2s[conn_sorted]
    none = np.full(len(index), -1, dtype=np.int64)
    return Analysis(
        tcp=tcp,
        order=order,
        conn=conn_sorted,
        c2s=c2s,
        win_bytes=gather(lambda _t, r: r.win_bytes, np.int64)[order],
        starts=np.searchsorted(conn_sorted, index, side="left"),
        ends=np.searchsorted(conn_sorted, index, side="right"),
        first_syn=none,
        first_synack=none,
        rel_seq=gather(lambda _t, r: r.rel_seq, np.int64)[order],
        columns=analysis.columns,
        hs_syn=analysis.hs_syn,
        hs_synack=analysis.hs_synack,
        connections=analysis.connections,
        detailed=True,
    )


def clients_hit(
    analysis: Analysis, streams: Iterable[int], client_ids: Mapping[int, str] | None = None
) -> dict[str, dict[str, int]]:
    """Who a finding about a listener is about: connections per client address (all
    of them, most first) and, where the capture kept Kafka request headers, per
    ``client.id``: the operator's next question is which producers suffered."""
    chosen = np.fromiter(streams, dtype=np.int64)
    keys = analysis.columns["client_addr_key"][chosen]
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    # address text for one connection of each client address only
    examples = chosen[first[order]].tolist()
    ends = analysis.connections.endpoints_of(examples)
    addresses = {
        ends[c][0].rsplit(":", 1)[0]: n
        for c, n in zip(examples, counts[order].tolist(), strict=True)
    }
    names = Counter(client_ids[s] for s in chosen.tolist() if s in client_ids) if client_ids else {}
    return {"clients": addresses, "client_ids": dict(Counter(names).most_common())}


def rwnd_findings(analysis: Analysis, client_ids: Mapping[int, str] | None = None) -> list[Finding]:
    """``rwnd-limited``, one finding per connection; where more than
    RWND_PER_LISTENER connections of one server are held back in the same
    direction (a storm of cookie connections), one finding for that server
    instead, naming every client hit and the worst connections."""
    each = _rwnd_per_connection(analysis)
    groups: dict[tuple[str, str], list[Finding]] = {}
    for finding in each:
        key = (finding.subject["server"], finding.evidence["direction"])
        groups.setdefault(key, []).append(finding)
    out: list[Finding] = []
    for (server, direction), group in groups.items():
        if len(group) <= RWND_PER_LISTENER:
            out += group
            continue
        group.sort(key=lambda f: -f.evidence["rwnd_limited_ms"])
        waited = np.array([f.evidence["rwnd_limited_ms"] for f in group])
        shares = np.array([f.evidence["rwnd_limited_share"] for f in group])
        sender, receiver = ("client", "server") if direction == "c2s" else ("server", "client")
        worst = group[0]
        out.append(
            Finding(
                kind="rwnd-limited",
                severity=Severity.WARNING,
                subject=listener_subject(server),
                summary=(
                    f"{len(group)} connections: the {sender} waited with data ready and the "
                    f"{receiver}'s window full for a median {np.median(waited):.0f} ms "
                    f"({np.median(shares):.0%} of its sending time), up to {waited.max():.0f} ms"
                ),
                evidence={
                    "direction": direction,
                    "connections": len(group),
                    "rwnd_limited_ms_median": round(float(np.median(waited)), 3),
                    "rwnd_limited_ms_max": round(float(waited.max()), 3),
                    "rwnd_limited_share_median": round(float(np.median(shares)), 3),
                    **clients_hit(analysis, [f.evidence["stream"] for f in group], client_ids),
                    "streams": [f.evidence["stream"] for f in group[:RWND_PER_LISTENER]],
                    "worst": worst.evidence,
                },
                advice=worst.advice,
            )
        )
    return out


def _rwnd_per_connection(analysis: Analysis) -> list[Finding]:
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

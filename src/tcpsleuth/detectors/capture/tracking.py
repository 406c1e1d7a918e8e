"""Following connections through a capture, chunk by chunk, in capture order.

The compiled loop (:mod:`.kernels`) keeps a fixed set of running values per
connection and nothing per segment, so memory grows with the connections, not with
the capture. :class:`ConnectionTracker` feeds it (all 4-tuples, or one shard of
them: :mod:`.shards` runs several at once); :func:`finish` turns what was kept, laid
out a field at a time (:class:`TrackedState`, by :mod:`.layout`'s compiled loops),
into an :class:`~.connections.Analysis` (reading each side's fields through
:mod:`.sides`); :class:`DetailPass` gathers every segment of a few connections from
another pass (plots).

About 590 lines: the tracker, the turning of its state into per-connection columns
(:func:`finish`) and the detail pass share the kernel's field layout; cutting them
apart would spread that layout over more modules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tcpsleuth.detectors.capture import fourtuples, kernels, layout
from tcpsleuth.detectors.capture import kernels as K
from tcpsleuth.detectors.capture.clockrate import ClockRate, cookie_bits, later_runs
from tcpsleuth.detectors.capture.connections import (
    Analysis,
    ConnectionColumns,
    Connections,
    endpoint_hash,
    mix,
)
from tcpsleuth.detectors.capture.fourtuples import T_AF, T_APORT, T_BPORT
from tcpsleuth.detectors.capture.sides import F, Field, Side
from tcpsleuth.model.capture import ACK, COLUMN_TYPES, SYN, TcpColumns


@dataclass
class ChunkRows:
    """What the tracker found for each segment of one chunk."""

    conn: np.ndarray  # int64: connection (stream)
    direction: np.ndarray  # int8: 0 = the direction of the connection's first segment
    rel_seq: np.ndarray  # int64
    win_bytes: np.ndarray  # int64


class ConnectionTracker:
    """Connections followed through a capture chunk by chunk, in capture order.

    Per connection a fixed set of running values (see :mod:`.kernels`); no
    per-segment state, so memory grows with the number of connections and
    4-tuples only. :meth:`finish` turns them into an :class:`Analysis`.
    """

    def __init__(
        self, capacity: int = 1 << 12, shard: int = 0, shards: int = 1, keep_rows: bool = False
    ) -> None:
        # with shards > 1, only the 4-tuples of this shard (fourtuples.shard_of)
        self.shard, self.shards = shard, shards
        self.keep_rows = keep_rows
        self.rows: ChunkRows | None = None
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
            fourtuples.rehash(self.table, self.tuple_addr, self.tuple_info, ntuples)

    def feed(self, tcp: TcpColumns, opt_index: np.ndarray | None = None) -> ChunkRows:
        """Follow the segments of ``tcp``: its rows (``opt_index``: per segment, its
        row in ``tcp.syn_options`` or -1, see :func:`option_rows`). With
        ``keep_rows`` the rows are written over by the next call."""
        n = len(tcp)
        if opt_index is None:
            opt_index = option_rows(tcp)
        out = self._rows(n)
        at, first = 0, True
        while at < n:
            if not first:
                self._grow()
            first = False
            stop = kernels.assign(
                at, tcp.frame, tcp.ts_ns, tcp.af, tcp.src_hi, tcp.src_lo, tcp.dst_hi,
                tcp.dst_lo, tcp.sport, tcp.dport, tcp.seq, tcp.flags, self.table,
                self.tuple_addr, self.tuple_info, self.counts, self.conn_state,
                self.dir_state, self.dir_small, kernels.DIR_INITIAL, kernels.SMALL_INITIAL,
                out.conn, out.direction, self.shard, self.shards,
            )  # fmt: skip
            kernels.follow_handshakes(
                at, stop, tcp.frame, tcp.ts_ns, tcp.seq, tcp.ack, tcp.flags, tcp.window,
                tcp.tsval, opt_index, tcp.syn_options, self.dir_state, self.dir_small,
                out.conn, out.direction, out.win_bytes, out.rel_seq,
            )  # fmt: skip
            kernels.follow_streams(
                at, stop, tcp.ts_ns, tcp.seq, tcp.ack, tcp.flags, tcp.window, tcp.paylen,
                self.dir_state, self.dir_small, out.conn, out.direction, out.rel_seq,
                out.win_bytes,
            )  # fmt: skip
            at = stop
        return out

    def _rows(self, n: int) -> ChunkRows:
        """Room for a chunk's rows: new arrays, or (``keep_rows``) the tracker's own,
        so that a tracker in a worker thread allocates nothing per chunk (memory freed
        in a thread's own malloc arena goes back to the system, and comes back page
        by page)."""
        if not self.keep_rows:
            return ChunkRows(
                np.empty(n, dtype=np.int64),
                np.empty(n, dtype=np.int8),
                np.empty(n, dtype=np.int64),
                np.empty(n, dtype=np.int64),
            )
        if self.rows is None or len(self.rows.conn) < n:
            self.rows = ChunkRows(
                np.empty(n, dtype=np.int64),
                np.empty(n, dtype=np.int8),
                np.empty(n, dtype=np.int64),
                np.empty(n, dtype=np.int64),
            )
        whole = self.rows
        return ChunkRows(
            whole.conn[:n], whole.direction[:n], whole.rel_seq[:n], whole.win_bytes[:n]
        )

    def server_ports(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """For connections ``first`` to ``last`` - 1: the direction of the client as
        their first segment tells, and the server's port."""
        state = self.conn_state[first:last]
        info = self.tuple_info[state[:, K.K_TUPLE]]
        client = state[:, K.K_CLIENT]
        client_is_a = (state[:, K.K_FIRST_A] == 1) == (client == 0)
        server_port = np.where(client_is_a, info[:, T_BPORT], info[:, T_APORT])
        return client, server_port

    def by_field(self) -> TrackedState:
        """What was kept of each connection, a field at a time; the tracker is spent."""
        n = self.connection_count
        state = TrackedState.empty(n)
        state.fill(self, np.arange(n, dtype=np.int64))
        self.release()
        return state

    def finish(self) -> Analysis:
        """The analysis; the tracker is spent after it."""
        return finish(self.by_field())

    def release(self) -> None:
        self.conn_state = np.zeros((0, kernels.CONN_FIELDS), dtype=np.int64)
        self.tuple_info = np.zeros((0, 5), dtype=np.int64)
        self.dir_state = np.zeros((0, 2, kernels.DIR_FIELDS), dtype=np.int64)
        self.dir_small = np.zeros((0, 2, kernels.SMALL_FIELDS), dtype=np.int32)
        self.tuple_addr = np.zeros((0, 4), dtype=np.uint64)
        self.table = np.zeros(0, dtype=np.int64)


def option_rows(tcp: TcpColumns) -> np.ndarray:
    """Per segment of ``tcp``, its row in ``tcp.syn_options`` (-1: not a SYN)."""
    opt_index = np.full(len(tcp), -1, dtype=np.int64)
    opt_index[tcp.syn_rows] = np.arange(len(tcp.syn_rows))
    return opt_index


def _grown(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` with room for ``size`` rows, new ones zero. Resized in place: for
    large arrays the C library moves the pages (mremap) instead of copying them,
    so growing never holds the old and the new table at once. Nothing keeps a
    view of these arrays between calls."""
    array.resize((size, *array.shape[1:]), refcheck=False)
    return array


@dataclass
class TrackedState:
    """What the tracker kept of connections, one column per field, in the order they
    are numbered: ``conn[field]`` (:mod:`.kernels`' ``K_``), their 4-tuple's
    ``info[field]`` (``T_``) and ``addr[0..3]``, and per direction ``dirs[d, field]``
    (``D_``) and ``small[d, field]`` (``S_``)."""

    conn: np.ndarray
    info: np.ndarray
    addr: np.ndarray
    dirs: np.ndarray
    small: np.ndarray

    @classmethod
    def empty(cls, n: int) -> TrackedState:
        return cls(
            np.empty((kernels.CONN_FIELDS, n), dtype=np.int64),
            np.empty((5, n), dtype=np.int64),
            np.empty((4, n), dtype=np.uint64),
            np.empty((2, kernels.DIR_FIELDS, n), dtype=np.int64),
            np.empty((2, kernels.SMALL_FIELDS, n), dtype=np.int32),
        )

    def fill(self, tracker: ConnectionTracker, where: np.ndarray) -> None:
        """Put the tracker's connection ``c`` at column ``where[c]``."""
        layout.by_field(
            tracker.connection_count,
            where,
            tracker.conn_state,
            tracker.dir_state,
            tracker.dir_small,
            tracker.tuple_info,
            tracker.tuple_addr,
            self.conn,
            self.info,
            self.addr,
            self.dirs,
            self.small,
        )


def finish(tracked: TrackedState) -> Analysis:
    """The analysis of the connections in ``tracked`` (which it uses up)."""
    state, dirs, small, info = tracked.conn, tracked.dirs, tracked.small, tracked.info
    first_a = state[K.K_FIRST_A] == 1
    sport = np.where(first_a, info[T_APORT], info[T_BPORT])
    dport = np.where(first_a, info[T_BPORT], info[T_APORT])
    client, opened_by = _client_direction(dirs, small, sport, dport)
    server = 1 - client
    cs = Side(dirs, small, client)  # the client's direction's fields
    ss = Side(dirs, small, server)
    has_syn = cs[:, F.HS_KIND] == 1
    has_synack = ss[:, F.HS_KIND] == 2
    option_fields = [F.HS_MSS, F.HS_WS, F.HS_SACK, F.HS_TSOK, F.HS_TSVAL]
    hs_syn = np.where(has_syn[:, None], cs[:, option_fields], -1)
    hs_synack = np.where(has_synack[:, None], ss[:, option_fields], -1)
    last_ts = state[K.K_LAST_TS]
    addresses = _address_columns(tracked, first_a, client, sport, dport)
    cookie_columns, rates = _cookie_columns(cs, ss, hs_syn, addresses["server_addr_key"])
    columns = ConnectionColumns(
        **addresses,
        first_frame=state[K.K_FIRST_FRAME],
        first_ts=state[K.K_FIRST_TS],
        last_ts=last_ts,
        opened_by=opened_by,
        **_handshake_columns(cs, ss, has_syn, has_synack),
        **_traffic_columns(cs, ss, last_ts),
        **cookie_columns,
    )
    # the state is no longer needed: free it before the handshake table is built
    cs.keep([F.HS_FRAME, F.HS_TS, F.LSYN_FRAME, F.LSYN_TS])
    ss.keep([F.HS_FRAME, F.HS_TS, F.LATER_FRAME, F.LATER_TS, F.LATER_TSVAL])
    del dirs, small
    tracked.dirs = tracked.small = np.zeros((2, 0, 0), dtype=np.int64)
    analysis = _handshake_rows(columns, cs, ss, has_syn, has_synack)
    analysis.columns = columns
    analysis.hs_syn, analysis.hs_synack = hs_syn, hs_synack
    analysis.clock_rates = rates
    analysis.connections = Connections(analysis)
    return analysis


def _client_direction(
    dirs: np.ndarray, small: np.ndarray, sport: np.ndarray, dport: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per connection the direction of its client (0: that of its first segment) and
    what showed it (``opened_by``: 0 a SYN, 1 a SYN-ACK, 2 a guess from the ports)."""
    # client side: sender of the SYN, else receiver of the SYN-ACK, else higher port
    kind = small[:, K.S_HS_KIND]
    hs_frame = dirs[:, K.D_HS_FRAME]
    syn0, syn1 = kind[0] == 1, kind[1] == 1
    syn_dir = np.where(syn0 & (~syn1 | (hs_frame[0] <= hs_frame[1])), 0, np.where(syn1, 1, -1))
    sa0, sa1 = kind[0] == 2, kind[1] == 2
    sa_dir = np.where(sa0 & (~sa1 | (hs_frame[0] <= hs_frame[1])), 0, np.where(sa1, 1, -1))
    guess = np.where(sport > dport, 0, 1)
    client = np.where(syn_dir >= 0, syn_dir, np.where(sa_dir >= 0, 1 - sa_dir, guess))
    opened_by = np.where(syn_dir >= 0, 0, np.where(sa_dir >= 0, 1, 2))
    return client, opened_by


def _address_columns(
    tracked: TrackedState,
    first_a: np.ndarray,
    client: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
) -> dict[str, np.ndarray]:
    """The addresses and ports of every connection as its first segment shows them,
    the server's port, and the hashes of its server and client."""
    info, addr = tracked.info, tracked.addr
    src_hi = np.where(first_a, addr[0], addr[2])
    src_lo = np.where(first_a, addr[1], addr[3])
    dst_hi = np.where(first_a, addr[2], addr[0])
    dst_lo = np.where(first_a, addr[3], addr[1])
    af = info[T_AF].astype(np.uint8)
    first_c2s = client == 0
    src_addr_key = mix(mix(src_hi) ^ src_lo)
    dst_addr_key = mix(mix(dst_hi) ^ dst_lo)
    server_addr = np.where(first_c2s, dst_addr_key, src_addr_key)
    server_hi = np.where(first_c2s, dst_hi, src_hi)
    server_lo = np.where(first_c2s, dst_lo, src_lo)
    server_port = np.where(first_c2s, dport, sport)
    return {
        "af": af,
        "src_hi": src_hi,
        "src_lo": src_lo,
        "dst_hi": dst_hi,
        "dst_lo": dst_lo,
        "sport": sport,
        "dport": dport,
        "first_c2s": first_c2s,
        "server_port": server_port,
        # hashes that group connections by server endpoint and by server address
        "server_key": endpoint_hash(server_hi, server_lo, server_port, af),
        "server_addr_key": server_addr,
        "client_addr_key": np.where(first_c2s, src_addr_key, dst_addr_key),
    }


def _handshake_columns(
    cs: Side, ss: Side, has_syn: np.ndarray, has_synack: np.ndarray
) -> dict[str, np.ndarray]:
    """What the SYN and the SYN-ACK carried, the handshake's round trip, and the
    server's first window after its SYN-ACK."""
    rtt_ok = has_syn & has_synack & (cs[:, F.RTT_TS] >= 0)
    return {
        "has_syn": has_syn,
        "has_synack": has_synack,
        "syn_frame": cs[:, F.HS_FRAME],
        "synack_frame": ss[:, F.HS_FRAME],
        "syn_window": cs[:, F.HS_WIN],
        "synack_window": ss[:, F.HS_WIN],
        "syn_flags": cs[:, F.HS_FLAGS],
        "synack_flags": ss[:, F.HS_FLAGS],
        "syn_seq": cs[:, F.HS_SEQ],
        "rtt_ns": np.where(rtt_ok, cs[:, F.RTT_TS] - cs[:, F.HS_TS], -1),
        # the server's first window after its SYN-ACK (window-scale inference)
        "first_window_frame": np.where(has_synack, ss[:, F.INF_FRAME], -1),
        "first_window": ss[:, F.INF_WIN],
        "first_window_ack": ss[:, F.INF_ACK],
    }


def _traffic_columns(cs: Side, ss: Side, last_ts: np.ndarray) -> dict[str, np.ndarray]:
    """The counters of each direction (client to server, then server to client) and
    how long each sent data."""

    def pair(field: Field) -> np.ndarray:
        return np.stack([cs[:, field], ss[:, field]], axis=1)

    def span(side: Side) -> np.ndarray:
        first_data = side[:, F.FIRST_DATA_TS]
        return np.where(first_data >= 0, last_ts - first_data, 0)

    return {
        "packets": pair(F.PKTS),
        "bytes": pair(F.BYTES),
        "retrans": pair(F.RETRANS),
        "zero": pair(F.ZERO),
        "probe": pair(F.PROBE),
        "wmin": pair(F.WMIN),
        "wmax": pair(F.WMAX),
        "rwnd_limited_ns": pair(F.RWND_LIMITED_NS),
        "window_changes": pair(F.WIN_CHANGES),
        "waits": pair(F.WAITS),
        "span_c2s": span(cs),
        "span_s2c": span(ss),
    }


def _cookie_columns(
    cs: Side, ss: Side, hs_syn: np.ndarray, server_addr: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[int, ClockRate]]:
    """The SYN-cookie evidence columns: handshake times, the server's clock after its
    SYN-ACK, its repeated SYN-ACKs (see kernels); and the servers' clock rates."""
    has_syn, has_synack = cs[:, F.HS_KIND] == 1, ss[:, F.HS_KIND] == 2
    later_best, far_state, rates = _later_best(cs, ss, hs_syn, server_addr)
    columns = {
        "syn_ts": np.where(has_syn, cs[:, F.HS_TS], -1),
        "last_syn_ts": np.where(
            has_syn & (cs[:, F.LSYN_FRAME] >= 0),
            cs[:, F.LSYN_TS],
            np.where(has_syn, cs[:, F.HS_TS], -1),
        ),
        "synack_ts": np.where(has_synack, ss[:, F.HS_TS], -1),
        "synack_seq": ss[:, F.HS_SEQ],
        "later_best_ns": later_best,
        "far_state": far_state,
        "synacks": ss[:, F.SYNACKS],
        "synacks_same_seq": ss[:, F.SYNACK_SAME_SEQ],
        "synacks_renewed": ss[:, F.SYNACK_RENEWED],
        "repeat_ts": np.where(has_synack, ss[:, F.REP_TS], -1),
        "repeat_tsval": np.where(has_synack, ss[:, F.REP_TSVAL], -1),
    }
    return columns, rates


def _later_best(
    cs: Side, ss: Side, hs_syn: np.ndarray, server_addr: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[int, ClockRate]]:
    """The server's runs after its SYN-ACK (``later_best_ns``): within LATER_SPAN_NS,
    or farther where its clock rate is measured (:func:`.clockrate.later_runs`),
    worked out on the connections with a far segment only (few, mostly); what
    became of each connection's far segments (``far_state``); the clock rates."""
    has_synack = ss[:, F.HS_KIND] == 2
    later = np.where(has_synack, ss[:, F.LATER_BEST], K.NO_RUN)
    state = np.zeros(len(later), dtype=np.int8)
    far = np.flatnonzero(has_synack & (ss[:, F.FAR_AT] > 0))
    if not len(far):
        return later, state, {}
    syn_ts = np.where(cs[far, F.LSYN_FRAME] >= 0, cs[far, F.LSYN_TS], cs[far, F.HS_TS])
    later[far], state[far], rates = later_runs(
        later[far],
        ss[far, F.FAR_AT],
        ss[far, F.FAR_BEST],
        ss[far, F.HS_TS],
        ss[far, F.HS_TS] - syn_ts,
        server_addr[far],
        cookie_bits(hs_syn[far], ss[far, F.HS_FLAGS]),
    )
    return later, state, rates


# kinds of handshake rows, in the order they sort within one frame
_FIRST, _SYN, _LAST_SYN, _SYNACK, _LATER = range(5)


def _handshake_rows(
    columns: ConnectionColumns,
    cs: Side,
    ss: Side,
    has_syn: np.ndarray,
    has_synack: np.ndarray,
) -> Analysis:
    """The segment table of a whole-capture analysis: per connection its first
    segment (a placeholder matching nothing), the client's first and last SYN
    before the SYN-ACK, the server's SYN-ACK and its next segment with a TSval."""
    nconn = len(has_syn)
    last_syn = has_syn & (cs[:, F.LSYN_FRAME] >= 0) & (cs[:, F.LSYN_FRAME] != cs[:, F.HS_FRAME])
    later = has_synack & (ss[:, F.LATER_FRAME] >= 0)
    none = np.full(nconn, -1, dtype=np.int64)
    # by kind (_FIRST ... _LATER): which connections have one, its frame, time, TSval
    present = np.stack([np.ones(nconn, dtype=bool), has_syn, last_syn, has_synack, later])
    frame = np.stack(
        [
            columns.first_frame,
            cs[:, F.HS_FRAME],
            cs[:, F.LSYN_FRAME],
            ss[:, F.HS_FRAME],
            ss[:, F.LATER_FRAME],
        ]
    )
    ts = np.stack(
        [columns.first_ts, cs[:, F.HS_TS], cs[:, F.LSYN_TS], ss[:, F.HS_TS], ss[:, F.LATER_TS]]
    )
    tsval = np.stack([none, none, none, none, ss[:, F.LATER_TSVAL]])
    conn, kinds, frames, times, tsvals, starts, ends, first_of = layout.handshake_rows(
        present, frame, ts, tsval
    )
    flags = np.array([0, SYN, SYN, SYN | ACK, ACK], dtype=np.int32)[kinds]
    c2s = np.array([True, True, True, False, False])[kinds]
    n = len(conn)
    tcp = _segment_table(frames, times, flags, tsvals)
    zeros = np.zeros(n, dtype=np.int64)
    return Analysis(
        tcp=tcp,
        order=np.arange(n),
        conn=conn,
        c2s=c2s,
        win_bytes=zeros,
        starts=starts,
        ends=ends,
        first_syn=first_of[0],
        first_synack=first_of[1],
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


# the columns of TcpColumns a detailed Analysis keeps for each segment, past these four
_FIRST_FOUR = ("frame", "ts_ns", "flags", "tsval")
_DETAIL_COLUMNS = [name for name in COLUMN_TYPES if name not in _FIRST_FOUR]


class DetailPass:
    """Every segment of ``streams``, gathered while another pass over the same capture
    goes by (its connections numbered as in ``analysis``): for window series and plots.
    Each chunk's rows of those connections are copied as they come (a sharded pass
    writes the next chunk's rows over them), so memory grows with those segments only."""

    def __init__(self, analysis: Analysis, streams: Iterable[int]) -> None:
        self.analysis = analysis
        self.wanted = np.zeros(len(analysis.connections) + 1, dtype=bool)
        self.wanted[np.array(sorted(set(streams)), dtype=np.int64)] = True
        self.parts: list[dict[str, np.ndarray]] = []

    def feed(self, tcp: TcpColumns, rows: ChunkRows) -> None:
        keep = np.flatnonzero(self.wanted[np.minimum(rows.conn, len(self.wanted) - 1)])
        if not len(keep):
            return
        part = {
            "conn": rows.conn[keep],
            "direction": rows.direction[keep],
            "rel_seq": rows.rel_seq[keep],
            "win_bytes": rows.win_bytes[keep],
        }
        for name in (*_FIRST_FOUR, *_DETAIL_COLUMNS):
            part[name] = getattr(tcp, name)[keep]
        self.parts.append(part)

    def _gathered(self, name: str, kind: Any) -> np.ndarray:
        if not self.parts:
            return np.zeros(0, dtype=kind)
        return np.concatenate([part[name] for part in self.parts]).astype(kind)

    def finish(self) -> Analysis:
        gather, analysis = self._gathered, self.analysis
        conn = gather("conn", np.int64)
        direction = gather("direction", np.int8)
        tcp = _segment_table(
            gather("frame", np.int64),
            gather("ts_ns", np.int64),
            gather("flags", np.int32),
            gather("tsval", np.int64),
            **{name: gather(name, COLUMN_TYPES[name]) for name in _DETAIL_COLUMNS},
        )
        order = np.argsort(conn, kind="stable")
        conn_sorted = conn[order]
        index = np.arange(len(analysis.connections))
        first_c2s = analysis.columns.first_c2s
        c2s = (direction[order] == 0) == first_c2s[conn_sorted]
        none = np.full(len(index), -1, dtype=np.int64)
        return Analysis(
            tcp=tcp,
            order=order,
            conn=conn_sorted,
            c2s=c2s,
            win_bytes=gather("win_bytes", np.int64)[order],
            starts=np.searchsorted(conn_sorted, index, side="left"),
            ends=np.searchsorted(conn_sorted, index, side="right"),
            first_syn=none,
            first_synack=none,
            rel_seq=gather("rel_seq", np.int64)[order],
            columns=analysis.columns,
            hs_syn=analysis.hs_syn,
            hs_synack=analysis.hs_synack,
            connections=analysis.connections,
            detailed=True,
        )

"""The per-segment loop of the capture analysis, compiled with numba.

Segments come in capture order, a chunk at a time. Each one is matched to its
connection through a hash table of 4-tuples, and that connection's running state
is updated: counts, handshake, each direction's byte stream (where it starts,
the highest byte sent so far, retransmissions), the other side's latest window
and the waits at a full window. Nothing is kept per segment, so memory grows
with the number of connections, not with the capture. Pure functions; without
numba they run as Python.

Longer than most modules (about 500 lines) because the field layout of the state
arrays and the loop that fills them must be read together; most of it is ``track``,
one compiled function, whose parts share dozens of locals.
"""

from __future__ import annotations

import numpy as np

from tcpsleuth.compiled import njit
from tcpsleuth.model.capture import ACK, FIN, RST, SEQ_SPACE, SYN

# Per-connection fields (``conn_state[c, field]``)
K_TUPLE, K_FIRST_A, K_FIRST_FRAME, K_FIRST_TS, K_LAST_TS, K_CLIENT = range(6)
CONN_FIELDS = 6
# Per-direction fields; d = 0 is the direction of the connection's first segment.
# 64-bit ones (``dir_state[c, d, field]``): counts of bytes, sequence numbers,
# times and frame numbers ...
(
    D_PKTS,
    D_BYTES,
    D_BASE,
    D_HIGH,
    D_LAST_ACK,
    D_RWND_LIMITED_NS,
    D_PEND_TS,
    D_PEND_OTHER_TS,
    D_FIRST_DATA_TS,
    D_HS_FRAME,
    D_HS_TS,
    D_HS_SEQ,
    D_HS_TSVAL,
    D_LSYN_FRAME,
    D_LSYN_TS,
    D_LATER_FRAME,
    D_LATER_TS,
    D_LATER_TSVAL,
    D_INF_FRAME,
    D_INF_ACK,
    D_RTT_TS,
    D_LATER_BEST,
    D_REP_TS,
    D_REP_TSVAL,
    D_SYN_LATEST_FRAME,
    D_SYN_LATEST_TS,
) = range(26)
DIR_FIELDS = 26
# ... and 32-bit ones (``dir_small[c, d, field]``): windows, flags, counts of
# segments of one kind, options. Half the memory per connection that way.
(
    S_LAST_WIN,
    S_LAST_FLAGS,
    S_RETRANS,
    S_ZERO,
    S_PROBE,
    S_WMIN,
    S_WMAX,
    S_MAXSEG,
    S_WAITS,
    S_PEND_SEG,
    S_HS_KIND,
    S_HS_WIN,
    S_HS_FLAGS,
    S_HS_MSS,
    S_HS_WS,
    S_HS_SACK,
    S_HS_TSOK,
    S_INF_WIN,
    S_WIN_CHANGES,
    S_WIN_LAST,
    S_SYNACKS,
    S_SYNACK_SAME_SEQ,
    S_SYNACK_RENEWED,
) = range(23)
SMALL_FIELDS = 23
# Meaning of some: HS_* the direction's first SYN or SYN-ACK (kind 1 = SYN, 2 =
# SYN-ACK); LSYN_* its last SYN before the other side's SYN-ACK; LATER_* its first
# segment after its own SYN-ACK that carries a TSval; INF_* its first ACK after its
# own SYN-ACK (the first window after the handshake); RTT_TS its first pure ACK
# after the other side's SYN-ACK (ends the handshake); PEND_* the data segment
# that may be waiting at the window; WIN_CHANGES how many times the window it
# advertised changed (SYNs and RSTs aside), WIN_LAST the latest of them.
# LATER_BEST: over its segments after its SYN-ACK (up to LATER_SPAN_NS later; the
# later ones: FAR_*), the highest ``(TSval - SYN-ACK TSval) ms - (capture time -
# SYN-ACK capture time)`` in ns: how far its timestamp clock ran ahead of the
# SYN-ACK's, measured where a segment left with the least delay. REP_*: its first
# repeated SYN-ACK with the SYN-ACK's sequence number (an answer to a retransmitted
# SYN); SYNACKS how many SYN-ACKs it sent, SYNACK_SAME_SEQ how many of them
# repeated the handshake's sequence number, SYNACK_RENEWED how many times a new one
# replaced it.
# FAR_*: the SYN-ACK sender's segments with a TSval more than LATER_SPAN_NS after
# its SYN-ACK: FAR_AT how long after it the first of them came (ns, -1: none),
# FAR_BEST over those within FAR_SLICE_NS of that one, the highest run as
# LATER_BEST counts it (NO_RUN: none); read against the server's clock rate, which
# the capture's other connections measure (clockrate.later_runs). They live in the
# LSYN_* fields, which only a SYN's sender fills: a SYN-ACK's sender sends no SYN
# on the connection (the loop skips one if it does), so no memory is added.
D_FAR_AT, D_FAR_BEST = D_LSYN_FRAME, D_LSYN_TS
# Fields that start at -1 (none yet):
DIR_INITIAL = np.zeros(DIR_FIELDS, dtype=np.int64)
DIR_INITIAL[
    [
        D_BASE,
        D_HIGH,
        D_PEND_TS,
        D_PEND_OTHER_TS,
        D_FIRST_DATA_TS,
        D_HS_FRAME,
        D_HS_TSVAL,
        D_LSYN_FRAME,
        D_LATER_FRAME,
        D_INF_FRAME,
        D_RTT_TS,
        D_REP_TS,
        D_REP_TSVAL,
    ]
] = -1
# the server's TSval clock is compared with the capture clock over this span only
# (two hosts' clocks drift apart by tens of microseconds a second)
LATER_SPAN_NS = 10_000_000_000
# the far segments: the first one after LATER_SPAN_NS and those this soon after it
FAR_SLICE_NS = 100_000_000
NO_RUN = -(1 << 62)  # LATER_BEST before any segment counted
DIR_INITIAL[D_LATER_BEST] = NO_RUN
DIR_INITIAL[D_FAR_BEST] = NO_RUN  # LSYN_TS: read only with an LSYN_FRAME
SMALL_INITIAL = np.zeros(SMALL_FIELDS, dtype=np.int32)
SMALL_INITIAL[[S_LAST_WIN, S_WMIN, S_WMAX, S_HS_MSS, S_HS_WS]] = -1

# 4-tuple table: addresses (uint64) and af, ports, current connection, last SYN's seq
T_AF, T_APORT, T_BPORT, T_CONN, T_SYN_SEQ = range(5)


@njit(cache=True, nogil=True)
def _mix(x: np.uint64) -> np.uint64:
    """splitmix64 finaliser."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@njit(cache=True, nogil=True)
def _tuple_hash(af, a_hi, a_lo, b_hi, b_lo, aport, bport):  # type: ignore[no-untyped-def]
    h = _mix(a_hi ^ np.uint64(af))
    h = _mix(h ^ a_lo)
    h = _mix(h ^ b_hi)
    h = _mix(h ^ b_lo)
    return _mix(h ^ ((np.uint64(aport) << np.uint64(16)) | np.uint64(bport)))


@njit(cache=True, nogil=True)
def _shard(h: np.uint64, shards: int) -> int:
    """The shard of a 4-tuple whose hash is ``h`` (its high bits: the table's slot
    takes the low ones)."""
    return np.int64((h >> np.uint64(40)) % np.uint64(shards))


@njit(cache=True, nogil=True)
def shard_of(af, a_hi, a_lo, b_hi, b_lo, aport, bport, shards):  # type: ignore[no-untyped-def]
    """Per 4-tuple (a the lower endpoint, as ``track`` keys them), its shard."""
    out = np.empty(len(af), dtype=np.int64)
    for i in range(len(af)):
        h = _tuple_hash(
            np.int64(af[i]),
            a_hi[i],
            a_lo[i],
            b_hi[i],
            b_lo[i],
            np.int64(aport[i]),
            np.int64(bport[i]),
        )
        out[i] = _shard(h, shards)
    return out


@njit(cache=True, nogil=True)
def rehash(table, tuple_addr, tuple_info, ntuples):  # type: ignore[no-untyped-def]
    """Fill an empty open-addressing ``table`` (size a power of two) with the tuples."""
    mask = np.uint64(len(table) - 1)
    for t in range(ntuples):
        h = _tuple_hash(
            tuple_info[t, T_AF],
            tuple_addr[t, 0],
            tuple_addr[t, 1],
            tuple_addr[t, 2],
            tuple_addr[t, 3],
            tuple_info[t, T_APORT],
            tuple_info[t, T_BPORT],
        )
        slot = h & mask
        while table[slot] != 0:
            slot = (slot + np.uint64(1)) & mask
        table[slot] = t + 1


@njit(cache=True, nogil=True)
def track(  # type: ignore[no-untyped-def]
    start,
    frame,
    ts_ns,
    af,
    src_hi,
    src_lo,
    dst_hi,
    dst_lo,
    sport,
    dport,
    seq,
    ack,
    flags,
    window,
    paylen,
    tsval,
    opt_index,
    syn_options,
    table,
    tuple_addr,
    tuple_info,
    counts,
    conn_state,
    dir_state,
    dir_small,
    initial,
    initial_small,
    out_conn,
    out_dir,
    out_rel,
    out_win,
    shard,
    shards,
):
    """Follow a chunk of segments from ``start`` on. ``counts`` holds [tuples,
    connections] and is updated. Per segment it writes its connection, direction,
    relative sequence number and window in bytes (as the peer computes it) to the
    ``out_`` arrays. Returns where it stopped: the chunk's length, or earlier when
    the tables are full (the caller makes room and calls again from there).

    With ``shards`` > 1, only the 4-tuples whose :func:`shard_of` is ``shard`` are
    followed (their connections numbered from 0 in this shard); the other
    segments get connection -1."""
    mask = np.uint64(len(table) - 1)
    tuple_room = min(len(tuple_info), len(table) // 2)
    conn_room = len(conn_state)
    ntuples = counts[0]
    nconn = counts[1]
    for i in range(start, len(frame)):
        if ntuples >= tuple_room or nconn >= conn_room:
            counts[0] = ntuples
            counts[1] = nconn
            return i
        # one key for both directions: the lower endpoint first
        s_hi, s_lo, s_port = src_hi[i], src_lo[i], np.int64(sport[i])
        d_hi, d_lo, d_port = dst_hi[i], dst_lo[i], np.int64(dport[i])
        if s_hi != d_hi:
            src_is_a = s_hi < d_hi
        elif s_lo != d_lo:
            src_is_a = s_lo < d_lo
        else:
            src_is_a = s_port <= d_port
        if src_is_a:
            a_hi, a_lo, a_port, b_hi, b_lo, b_port = s_hi, s_lo, s_port, d_hi, d_lo, d_port
        else:
            a_hi, a_lo, a_port, b_hi, b_lo, b_port = d_hi, d_lo, d_port, s_hi, s_lo, s_port
        fam = np.int64(af[i])
        h = _tuple_hash(fam, a_hi, a_lo, b_hi, b_lo, a_port, b_port)
        if shards > 1 and _shard(h, shards) != shard:
            out_conn[i] = -1
            continue
        slot = h & mask
        t = -1
        while table[slot] != 0:
            k = table[slot] - 1
            if (
                tuple_addr[k, 1] == a_lo
                and tuple_addr[k, 3] == b_lo
                and tuple_info[k, T_APORT] == a_port
                and tuple_info[k, T_BPORT] == b_port
                and tuple_addr[k, 0] == a_hi
                and tuple_addr[k, 2] == b_hi
                and tuple_info[k, T_AF] == fam
            ):
                t = k
                break
            slot = (slot + np.uint64(1)) & mask
        if t < 0:
            t = ntuples
            ntuples += 1
            table[slot] = t + 1
            tuple_addr[t, 0] = a_hi
            tuple_addr[t, 1] = a_lo
            tuple_addr[t, 2] = b_hi
            tuple_addr[t, 3] = b_lo
            tuple_info[t, T_AF] = fam
            tuple_info[t, T_APORT] = a_port
            tuple_info[t, T_BPORT] = b_port
            tuple_info[t, T_CONN] = -1
            tuple_info[t, T_SYN_SEQ] = -1
        f = np.int64(flags[i])
        s = seq[i]
        ts = ts_ns[i]
        pure_syn = (f & (SYN | ACK)) == SYN
        c = tuple_info[t, T_CONN]
        # A SYN with a sequence number other than the last SYN's on this 4-tuple
        # opens a new connection (as tshark numbers tcp.stream); a retransmitted
        # SYN keeps the old one.
        if c < 0 or (pure_syn and tuple_info[t, T_SYN_SEQ] != s):
            c = nconn
            nconn += 1
            tuple_info[t, T_CONN] = c
            conn_state[c, K_TUPLE] = t
            conn_state[c, K_FIRST_A] = 1 if src_is_a else 0
            conn_state[c, K_FIRST_FRAME] = frame[i]
            conn_state[c, K_FIRST_TS] = ts
            # the client as far as the first segment tells: the SYN's sender, the
            # SYN-ACK's receiver, else the side with the higher port
            if pure_syn:
                conn_state[c, K_CLIENT] = 0
            elif f & SYN:
                conn_state[c, K_CLIENT] = 1
            else:
                conn_state[c, K_CLIENT] = 0 if s_port > d_port else 1
            for d0 in range(2):
                for k2 in range(DIR_FIELDS):
                    dir_state[c, d0, k2] = initial[k2]
                for k2 in range(SMALL_FIELDS):
                    dir_small[c, d0, k2] = initial_small[k2]
        if pure_syn:
            tuple_info[t, T_SYN_SEQ] = s
        d = 0 if (1 if src_is_a else 0) == conn_state[c, K_FIRST_A] else 1
        o = 1 - d
        conn_state[c, K_LAST_TS] = ts
        mine = dir_state[c, d]
        peer = dir_state[c, o]
        mine_s = dir_small[c, d]
        peer_s = dir_small[c, o]
        length = np.int64(paylen[i])
        win_raw = np.int64(window[i])
        mine[D_PKTS] += 1
        mine[D_BYTES] += length
        is_syn = (f & SYN) != 0
        is_rst = (f & RST) != 0
        # A SYN-ACK with a new sequence number answers a retransmitted SYN anew (a
        # cookie, then an ordinary one once the queue had room, or the reverse):
        # the handshake is the latest one, whose number the client will acknowledge.
        renewed = is_syn and not pure_syn and mine_s[S_HS_KIND] == 2 and s != mine[D_HS_SEQ]
        if renewed:
            mine_s[S_SYNACK_RENEWED] += 1
            mine_s[S_HS_KIND] = 0
            mine_s[S_SYNACK_SAME_SEQ] = 0
            mine[D_REP_TS] = -1
            mine[D_REP_TSVAL] = -1
            mine[D_LATER_FRAME] = -1
            mine[D_LATER_BEST] = NO_RUN
            mine[D_FAR_AT] = -1
            mine[D_FAR_BEST] = NO_RUN
            mine[D_INF_FRAME] = -1
            # it answers the client's latest SYN
            peer[D_LSYN_FRAME] = peer[D_SYN_LATEST_FRAME]
            peer[D_LSYN_TS] = peer[D_SYN_LATEST_TS]
        if is_syn and not pure_syn:
            mine_s[S_SYNACKS] += 1
            if mine_s[S_HS_KIND] == 2 and s == mine[D_HS_SEQ]:
                mine_s[S_SYNACK_SAME_SEQ] += 1
                # a SYN's TSval is among its options, not in the tsval column
                j = opt_index[i]
                if mine[D_REP_TS] < 0 and j >= 0 and syn_options[j, 4] >= 0:
                    mine[D_REP_TS] = ts
                    mine[D_REP_TSVAL] = syn_options[j, 4]
        if is_syn and mine_s[S_HS_KIND] == 0:
            mine_s[S_HS_KIND] = 1 if pure_syn else 2
            mine[D_HS_FRAME] = frame[i]
            mine[D_HS_TS] = ts
            mine_s[S_HS_WIN] = win_raw
            mine_s[S_HS_FLAGS] = f
            mine[D_HS_SEQ] = s
            j = opt_index[i]
            if j >= 0:
                mine_s[S_HS_MSS] = syn_options[j, 0]
                mine_s[S_HS_WS] = syn_options[j, 1]
                mine_s[S_HS_SACK] = syn_options[j, 2]
                mine_s[S_HS_TSOK] = syn_options[j, 3]
                mine[D_HS_TSVAL] = syn_options[j, 4]
        if pure_syn:
            mine[D_SYN_LATEST_FRAME] = frame[i]
            mine[D_SYN_LATEST_TS] = ts
        if pure_syn and peer_s[S_HS_KIND] != 2 and mine_s[S_HS_KIND] != 2:
            mine[D_LSYN_FRAME] = frame[i]
            mine[D_LSYN_TS] = ts
        if mine[D_RTT_TS] < 0 and (f & (SYN | ACK)) == ACK and peer_s[S_HS_KIND] == 2:
            mine[D_RTT_TS] = ts
        if mine_s[S_HS_KIND] == 2 and not is_syn:
            elapsed = ts - mine[D_HS_TS]
            near = elapsed <= LATER_SPAN_NS
            far_at = mine[D_FAR_AT]
            if not near and far_at < 0:
                far_at = elapsed
            far = not near and elapsed - far_at <= FAR_SLICE_NS
            if tsval[i] >= 0 and mine[D_HS_TSVAL] >= 0 and (near or far):
                ahead = (tsval[i] - mine[D_HS_TSVAL]) % SEQ_SPACE
                if ahead >= SEQ_SPACE // 2:
                    ahead -= SEQ_SPACE
                run = ahead * 1_000_000 - elapsed
                if near:
                    if run > mine[D_LATER_BEST]:
                        mine[D_LATER_BEST] = run
                else:
                    mine[D_FAR_AT] = far_at
                    if run > mine[D_FAR_BEST]:
                        mine[D_FAR_BEST] = run
            if mine[D_LATER_FRAME] < 0 and tsval[i] >= 0:
                mine[D_LATER_FRAME] = frame[i]
                mine[D_LATER_TS] = ts
                mine[D_LATER_TSVAL] = tsval[i]
            if mine[D_INF_FRAME] < 0 and (f & ACK) and not is_rst:
                mine[D_INF_FRAME] = frame[i]
                mine_s[S_INF_WIN] = win_raw
                mine[D_INF_ACK] = ack[i]
        # the byte stream: sequence numbers relative to the direction's first one
        if mine[D_BASE] < 0:
            mine[D_BASE] = s
        rel = (s - mine[D_BASE]) % SEQ_SPACE
        seq_end = rel + length + (1 if is_syn else 0) + (1 if f & FIN else 0)
        before = mine[D_HIGH]
        if seq_end > before:
            mine[D_HIGH] = seq_end
        # windows in bytes: shifted by the sender's announced shift when both sides
        # announced one (RFC 7323 2.2; above 14 counts as 14); never in a SYN
        shift = 0
        if mine_s[S_HS_WS] >= 0 and peer_s[S_HS_WS] >= 0:
            shift = min(mine_s[S_HS_WS], 14)
        win_bytes = win_raw if is_syn else win_raw << shift
        peer_ok = peer_s[S_LAST_WIN] >= 0
        peer_zero = peer_ok and peer_s[S_LAST_WIN] == 0 and (peer_s[S_LAST_FLAGS] & RST) == 0
        probe = peer_zero and length <= 1 and (f & (SYN | FIN | RST)) == 0
        retrans = length > 0 and rel + length <= before and not probe
        if retrans:
            mine_s[S_RETRANS] += 1
        if probe:
            mine_s[S_PROBE] += 1
        if win_raw == 0 and (f & (RST | SYN)) == 0:
            mine_s[S_ZERO] += 1
        if not is_syn and not is_rst:
            if mine_s[S_WIN_CHANGES] == 0 or win_bytes != mine_s[S_WIN_LAST]:
                mine_s[S_WIN_CHANGES] += 1
                mine_s[S_WIN_LAST] = win_bytes
            if mine_s[S_WMAX] < 0 or win_bytes < mine_s[S_WMIN]:
                mine_s[S_WMIN] = win_bytes
            if win_bytes > mine_s[S_WMAX]:
                mine_s[S_WMAX] = win_bytes
        # Waiting at the window: the other side's next segment after a data
        # segment that left less than one segment of its window ...
        if peer[D_PEND_TS] >= 0 and peer[D_PEND_OTHER_TS] < 0:
            peer[D_PEND_OTHER_TS] = ts
        if length > 0 and not retrans:
            # ... counts when the sender's next data segment came after it (it had
            # data waiting). The wait ends with the peer's segment, or, when the
            # window it opened was still below two segments (silly-window
            # avoidance and the persist timer hold the sender), with this one.
            if mine[D_PEND_TS] >= 0:
                if mine[D_PEND_OTHER_TS] >= 0:
                    small_after = peer_s[S_LAST_WIN] < 2 * mine_s[S_PEND_SEG]
                    wait_end = ts if small_after else mine[D_PEND_OTHER_TS]
                    mine[D_RWND_LIMITED_NS] += wait_end - mine[D_PEND_TS]
                    mine_s[S_WAITS] += 1
                mine[D_PEND_TS] = -1
                mine[D_PEND_OTHER_TS] = -1
            if mine[D_FIRST_DATA_TS] < 0:
                mine[D_FIRST_DATA_TS] = ts
            if length > mine_s[S_MAXSEG]:
                mine_s[S_MAXSEG] = length
            # A capture on the sending host shows TSO super-segments; the segment
            # the receiver's window must fit is at most the MSS it announced.
            peer_mss = peer_s[S_HS_MSS] if peer_s[S_HS_MSS] > 0 else 65536
            seg = min(mine_s[S_MAXSEG], peer_mss)
            if peer_ok and (peer_s[S_LAST_FLAGS] & ACK) != 0:
                in_flight = (s + length - peer[D_LAST_ACK]) % SEQ_SPACE
                if in_flight > (1 << 31):
                    in_flight = 0
                if in_flight + seg > peer_s[S_LAST_WIN]:
                    mine[D_PEND_TS] = ts
                    mine_s[S_PEND_SEG] = seg
                    mine[D_PEND_OTHER_TS] = -1
        mine_s[S_LAST_WIN] = win_bytes
        mine_s[S_LAST_FLAGS] = f
        mine[D_LAST_ACK] = ack[i]
        out_conn[i] = c
        out_dir[i] = d
        out_rel[i] = rel
        out_win[i] = win_bytes
    counts[0] = ntuples
    counts[1] = nconn
    return len(frame)


@njit(cache=True, nogil=True)
def series_pass(conn, direction, flags, ts_ns, win_bytes, slot, picks, done, last, taken, out):  # type: ignore[no-untyped-def]
    """The points of window series: for each segment of a chosen connection
    (``slot[conn]`` >= 0), SYNs and RSTs aside, a change of its direction's window
    is numbered; the changes whose numbers are in ``picks[slot, d]`` (ascending,
    -1 padded) go to ``out[slot, d, k]`` as (time, bytes)."""
    for i in range(len(conn)):
        s = slot[conn[i]]
        if s < 0 or flags[i] & (SYN | RST):
            continue
        d = direction[i]
        w = win_bytes[i]
        if done[s, d] > 0 and w == last[s, d]:
            continue
        number = done[s, d]
        done[s, d] += 1
        last[s, d] = w
        k = taken[s, d]
        if k < picks.shape[2] and picks[s, d, k] == number:
            out[s, d, k, 0] = ts_ns[i]
            out[s, d, k, 1] = w
            taken[s, d] = k + 1

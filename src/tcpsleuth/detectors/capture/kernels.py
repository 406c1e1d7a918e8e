"""The per-segment loops of the capture analysis, compiled with numba.

Segments come in capture order, a chunk at a time. Each one is matched to its
connection through the table of 4-tuples (:mod:`fourtuples`), and that connection's
running state is updated: counts, handshake, each direction's byte stream (where it
starts, the highest byte sent so far, retransmissions), the other side's latest
window and the waits at a full window. Nothing is kept per segment, so memory grows
with the number of connections, not with the capture. Pure functions; without
numba they run as Python.

Three passes over each chunk, each with its own part of the state: :func:`assign`
(which connection and direction), :func:`follow_handshakes` (the handshake and what
comes soon after it; it hands the next pass each segment's window shift and its
peer's MSS as they stood then, in ``out_win`` and ``out_rel``) and
:func:`follow_streams` (the byte streams, windows and waits, written per segment to
``out_rel`` and ``out_win``).

About 500 lines, longer than most modules, because the field layout of the state
arrays and the passes that fill them must be read together.
"""

from __future__ import annotations

import numpy as np

from tcpsleuth.compiled import njit
from tcpsleuth.detectors.capture import fourtuples
from tcpsleuth.detectors.capture.fourtuples import T_CONN, T_SYN_SEQ
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
# the far segments: the first one after LATER_SPAN_NS and those this soon after it.
# A lone pure ACK may carry a stale TSval (an idle storm's guest answered a FIN with
# an ACK stamped 6 ms before it left, and the cookie seemed not to lag): a second
# of them lets the server's FIN, 0.8 s later there, speak too; the clock-rate error
# over it is a few microseconds (clockrate keeps it within DRIFT_BUDGET_NS)
FAR_SLICE_NS = 1_000_000_000
NO_RUN = -(1 << 62)  # LATER_BEST before any segment counted
DIR_INITIAL[D_LATER_BEST] = NO_RUN
DIR_INITIAL[D_FAR_BEST] = NO_RUN  # LSYN_TS: read only with an LSYN_FRAME
SMALL_INITIAL = np.zeros(SMALL_FIELDS, dtype=np.int32)
SMALL_INITIAL[[S_LAST_WIN, S_WMIN, S_WMAX, S_HS_MSS, S_HS_WS]] = -1


@njit(cache=True, nogil=True, _nrt=False)
def assign(  # type: ignore[no-untyped-def]
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
    flags,
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
    shard,
    shards,
):
    """The first of the three passes over a chunk of segments, from ``start`` on: each
    segment's connection and direction (``out_conn``, ``out_dir``); a new connection
    gets its first-segment facts and its initial state. ``counts`` holds [tuples,
    connections] and is updated. Returns where it stopped: the chunk's length, or
    earlier when the tables are full (the caller makes room, runs the other two passes
    up to there, and calls again from there).

    With ``shards`` > 1, only the 4-tuples whose :func:`fourtuples.shard_of` is
    ``shard`` are followed (their connections numbered from 0 in this shard); the
    other segments get connection -1."""
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
        h = fourtuples.tuple_hash(fam, a_hi, a_lo, b_hi, b_lo, a_port, b_port)
        if shards > 1 and fourtuples.shard_of_hash(h, shards) != shard:
            out_conn[i] = -1
            continue
        t, ntuples = fourtuples.find_or_add(
            table, tuple_addr, tuple_info, ntuples, h, fam, a_hi, a_lo, a_port, b_hi, b_lo, b_port
        )
        f = np.int64(flags[i])
        s = seq[i]
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
            conn_state[c, K_FIRST_TS] = ts_ns[i]
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
        conn_state[c, K_LAST_TS] = ts_ns[i]
        out_conn[i] = c
        out_dir[i] = 0 if (1 if src_is_a else 0) == conn_state[c, K_FIRST_A] else 1
    counts[0] = ntuples
    counts[1] = nconn
    return len(frame)


@njit(cache=True, nogil=True, _nrt=False)
def follow_handshakes(  # type: ignore[no-untyped-def]
    start,
    stop,
    frame,
    ts_ns,
    seq,
    ack,
    flags,
    window,
    tsval,
    opt_index,
    syn_options,
    dir_state,
    dir_small,
    out_conn,
    out_dir,
    out_shift,
    out_peer_mss,
):
    """The handshake fields of each segment's direction (HS_*, SYN-ACK repeats and
    renewals, LSYN_*, RTT_TS, and after its own SYN-ACK: LATER_*, FAR_*, INF_*). Per
    segment, the shift its window is scaled by and the MSS its peer announced, as
    they stand after it (``out_shift``, ``out_peer_mss``; -1: none announced)."""
    for i in range(start, stop):
        c = out_conn[i]
        if c < 0:
            continue
        d = out_dir[i]
        mine = dir_state[c, d]
        peer = dir_state[c, 1 - d]
        mine_s = dir_small[c, d]
        peer_s = dir_small[c, 1 - d]
        f = np.int64(flags[i])
        s = seq[i]
        ts = ts_ns[i]
        win_raw = np.int64(window[i])
        is_syn = (f & SYN) != 0
        pure_syn = (f & (SYN | ACK)) == SYN
        # A SYN-ACK with a new sequence number answers a retransmitted SYN anew (a
        # cookie, then an ordinary one once the queue had room, or the reverse):
        # the handshake is the latest one, whose number the client will acknowledge.
        if is_syn and not pure_syn and mine_s[S_HS_KIND] == 2 and s != mine[D_HS_SEQ]:
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
        j = opt_index[i]  # a SYN's options (its TSval among them, not in tsval)
        if is_syn and not pure_syn:
            mine_s[S_SYNACKS] += 1
            if mine_s[S_HS_KIND] == 2 and s == mine[D_HS_SEQ]:
                mine_s[S_SYNACK_SAME_SEQ] += 1
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
            if j >= 0:
                mine_s[S_HS_MSS] = syn_options[j, 0]
                mine_s[S_HS_WS] = syn_options[j, 1]
                mine_s[S_HS_SACK] = syn_options[j, 2]
                mine_s[S_HS_TSOK] = syn_options[j, 3]
                mine[D_HS_TSVAL] = syn_options[j, 4]
        if pure_syn:
            mine[D_SYN_LATEST_FRAME] = frame[i]
            mine[D_SYN_LATEST_TS] = ts
            if peer_s[S_HS_KIND] != 2 and mine_s[S_HS_KIND] != 2:
                mine[D_LSYN_FRAME] = frame[i]
                mine[D_LSYN_TS] = ts
        if mine[D_RTT_TS] < 0 and (f & (SYN | ACK)) == ACK and peer_s[S_HS_KIND] == 2:
            mine[D_RTT_TS] = ts
        if mine_s[S_HS_KIND] == 2 and not is_syn:
            _after_synack(i, frame, ts, tsval, ack, f, win_raw, mine, mine_s)
        # windows are shifted by the sender's announced shift when both sides
        # announced one (RFC 7323 2.2; above 14 counts as 14)
        both = mine_s[S_HS_WS] >= 0 and peer_s[S_HS_WS] >= 0
        out_shift[i] = min(mine_s[S_HS_WS], 14) if both else 0
        out_peer_mss[i] = peer_s[S_HS_MSS]


@njit(cache=True, nogil=True, _nrt=False)
def _after_synack(i, frame, ts, tsval, ack, f, win_raw, mine, mine_s):  # type: ignore[no-untyped-def]
    """A SYN-ACK sender's segment after it: its timestamp clock against the capture's
    (LATER_BEST near the SYN-ACK, FAR_* later), its first TSval (LATER_*) and its
    first ACK's window (INF_*)."""
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
    if mine[D_INF_FRAME] < 0 and (f & ACK) and not (f & RST):
        mine[D_INF_FRAME] = frame[i]
        mine_s[S_INF_WIN] = win_raw
        mine[D_INF_ACK] = ack[i]


@njit(cache=True, nogil=True, _nrt=False)
def follow_streams(  # type: ignore[no-untyped-def]
    start,
    stop,
    ts_ns,
    seq,
    ack,
    flags,
    window,
    paylen,
    dir_state,
    dir_small,
    out_conn,
    out_dir,
    out_rel,
    out_win,
):
    """Each direction's byte stream, windows and waits at a full window. Reads a
    segment's shift from ``out_win`` and its peer's MSS from ``out_rel`` (left there
    by :func:`follow_handshakes`) and writes over them its window in bytes and its
    sequence number relative to the direction's first."""
    for i in range(start, stop):
        c = out_conn[i]
        if c < 0:
            continue
        d = out_dir[i]
        mine = dir_state[c, d]
        peer = dir_state[c, 1 - d]
        mine_s = dir_small[c, d]
        peer_s = dir_small[c, 1 - d]
        f = np.int64(flags[i])
        s = seq[i]
        ts = ts_ns[i]
        length = np.int64(paylen[i])
        win_raw = np.int64(window[i])
        is_syn = (f & SYN) != 0
        mine[D_PKTS] += 1
        mine[D_BYTES] += length
        # the byte stream: sequence numbers relative to the direction's first one
        if mine[D_BASE] < 0:
            mine[D_BASE] = s
        rel = (s - mine[D_BASE]) % SEQ_SPACE
        seq_end = rel + length + (1 if is_syn else 0) + (1 if f & FIN else 0)
        before = mine[D_HIGH]
        if seq_end > before:
            mine[D_HIGH] = seq_end
        win_bytes = win_raw if is_syn else win_raw << out_win[i]  # never scaled in a SYN
        peer_mss = out_rel[i] if out_rel[i] > 0 else 65536
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
        if not is_syn and not (f & RST):
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
            _data_segment(ts, s, length, peer_mss, peer_ok, mine, peer, mine_s, peer_s)
        mine_s[S_LAST_WIN] = win_bytes
        mine_s[S_LAST_FLAGS] = f
        mine[D_LAST_ACK] = ack[i]
        out_rel[i] = rel
        out_win[i] = win_bytes


@njit(cache=True, nogil=True, _nrt=False)
def _data_segment(ts, s, length, peer_mss, peer_ok, mine, peer, mine_s, peer_s):  # type: ignore[no-untyped-def]
    """A new data segment: it ends the wait its sender's previous one began, and it
    begins one when what is in flight leaves less than a segment of the peer's window.

    The wait counts when the sender's next data segment came after the peer's
    segment (it had data waiting); it ends with the peer's segment, or, when the
    window that opened was still below two segments (silly-window avoidance and the
    persist timer hold the sender), with this one."""
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
    # A capture on the sending host shows TSO super-segments; the segment the
    # receiver's window must fit is at most the MSS it announced.
    seg = min(mine_s[S_MAXSEG], peer_mss)
    if peer_ok and (peer_s[S_LAST_FLAGS] & ACK) != 0:
        in_flight = (s + length - peer[D_LAST_ACK]) % SEQ_SPACE
        if in_flight > (1 << 31):
            in_flight = 0
        if in_flight + seg > peer_s[S_LAST_WIN]:
            mine[D_PEND_TS] = ts
            mine_s[S_PEND_SEG] = seg
            mine[D_PEND_OTHER_TS] = -1

"""SYN cookies without timestamps, recognised by the options their SYN-ACKs lost.

A cookie keeps no state, so the client's window scale and SACK can only come back in
the TSval's low bits (``cookie_init_timestamp`` in net/ipv4/syncookies.c). Without
timestamps (``net.ipv4.tcp_timestamps=0`` on the server, or a client that sends
none) the kernel clears them (``cookie_v4_init_sequence`` keeps the MSS alone): the
SYN-ACK carries the MSS only, and the connection runs unscaled, its window capped at
64 KiB, so at most 64 KiB per round trip.

A SYN-ACK without timestamps that carries neither window scale nor SACK, answering a
SYN that offered at least one of them, from a listener whose other SYN-ACKs in the
capture carry them, is a cookie. A middlebox that strips the window-scale option
(``wscale-stripped``) does so on every handshake and leaves SACK alone; cookies strip
everything but the MSS, and only on the handshakes of an overflow. A SYN that offered
neither option leaves nothing to compare: undecided. A SYN-ACK without timestamps
that carries window scale or SACK is no cookie: a cookie could not have kept them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tcpsleuth.detectors.capture.connections import Analysis
from tcpsleuth.detectors.capture.windows import clients_hit
from tcpsleuth.model.capture import OPT_MSS, OPT_SACK, OPT_TIMESTAMPS, OPT_WSCALE
from tcpsleuth.model.findings import Finding, Severity, listener_subject

# an unscaled window field: what a connection without window scaling can offer
UNSCALED_WINDOW = 65535
# the listener's SYN-ACKs carrying the options for a high-confidence verdict (fewer,
# but at least one: medium)
SURE_CARRIED = 3
EXAMPLES = 10


@dataclass
class ClearedOptions:
    """Per connection (by stream): whether its SYN-ACK is a cookie by the options it
    lost, how sure (2 high, 1 medium, 0 none), whether it is no cookie (kept an option
    without timestamps), and how many of its listener's SYN-ACKs carried window scale
    or SACK."""

    cookie: np.ndarray  # bool
    ordinary: np.ndarray  # bool
    confidence: np.ndarray  # int8
    carried: np.ndarray  # int64: the listener's SYN-ACKs with window scale or SACK


def judge(analysis: Analysis) -> ClearedOptions:
    """The cookies without timestamps of every connection with a SYN and a SYN-ACK."""
    cols = analysis.columns
    n = len(cols.has_syn) if cols else 0
    if not n:
        none = np.zeros(0, dtype=np.int64)
        return ClearedOptions(none > 0, none > 0, none.astype(np.int8), none)
    syn, synack = analysis.hs_syn, analysis.hs_synack
    both = cols.has_syn & cols.has_synack
    offered = (syn[:, OPT_WSCALE] >= 0) | (syn[:, OPT_SACK] > 0)
    carries = both & ((synack[:, OPT_WSCALE] >= 0) | (synack[:, OPT_SACK] > 0))
    untimed = both & (synack[:, OPT_TIMESTAMPS] <= 0)
    mss_only = (
        untimed
        & (synack[:, OPT_MSS] >= 0)
        & (synack[:, OPT_WSCALE] < 0)
        & (synack[:, OPT_SACK] <= 0)
    )
    keys, inverse = np.unique(cols.server_key, return_inverse=True)
    carried = np.bincount(inverse, weights=carries, minlength=len(keys)).astype(np.int64)
    carried = carried[inverse]
    cookie = mss_only & offered & (carried > 0)
    confidence = np.where(cookie, np.where(carried >= SURE_CARRIED, 2, 1), 0).astype(np.int8)
    return ClearedOptions(cookie, untimed & carries, confidence, carried)


def _options(rows: np.ndarray) -> dict[str, int]:
    """How many of ``rows`` (handshake option rows) carried each option."""
    return {
        "mss": int(np.count_nonzero(rows[:, OPT_MSS] >= 0)),
        "wscale": int(np.count_nonzero(rows[:, OPT_WSCALE] >= 0)),
        "sack": int(np.count_nonzero(rows[:, OPT_SACK] > 0)),
        "timestamps": int(np.count_nonzero(rows[:, OPT_TIMESTAMPS] > 0)),
    }


def findings(
    analysis: Analysis, cleared: ClearedOptions, client_ids: Mapping[int, str] | None = None
) -> list[Finding]:
    """``wscale-lost-syn-cookies``, one finding per listener with a cookie whose
    SYN-ACK lost the client's options: the window ceiling, and the throughput ceiling
    where the capture shows the round trip."""
    cols = analysis.columns
    out: list[Finding] = []
    if not len(cleared.cookie) or not cleared.cookie.any():
        return out
    keys = cols.server_key
    for key in sorted(set(keys[cleared.cookie].tolist())):
        streams = np.flatnonzero(cleared.cookie & (keys == key))
        members = (keys == key) & cols.has_synack
        first = int(streams[0])
        server = analysis.connections.endpoints_of([first])[first][1]
        # the round trip from the client's last SYN to its ACK of the SYN-ACK (the
        # first SYN's may have waited out a retransmission timeout)
        done = streams[cols.rtt_ns[streams] >= 0]
        rtts = cols.syn_ts[done] + cols.rtt_ns[done] - cols.last_syn_ts[done]
        rtts = rtts[rtts > 0]
        rtt_ms = round(float(np.median(rtts)) / 1e6, 3) if len(rtts) else None
        ceiling = round(UNSCALED_WINDOW / (rtt_ms / 1e3)) if rtt_ms else None
        sure = int(np.count_nonzero(cleared.confidence[streams] == 2))
        confidence = "high" if sure == len(streams) else "medium"
        carried = int(cleared.carried[first])
        out.append(
            Finding(
                kind="wscale-lost-syn-cookies",
                severity=Severity.WARNING,
                subject=listener_subject(server),
                summary=(
                    f"{len(streams)} of {int(members.sum())} connections answered by SYN "
                    "cookies without timestamps: the SYN-ACK carried the MSS only, so "
                    f"window scaling is lost (window capped at {UNSCALED_WINDOW} bytes"
                    + (
                        f", {ceiling / 1e6:.1f} MB/s at the {rtt_ms} ms round trip)"
                        if ceiling is not None
                        else ")"
                    )
                ),
                evidence={
                    "cookie_connections": len(streams),
                    "cookie_connections_high_confidence": sure,
                    "confidence": confidence,
                    "handshakes": int(members.sum()),
                    "offered": _options(analysis.hs_syn[streams]),
                    "returned": _options(analysis.hs_synack[streams]),
                    "listener_synacks": int(cols.synacks[members].sum()),
                    "listener_synacks_with_options": carried,
                    "window_ceiling_bytes": UNSCALED_WINDOW,
                    "rtt_ms": rtt_ms,
                    "throughput_ceiling_bytes_per_s": ceiling,
                    **clients_hit(analysis, streams.tolist(), client_ids),
                    "streams": streams[:EXAMPLES].tolist(),
                },
                advice=(
                    "SYN cookies can keep window scale and SACK only in the TCP timestamp: "
                    "set net.ipv4.tcp_timestamps=1 on the server, and raise the listen "
                    "backlog (Kafka: socket.listen.backlog.size) and net.core.somaxconn so "
                    "reconnect storms need no cookies"
                ),
            )
        )
    return out

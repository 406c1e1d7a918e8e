"""SYN-cookie SYN-ACKs recognised in a capture.

A SYN cookie keeps no state, so with timestamps on the kernel packs the client's
options into the low 6 bits of the SYN-ACK's TSval (``cookie_init_timestamp``
in net/ipv4/syncookies.c): window scale in bits 0-3 (0xf for none), SACK in bit
4, ECN in bit 5. To do so it rounds its millisecond clock down to a multiple of
64, sets those bits, and steps back 64 if that lands in the future; the
connection's timestamp offset is added as usual.

The offset is secret (per address pair on older kernels, per connection on
newer ones) but the same for the whole connection, so it cancels out between
the SYN-ACK and the server's next segment: for an ordinary SYN-ACK the TSval
advances exactly as the capture's clock does; after a cookie SYN-ACK it jumps
ahead by the amount the clock was rounded down, ``delta`` (0 to 63 ms). And
since the server's millisecond clock is one clock for all its connections,
``(opts + delta - t_ms) mod 64`` is the same for all its cookie connections:
that agreement is what makes a verdict confident. A cookie whose rounding
happened to be under 2 ms looks ordinary; about 3 % of cookies are missed.

Without timestamps nothing in the SYN-ACK marks a cookie; such handshakes get
no verdict.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from tcpsleuth.detectors.capture import Analysis
from tcpsleuth.model.findings import Finding, Severity, listener_subject
from tcpsleuth.sources.pcap.decode import CWR, ECE, SYN
from tcpsleuth.sources.pcap.walk import OPT_SACK, OPT_TIMESTAMPS, OPT_TSVAL, OPT_WSCALE

TS_OPT_WSCALE_MASK = 0xF
TS_OPT_SACK = 1 << 4
TS_OPT_ECN = 1 << 5
# Cookie connections whose clock phase must agree for a high-confidence verdict.
MIN_GROUP_AGREEMENT = 3
MAX_PHASE_CLUSTERS = 4
# TSval running ahead by this much (ms) after the SYN-ACK marks a cookie; below
# 2 ms it is the millisecond rounding of two clocks.
DELTA_MIN, DELTA_MAX = 1.75, 66.5


@dataclass(frozen=True)
class CookieVerdict:
    stream: int
    cookie: bool
    confidence: str  # "high", "medium", "low"
    delta_ms: float  # how far TSval ran ahead of the capture clock after the SYN-ACK


CONFIDENCE = ("low", "medium", "high")


@dataclass
class CookieVerdicts:
    """Verdicts for the handshakes that could be judged, as columns."""

    analysis: Analysis
    stream: np.ndarray  # int64
    cookie: np.ndarray  # bool
    confidence: np.ndarray  # int8: index into CONFIDENCE
    delta_ms: np.ndarray  # float64
    consistent: np.ndarray  # bool: matches one of the server's cookie clock phases

    def __len__(self) -> int:
        return len(self.stream)

    def by_stream(self) -> dict[int, CookieVerdict]:
        return {
            s: CookieVerdict(s, c, CONFIDENCE[k], round(d, 3))
            for s, c, k, d in zip(
                self.stream.tolist(),
                self.cookie.tolist(),
                self.confidence.tolist(),
                self.delta_ms.tolist(),
                strict=True,
            )
        }


def expected_bits(wscale: np.ndarray, sack: np.ndarray, ecn: np.ndarray) -> np.ndarray:
    bits = np.where(wscale < 0, TS_OPT_WSCALE_MASK, wscale & TS_OPT_WSCALE_MASK)
    return bits | np.where(sack > 0, TS_OPT_SACK, 0) | np.where(ecn, TS_OPT_ECN, 0)


def _phase_peak(phases: np.ndarray) -> tuple[float, int]:
    """The phase (mod 64 ms) most phases agree with to within 1.5 ms, and how many."""
    bins = np.bincount((np.floor(phases * 2).astype(np.int64)) % 128, minlength=128)
    window = np.zeros(128, dtype=np.int64)
    for step in range(-3, 4):
        window += np.roll(bins, step)
    center = int(np.argmax(window)) / 2 + 0.25
    # refine: the median of the phases around the densest window, unwrapped around it
    offsets = (phases - center + 32) % 64 - 32
    near = offsets[np.abs(offsets) <= 2.0]
    peak = (center + float(np.median(near))) % 64 if len(near) else center
    agreeing = int((_circular_distance(phases, peak) <= 1.5).sum())
    return peak, agreeing


def _circular_distance(a: np.ndarray, b: float) -> np.ndarray:
    d = np.abs(a - b) % 64
    return np.minimum(d, 64 - d)


def classify(analysis: Analysis) -> CookieVerdicts:
    """A verdict for every handshake whose SYN-ACK and a later server segment carry
    timestamps."""
    n = len(analysis.order)
    empty = np.zeros(0, dtype=np.int64)
    if n == 0:
        return CookieVerdicts(
            analysis, empty, empty > 0, empty.astype(np.int8), empty * 1.0, empty > 0
        )
    tcp = analysis.tcp
    order = analysis.order
    flags = tcp.flags[order]
    tsval = tcp.tsval[order]
    pos = np.arange(n)
    synack_pos = analysis.first_synack[analysis.conn]
    later = (
        ~analysis.c2s & ((flags & SYN) == 0) & (tsval >= 0) & (synack_pos >= 0) & (pos > synack_pos)
    )
    first_later = np.minimum.reduceat(np.where(later, pos, n + 1), analysis.starts)
    cols = analysis.columns
    syn, synack = analysis.hs_syn, analysis.hs_synack
    judged = np.flatnonzero(
        (first_later <= n)
        & cols["has_syn"]
        & cols["has_synack"]
        & (syn[:, OPT_TIMESTAMPS] > 0)
        & (synack[:, OPT_TSVAL] >= 0)
    )
    ts = tcp.ts_ns[order]
    p0 = analysis.first_synack[judged]
    p1 = first_later[judged]
    elapsed_ms = (ts[p1] - ts[p0]) / 1e6
    advanced = (tsval[p1] - synack[judged, OPT_TSVAL]) % (1 << 32)
    delta = advanced - elapsed_ms
    ecn = (cols["syn_flags"][judged] & (ECE | CWR)) == (ECE | CWR)
    bits = expected_bits(syn[judged, OPT_WSCALE], syn[judged, OPT_SACK], ecn)
    t0_ms = ts[p0] / 1e6
    phase = (bits + delta - (t0_ms % 64)) % 64
    jumped = (delta >= DELTA_MIN) & (delta <= DELTA_MAX)
    # The server clock's phase (mod 64 ms) against the capture clock, per server
    # address, from the connections that jumped.
    server = cols["server_addr_key"][judged]
    consistent = np.zeros(len(judged), dtype=bool)
    for key in np.unique(server[jumped]).tolist():
        members = server == key
        remaining = phase[members & jumped]
        # A burst of cookie SYN-ACKs that waited in a queue before the capture saw
        # them shifts the apparent phase: allow a few clusters, each well supported.
        needed = max(MIN_GROUP_AGREEMENT, int(0.02 * len(remaining)))
        for _ in range(MAX_PHASE_CLUSTERS):
            if len(remaining) < needed:
                break
            peak, agreeing = _phase_peak(remaining)
            if agreeing < needed:
                break
            consistent |= members & (_circular_distance(phase, peak) <= 1.5)
            remaining = remaining[_circular_distance(remaining, peak) > 1.5]
    # Cookies whose clock happened to be rounded by under 2 ms do not jump; in a
    # storm whole bursts of them do not. Their phase still matches.
    cookie = consistent | jumped
    # high: jumped and in phase; medium: one of the two; a non-cookie verdict is
    # high when TSval kept pace with the capture clock and no phase matches
    confidence = np.where(consistent & jumped, 2, np.where(cookie, 1, 2)).astype(np.int8)
    return CookieVerdicts(analysis, judged, cookie, confidence, delta, consistent)


def per_server(verdicts: CookieVerdicts) -> dict[str, dict[str, Any]]:
    """Per server with cookies: cookie SYN-ACKs in total and per second. Counted are
    the high-confidence verdicts (a jump whose clock phase matches the server's
    cookies). A lone jump with another phase may be an ordinary SYN-ACK that waited
    in a queue before the capture saw it; a phase match without a jump may be an
    ordinary SYN-ACK sent when the clock's low bits happened to equal the options.
    So the count leans low: in a storm whose cookies were all rounded by under 2 ms
    it misses them."""
    if not len(verdicts):
        return {}
    analysis = verdicts.analysis
    cols = analysis.columns
    keys = cols["server_key"][verdicts.stream]
    sure = verdicts.cookie & (verdicts.confidence == 2)
    start = int(cols["first_ts"].min())
    out: dict[str, dict[str, Any]] = {}
    for key in np.unique(keys[sure]).tolist():
        members = keys == key
        cookies = verdicts.stream[members & sure]
        seconds = ((cols["first_ts"][cookies] - start) // 1_000_000_000).tolist()
        server = analysis.connections[int(cookies[0])].server
        out[server] = {
            "handshakes": int(members.sum()),
            "cookies": len(cookies),
            "per_second": dict(sorted(Counter(seconds).items())),
        }
    return out


def findings(verdicts: CookieVerdicts) -> list[Finding]:
    out = []
    for server, entry in per_server(verdicts).items():
        out.append(
            Finding(
                kind="syn-cookies",
                severity=Severity.WARNING,
                subject=listener_subject(server),
                summary=(
                    f"{entry['cookies']} of {entry['handshakes']} SYN-ACKs were SYN cookies: "
                    "the listen queue overflowed (or cookies are forced)"
                ),
                evidence={
                    "cookie_synacks": entry["cookies"],
                    "handshakes": entry["handshakes"],
                    "per_second": entry["per_second"],
                },
                advice=(
                    "Raise the listen backlog (Kafka: socket.listen.backlog.size) and "
                    "net.core.somaxconn so reconnect storms fit; on a kernel without commit "
                    "909172a14974 cookie connections can get a wrong window scale"
                ),
            )
        )
    return out

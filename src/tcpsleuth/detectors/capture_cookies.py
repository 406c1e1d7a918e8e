"""SYN-cookie SYN-ACKs recognised in a capture.

A SYN cookie keeps no state, so with timestamps on the kernel packs the client's
options into the low 6 bits of the SYN-ACK's TSval (``cookie_init_timestamp``
in net/ipv4/syncookies.c): window scale in bits 0-3 (0xf for none), SACK in bit
4, ECN in bit 5. To do so it rounds its millisecond clock down to a multiple of
64, sets those bits, and steps back 64 if that lands in the future; the
connection's timestamp offset is added as usual.

The strongest sign needs no clock: the offset is secret but, from Linux 4.13
until recent kernels (6.18 mixes the ports in again), one per address pair, and
before 4.10 there is none. Then every cookie between two addresses leaves the
same ``(TSval - option bits) mod 64`` while ordinary SYN-ACKs spread over the 64
values. Where an address pair shows such a cluster it decides.

Elsewhere the clocks decide. The offset is the same for the whole connection, so
it cancels between the SYN-ACK and the server's next segment. The server built
its SYN-ACK after the SYN passed the capture point and built its next segment
before that one passed it, so for an ordinary SYN-ACK the TSval cannot advance
more than the capture time between those two packets (give or take 1 ms of
rounding); after a cookie it jumps ahead by what the clock was rounded down
(0 to 63 ms). Delays before the capture point (a busy server in a storm) can
hide a jump but never make one up. Since the server's millisecond clock is one
for all its connections, ``(option bits + TSval advance - t_ms) mod 64`` is the
same for all its cookies; a handshake in that phase whose jump was hidden gets a
medium-confidence verdict.

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
from tcpsleuth.sources.pcap.decode import ACK, CWR, ECE, SYN
from tcpsleuth.sources.pcap.walk import OPT_SACK, OPT_TIMESTAMPS, OPT_TSVAL, OPT_WSCALE

TS_OPT_WSCALE_MASK = 0xF
TS_OPT_SACK = 1 << 4
TS_OPT_ECN = 1 << 5
# Cookie connections whose clock phase must agree for a high-confidence verdict.
MIN_GROUP_AGREEMENT = 3
# TSval running ahead by this much (ms) after the SYN-ACK marks a cookie; below
# 2 ms it is the millisecond rounding of two clocks.
DELTA_MIN, DELTA_MAX = 1.75, 66.5


@dataclass(frozen=True)
class CookieVerdict:
    stream: int
    cookie: bool
    confidence: str  # "high", "medium", "low"
    # how far TSval ran ahead of the capture clock after the SYN-ACK (None: no later
    # server segment)
    delta_ms: float | None


CONFIDENCE = ("low", "medium", "high")


@dataclass
class CookieVerdicts:
    """Verdicts for the handshakes that could be judged, as columns."""

    analysis: Analysis
    stream: np.ndarray  # int64
    cookie: np.ndarray  # bool
    confidence: np.ndarray  # int8: index into CONFIDENCE
    delta_ms: np.ndarray  # float64, NaN where no later server segment
    consistent: np.ndarray  # bool: matches one of the server's cookie clock phases

    def __len__(self) -> int:
        return len(self.stream)

    def by_stream(self) -> dict[int, CookieVerdict]:
        return {
            s: CookieVerdict(s, c, CONFIDENCE[k], round(d, 3) if d == d else None)
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


def _residue_clusters(
    group: np.ndarray, residue: np.ndarray, tsval: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per handshake: whether its address pair shows a cookie residue, and whether the
    handshake's residue is that one. SYN-ACKs sent within one millisecond (ordinary)
    or one 64 ms block (cookies) share their TSval, so distinct TSvals are counted: a
    residue is a cluster when more distinct TSvals share it than chance (1 in 64
    each) explains by a wide margin."""
    decided = np.zeros(len(group), dtype=bool)
    matches = np.zeros(len(group), dtype=bool)
    if not len(group):
        return decided, matches
    keys, inverse = np.unique(group, return_inverse=True)
    distinct = np.unique(np.stack([inverse, tsval, residue], axis=1), axis=0)
    counts = np.zeros((len(keys), 64), dtype=np.int64)
    np.add.at(counts, (distinct[:, 0], distinct[:, 2]), 1)
    sizes = counts.sum(axis=1)
    best = counts.argmax(axis=1)
    top = counts.max(axis=1)
    chance = sizes / 64
    clustered = top >= np.maximum(MIN_GROUP_AGREEMENT, chance + 4 * np.sqrt(chance) + 1)
    decided = clustered[inverse]
    matches = decided & (residue == best[inverse])
    return decided, matches


def _last_syn_before_synack(analysis: Analysis) -> np.ndarray:
    """Per connection, the position of the client's last SYN before the first
    SYN-ACK (the one the SYN-ACK answers), or -1."""
    n = len(analysis.order)
    flags = analysis.tcp.flags[analysis.order]
    pos = np.arange(n)
    synack_pos = analysis.first_synack[analysis.conn]
    syn = analysis.c2s & ((flags & (SYN | ACK)) == SYN) & (synack_pos >= 0) & (pos < synack_pos)
    return np.maximum.reduceat(np.where(syn, pos, -1), analysis.starts)


def classify(analysis: Analysis) -> CookieVerdicts:
    """A verdict for every handshake whose SYN offered timestamps and whose SYN-ACK
    carries a TSval."""
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
        cols["has_syn"]
        & cols["has_synack"]
        & (syn[:, OPT_TIMESTAMPS] > 0)
        & (synack[:, OPT_TSVAL] >= 0)
    )
    ecn = (cols["syn_flags"][judged] & (ECE | CWR)) == (ECE | CWR)
    bits = expected_bits(syn[judged, OPT_WSCALE], syn[judged, OPT_SACK], ecn)
    synack_tsval = synack[judged, OPT_TSVAL]

    # 1. The residue test. TSval = clock + offset, and a cookie's clock part ends in
    # the option bits, so TSval - bits = offset (mod 64). From Linux 4.13 until the
    # ports went back into the offset (6.16) it is one per address pair, and before
    # 4.10 there is none: then all cookies between two addresses share that residue
    # while ordinary SYN-ACKs spread over all 64. Queueing and clocks do not matter.
    residue = ((synack_tsval - bits) % 64).astype(np.int64)
    pair = cols["server_addr_key"][judged] ^ _rotate(cols["client_addr_key"][judged])
    decided, matches = _residue_clusters(pair, residue, synack_tsval)

    # 2. The jump test, for the rest: the server built its SYN-ACK after the SYN it
    # answers passed the capture point, and built its next segment before that one
    # passed it. So for an ordinary SYN-ACK the TSval cannot advance by more than the
    # capture time between the two (plus 1 ms of rounding); a cookie's TSval was
    # rounded down by up to 63 ms and jumps ahead by that much. Both bounds hold
    # wherever the capture was taken; delays before the capture point (a busy server
    # in a storm) only hide cookies, they never make one up.
    p0 = analysis.first_synack[judged]
    p1 = first_later[judged]
    ps = _last_syn_before_synack(analysis)[judged]
    has_later = (p1 <= n) & (ps >= 0)
    p1 = np.where(has_later, p1, p0)
    ps = np.where(has_later, ps, p0)
    ts = tcp.ts_ns[order]
    advanced = (tsval[p1] - synack_tsval) % (1 << 32)
    delta = np.where(has_later, advanced - (ts[p1] - ts[ps]) / 1e6, np.nan)
    jumped = has_later & (delta >= DELTA_MIN) & (delta <= DELTA_MAX)
    # 3. The server's clock phase against the capture clock (mod 64 ms), learnt
    # per server address from the cookies that jumped: a handshake in that phase
    # whose jump the server's delays hid is probably a cookie too (medium: an
    # ordinary SYN-ACK built when the clock's low bits equalled its option bits
    # looks the same).
    phase = (bits + advanced - ts[p1] / 1e6) % 64
    server = cols["server_addr_key"][judged]
    consistent = np.zeros(len(judged), dtype=bool)
    for key in np.unique(server[jumped & ~decided]).tolist():
        members = (server == key) & ~decided & has_later
        sure = phase[members & jumped]
        if len(sure) < MIN_GROUP_AGREEMENT:
            continue
        peak, agreeing = _phase_peak(sure)
        if agreeing >= max(MIN_GROUP_AGREEMENT, len(sure) // 2):
            consistent |= members & (_circular_distance(phase, peak) <= 1.5)
    consistent |= matches
    cookie = np.where(decided, matches, jumped | consistent)
    # high: the residue test decided, or the TSval jumped. Otherwise medium: a phase
    # match can be chance, and a missing jump can be hidden by the server's delays.
    # low: nothing to compare with.
    confidence = np.where(
        decided | jumped, 2, np.where(consistent, 1, np.where(has_later, 1, 0))
    ).astype(np.int8)
    return CookieVerdicts(analysis, judged, cookie, confidence, delta, consistent)


def _rotate(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    return (x << np.uint64(17)) | (x >> np.uint64(47))


def per_server(verdicts: CookieVerdicts) -> dict[str, dict[str, Any]]:
    """Per server with at least one high-confidence cookie (so a lone phase match is
    never reported on its own): cookie SYN-ACKs in total (high and medium
    confidence), how many of them are high confidence, and the count per second."""
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
        cookies = verdicts.stream[members & verdicts.cookie]
        seconds = ((cols["first_ts"][cookies] - start) // 1_000_000_000).tolist()
        server = analysis.connections[int(cookies[0])].server
        out[server] = {
            "handshakes": int(members.sum()),
            "cookies": len(cookies),
            "high_confidence": int((members & sure).sum()),
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
                    "cookie_synacks_high_confidence": entry["high_confidence"],
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

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

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from tcpsleuth.detectors.capture import Analysis
from tcpsleuth.model.findings import Finding, Severity, listener_subject
from tcpsleuth.sources.pcap.decode import SYN

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
    server: str
    client_ip: str
    synack_frame: int
    ts_ns: int
    cookie: bool
    confidence: str  # "high", "medium", "low"
    delta_ms: float  # how far TSval ran ahead of the capture clock after the SYN-ACK
    expected_bits: int


def expected_bits(wscale: int | None, sack: bool, ecn: bool) -> int:
    bits = TS_OPT_WSCALE_MASK if wscale is None else wscale & TS_OPT_WSCALE_MASK
    return bits | (TS_OPT_SACK if sack else 0) | (TS_OPT_ECN if ecn else 0)


def _circular_distance(a: float, b: float) -> float:
    d = abs(a - b) % 64
    return min(d, 64 - d)


def classify(analysis: Analysis) -> list[CookieVerdict]:
    """A verdict for every handshake whose SYN-ACK and a later server segment carry
    timestamps."""
    n = len(analysis.order)
    if n == 0:
        return []
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
    ts = tcp.ts_ns[order]
    candidates = []
    for c in np.flatnonzero(first_later <= n).tolist():
        record = analysis.connections[c]
        syn, synack = record.syn, record.synack
        if syn is None or synack is None or synack.tsval is None or not syn.timestamps:
            continue
        p0, p1 = int(analysis.first_synack[c]), int(first_later[c])
        elapsed_ms = (int(ts[p1]) - int(ts[p0])) / 1e6
        advanced = (int(tsval[p1]) - synack.tsval) % (1 << 32)
        delta = advanced - elapsed_ms
        bits = expected_bits(syn.wscale, syn.sack_permitted, syn.ecn)
        t0_ms = int(ts[p0]) / 1e6
        candidates.append((record, bits, delta, t0_ms))
    # The server clock's phase (mod 64 ms) against the capture clock, per server
    # address, from the connections that jumped.
    phases: dict[str, list[float]] = defaultdict(list)
    for record, bits, delta, t0_ms in candidates:
        if DELTA_MIN <= delta <= DELTA_MAX:
            phases[record.server_ip].append((bits + delta - t0_ms) % 64)
    phase_of: dict[str, tuple[float, int]] = {}
    for server_ip, values in phases.items():
        best = max(values, key=lambda v: sum(_circular_distance(v, w) <= 1.5 for w in values))
        phase_of[server_ip] = (best, sum(_circular_distance(best, w) <= 1.5 for w in values))
    verdicts = []
    for record, bits, delta, t0_ms in candidates:
        phase, agreeing = phase_of.get(record.server_ip, (None, 0))
        consistent = (
            phase is not None and _circular_distance((bits + delta - t0_ms) % 64, phase) <= 1.5
        )
        if DELTA_MIN <= delta <= DELTA_MAX:
            cookie = True
            confidence = "high" if consistent and agreeing >= MIN_GROUP_AGREEMENT else "medium"
        elif consistent and agreeing >= MIN_GROUP_AGREEMENT:
            cookie, confidence = True, "low"  # a cookie with under 2 ms of rounding, maybe
        else:
            cookie, confidence = False, "high" if abs(delta) <= 1.5 else "low"
        verdicts.append(
            CookieVerdict(
                stream=record.stream,
                server=record.server,
                client_ip=record.client_ip,
                synack_frame=record.synack_frame or 0,
                ts_ns=record.first_ts_ns,
                cookie=cookie,
                confidence=confidence,
                delta_ms=round(delta, 3),
                expected_bits=bits,
            )
        )
    verdicts.sort(key=lambda v: v.stream)
    return verdicts


def per_server(verdicts: list[CookieVerdict]) -> dict[str, dict[str, Any]]:
    """Per server: cookie SYN-ACKs in total and per second. Only high-confidence
    verdicts count: a jump whose clock phase disagrees with the server's other cookies
    is more likely a SYN-ACK that waited in a queue before the capture saw it."""
    out: dict[str, dict[str, Any]] = {}
    start = min((v.ts_ns for v in verdicts), default=0)
    for verdict in verdicts:
        entry = out.setdefault(
            verdict.server, {"handshakes": 0, "cookies": 0, "per_second": Counter()}
        )
        entry["handshakes"] += 1
        if verdict.cookie and verdict.confidence == "high":
            entry["cookies"] += 1
            entry["per_second"][int((verdict.ts_ns - start) // 1_000_000_000)] += 1
    for entry in out.values():
        entry["per_second"] = dict(sorted(entry["per_second"].items()))
    return out


def findings(verdicts: list[CookieVerdict]) -> list[Finding]:
    out = []
    for server, entry in per_server(verdicts).items():
        if not entry["cookies"]:
            continue
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

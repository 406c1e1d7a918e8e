"""SYN-cookie SYN-ACKs recognised in a capture.

A SYN cookie keeps no state, so with timestamps on the kernel packs the client's
options into the low 6 bits of the SYN-ACK's TSval (``cookie_init_timestamp``
in net/ipv4/syncookies.c): window scale in bits 0-3 (0xf for none), SACK in bit
4, ECN in bit 5. The rest of TSval is the clock rounded down to 64 ms. The
per-address-pair timestamp offset (``tcp_timestamps=1``) is then added, so all
cookie SYN-ACKs from one server address to one client address, for clients that
offered the same options, end in the same 6 bits, while ordinary SYN-ACKs follow
the millisecond clock and end in any of 64 values. With ``tcp_timestamps=2`` the
offset is zero and the low bits are the options themselves.

Without timestamps nothing in the SYN-ACK marks a cookie; such connections are
not counted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from tcpsleuth.detectors.capture import Analysis
from tcpsleuth.model.findings import Finding, Severity, listener_subject

TS_OPT_WSCALE_MASK = 0xF
TS_OPT_SACK = 1 << 4
TS_OPT_ECN = 1 << 5
# Agreement needed before the low bits of a group count as a cookie pattern.
MIN_GROUP_AGREEMENT = 3


@dataclass(frozen=True)
class CookieVerdict:
    stream: int
    server: str
    client_ip: str
    synack_frame: int
    ts_ns: int
    cookie: bool
    confidence: str  # "high", "medium", "low"
    low_bits: int
    expected_bits: int


def expected_bits(wscale: int | None, sack: bool, ecn: bool) -> int:
    bits = TS_OPT_WSCALE_MASK if wscale is None else wscale & TS_OPT_WSCALE_MASK
    return bits | (TS_OPT_SACK if sack else 0) | (TS_OPT_ECN if ecn else 0)


def classify(analysis: Analysis) -> list[CookieVerdict]:
    """A verdict for every handshake whose SYN and SYN-ACK both carry timestamps."""
    groups: dict[tuple[str, str, int], list[tuple[int, int, int]]] = defaultdict(list)
    for record in analysis.connections:
        syn, synack = record.syn, record.synack
        if syn is None or synack is None or synack.tsval is None or not syn.timestamps:
            continue
        bits = expected_bits(syn.wscale, syn.sack_permitted, syn.ecn)
        groups[(record.server_ip, record.client_ip, bits)].append(
            (record.stream, synack.tsval, bits)
        )
    verdicts = []
    for (_server_ip, client_ip, bits), members in groups.items():
        low = Counter(tsval & 0x3F for _, tsval, _ in members)
        mode, count = low.most_common(1)[0]
        # Ordinary SYN-ACKs sent in the same millisecond share a TSval; a cookie
        # pattern must hold across different TSvals.
        distinct = len({tsval for _, tsval, _ in members if tsval & 0x3F == mode})
        pattern = count >= MIN_GROUP_AGREEMENT and distinct >= 2 and count > len(members) / 8
        for stream, tsval, _ in members:
            record = analysis.connections[stream]
            lb = tsval & 0x3F
            if pattern and lb == mode:
                cookie, confidence = True, "high" if lb == bits or count >= 8 else "medium"
            elif lb == bits and not pattern:
                cookie, confidence = True, "low"
            else:
                cookie, confidence = False, "high" if pattern else "low"
            verdicts.append(
                CookieVerdict(
                    stream=stream,
                    server=record.server,
                    client_ip=client_ip,
                    synack_frame=record.synack_frame or 0,
                    ts_ns=record.first_ts_ns,
                    cookie=cookie,
                    confidence=confidence,
                    low_bits=lb,
                    expected_bits=bits,
                )
            )
    verdicts.sort(key=lambda v: v.stream)
    return verdicts


def per_server(verdicts: list[CookieVerdict]) -> dict[str, dict[str, Any]]:
    """Per server: cookie SYN-ACKs (medium or high confidence) in total and per second."""
    out: dict[str, dict[str, Any]] = {}
    start = min((v.ts_ns for v in verdicts), default=0)
    for verdict in verdicts:
        entry = out.setdefault(
            verdict.server, {"handshakes": 0, "cookies": 0, "per_second": Counter()}
        )
        entry["handshakes"] += 1
        if verdict.cookie and verdict.confidence != "low":
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

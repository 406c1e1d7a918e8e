"""SYN-cookie SYN-ACKs recognised in a capture, one verdict per connection.

A SYN cookie keeps no state, so with timestamps on the kernel packs the client's
options into the low 6 bits of the SYN-ACK's TSval (``cookie_init_timestamp``
in net/ipv4/syncookies.c): window scale in bits 0-3 (0xf for none), SACK in bit
4, ECN in bit 5. To do so it rounds its millisecond clock down to a multiple of
64 and sets those bits (stepping back 64 if that lands in the future); the
connection's timestamp offset is added as usual. A cookie's TSval therefore lags
the server's clock by 0 to 63 ms, and its low bits are the options plus the
offset. The sequence number is keyed by a secret chosen at boot: nothing can be
read from it.

The offset decides which evidence a capture holds:

- ``tcp_timestamps=2`` (and kernels before 4.10): no offset. All SYN-ACKs of a
  server follow one clock; so do those of one address pair from 4.13 until the
  ports went back into the offset (stable kernels from 2025 on, 6.1.1xx among
  them, and mainline 6.14). Within such a *one-clock group* the capture shows the
  server's clock (its most prompt segments), every cookie's lag behind it and
  every cookie's residue ``(TSval - option bits) mod 64`` (the group's offset).
  A SYN-ACK whose residue is not the group's is no cookie; one that has it and
  lags by more than a queueing delay is one (test :func:`_one_clock`).
- A per-connection offset (``tcp_timestamps=1`` on current kernels): only the
  connection's own segments share its offset. The server built its SYN-ACK
  after the client's last SYN passed the capture point and each later segment
  before it passed, so an ordinary SYN-ACK's TSval cannot run behind the later
  segments' clock by more than the capture time between that SYN and the
  SYN-ACK (plus 1 ms of rounding). A cookie's does by up to 63 ms more; delays
  before the capture point can hide that jump, never make one up
  (:func:`_jump`).
- A repeated SYN-ACK with the same sequence number (the answer to a retransmitted
  SYN) carries the same offset and, for a cookie, the same option bits: cookies
  move their TSval by a multiple of 64 ms, ordinary SYN-ACKs by the time that
  passed (:func:`_repeats`).

Without timestamps a cookie keeps the MSS alone of the client's options: the SYN-ACK
lost the window scale and SACK the SYN offered is a cookie where the listener's other
SYN-ACKs carry them, one that kept either is not (:mod:`.cookie_options`). Where
none applies (a SYN that offered neither, one SYN-ACK and nothing after it from the
server), the verdict is ``None``: the capture cannot tell.

About 560 lines, most of them this reasoning and the three tests it names: they
judge the same connections together (a connection one test decides is not handed to
the next), so they stay in one module; their reasons are in :mod:`.cookie_reasons`,
the clock phase's arithmetic in :mod:`.cookie_phase`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tcpsleuth.detectors.capture.clockrate import Far
from tcpsleuth.detectors.capture.connections import Analysis
from tcpsleuth.detectors.capture.cookie_options import ClearedOptions
from tcpsleuth.detectors.capture.cookie_options import judge as judge_cleared
from tcpsleuth.detectors.capture.cookie_phase import bands, between, interleaved
from tcpsleuth.detectors.capture.cookie_reasons import REASONS, Reason
from tcpsleuth.detectors.capture.kernels import NO_RUN, SEQ_SPACE
from tcpsleuth.detectors.capture.windows import clients_hit
from tcpsleuth.model.capture import CWR, ECE, OPT_SACK, OPT_TIMESTAMPS, OPT_TSVAL, OPT_WSCALE
from tcpsleuth.model.findings import Finding, Severity, listener_subject

TS_OPT_WSCALE_MASK = 0xF
TS_OPT_SACK = 1 << 4
TS_OPT_ECN = 1 << 5
# A cookie's TSval runs behind the clock by what it was rounded down; below this
# (ms) the millisecond rounding of two clocks explains it.
JUMP_MIN_MS = 1.75
# In a one-clock group the clock is read from its most prompt segments; an
# ordinary SYN-ACK may leave this much (ms) later than those in a storm.
GROUP_QUEUE_MS = 6.0
# A group is one clock when this share of its SYN-ACKs sit within CLOCK_BAND_MS
# of its median clock offset (per-connection offsets spread over 49 days).
CLOCK_SHARE, CLOCK_BAND_MS, MIN_GROUP = 0.9, 1000.0, 8
# An ordinary request socket whose handshake ACK was refused (accept queue full)
# repeats its SYN-ACK after 1 s (TCP_TIMEOUT_INIT); a cookie has nothing to repeat.
SILENT_NS = 1_500_000_000
# a repeated SYN-ACK that followed the capture clock to within this (ms)
REPEAT_CLOCK_MS = 3.0
ENVELOPE_BIN_NS = 1_000_000_000

CONFIDENCE = (None, "medium", "high")


UNKNOWN, ORDINARY, COOKIE = -1, 0, 1


@dataclass(frozen=True)
class CookieVerdict:
    stream: int
    cookie: bool | None
    confidence: str | None  # "high", "medium"; None with no verdict
    reason: str
    lag_ms: float | None  # how far the SYN-ACK's TSval ran behind the clock
    synacks: int
    cookie_synacks: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "cookie": self.cookie,
            "confidence": self.confidence,
            "reason": self.reason,
            "lag_ms": self.lag_ms,
            "synacks": self.synacks,
            "cookie_synacks": self.cookie_synacks,
        }


@dataclass
class CookieVerdicts:
    """A verdict for every connection (by stream), as columns."""

    analysis: Analysis
    verdict: np.ndarray  # int8: UNKNOWN, ORDINARY or COOKIE
    confidence: np.ndarray  # int8: index into CONFIDENCE
    reason: np.ndarray  # int8: index into REASONS
    lag_ms: np.ndarray  # float64, NaN where not measured
    synacks: np.ndarray  # int64: SYN-ACKs the server sent on the connection
    cookie_synacks: np.ndarray  # int64: of them cookies (as far as the verdict goes)

    def __len__(self) -> int:
        return len(self.verdict)

    def of(self, stream: int) -> CookieVerdict:
        v = int(self.verdict[stream])
        lag = float(self.lag_ms[stream])
        return CookieVerdict(
            stream,
            None if v == UNKNOWN else v == COOKIE,
            CONFIDENCE[int(self.confidence[stream])],
            REASONS[int(self.reason[stream])],
            round(lag, 3) if lag == lag else None,
            int(self.synacks[stream]),
            int(self.cookie_synacks[stream]),
        )


def option_bits(wscale: np.ndarray, sack: np.ndarray, ecn: np.ndarray) -> np.ndarray:
    """The low TSval bits a cookie carries for these SYN options."""
    bits = np.where(wscale < 0, TS_OPT_WSCALE_MASK, wscale & TS_OPT_WSCALE_MASK)
    return bits | np.where(sack > 0, TS_OPT_SACK, 0) | np.where(ecn, TS_OPT_ECN, 0)


def _signed32(x: np.ndarray) -> np.ndarray:
    x = x % SEQ_SPACE
    return np.where(x >= SEQ_SPACE // 2, x - SEQ_SPACE, x)


@dataclass
class _Handshakes:
    """The judged connections' handshake numbers, as columns."""

    index: np.ndarray  # streams
    bits: np.ndarray
    tsval: np.ndarray
    synack_ts: np.ndarray
    hidden_ns: np.ndarray  # capture time between the client's last SYN and the SYN-ACK
    later_ns: np.ndarray  # LATER_BEST, NO_RUN where none
    far_state: np.ndarray  # clockrate.Far
    server: np.ndarray  # server address key
    pair: np.ndarray  # address pair key


def _handshakes(analysis: Analysis) -> _Handshakes:
    cols = analysis.columns
    syn, synack = analysis.hs_syn, analysis.hs_synack
    judged = np.flatnonzero(
        cols.has_syn & cols.has_synack & (syn[:, OPT_TIMESTAMPS] > 0) & (synack[:, OPT_TSVAL] >= 0)
    )
    # ecn_ok shows in the SYN-ACK: ECE set without CWR (tcp_ecn_make_synack)
    flags = cols.synack_flags[judged]
    ecn = ((flags & ECE) != 0) & ((flags & CWR) == 0)
    bits = option_bits(syn[judged, OPT_WSCALE], syn[judged, OPT_SACK], ecn)
    server = cols.server_addr_key[judged]
    client = cols.client_addr_key[judged].astype(np.uint64)
    pair = server ^ ((client << np.uint64(17)) | (client >> np.uint64(47)))
    synack_ts = cols.synack_ts[judged]
    return _Handshakes(
        judged,
        bits,
        synack[judged, OPT_TSVAL],
        synack_ts,
        np.maximum(synack_ts - cols.last_syn_ts[judged], 0),
        cols.later_best_ns[judged],
        cols.far_state[judged],
        server,
        pair,
    )


def _distinct(keys: np.ndarray) -> list[int]:
    """The distinct integer keys, ascending (``np.unique`` without its options loads
    ``numpy.ma``, a hundredth of a second at start-up)."""
    if not len(keys):
        return []
    ordered = np.sort(keys)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))].tolist()


def _jump(hs: _Handshakes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The connection's own later segments: (verdict, confidence, reason, lag_ms).

    A jump beyond what the server's delay explains is a cookie. Without one, the
    server's clock phase speaks: for a cookie, ``option bits + lag - SYN-ACK
    capture time`` mod 64 is the server's clock against the capture clock, the
    same for all its cookies whatever their offsets. An ordinary SYN-ACK is in
    that phase only when it was built while the clock's low bits equalled its
    option bits, which is exactly when a cookie does not jump: the two then look
    the same. Off the phase it is no cookie. In the phase it is a cookie where
    the server sent proven cookies before and after it and no ordinary SYN-ACK
    around or between them (SYN-ACKs of a storm come in bursts, so chance alone
    says nothing); otherwise the capture cannot tell."""
    has_later = hs.later_ns != NO_RUN
    lag = np.where(has_later, hs.later_ns / 1e6, np.nan)
    hidden = hs.hidden_ns / 1e6
    jumped = has_later & (lag - hidden >= JUMP_MIN_MS)
    verdict = np.where(jumped, COOKIE, UNKNOWN).astype(np.int8)
    confidence = np.where(jumped, 2, 0).astype(np.int8)
    nothing = np.select(
        [hs.far_state == Far.NO_RATE, hs.far_state == Far.BEYOND],
        [Reason.FAR_NO_RATE, Reason.FAR_BEYOND],
        Reason.NOTHING_LATER,
    )
    reason = np.where(jumped, Reason.JUMP, np.where(has_later, Reason.JUMP_HIDDEN, nothing))
    phase = (hs.bits + np.nan_to_num(lag) - hs.synack_ts / 1e6) % 64
    rest = has_later & ~jumped
    for key in _distinct(hs.server[rest]):
        members = hs.server == key
        sure = phase[members & jumped]
        undecided = members & rest
        matched, behind, off_phase = bands(phase, sure, undecided)
        # the SYN-ACK's TSval sat on the clock of the later segments: no cookie lag
        prompt = undecided & ~matched & ~off_phase & ~behind & (lag < JUMP_MIN_MS)
        plain = prompt | off_phase
        # an ordinary SYN-ACK in the phase was made while the server was making
        # ordinary ones (its SYN queue had room); during an overflow every answer
        # is a cookie. So a match is a cookie where the server was sending cookies
        # on both sides of it (proven cookies of this server before and after it,
        # within LATER_SPAN_NS, and no ordinary SYN-ACK between those two) and
        # none among its cookies nearby (_interleaved). Both sides: the SYN-ACKs
        # that fill the queue before an overflow leave in one burst of a
        # millisecond or two, so they share one phase, and one storm in twenty or
        # so finds it to be the cookies' (they have cookies after them, never
        # before).
        ts = hs.synack_ts
        ordinary_at = np.sort(ts[plain])
        proven_at = np.sort(ts[members & jumped])
        cookie = (
            matched & ~interleaved(proven_at, ordinary_at, ts) & between(proven_at, ts, ordinary_at)
        )
        matched &= ~cookie
        verdict = np.where(cookie, COOKIE, np.where(plain, ORDINARY, verdict))
        confidence = np.where(cookie | plain, 1, confidence)
        reason = np.select(
            [cookie, off_phase, prompt, matched, behind],
            [Reason.PHASE, Reason.OFF_PHASE, Reason.NO_JUMP, Reason.IN_PHASE, Reason.BEHIND_PHASE],
            reason,
        )
    return verdict, confidence, reason, lag


def _envelope(times: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per second of capture time, the highest value seen in it or the seconds beside
    it: the clock as its most prompt segments show it. (bins, envelope)"""
    bins = times // ENVELOPE_BIN_NS
    keys, inverse = np.unique(bins, return_inverse=True)
    top = np.full(len(keys), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(top, inverse, values)
    env = top.copy()
    for shift in (-1, 1):
        neighbour = np.searchsorted(keys, keys + shift)
        ok = (neighbour < len(keys)) & (keys[np.minimum(neighbour, len(keys) - 1)] == keys + shift)
        env = np.where(ok, np.maximum(env, top[np.minimum(neighbour, len(keys) - 1)]), env)
    return keys, env


def _no_verdicts(n: int, why: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(verdict, confidence, reason, lag_ms) columns for ``n`` connections, undecided."""
    return (
        np.full(n, UNKNOWN, dtype=np.int8),
        np.zeros(n, dtype=np.int8),
        np.full(n, why, dtype=np.int8),
        np.full(n, np.nan),
    )


def _one_clock(
    hs: _Handshakes, group: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Verdicts within groups whose SYN-ACKs follow one clock (offsets zero, or one
    per address pair): residue and lag behind the group's clock."""
    n = len(hs.index)
    verdict, confidence, reason, lag = _no_verdicts(n, Reason.NOTHING_LATER)
    if not n:
        return verdict, confidence, reason, lag
    keys, inverse = np.unique(group, return_inverse=True)
    # the clock offset of each SYN-ACK, in ns: TSval ms against capture time,
    # relative to its group's first SYN-ACK (TSvals wrap at 2^32)
    first = np.zeros(len(keys), dtype=np.int64)
    first[inverse[::-1]] = np.arange(n)[::-1]
    ref = first[inverse]
    offset = _signed32(hs.tsval - hs.tsval[ref]) * 1_000_000 - (hs.synack_ts - hs.synack_ts[ref])
    for g in range(len(keys)):
        members = np.flatnonzero(inverse == g)
        if len(members) < MIN_GROUP:
            continue
        mine = offset[members]
        centre = np.median(mine)
        if np.mean(np.abs(mine - centre) <= CLOCK_BAND_MS * 1e6) < CLOCK_SHARE:
            continue
        # the clock: SYN-ACKs and the later segments of the group, most prompt first
        later = hs.later_ns[members] != NO_RUN
        times = np.concatenate([hs.synack_ts[members], hs.synack_ts[members][later]])
        values = np.concatenate([mine, mine[later] + hs.later_ns[members][later]])
        bins, env = _envelope(times, values)
        at = np.searchsorted(bins, hs.synack_ts[members] // ENVELOPE_BIN_NS)
        behind = (env[at] - mine) / 1e6
        # the group's residue: the one the lagging SYN-ACKs share
        residue = (hs.tsval[members] - hs.bits[members]) % 64
        lagging = behind >= GROUP_QUEUE_MS
        if lagging.sum() < 3:
            continue  # too few lagging SYN-ACKs to learn the residue from
        counts = np.bincount(residue[lagging], minlength=64)
        mode = int(counts.argmax())
        if counts[mode] < max(3, lagging.sum() // 2):
            continue  # lags without a common residue: queueing, not cookies
        match = residue == mode
        sure_cookie = match & lagging
        sure_plain = ~match
        # a residue match without lag: a cookie made when the clock's low bits
        # equalled its option bits, or an ordinary SYN-ACK made then; they look the
        # same, so only a group with no ordinary SYN-ACK at all calls it a cookie
        ambiguous = match & ~lagging
        if sure_plain.any():
            verdict[members] = np.where(
                sure_cookie, COOKIE, np.where(sure_plain, ORDINARY, UNKNOWN)
            )
            confidence[members] = np.where(ambiguous, 0, 2)
        else:
            verdict[members] = COOKIE
            confidence[members] = np.where(ambiguous, 1, 2)
        reason[members] = np.where(
            sure_cookie,
            Reason.GROUP_LAG,
            np.where(sure_plain, Reason.GROUP_RESIDUE, Reason.GROUP_AMBIGUOUS),
        )
        lag[members] = behind
    return verdict, confidence, reason, lag


def _repeats(analysis: Analysis, hs: _Handshakes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Repeated SYN-ACKs with the first one's sequence number: (verdict, confidence,
    reason) for the judged connections."""
    cols = analysis.columns
    rep_ts = cols.repeat_ts[hs.index]
    rep_tsval = cols.repeat_tsval[hs.index]
    has = rep_ts >= 0
    moved = _signed32(rep_tsval - hs.tsval)  # ms
    elapsed = (rep_ts - hs.synack_ts) / 1e6
    multiple = has & (moved % 64 == 0)
    with_clock = has & (np.abs(moved - elapsed) <= REPEAT_CLOCK_MS)
    cookie = multiple & ~with_clock
    plain = has & ~multiple
    verdict = np.where(cookie, COOKIE, np.where(plain, ORDINARY, UNKNOWN))
    confidence = np.where(cookie | plain, 2, 0)
    reason = np.where(cookie, Reason.REPEAT_64, Reason.REPEAT_CLOCK)
    return verdict, confidence, reason


def _silence(analysis: Analysis, hs: _Handshakes) -> tuple[np.ndarray, np.ndarray]:
    """Connections whose client sent data after the handshake while the server sent
    nothing with a timestamp after its SYN-ACK: (silent for SILENT_NS, reset)."""
    cols = analysis.columns
    i = hs.index
    nothing_timed = (hs.later_ns == NO_RUN) & (cols.bytes[i, 0] > 0)
    only_synacks = cols.packets[i, 1] == cols.synacks[i]
    silent = nothing_timed & only_synacks & (cols.last_ts[i] - hs.synack_ts >= SILENT_NS)
    # segments without a timestamp from a Linux server that negotiated them: resets
    reset = nothing_timed & ~only_synacks
    return silent, reset


def classify(analysis: Analysis, cleared: ClearedOptions | None = None) -> CookieVerdicts:
    """A verdict for every connection; ``UNKNOWN`` where the capture cannot tell.
    Handshakes without timestamps are judged by the options their SYN-ACK lost."""
    cols = analysis.columns
    nconn = len(analysis.connections)
    verdict, confidence, reason, lag_ms = _no_verdicts(nconn, Reason.NO_SYNACK)
    if not nconn:
        empty = np.zeros(0, dtype=np.int64)
        return CookieVerdicts(analysis, verdict, confidence, reason, lag_ms, empty, empty)
    has_synack = cols.has_synack
    reason[has_synack] = Reason.NO_TIMESTAMPS
    hs = _handshakes(analysis)
    # weakest first, each stronger test overwriting where it decides
    v, c, r, lag = _jump(hs)
    silent, reset = _silence(analysis, hs)
    refused = silent | reset
    v, c = np.where(refused, COOKIE, v), np.where(refused, 1, c)
    r = np.where(silent, Reason.SILENT_SERVER, np.where(reset, Reason.RESET, r))
    for test in (
        lambda: _one_clock(hs, hs.server),
        lambda: _one_clock(hs, hs.pair),
    ):
        gv, gc, gr, glag = test()
        better = (gv != UNKNOWN) & (gc >= c)
        v, c, r = np.where(better, gv, v), np.where(better, gc, c), np.where(better, gr, r)
        lag = np.where(better, glag, lag)
    rv, rc, rr = _repeats(analysis, hs)
    better = (rv != UNKNOWN) & ((rc > c) | (v == UNKNOWN))
    v, c, r = np.where(better, rv, v), np.where(better, rc, c), np.where(better, rr, r)
    verdict[hs.index], confidence[hs.index], reason[hs.index] = v, c, r
    lag_ms[hs.index] = lag
    cleared = cleared if cleared is not None else judge_cleared(analysis)
    verdict[cleared.cookie], reason[cleared.cookie] = COOKIE, Reason.OPTIONS_CLEARED
    kept = cleared.ordinary & (verdict == UNKNOWN)
    verdict[kept], confidence[kept], reason[kept] = ORDINARY, 2, Reason.OPTIONS_KEPT
    confidence[cleared.cookie] = cleared.confidence[cleared.cookie]
    synacks = cols.synacks.astype(np.int64)
    cookie_synacks = np.where(verdict == COOKIE, 1 + cols.synacks_same_seq, 0).astype(np.int64)
    return CookieVerdicts(analysis, verdict, confidence, reason, lag_ms, synacks, cookie_synacks)


def per_server(
    verdicts: CookieVerdicts, client_ids: Mapping[int, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Per server with at least one high-confidence cookie: cookie SYN-ACKs (packets,
    as the kernel counts them) and cookie connections, how sure, how many
    connections the capture cannot judge, the clients hit, and the cookies per
    second."""
    if not len(verdicts):
        return {}
    analysis = verdicts.analysis
    cols = analysis.columns
    keys = cols.server_key
    cookie = verdicts.verdict == COOKIE
    sure = cookie & (verdicts.confidence == 2)
    start = int(cols.first_ts.min())
    out: dict[str, dict[str, Any]] = {}
    for key in _distinct(keys[sure]):
        members = (keys == key) & cols.has_synack
        cookies = np.flatnonzero(members & cookie)
        seconds = ((cols.first_ts[cookies] - start) // 1_000_000_000).tolist()
        server = analysis.connections.endpoints_of([int(cookies[0])])[int(cookies[0])][1]
        reasons = Counter(REASONS[r] for r in verdicts.reason[members & cookie].tolist())
        clock = analysis.clock_rates.get(int(cols.server_addr_key[cookies[0]]))
        undecided = Counter(
            REASONS[r] for r in verdicts.reason[members & (verdicts.verdict == UNKNOWN)].tolist()
        )
        out[server] = {
            "handshakes": int(members.sum()),
            "synacks": int(verdicts.synacks[members].sum()),
            "cookie_synacks": int(verdicts.cookie_synacks[members].sum()),
            # SYN-ACKs a later one with a new sequence number replaced: not judged
            "synacks_replaced": int(cols.synacks_renewed[members].sum()),
            "cookie_connections": len(cookies),
            "cookie_connections_high_confidence": int((members & sure).sum()),
            "ordinary_connections": int((members & (verdicts.verdict == ORDINARY)).sum()),
            "undecided_connections": int(sum(undecided.values())),
            "undecided_why": dict(undecided),
            "cookie_why": dict(reasons),
            "server_clock": clock.evidence() if clock else None,
            **clients_hit(analysis, cookies.tolist(), client_ids),
            "per_second": dict(sorted(Counter(seconds).items())),
        }
    return out


def totals(verdicts: CookieVerdicts) -> dict[str, Any]:
    """The verdicts of every connection in the capture, whatever its server: cookie,
    ordinary (decided not a cookie) and undecided connections (they add up to
    ``connections``), the reasons the undecided ones stayed so, and the cookie SYN-ACKs
    (packets, as the kernel's TcpExtSyncookiesSent counts them)."""
    unknown = verdicts.verdict == UNKNOWN
    return {
        "connections": len(verdicts),
        "cookie_connections": int(np.count_nonzero(verdicts.verdict == COOKIE)),
        "ordinary_connections": int(np.count_nonzero(verdicts.verdict == ORDINARY)),
        "undecided_connections": int(np.count_nonzero(unknown)),
        "undecided_why": dict(
            Counter(REASONS[r] for r in verdicts.reason[unknown].tolist()).most_common()
        ),
        "cookie_synacks": int(verdicts.cookie_synacks.sum()),
    }


def not_attributed(sent: int | None, cookie_connections: int | None) -> int | None:
    """The cookies the kernel counted (TcpExtSyncookiesSent over the same time) that a
    capture attributes to no connection: the counter less the cookie connections when
    that is positive, else 0; None where either is unknown."""
    if sent is None or cookie_connections is None:
        return None
    return max(int(sent) - int(cookie_connections), 0)


def findings(
    verdicts: CookieVerdicts, client_ids: Mapping[int, str] | None = None
) -> list[Finding]:
    out = []
    for server, entry in per_server(verdicts, client_ids).items():
        undecided = entry["undecided_connections"]
        out.append(
            Finding(
                kind="syn-cookies-seen",
                severity=Severity.WARNING,
                subject=listener_subject(server),
                summary=(
                    f"{entry['cookie_synacks']} SYN cookies sent on {entry['cookie_connections']} "
                    f"of {entry['handshakes']} connections from {len(entry['clients'])} client "
                    "addresses: the listen queue overflowed (or cookies are forced)"
                    + (
                        f"; {undecided} connections cannot be judged from this capture"
                        if undecided
                        else ""
                    )
                ),
                evidence={
                    "cookie_synacks": entry["cookie_synacks"],
                    "cookie_connections": entry["cookie_connections"],
                    "cookie_connections_high_confidence": entry[
                        "cookie_connections_high_confidence"
                    ],
                    "ordinary_connections": entry["ordinary_connections"],
                    "undecided_connections": undecided,
                    "undecided_why": entry["undecided_why"],
                    "server_clock": entry["server_clock"],
                    "handshakes": entry["handshakes"],
                    "clients": entry["clients"],
                    "client_ids": entry["client_ids"],
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

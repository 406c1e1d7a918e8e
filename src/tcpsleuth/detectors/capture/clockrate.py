"""The server's timestamp clock against the capture's, measured on the capture's own
connections, so that a SYN-ACK's TSval can be compared with the server's segments
more than ``kernels.LATER_SPAN_NS`` after it (issue 30).

The tracker keeps, per connection, the server's first segments with a TSval after
that span (``FAR_AT``, ``FAR_BEST`` in :mod:`.kernels`). :func:`clock_rates` reads
from the ordinary connections among them how fast the server's clock ran against
the capture's, with its error; :func:`later_runs` corrects each connection's far
run by that rate where the error allows, for the SYN-cookie verdicts
(:mod:`.cookies`, which reads the result as ``later_best_ns``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from tcpsleuth.detectors.capture import kernels as K
from tcpsleuth.model.capture import CWR, ECE, OPT_SACK, OPT_WSCALE

# The server's clock against the capture's (see later_runs): at least this
# many connections measure it; what its error may add to a run over the span used
# (ns); no faster or slower than this (Linux ticks once a millisecond since 4.13).
MIN_RATE_SAMPLES, DRIFT_BUDGET_NS, MAX_RATE_OFF, RATE_REACH = 8, 500_000, 1e-3, 1.5
# a SYN-ACK this near (ms, mod 64) to the clock phase its server's cookies share
# measures no rate: it may be a cookie made when the clock read its option bits
RATE_PHASE_MS = 4.0
# SYN-ACKs this much (ms) behind the most prompt tenth are cookies: they find the phase
RATE_LAGGING_MS = 3.0
# a SYN-ACK's delay before the capture point is the run's too; those that left this
# soon (ns) after the client's SYN passed it measure the rate
RATE_HIDDEN_NS = 1_000_000


@dataclass(frozen=True)
class ClockRate:
    """A server's timestamp clock against the capture's: ``off`` how much faster
    (ticks per ms of capture time, less 1), ``error`` its standard error, from
    ``samples`` connections; ``span_ns`` how long after a SYN-ACK a segment is
    compared with it (where ``3 * error`` adds at most DRIFT_BUDGET_NS)."""

    off: float
    error: float
    samples: int
    span_ns: int

    def evidence(self) -> dict[str, float]:
        """As a finding's evidence: how much faster (parts per million), its error, on
        how many ordinary connections, and how long after a SYN-ACK it compares."""
        return {
            "faster_ppm": round(self.off * 1e6, 1),
            "error_ppm": round(self.error * 1e6, 1),
            "measured_on_connections": self.samples,
            "compares_up_to_s": round(self.span_ns / 1e9, 1),
        }


def cookie_bits(hs_syn: np.ndarray, synack_flags: np.ndarray) -> np.ndarray:
    """The low TSval bits a cookie SYN-ACK carries for each connection's SYN: window
    scale in bits 0-3 (0xf for none), SACK in bit 4, ECN in bit 5, ECN shown by the
    SYN-ACK's ECE without CWR (as cookies.option_bits; cookies imports this module,
    through windows and tracking)."""
    wscale, sack = hs_syn[:, OPT_WSCALE], hs_syn[:, OPT_SACK]
    ecn = ((synack_flags & ECE) != 0) & ((synack_flags & CWR) == 0)
    bits = np.where(wscale < 0, 0xF, wscale & 0xF)
    return bits | np.where(sack > 0, 1 << 4, 0) | np.where(ecn, 1 << 5, 0)


def _off_phase(phase: np.ndarray, lagging: np.ndarray) -> np.ndarray:
    """Which of these clock phases (ms, mod 64) lie more than RATE_PHASE_MS from
    the densest 5 ms of the ``lagging`` ones (cookies); all, where fewer than
    MIN_RATE_SAMPLES // 2 lag."""
    if lagging.sum() < MIN_RATE_SAMPLES // 2:
        return np.ones(len(phase), dtype=bool)
    bins = np.bincount(np.floor(phase[lagging]).astype(np.int64) % 64, minlength=64)
    window = sum(np.roll(bins, step) for step in range(-2, 3))
    distance = np.abs(phase - (int(np.argmax(window)) + 0.5)) % 64
    return np.minimum(distance, 64 - distance) > RATE_PHASE_MS


def clock_rates(
    far_at: np.ndarray,
    far_best: np.ndarray,
    synack_ts: np.ndarray,
    hidden: np.ndarray,
    server: np.ndarray,
    bits: np.ndarray,
) -> dict[int, ClockRate]:
    """Per server address, its timestamp clock's rate against the capture's, from its
    connections' first segments more than LATER_SPAN_NS after their SYN-ACK (the
    FAR_* fields; servers with fewer than MIN_RATE_SAMPLES of them are left out).

    Each such connection says ``run / elapsed``: the rate less 1, plus the SYN-ACK's
    lag behind the clock over the elapsed time. An ordinary SYN-ACK lags by under a
    millisecond (rounding, the server's delay); a cookie by 0 to 63 ms, always
    ahead, never behind. A cookie lagging much makes an outlier the median ignores;
    one lagging little would pull it up, so the SYN-ACKs in the clock phase the
    server's cookies share (``bits + lag - capture time`` mod 64 ms, see
    cookies._jump) are left out first, and so are SYN-ACKs that left more than
    RATE_HIDDEN_NS after the SYN they answer (a delay before the capture point adds
    to the run as a lag does). The median of the rest is the rate, the spread of
    the rest (MAD) over the root of their number its error. What the runs say is
    the drift plus their TSvals' rounding (the SYN-ACK's against the best of a few
    later segments', a fraction of a millisecond the same for connections of one
    shape): right where it was measured, so the span it is used over stops at
    RATE_REACH times the longest one measured."""
    out: dict[int, ClockRate] = {}
    has = (far_at > 0) & (far_best != K.NO_RUN) & (hidden >= 0) & (hidden <= RATE_HIDDEN_NS)
    order = np.argsort(server[has], kind="stable")
    keys = server[has][order]
    picked = np.flatnonzero(has)[order]
    cut = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1], [True])))
    for start, end in itertools.pairwise(cut):
        rows = picked[start:end]
        if len(rows) < MIN_RATE_SAMPLES:
            continue
        lag_ms = far_best[rows] / 1e6
        phase = (bits[rows] + lag_ms - synack_ts[rows] / 1e6) % 64
        lagging = lag_ms - np.percentile(lag_ms, 10) > RATE_LAGGING_MS
        rows = rows[_off_phase(phase, lagging)]
        if len(rows) < MIN_RATE_SAMPLES:
            continue
        off = far_best[rows] / far_at[rows]
        centre = float(np.median(off))
        # the standard error of a median: 1.2533 sigma / sqrt(n), sigma from the MAD;
        # never below what the 1 ms ticks leave over the longest span measured
        spread = 1.4826 * float(np.median(np.abs(off - centre)))
        tick = 1e6 / float(far_at[rows].max())
        error = max(1.2533 * spread, tick) / np.sqrt(len(rows))
        if abs(centre) > MAX_RATE_OFF:
            continue
        span = (DRIFT_BUDGET_NS - abs(centre) * K.FAR_SLICE_NS) / (3 * error)
        # the runs carry their TSvals' rounding (under a millisecond) besides the
        # drift: the rate is extrapolated at most half as far again
        span = min(span, RATE_REACH * float(far_at[rows].max()))
        out[int(server[rows[0]])] = ClockRate(centre, error, len(rows), int(max(span, 0)))
    return out


class Far(IntEnum):
    """What became of a connection's first segments beyond LATER_SPAN_NS (an int8
    column, ``far_state``): none, compared by the rate, no rate measured, beyond its
    reach."""

    NONE = 0
    USED = 1
    NO_RATE = 2
    BEYOND = 3


def later_runs(
    later_best: np.ndarray,
    far_at: np.ndarray,
    far_best: np.ndarray,
    synack_ts: np.ndarray,
    hidden: np.ndarray,
    server: np.ndarray,
    bits: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, dict[int, ClockRate]]:
    """Per connection, how far the server's clock ran ahead of its SYN-ACK's TSval
    (ns, NO_RUN: not measured): the LATER_BEST of its segments within LATER_SPAN_NS
    of the SYN-ACK, or, where its server's clock rate is measured (:func:`clock_rates`)
    and allows it, of its first segments after that span, less what the clock
    gained on the capture's meanwhile; the higher of the two. Also, per connection,
    what became of its far segments (:class:`Far`), and the rates, by server address key."""
    out = later_best.copy()
    has_far = (far_at > 0) & (far_best != K.NO_RUN)
    state = np.where(has_far, Far.NO_RATE, Far.NONE).astype(np.int8)
    rates = clock_rates(far_at, far_best, synack_ts, hidden, server, bits)
    for key, rate in rates.items():
        mine = has_far & (server == np.uint64(key))
        usable = mine & (far_at <= rate.span_ns)
        corrected = far_best - np.round(far_at * rate.off).astype(np.int64)
        out = np.where(usable, np.maximum(out, corrected), out)
        state[usable] = Far.USED
        state[mine & ~usable] = Far.BEYOND
    return out, state, rates

"""The clock phase a server's SYN cookies share (:mod:`.cookies`): a cookie's
``option bits + lag - SYN-ACK capture time`` mod 64 ms is the server's clock against
the capture clock whatever its timestamp offset, so its proven cookies show it
(``bands``: in it, a little behind it, off it); and whether a SYN-ACK in that phase
that did not jump sat amid the server's cookies (``between`` them, no ordinary
SYN-ACK ``interleaved`` with them nearby), where it is one too."""

from __future__ import annotations

import numpy as np

from tcpsleuth.detectors.capture.kernels import LATER_SPAN_NS

# cookies of one server share their clock phase (mod 64 ms) to within this
PHASE_MS, MIN_PHASE_GROUP = 1.5, 3
ORDINARY_NEAR_NS = 100_000_000
# A cookie's clock phase reads behind its server's by as much as its later segment
# left late or was stamped before it left: this far (ms) behind, a SYN-ACK is not
# called ordinary (a client's capture of an idle storm in the pre-fix guest: 11
# cookies 1.7 to 5.0 ms behind; a server's: a FIN's ACK stamped 6 ms early)
BEHIND_PHASE_MS = 6.0 + PHASE_MS


def bands(
    phase: np.ndarray, sure: np.ndarray, undecided: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of the ``undecided`` SYN-ACKs (a mask over ``phase``), those in the clock phase
    the ``sure`` cookies' phases agree on, those up to BEHIND_PHASE_MS behind it, and
    the rest, off it: (matched, behind, off); none where too few sure ones agree."""
    none = np.zeros(len(phase), dtype=bool)
    if len(sure) < MIN_PHASE_GROUP:
        return none, none, none
    peak, agreeing = phase_peak(sure)
    if agreeing < len(sure) * 0.8:
        return none, none, none
    matched = undecided & (circular_distance(phase, peak) <= PHASE_MS)
    offset = (phase - peak + 32) % 64 - 32
    behind = undecided & ~matched & (offset < 0) & (offset >= -BEHIND_PHASE_MS)
    return matched, behind, undecided & ~matched & ~behind


def phase_peak(phases: np.ndarray) -> tuple[float, int]:
    """The phase (mod 64 ms) most phases agree with to within PHASE_MS, and how many."""
    bins = np.bincount((np.floor(phases * 2).astype(np.int64)) % 128, minlength=128)
    window = np.zeros(128, dtype=np.int64)
    for step in range(-3, 4):
        window += np.roll(bins, step)
    center = int(np.argmax(window)) / 2 + 0.25
    # refine: the median of the phases near the densest window, unwrapped around it
    offsets = (phases - center + 32) % 64 - 32
    near = offsets[np.abs(offsets) <= 2.0]
    peak = (center + float(np.median(near))) % 64 if len(near) else center
    return peak, int((circular_distance(phases, peak) <= PHASE_MS).sum())


def circular_distance(a: np.ndarray, b: float) -> np.ndarray:
    d = np.abs(a - b) % 64
    return np.minimum(d, 64 - d)


def between(times: np.ndarray, at: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """Whether each of ``at`` has one of the sorted ``times`` at or before it and
    one at or after it, both within LATER_SPAN_NS (the phase's reach without a
    measured clock rate), and none of the sorted ``plain`` times between the two."""
    if not len(times):
        return np.zeros(len(at), dtype=bool)
    last = len(times) - 1
    before = np.searchsorted(times, at, side="right") - 1
    after = np.searchsorted(times, at, side="left")
    first, then = times[np.clip(before, 0, last)], times[np.clip(after, 0, last)]
    inside = np.searchsorted(plain, then, side="right") - np.searchsorted(plain, first)
    return (
        (before >= 0)
        & (after <= last)
        & (at - first <= LATER_SPAN_NS)
        & (then - at <= LATER_SPAN_NS)
        & (inside == 0)
    )


def interleaved(proven: np.ndarray, plain: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Whether, within ORDINARY_NEAR_NS of each of ``at``, an ordinary SYN-ACK (of the
    sorted ``plain`` times) left between two proven cookies (sorted ``proven``): the
    server was making both at once (its queue gaining a slot now and then while it
    overflowed), so one made in the cookies' phase may be either. Ordinary SYN-ACKs
    before a storm's first cookie or after its last tell nothing of this: those
    queues had room then (an idle storm's 28 cookies of 463 made in the phase, a
    millisecond or two after the last ordinary SYN-ACK, were left undecided while
    the 100 ms around them counted every ordinary one)."""
    if not len(proven) or not len(plain):
        return np.zeros(len(at), dtype=bool)
    last = len(proven) - 1
    first_in = proven[np.clip(np.searchsorted(proven, at - ORDINARY_NEAR_NS), 0, last)]
    last_in = proven[
        np.clip(np.searchsorted(proven, at + ORDINARY_NEAR_NS, side="right") - 1, 0, last)
    ]
    lo = np.maximum(first_in, at - ORDINARY_NEAR_NS)
    hi = np.minimum(last_in, at + ORDINARY_NEAR_NS)
    inside = np.searchsorted(plain, hi, side="left") - np.searchsorted(plain, lo, side="right")
    return (hi > lo) & (inside > 0)

"""The per-connection loops of the capture analysis, compiled with numba.

Rows come grouped by connection, in capture order within each. Following a
connection's two byte streams (where each starts, the highest byte sent so far,
the other side's latest segment, the next segments to come) is a running state
per connection: one pass in a compiled loop instead of dozens of whole-column
NumPy passes and a sort. Pure functions; without numba they run as Python.
"""

from __future__ import annotations

import numpy as np

from tcpsleuth.sources.pcap.walk import njit

SEQ_SPACE = 1 << 32


@njit(cache=True, nogil=True)
def sequence_pass(conn, c2s, seq, paylen, flags):  # type: ignore[no-untyped-def]
    """Per row: sequence number relative to the first one its direction sent; the
    highest sequence-space end its direction reached before it (-1 for the first);
    and the latest row of the other direction of the connection (-1 if none)."""
    n = len(conn)
    rel = np.empty(n, dtype=np.int64)
    before = np.empty(n, dtype=np.int64)
    peer = np.empty(n, dtype=np.int64)
    base = np.zeros(2, dtype=np.int64)
    have = np.zeros(2, dtype=np.bool_)
    high = np.full(2, -1, dtype=np.int64)
    last = np.full(2, -1, dtype=np.int64)
    for i in range(n):
        if i == 0 or conn[i] != conn[i - 1]:
            have[0] = have[1] = False
            high[0] = high[1] = -1
            last[0] = last[1] = -1
        d = 0 if c2s[i] else 1
        if not have[d]:
            base[d] = seq[i]
            have[d] = True
        r = (seq[i] - base[d]) % SEQ_SPACE
        rel[i] = r
        end = r + paylen[i] + (1 if flags[i] & 0x02 else 0) + (1 if flags[i] & 0x01 else 0)
        before[i] = high[d]
        if end > high[d]:
            high[d] = end
        peer[i] = last[1 - d]
        last[d] = i
    return rel, before, peer


@njit(cache=True, nogil=True)
def next_pass(conn, c2s, data, none):  # type: ignore[no-untyped-def]
    """Per row: the next row of the other direction, and the next data row of its own
    direction, in the same connection (``none`` if there is none)."""
    n = len(conn)
    next_other = np.empty(n, dtype=np.int64)
    next_own = np.empty(n, dtype=np.int64)
    any_row = np.full(2, none, dtype=np.int64)
    data_row = np.full(2, none, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        if i == n - 1 or conn[i] != conn[i + 1]:
            any_row[0] = any_row[1] = none
            data_row[0] = data_row[1] = none
        d = 0 if c2s[i] else 1
        next_other[i] = any_row[1 - d]
        next_own[i] = data_row[d]
        any_row[d] = i
        if data[i]:
            data_row[d] = i
    return next_other, next_own


@njit(cache=True, nogil=True)
def bucket_min_max(bucket, values, use, buckets):  # type: ignore[no-untyped-def]
    """Minimum and maximum of ``values`` where ``use``, per bucket (-1: none)."""
    low = np.full(buckets, -1, dtype=np.int64)
    high = np.full(buckets, -1, dtype=np.int64)
    for i in range(len(bucket)):
        if use[i]:
            b = bucket[i]
            v = values[i]
            if high[b] < 0 or v < low[b]:
                low[b] = v
            if v > high[b]:
                high[b] = v
    return low, high

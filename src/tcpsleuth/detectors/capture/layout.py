"""Compiled loops that lay out what the tracker kept for the analysis: its state a
field at a time (:func:`by_field`, which also merges shards) and the handshake
table, ordered per connection (:func:`handshake_rows`). One pass each over the
connections; NumPy needed several whole-column passes and a sort."""

from __future__ import annotations

import numpy as np

from tcpsleuth.compiled import njit
from tcpsleuth.detectors.capture import kernels as K


@njit(cache=True, nogil=True)
def by_field(  # type: ignore[no-untyped-def]
    n,
    where,
    conn_state,
    dir_state,
    dir_small,
    tuple_info,
    tuple_addr,
    out_conn,
    out_info,
    out_addr,
    out_dirs,
    out_small,
):
    """The state of connections 0 to ``n`` - 1, one field at a time: connection
    ``c``'s fields go to column ``where[c]`` of the ``out_`` arrays (``out_dirs[d,
    field, where[c]]`` ...; its 4-tuple's with it), so that what reads the state a
    field at a time reads contiguous columns, and shards merge in the same pass.
    In blocks of connections small enough to stay in the cache while each field of
    the block is written."""
    block = 512
    for first in range(0, n, block):
        last = min(first + block, n)
        for k in range(K.CONN_FIELDS):
            for c in range(first, last):
                out_conn[k, where[c]] = conn_state[c, k]
        for k in range(5):
            for c in range(first, last):
                out_info[k, where[c]] = tuple_info[conn_state[c, K.K_TUPLE], k]
        for k in range(4):
            for c in range(first, last):
                out_addr[k, where[c]] = tuple_addr[conn_state[c, K.K_TUPLE], k]
        for d in range(2):
            for k in range(K.DIR_FIELDS):
                for c in range(first, last):
                    out_dirs[d, k, where[c]] = dir_state[c, d, k]
            for k in range(K.SMALL_FIELDS):
                for c in range(first, last):
                    out_small[d, k, where[c]] = dir_small[c, d, k]


@njit(cache=True, nogil=True)
def handshake_rows(present, frame, ts, tsval):  # type: ignore[no-untyped-def]
    """The rows of the handshake table: ``present[kind, c]`` says whether connection
    ``c`` has a row of that kind, at ``frame[kind, c]`` (time ``ts``, TSval
    ``tsval``). Rows come per connection in order, and within one by frame, then
    kind. Returns the rows' connection, kind, frame, time and TSval, and per
    connection where its rows start and end and its rows of kinds 1 and 3 (-1: none)."""
    kinds, nconn = present.shape
    total = 0
    for c in range(nconn):
        for k in range(kinds):
            if present[k, c]:
                total += 1
    conn = np.empty(total, dtype=np.int64)
    kind = np.empty(total, dtype=np.int8)
    at_frame = np.empty(total, dtype=np.int64)
    at_ts = np.empty(total, dtype=np.int64)
    at_tsval = np.empty(total, dtype=np.int64)
    starts = np.empty(nconn, dtype=np.int64)
    ends = np.empty(nconn, dtype=np.int64)
    m = 0
    for c in range(nconn):
        starts[c] = m
        for k in range(kinds):
            if not present[k, c]:
                continue
            f = frame[k, c]
            j = m
            while j > starts[c] and (
                at_frame[j - 1] > f or (at_frame[j - 1] == f and kind[j - 1] > k)
            ):
                conn[j] = conn[j - 1]
                kind[j] = kind[j - 1]
                at_frame[j] = at_frame[j - 1]
                at_ts[j] = at_ts[j - 1]
                at_tsval[j] = at_tsval[j - 1]
                j -= 1
            conn[j] = c
            kind[j] = k
            at_frame[j] = f
            at_ts[j] = ts[k, c]
            at_tsval[j] = tsval[k, c]
            m += 1
        ends[c] = m
    first_of = np.full((2, nconn), -1, dtype=np.int64)
    for j in range(total):
        if kind[j] == 1:
            first_of[0, conn[j]] = j
        elif kind[j] == 3:
            first_of[1, conn[j]] = j
    return conn, kind, at_frame, at_ts, at_tsval, starts, ends, first_of

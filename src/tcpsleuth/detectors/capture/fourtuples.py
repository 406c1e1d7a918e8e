"""The table of 4-tuples the capture tracker keeps: both endpoints and ports under one
key for both directions (the lower endpoint first), found by open addressing on a
splitmix64 hash; the hash's high bits also pick a 4-tuple's shard when the tracking
is split among threads (:mod:`shards`). Compiled with numba; without it, Python.
"""

from __future__ import annotations

import numpy as np

from tcpsleuth.compiled import njit

# 4-tuple table: addresses (uint64) and af, ports, current connection, last SYN's seq
T_AF, T_APORT, T_BPORT, T_CONN, T_SYN_SEQ = range(5)


@njit(cache=True, nogil=True)
def _mix(x: np.uint64) -> np.uint64:
    """splitmix64 finaliser."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@njit(cache=True, nogil=True)
def tuple_hash(af, a_hi, a_lo, b_hi, b_lo, aport, bport):  # type: ignore[no-untyped-def]
    h = _mix(a_hi ^ np.uint64(af))
    h = _mix(h ^ a_lo)
    h = _mix(h ^ b_hi)
    h = _mix(h ^ b_lo)
    return _mix(h ^ ((np.uint64(aport) << np.uint64(16)) | np.uint64(bport)))


@njit(cache=True, nogil=True)
def shard_of_hash(h: np.uint64, shards: int) -> int:
    """The shard of a 4-tuple whose hash is ``h`` (its high bits: the table's slot
    takes the low ones)."""
    return np.int64((h >> np.uint64(40)) % np.uint64(shards))


@njit(cache=True, nogil=True)
def shard_of(af, a_hi, a_lo, b_hi, b_lo, aport, bport, shards):  # type: ignore[no-untyped-def]
    """Per 4-tuple (a the lower endpoint, as ``kernels.assign`` keys them), its shard."""
    out = np.empty(len(af), dtype=np.int64)
    for i in range(len(af)):
        h = tuple_hash(
            np.int64(af[i]),
            a_hi[i],
            a_lo[i],
            b_hi[i],
            b_lo[i],
            np.int64(aport[i]),
            np.int64(bport[i]),
        )
        out[i] = shard_of_hash(h, shards)
    return out


@njit(cache=True, nogil=True)
def rehash(table, tuple_addr, tuple_info, ntuples):  # type: ignore[no-untyped-def]
    """Fill an empty open-addressing ``table`` (size a power of two) with the tuples."""
    mask = np.uint64(len(table) - 1)
    for t in range(ntuples):
        h = tuple_hash(
            tuple_info[t, T_AF],
            tuple_addr[t, 0],
            tuple_addr[t, 1],
            tuple_addr[t, 2],
            tuple_addr[t, 3],
            tuple_info[t, T_APORT],
            tuple_info[t, T_BPORT],
        )
        slot = h & mask
        while table[slot] != 0:
            slot = (slot + np.uint64(1)) & mask
        table[slot] = t + 1


@njit(cache=True, nogil=True, _nrt=False)
def find_or_add(  # type: ignore[no-untyped-def]
    table, tuple_addr, tuple_info, ntuples, h, fam, a_hi, a_lo, a_port, b_hi, b_lo, b_port
):
    """The 4-tuple's row (its hash ``h``), added (with no connection yet) when it is
    new; and the number of rows after it."""
    mask = np.uint64(len(table) - 1)
    slot = h & mask
    while table[slot] != 0:
        k = table[slot] - 1
        if (
            tuple_addr[k, 1] == a_lo
            and tuple_addr[k, 3] == b_lo
            and tuple_info[k, T_APORT] == a_port
            and tuple_info[k, T_BPORT] == b_port
            and tuple_addr[k, 0] == a_hi
            and tuple_addr[k, 2] == b_hi
            and tuple_info[k, T_AF] == fam
        ):
            return k, ntuples
        slot = (slot + np.uint64(1)) & mask
    t = ntuples
    table[slot] = t + 1
    tuple_addr[t, 0] = a_hi
    tuple_addr[t, 1] = a_lo
    tuple_addr[t, 2] = b_hi
    tuple_addr[t, 3] = b_lo
    tuple_info[t, T_AF] = fam
    tuple_info[t, T_APORT] = a_port
    tuple_info[t, T_BPORT] = b_port
    tuple_info[t, T_CONN] = -1
    tuple_info[t, T_SYN_SEQ] = -1
    return t, ntuples + 1

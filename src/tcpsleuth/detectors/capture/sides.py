"""One side of every connection, as :func:`.tracking.finish` reads the tracker's state:
the per-direction fields by name (:class:`F`, the names :mod:`.kernels` gives them:
``D_X`` in the 64-bit table, ``S_X`` in the 32-bit one, ``F.X`` here) and
:class:`Side`, which picks a field's values for the client's or the server's direction
of each connection.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from tcpsleuth.detectors.capture import kernels as K


class Field(NamedTuple):
    """One per-direction field of the tracker's state: in ``dir_small`` (kernels'
    ``S_*``, 32-bit) or ``dir_state`` (``D_*``, 64-bit), at ``index``."""

    small: bool
    index: int


class F:
    """The per-direction fields :func:`finish` reads, by the names kernels gives them
    (``D_X`` or ``S_X`` there, ``F.X`` here): an attribute, so that a misspelt one
    fails where it is written (tests/unit/sources/test_pcap_reader.py holds the table against
    kernels)."""

    BYTES = Field(False, K.D_BYTES)
    FAR_AT = Field(False, K.D_FAR_AT)
    FAR_BEST = Field(False, K.D_FAR_BEST)
    FIRST_DATA_TS = Field(False, K.D_FIRST_DATA_TS)
    HS_FLAGS = Field(True, K.S_HS_FLAGS)
    HS_FRAME = Field(False, K.D_HS_FRAME)
    HS_KIND = Field(True, K.S_HS_KIND)
    HS_MSS = Field(True, K.S_HS_MSS)
    HS_SACK = Field(True, K.S_HS_SACK)
    HS_SEQ = Field(False, K.D_HS_SEQ)
    HS_TS = Field(False, K.D_HS_TS)
    HS_TSOK = Field(True, K.S_HS_TSOK)
    HS_TSVAL = Field(False, K.D_HS_TSVAL)
    HS_WIN = Field(True, K.S_HS_WIN)
    HS_WS = Field(True, K.S_HS_WS)
    INF_ACK = Field(False, K.D_INF_ACK)
    INF_FRAME = Field(False, K.D_INF_FRAME)
    INF_WIN = Field(True, K.S_INF_WIN)
    LATER_BEST = Field(False, K.D_LATER_BEST)
    LATER_FRAME = Field(False, K.D_LATER_FRAME)
    LATER_TS = Field(False, K.D_LATER_TS)
    LATER_TSVAL = Field(False, K.D_LATER_TSVAL)
    LSYN_FRAME = Field(False, K.D_LSYN_FRAME)
    LSYN_TS = Field(False, K.D_LSYN_TS)
    PKTS = Field(False, K.D_PKTS)
    PROBE = Field(True, K.S_PROBE)
    REP_TS = Field(False, K.D_REP_TS)
    REP_TSVAL = Field(False, K.D_REP_TSVAL)
    RETRANS = Field(True, K.S_RETRANS)
    RTT_TS = Field(False, K.D_RTT_TS)
    SYNACKS = Field(True, K.S_SYNACKS)
    SYNACK_RENEWED = Field(True, K.S_SYNACK_RENEWED)
    SYNACK_SAME_SEQ = Field(True, K.S_SYNACK_SAME_SEQ)
    WAITS = Field(True, K.S_WAITS)
    RWND_LIMITED_NS = Field(False, K.D_RWND_LIMITED_NS)
    WIN_CHANGES = Field(True, K.S_WIN_CHANGES)
    WMAX = Field(True, K.S_WMAX)
    WMIN = Field(True, K.S_WMIN)
    ZERO = Field(True, K.S_ZERO)


class Side:
    """One side's fields of every connection (``side[rows, F.X]``)."""

    def __init__(self, dirs: np.ndarray, small: np.ndarray, who: np.ndarray) -> None:
        self.dirs, self.small = dirs, small
        self.first = who == 0
        self.kept: dict[Field, np.ndarray] = {}

    def keep(self, fields: list[Field]) -> None:
        """Pick these fields now and let go of the state."""
        self.kept = {field: self[:, field] for field in fields}
        self.dirs = self.small = np.zeros((2, 0, 0), dtype=np.int64)

    def __getitem__(self, key: tuple[Any, Field | list[Field]]) -> np.ndarray:
        rows, field = key
        if isinstance(field, list):
            return np.stack([self[rows, one] for one in field], axis=1)
        if field in self.kept:
            return self.kept[field][rows]
        source = self.small if field.small else self.dirs
        values = np.where(self.first, source[0, field.index], source[1, field.index])
        return np.asarray(values[rows], dtype=np.int64)

"""pcapng interfaces: what an interface description block says of a link (its type,
its snap length, its clock's resolution ``if_tsresol`` and offset ``if_tsoffset``), and the
timestamps of its packets in nanoseconds, refused where they do not fit the clock."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tcpsleuth.errors import InputError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TSOFFSET_S = 2**32  # +-136 years: the nanosecond clock (int64) spans +-292
MAX_SHIFT = 63  # if_tsresol 2^-n
MAX_POW10 = 18  # if_tsresol 10^-n


class StampRange(Exception):
    """A packet's timestamp does not fit the nanosecond clock; ``index`` in the run."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


@dataclass
class Interface:
    linktype: int
    snaplen: int
    ts_mul: int = 1000  # nanoseconds per tick when the resolution is 10^-n, n <= 9
    ts_div_shift: int = -1  # for 2^-n resolutions
    ts_div_pow10: int = 1
    ts_offset_ns: int = 0

    def base_ns(self, ticks: int) -> int:
        if self.ts_div_shift >= 0:
            return (ticks * 1_000_000_000) >> self.ts_div_shift
        return ticks * self.ts_mul // self.ts_div_pow10

    def to_ns(self, ticks: int) -> int:
        return self.base_ns(ticks) + self.ts_offset_ns

    def fits(self, ticks: int) -> bool:
        """The timestamp, with and without the offset, fits the int64 nanosecond clock."""
        base = self.base_ns(ticks)
        return 0 <= base <= INT64_MAX and INT64_MIN <= base + self.ts_offset_ns <= INT64_MAX


def timestamps(
    interfaces: list[Interface], if_ids: np.ndarray, ticks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Nanosecond timestamps and link types of a run of packets, per interface;
    StampRange for the first packet whose timestamp is beyond the clock."""
    ts_ns = np.empty(len(ticks), dtype=np.int64)
    linktype = np.empty(len(ticks), dtype=np.int32)
    for index in np.unique(if_ids).tolist():
        iface = interfaces[index]
        mask = if_ids == index
        t = ticks[mask].view(np.uint64)  # 64 bits of ticks, unsigned
        low, high = int(t.min()), int(t.max())
        for edge in (low, high):
            if not iface.fits(edge):
                where = np.flatnonzero(mask)[int(np.argmax(t == np.uint64(edge)))]
                raise StampRange(int(where))
        if iface.ts_div_shift >= 0:
            shift = iface.ts_div_shift
            if shift > 30:  # below a nanosecond: drop what cannot show, so nothing overflows
                t, shift = t >> np.uint64(shift - 30), 30
            whole = (t >> np.uint64(shift)) * np.uint64(1_000_000_000)
            part = ((t & np.uint64((1 << shift) - 1)) * np.uint64(1_000_000_000)) >> np.uint64(
                shift
            )
            base = whole + part
        elif iface.ts_div_pow10 > 1:
            base = t // np.uint64(iface.ts_div_pow10)
        else:
            base = t * np.uint64(iface.ts_mul)
        ts_ns[mask] = base.astype(np.int64) + np.int64(iface.ts_offset_ns)
        linktype[mask] = iface.linktype
    return ts_ns, linktype


def read_interface(body: bytes, order: str, path: Path, where: int) -> Interface:
    if len(body) < 8:
        raise InputError(f"{path}: pcapng interface block at byte {where} is too short")
    linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", body, 0)
    iface = Interface(linktype, snaplen)
    pos = 8
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(order + "HH", body, pos)
        value = body[pos + 4 : pos + 4 + length]
        if code == 0:
            break
        if code == 9 and length >= 1:  # if_tsresol
            resol = value[0]
            if (resol & 0x7F) > (MAX_SHIFT if resol & 0x80 else MAX_POW10):
                raise InputError(
                    f"{path}: pcapng interface block at byte {where}: if_tsresol 0x{resol:02x} "
                    f"is no usable resolution (at most 2^-{MAX_SHIFT} or 10^-{MAX_POW10} s)"
                )
            if resol & 0x80:
                iface.ts_div_shift = resol & 0x7F
            else:
                exp = resol & 0x7F
                if exp <= 9:
                    iface.ts_mul, iface.ts_div_pow10 = 10 ** (9 - exp), 1
                else:
                    iface.ts_mul, iface.ts_div_pow10 = 1, 10 ** (exp - 9)
        elif code == 14 and length >= 8:  # if_tsoffset, seconds
            offset_s = struct.unpack_from(order + "q", value)[0]
            if abs(offset_s) > MAX_TSOFFSET_S:
                raise InputError(
                    f"{path}: pcapng interface block at byte {where}: if_tsoffset {offset_s} s "
                    f"is beyond any clock (at most {MAX_TSOFFSET_S} s either way)"
                )
            iface.ts_offset_ns = offset_s * 1_000_000_000
        pos += 4 + ((length + 3) & ~3)
    return iface


def stamp_error(path: Path, where: int) -> InputError:
    return InputError(
        f"{path}: pcapng packet block at byte {where}: its timestamp, with the interface's "
        "resolution and offset, is beyond the years 1678 to 2262 a nanosecond clock holds"
    )


__all__ = ["Interface", "StampRange", "read_interface", "stamp_error", "timestamps"]

"""TCP options of SYN and SYN-ACK segments (RFC 9293, 7323, 2018, 3168)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Option kinds
EOL, NOP, MSS, WSCALE, SACK_PERMITTED, SACK, TIMESTAMPS = 0, 1, 2, 3, 4, 5, 8


@dataclass(frozen=True)
class SynOptions:
    """What one side offered in its SYN or SYN-ACK. ``wscale`` is the shift it
    announced (None: no window-scale option); ``ecn`` is ECN negotiation by the
    flags (ECE+CWR on a SYN, ECE on a SYN-ACK)."""

    mss: int | None
    wscale: int | None
    sack_permitted: bool
    timestamps: bool
    tsval: int | None
    tsecr: int | None
    ecn: bool
    window: int  # the raw window field (never scaled in a SYN or SYN-ACK)
    kinds: tuple[int, ...]  # option kinds in order, for the layouts a middlebox changed

    def to_dict(self) -> dict[str, object]:
        return {
            "mss": self.mss,
            "wscale": self.wscale,
            "sack_permitted": self.sack_permitted,
            "timestamps": self.timestamps,
            "tsval": self.tsval,
            "ecn": self.ecn,
            "window": self.window,
        }


def parse(raw: bytes, window: int, ecn: bool) -> SynOptions:
    """Options as tshark reads them; a malformed option ends the walk (what follows
    is unreadable), keeping what came before it."""
    mss = wscale = tsval = tsecr = None
    sack = timestamps = False
    kinds: list[int] = []
    pos, end = 0, len(raw)
    while pos < end:
        kind = raw[pos]
        kinds.append(kind)
        if kind == EOL:
            break
        if kind == NOP:
            pos += 1
            continue
        if pos + 1 >= end:
            break
        length = raw[pos + 1]
        if length < 2 or pos + length > end:
            break
        if kind == MSS and length == 4:
            mss = struct.unpack_from("!H", raw, pos + 2)[0]
        elif kind == WSCALE and length == 3:
            wscale = raw[pos + 2]
        elif kind == SACK_PERMITTED and length == 2:
            sack = True
        elif kind == TIMESTAMPS and length == 10:
            timestamps = True
            tsval, tsecr = struct.unpack_from("!II", raw, pos + 2)
        pos += length
    return SynOptions(mss, wscale, sack, timestamps, tsval, tsecr, ecn, window, tuple(kinds))

"""What each side offered in its SYN or SYN-ACK (RFC 9293, 7323, 2018, 3168); the
options are read by :func:`tcpsleuth.sources.pcap.walk.syn_options`."""

from __future__ import annotations

from dataclasses import dataclass


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
    ecn: bool
    window: int  # the raw window field (never scaled in a SYN or SYN-ACK)

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

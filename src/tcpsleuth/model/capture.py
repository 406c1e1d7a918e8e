"""The records of the capture path: TCP header columns as the decoder hands them
to the detectors, the SYN options, and the TCP constants both sides read.

Kept here, not in the sources that fill them, so that detectors and reports use
them without importing a source (the layers in docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# TCP flags as in the header's 13th byte, plus NS (the low bit of byte 12) as 0x100.
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, NS = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x100
SEQ_SPACE = 1 << 32  # sequence numbers wrap here

# columns of the SYN-option rows (``TcpColumns.syn_options``, walk.syn_options)
OPT_MSS, OPT_WSCALE, OPT_SACK, OPT_TIMESTAMPS, OPT_TSVAL = 0, 1, 2, 3, 4


@dataclass
class TcpColumns:
    """One row per TCP segment. Addresses are two big-endian 64-bit halves (IPv4 in
    ``src_lo``/``dst_lo`` with the halves above zero and ``af`` = 4)."""

    frame: np.ndarray  # int64, 1-based packet number in the file (as tshark counts)
    ts_ns: np.ndarray  # int64
    af: np.ndarray  # uint8: 4 or 6
    src_hi: np.ndarray  # uint64
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray  # int32
    dport: np.ndarray
    seq: np.ndarray  # int64 (0 .. 2**32-1)
    ack: np.ndarray
    flags: np.ndarray  # int32
    window: np.ndarray  # int32, the raw 16-bit field
    paylen: np.ndarray  # int32, TCP payload length from the IP header
    tsval: np.ndarray  # int64: TSval when the options start NOP NOP TS (Linux's layout), else -1
    # Python-side extras, keyed by row number within these columns
    syn_rows: np.ndarray  # int64: rows that are SYN or SYN-ACK segments, ascending
    syn_options: np.ndarray  # int64 (len(syn_rows), 5): columns OPT_*
    # where each segment's payload starts in ``data`` (the chunk it came from) and how
    # many of its bytes were captured; -1 and 0 once chunks are concatenated
    payload_at: np.ndarray  # int64
    payload_cap: np.ndarray  # int32
    data: np.ndarray  # uint8: the chunk's bytes

    def __len__(self) -> int:
        return len(self.frame)


COLUMN_TYPES = {
    "frame": np.int64,
    "ts_ns": np.int64,
    "af": np.uint8,
    "src_hi": np.uint64,
    "src_lo": np.uint64,
    "dst_hi": np.uint64,
    "dst_lo": np.uint64,
    "sport": np.int32,
    "dport": np.int32,
    "seq": np.int64,
    "ack": np.int64,
    "flags": np.int32,
    "window": np.int32,
    "paylen": np.int32,
    "tsval": np.int64,
}


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


@dataclass
class DecodeCounts:
    """Packets a capture held, by what became of them (filled while it is read)."""

    packets: int = 0
    tcp: int = 0
    not_ip: int = 0
    not_tcp: int = 0
    truncated_headers: int = 0
    fragments: int = 0  # IP fragments read (each one held until its datagram is whole)
    unsupported_linktype: int = 0
    undecodable: int = 0
    reassembled: int = 0  # datagrams rebuilt from fragments
    fragments_incomplete: int = 0  # fragments whose datagram never became whole

    def unread(self) -> int:
        """Packets that could not be read at all (not merely not TCP)."""
        return self.unsupported_linktype + self.undecodable + self.fragments_incomplete


@dataclass(frozen=True)
class CaptureFacts:
    """What reading a capture told besides its segments: the file, its format and link
    types, the reader's warnings and the packets by what became of them."""

    path: str
    kind: str  # pcap, pcapng
    compressed: bool
    linktypes: frozenset[int]
    warnings: tuple[str, ...]
    counts: DecodeCounts


class SegmentSource(Protocol):
    """What the capture detectors read: TCP segments chunk by chunk, once, then the
    facts of the reading (:class:`tcpsleuth.sources.pcap.CaptureStream` is one)."""

    chunks: Iterator[TcpColumns]

    def facts(self) -> CaptureFacts:
        """What the reading told, complete once ``chunks`` has been read."""
        ...

"""The kernel's sock_diag records as NumPy dtypes (``struct inet_diag_msg`` and
``struct tcp_info`` from the uapi headers), and what the socket detectors need of
a dump. The netlink reading is :mod:`tcpsleuth.sources.sockdiag`'s."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tcpsleuth.model.records import Listener

TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE, TCPI_OPT_ECN = 1, 2, 4, 8

# struct inet_diag_msg (72 bytes); ports are big-endian, addresses are 16 bytes
# (an IPv4 address in the first 4).
DIAG_DTYPE = np.dtype(
    [
        ("family", "u1"),
        ("state", "u1"),
        ("timer", "u1"),
        ("retrans", "u1"),
        ("sport", ">u2"),
        ("dport", ">u2"),
        ("src", "V16"),
        ("dst", "V16"),
        ("if", "=u4"),
        ("cookie", "=u8"),
        ("expires", "=u4"),
        ("rqueue", "=u4"),
        ("wqueue", "=u4"),
        ("uid", "=u4"),
        ("inode", "=u4"),
    ]
)
assert DIAG_DTYPE.itemsize == 72

# struct tcp_info up to tcpi_rcv_wnd (236 bytes): every u64 sits at an 8-aligned
# offset, so the packed dtype has the kernel's layout.
_TCP_INFO_LAYOUT = (
    [
        (name, "u1")
        for name in ("state", "ca_state", "retransmits", "probes", "backoff", "options", "wscale")
    ]
    + [("flags", "u1")]
    + [
        (name, "=u4")
        for name in [
            "rto",
            "ato",
            "snd_mss",
            "rcv_mss",
            "unacked",
            "sacked",
            "lost",
            "retrans",
            "fackets",
            "last_data_sent",
            "last_ack_sent",
            "last_data_recv",
            "last_ack_recv",
            "pmtu",
            "rcv_ssthresh",
            "rtt",
            "rttvar",
            "snd_ssthresh",
            "snd_cwnd",
            "advmss",
            "reordering",
            "rcv_rtt",
            "rcv_space",
            "total_retrans",
        ]
    ]
    + [(n, "=u8") for n in ("pacing_rate", "max_pacing_rate", "bytes_acked", "bytes_received")]
    + [
        (n, "=u4")
        for n in (
            "segs_out",
            "segs_in",
            "notsent_bytes",
            "min_rtt",
            "data_segs_in",
            "data_segs_out",
        )
    ]
    + [(n, "=u8") for n in ("delivery_rate", "busy_time", "rwnd_limited", "sndbuf_limited")]
    + [(n, "=u4") for n in ("delivered", "delivered_ce")]
    + [(n, "=u8") for n in ("bytes_sent", "bytes_retrans")]
    + [(n, "=u4") for n in ("dsack_dups", "reord_seen", "rcv_ooopack", "snd_wnd", "rcv_wnd")]
)
TCP_INFO_DTYPE = np.dtype(_TCP_INFO_LAYOUT)
assert TCP_INFO_DTYPE.itemsize == 236


def field_end(name: str) -> int:
    """Bytes of tcp_info a kernel must send for ``name`` to be in it."""
    offset = TCP_INFO_DTYPE.fields[name][1]
    return int(offset + TCP_INFO_DTYPE.fields[name][0].itemsize)


class SocketArrays(Protocol):
    """Every socket of a dump as structured arrays, row for row: ``diag``
    (DIAG_DTYPE), ``info`` (TCP_INFO_DTYPE, zeros where the kernel sent none) and
    ``info_len`` (bytes of tcp_info the kernel sent)."""

    diag: np.ndarray
    info: np.ndarray
    info_len: np.ndarray

    def select(self, mask: np.ndarray) -> SocketArrays: ...

    def listeners(self) -> list[Listener]: ...

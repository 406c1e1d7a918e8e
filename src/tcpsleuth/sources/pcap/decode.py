"""Packet bytes to TCP header columns, a whole chunk at a time with NumPy.

Link layers: Ethernet (with 802.1Q/802.1ad tags, up to two), Linux cooked
capture v1 (SLL) and v2 (SLL2), raw IP (LINKTYPE_RAW, IPV4, IPV6) and BSD
loopback (NULL, LOOP). Network layers: IPv4 (non-first fragments skipped) and
IPv6 (hop-by-hop, routing and destination-options headers skipped).

Payload lengths come from the IP header, not from the captured length, so a
capture cut short by a snap length (``tcpdump -s 128``) still gives the real
sequence-space length of every segment. When the IP length is zero (a TSO/GSO
super-packet captured on the sending host) the frame's original length is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tcpsleuth.sources.pcap import walk
from tcpsleuth.sources.pcap.reader import RawBatch

# Link types (pcap-linktype(7))
LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2 = 113, 228, 229, 276
RAW_ALIASES = (12, 14)  # DLT_RAW as some systems number it
SUPPORTED_LINKTYPES = {
    LINKTYPE_NULL: "BSD loopback",
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_RAW: "raw IP",
    12: "raw IP",
    14: "raw IP",
    LINKTYPE_LOOP: "OpenBSD loopback",
    LINKTYPE_LINUX_SLL: "Linux cooked v1",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2",
}
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
IPV6_SKIPPABLE = (0, 43, 60)  # hop-by-hop, routing, destination options

# TCP flags as in the header's 13th byte, plus NS (the low bit of byte 12) as 0x100.
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, NS = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x100


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
    syn_options: np.ndarray  # int64 (len(syn_rows), 5): see walk.syn_options
    payloads: dict[int, bytes]  # captured payload of segments to or from a watched port

    def __len__(self) -> int:
        return len(self.frame)


@dataclass
class DecodeCounts:
    packets: int = 0
    tcp: int = 0
    not_ip: int = 0
    not_tcp: int = 0
    truncated_headers: int = 0
    fragments: int = 0
    unsupported_linktype: int = 0


def _u16(b: np.ndarray, i: np.ndarray) -> np.ndarray:
    return (b[i].astype(np.int64) << 8) | b[i + 1]


def _u32(b: np.ndarray, i: np.ndarray) -> np.ndarray:
    return (
        (b[i].astype(np.int64) << 24)
        | (b[i + 1].astype(np.int64) << 16)
        | (b[i + 2].astype(np.int64) << 8)
        | b[i + 3]
    )


def _u64(b: np.ndarray, i: np.ndarray) -> np.ndarray:
    gathered = b[i[:, None] + np.arange(8)]
    return np.ascontiguousarray(gathered).view(">u8").ravel().astype(np.uint64)


def decode(
    batch: RawBatch,
    first_frame: int,
    payload_ports: frozenset[int],
    counts: DecodeCounts,
) -> TcpColumns:
    """TCP segments of ``batch``; ``first_frame`` numbers its first packet."""
    b = np.frombuffer(batch.data, dtype=np.uint8)
    last = len(b) - 1
    n = len(batch)
    counts.packets += n
    off, cap, lt = batch.offsets, batch.caplen, batch.linktype
    end = off + cap  # one past the last captured byte of each packet

    def safe(i: np.ndarray, need: int, ok: np.ndarray) -> np.ndarray:
        """Index ``i`` where ``need`` bytes from it are captured, else 0 (masked later)."""
        good = ok & (i + need <= end)
        return np.where(good, i, 0).clip(0, last - need)

    ethertype = np.zeros(n, dtype=np.int64)
    l3 = off.copy()
    known = np.zeros(n, dtype=bool)

    eth = lt == LINKTYPE_ETHERNET
    if eth.any():
        i = safe(off + 12, 2, eth)
        ethertype = np.where(eth, _u16(b, i), ethertype)
        l3 = np.where(eth, off + 14, l3)
        for _ in range(2):
            tagged = eth & np.isin(ethertype, VLAN_TYPES)
            if not tagged.any():
                break
            i = safe(l3 + 2, 2, tagged)
            ethertype = np.where(tagged, _u16(b, i), ethertype)
            l3 = np.where(tagged, l3 + 4, l3)
        known |= eth
    sll = lt == LINKTYPE_LINUX_SLL
    if sll.any():
        i = safe(off + 14, 2, sll)
        ethertype = np.where(sll, _u16(b, i), ethertype)
        l3 = np.where(sll, off + 16, l3)
        known |= sll
    sll2 = lt == LINKTYPE_LINUX_SLL2
    if sll2.any():
        i = safe(off, 2, sll2)
        ethertype = np.where(sll2, _u16(b, i), ethertype)
        l3 = np.where(sll2, off + 20, l3)
        known |= sll2
    null = (lt == LINKTYPE_NULL) | (lt == LINKTYPE_LOOP)
    if null.any():
        # The family is in the capturing host's byte order for NULL, network order
        # for LOOP; AF_INET is 2 everywhere, AF_INET6 is 10, 24, 28 or 30.
        i = safe(off, 4, null)
        first, fourth = b[i].astype(np.int64), b[i + 3].astype(np.int64)
        family = np.where(first != 0, first, fourth)
        ethertype = np.where(
            null,
            np.where(
                family == 2,
                ETH_IPV4,
                np.where(np.isin(family, (10, 24, 28, 30)), ETH_IPV6, 0),
            ),
            ethertype,
        )
        l3 = np.where(null, off + 4, l3)
        known |= null
    raw = np.isin(lt, (LINKTYPE_RAW, *RAW_ALIASES, LINKTYPE_IPV4, LINKTYPE_IPV6))
    if raw.any():
        i = safe(off, 1, raw)
        version = b[i] >> 4
        ethertype = np.where(
            raw, np.where(version == 4, ETH_IPV4, np.where(version == 6, ETH_IPV6, 0)), ethertype
        )
        known |= raw
    counts.unsupported_linktype += int((~known).sum())

    # IPv4
    v4 = known & (ethertype == ETH_IPV4)
    i = safe(l3, 20, v4)
    v4 &= (b[i] >> 4) == 4
    ihl = (b[i] & 0x0F).astype(np.int64) * 4
    total = _u16(b, i + 2)
    frag_offset = _u16(b, i + 6) & 0x1FFF
    proto4 = b[i + 9]
    v4_trunc = known & (ethertype == ETH_IPV4) & (l3 + 20 > end)
    frag = v4 & (frag_offset != 0)
    counts.fragments += int(frag.sum())
    v4 &= ~frag & (l3 + 20 <= end)
    src4 = _u32(b, i + 12).astype(np.uint64)
    dst4 = _u32(b, i + 16).astype(np.uint64)
    # IPv6
    v6 = known & (ethertype == ETH_IPV6)
    j = safe(l3, 40, v6)
    v6 &= (b[j] >> 4) == 6
    v6_trunc = known & (ethertype == ETH_IPV6) & (l3 + 40 > end)
    v6 &= l3 + 40 <= end
    plen6 = _u16(b, j + 4)
    next_header = b[j + 6].astype(np.int64)
    l4_6 = l3 + 40
    for _ in range(3):
        ext = v6 & np.isin(next_header, IPV6_SKIPPABLE)
        if not ext.any():
            break
        k = safe(l4_6, 8, ext)
        next_header = np.where(ext, b[k].astype(np.int64), next_header)
        l4_6 = np.where(ext, l4_6 + (b[k + 1].astype(np.int64) + 1) * 8, l4_6)

    is_ip = v4 | v6
    counts.not_ip += int((known & ~is_ip & ~v4_trunc & ~v6_trunc & ~frag).sum())
    tcp = (v4 & (proto4 == 6)) | (v6 & (next_header == 6))
    counts.not_tcp += int((is_ip & ~tcp).sum())
    l4 = np.where(v4, l3 + ihl, l4_6)
    trunc = tcp & (l4 + 20 > end)
    counts.truncated_headers += int(trunc.sum() + v4_trunc.sum() + v6_trunc.sum())
    tcp &= ~trunc
    rows = np.flatnonzero(tcp)
    counts.tcp += len(rows)

    l4 = l4[rows]
    is4 = v4[rows]
    t = l4
    sport = _u16(b, t).astype(np.int32)
    dport = _u16(b, t + 2).astype(np.int32)
    seq = _u32(b, t + 4)
    ack = _u32(b, t + 8)
    hlen = (b[t + 12] >> 4).astype(np.int64) * 4
    flags = (b[t + 13].astype(np.int32)) | ((b[t + 12].astype(np.int32) & 1) << 8)
    window = _u16(b, t + 14).astype(np.int32)
    l3r = l3[rows]
    # Linux puts the timestamps option first on every segment after the handshake:
    # NOP, NOP, kind 8, length 10 (tcp_options_write).
    ts_ok = (hlen >= 32) & (t + 32 <= end[rows])
    k = np.where(ts_ok, t, 0)
    ts_ok &= _u32(b, k + 20) == 0x0101080A
    tsval = np.where(ts_ok, _u32(b, k + 24), -1)
    ip_payload = np.where(is4, total[rows] - ihl[rows], plen6[rows] - (l4 - l3r - 40))
    # TSO/GSO packets captured on the sender carry IP length 0.
    from_frame = batch.origlen[rows] - (l4 - off[rows])
    ip_payload = np.where(ip_payload <= 0, from_frame, ip_payload)
    paylen = np.maximum(ip_payload - hlen, 0).astype(np.int32)

    src_hi = np.zeros(len(rows), dtype=np.uint64)
    dst_hi = np.zeros(len(rows), dtype=np.uint64)
    src_lo = src4[rows].copy()
    dst_lo = dst4[rows].copy()
    six = np.flatnonzero(~is4)
    if len(six):
        base = l3r[six]
        src_hi[six] = _u64(b, base + 8)
        src_lo[six] = _u64(b, base + 16)
        dst_hi[six] = _u64(b, base + 24)
        dst_lo[six] = _u64(b, base + 32)

    pkt_end = end[rows]
    syn_rows = np.flatnonzero((flags & SYN) != 0)
    syn_starts = t[syn_rows] + 20
    syn_options = walk.syn_options(
        b, syn_starts, np.minimum(t[syn_rows] + hlen[syn_rows], pkt_end[syn_rows])
    )
    data = batch.data
    payloads: dict[int, bytes] = {}
    if payload_ports:
        ports = np.array(sorted(payload_ports), dtype=np.int32)
        watched = (np.isin(sport, ports) | np.isin(dport, ports)) & (paylen > 0)
        for r in np.flatnonzero(watched).tolist():
            start = int(t[r]) + int(hlen[r])
            stop = min(start + int(paylen[r]), int(pkt_end[r]))
            payloads[r] = data[start:stop] if stop > start else b""

    return TcpColumns(
        frame=rows.astype(np.int64) + first_frame,
        ts_ns=batch.ts_ns[rows],
        af=np.where(is4, 4, 6).astype(np.uint8),
        src_hi=src_hi,
        src_lo=src_lo,
        dst_hi=dst_hi,
        dst_lo=dst_lo,
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags=flags,
        window=window,
        paylen=paylen,
        tsval=tsval,
        syn_rows=syn_rows.astype(np.int64),
        syn_options=syn_options,
        payloads=payloads,
    )


def concatenate(parts: list[TcpColumns]) -> TcpColumns:
    """One table from the chunks, renumbering the Python-side extras."""
    names = [
        "frame",
        "ts_ns",
        "af",
        "src_hi",
        "src_lo",
        "dst_hi",
        "dst_lo",
        "sport",
        "dport",
        "seq",
        "ack",
        "flags",
        "window",
        "paylen",
        "tsval",
    ]
    if not parts:
        empty = {
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
        return TcpColumns(
            **{k: np.zeros(0, dtype=v) for k, v in empty.items()},
            syn_rows=np.zeros(0, dtype=np.int64),
            syn_options=np.zeros((0, 5), dtype=np.int64),
            payloads={},
        )
    columns = {name: np.concatenate([getattr(p, name) for p in parts]) for name in names}
    payloads: dict[int, bytes] = {}
    syn_rows = []
    base = 0
    for part in parts:
        syn_rows.append(part.syn_rows + base)
        payloads.update({base + k: v for k, v in part.payloads.items()})
        base += len(part)
    return TcpColumns(
        **columns,
        syn_rows=np.concatenate(syn_rows),
        syn_options=np.concatenate([part.syn_options for part in parts]),
        payloads=payloads,
    )

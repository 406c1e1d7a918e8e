"""Packet bytes to TCP header columns, a chunk at a time in one compiled loop.

Link layers: Ethernet (with up to eight 802.1Q/802.1ad tags), Linux cooked
capture v1 (SLL) and v2 (SLL2), raw IP (LINKTYPE_RAW, IPV4, IPV6) and BSD
loopback (NULL, LOOP). Network layers: IPv4 and IPv6 (up to eight hop-by-hop,
routing, destination-options, authentication and fragment headers); fragments are
handed to :mod:`.reassemble` and their datagram decoded when it is whole, at the
frame that completed it, as tshark does.

What cannot be read is counted, never silently dropped: packets of a link type
not listed here (``unsupported_linktype``), and packets whose link layer says IP
but whose bytes are no IP header tcpsleuth can follow (``undecodable``: Ethernet
frames in a capture labelled raw IP, more tags or extension headers than above).

Payload lengths come from the IP header, not from the captured length, so a
capture cut short by a snap length (``tcpdump -s 128``) still gives the real
sequence-space length of every segment. When the IP length is zero (a TSO/GSO
super-packet captured on the sending host) the frame's original length is used.

About 460 lines, most of them ``_decode_packets``: one compiled loop over the
packets, with a helper per layer below TCP (link, IPv4, IPv6 with its extension
headers), each saying where the next layer starts or what the packet counts as.
"""

from __future__ import annotations

import numpy as np

from tcpsleuth.compiled import njit
from tcpsleuth.model.capture import COLUMN_TYPES, SYN, DecodeCounts, TcpColumns
from tcpsleuth.sources.pcap import walk
from tcpsleuth.sources.pcap.reader import RawBatch
from tcpsleuth.sources.pcap.reassemble import Reassembler

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


@njit(cache=True, nogil=True)
def _be16(b: np.ndarray, i: int) -> int:
    return (np.int64(b[i]) << 8) | np.int64(b[i + 1])


@njit(cache=True, nogil=True)
def _be32(b: np.ndarray, i: int) -> int:
    return (
        (np.int64(b[i]) << 24)
        | (np.int64(b[i + 1]) << 16)
        | (np.int64(b[i + 2]) << 8)
        | np.int64(b[i + 3])
    )


@njit(cache=True, nogil=True)
def _be64(b: np.ndarray, i: int) -> np.uint64:
    out = np.uint64(0)
    for k in range(8):
        out = (out << np.uint64(8)) | np.uint64(b[i + k])
    return out


@njit(cache=True, nogil=True)
def _extension(next_header: int) -> bool:
    """An IPv6 extension header the decoder follows: hop-by-hop, routing, fragment,
    authentication, destination options."""
    return (
        next_header == 0
        or next_header == 43
        or next_header == 44
        or next_header == 51
        or next_header == 60
    )


# counts returned by _decode_packets, in DecodeCounts' order
C_TCP, C_NOT_IP, C_NOT_TCP, C_TRUNCATED, C_FRAGMENTS, C_UNSUPPORTED, C_UNDECODABLE = range(7)
MAX_TAGS = 8  # VLAN tags, and IPv6 extension headers, followed before giving up
# A TSO/GSO super-packet (IP length 0) is at most 64 KiB, or 512 KiB with BIG TCP;
# an original length beyond this is a corrupt record, not a packet.
MAX_GSO = 1 << 20


OK = -1  # a layer's helpers: nothing to count, go on to the next layer


@njit(cache=True, nogil=True, _nrt=False)
def _link_layer(b, off, end, lt):  # type: ignore[no-untyped-def]
    """Where the IP header starts and the ethertype it has (0: none), or the count a
    packet that goes no further adds to (else OK)."""
    ethertype = 0
    l3 = off
    if lt == 1:  # Ethernet, with VLAN tags
        l3 = off + 14
        if off + 14 <= end:
            ethertype = _be16(b, off + 12)
        for _ in range(MAX_TAGS):
            if ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100:
                ethertype = _be16(b, l3 + 2) if l3 + 4 <= end else 0
                l3 += 4
            else:
                break
        if ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100:
            return l3, ethertype, C_UNDECODABLE
    elif lt == 113:  # Linux cooked v1
        l3 = off + 16
        if off + 16 <= end:
            ethertype = _be16(b, off + 14)
    elif lt == 276:  # Linux cooked v2
        l3 = off + 20
        if off + 2 <= end:
            ethertype = _be16(b, off)
    elif lt == 0 or lt == 108:
        # The family is in the capturing host's byte order for NULL, network
        # order for LOOP; AF_INET is 2 everywhere, AF_INET6 is 10, 24, 28 or 30.
        l3 = off + 4
        if off + 4 <= end:
            family = b[off] if b[off] != 0 else b[off + 3]
            if family == 2:
                ethertype = 0x0800
            elif family == 10 or family == 24 or family == 28 or family == 30:
                ethertype = 0x86DD
    elif lt == 101 or lt == 12 or lt == 14 or lt == 228 or lt == 229:
        if off + 1 <= end:
            version = b[off] >> 4
            if version == 4:
                ethertype = 0x0800
            elif version == 6:
                ethertype = 0x86DD
            else:  # not an IP header: e.g. Ethernet frames labelled raw IP
                return l3, ethertype, C_UNDECODABLE
    else:
        return l3, ethertype, C_UNSUPPORTED
    return l3, ethertype, OK


@njit(cache=True, nogil=True, _nrt=False)
def _ipv4(b, l3, end):  # type: ignore[no-untyped-def]
    """An IPv4 header at ``l3``: where TCP starts and the IP payload's length, or the
    count the packet adds to (C_FRAGMENTS: a fragment, for the reassembler)."""
    if l3 + 20 > end:
        return 0, 0, C_TRUNCATED
    ihl = np.int64(b[l3] & 0x0F) * 4
    if b[l3] >> 4 != 4 or ihl < 20:
        return 0, 0, C_UNDECODABLE
    if _be16(b, l3 + 6) & 0x3FFF:  # more fragments, or an offset
        return 0, 0, C_FRAGMENTS
    if b[l3 + 9] != 6:
        return 0, 0, C_NOT_TCP
    return l3 + ihl, _be16(b, l3 + 2) - ihl, OK


@njit(cache=True, nogil=True, _nrt=False)
def _ipv6(b, l3, end):  # type: ignore[no-untyped-def]
    """An IPv6 header at ``l3`` and its extension headers: where TCP starts and the
    IP payload's length, or the count the packet adds to (C_FRAGMENTS: a fragment,
    whose fragment header starts where TCP would)."""
    if l3 + 40 > end:
        return 0, 0, C_TRUNCATED
    if b[l3] >> 4 != 6:
        return 0, 0, C_UNDECODABLE
    next_header = np.int64(b[l3 + 6])
    l4 = l3 + 40
    # hop-by-hop, routing, destination options, authentication, fragment
    for _ in range(MAX_TAGS):
        if not _extension(next_header):
            break
        if l4 + 8 > end:
            return 0, 0, C_TRUNCATED
        if next_header == 44:
            if _be16(b, l4 + 2) & 0xFFF9:  # an offset, or more fragments
                return l4, 0, C_FRAGMENTS
            size = np.int64(8)  # an atomic fragment: the whole datagram
        elif next_header == 51:
            size = (np.int64(b[l4 + 1]) + 2) * 4
        else:
            size = (np.int64(b[l4 + 1]) + 1) * 8
        next_header = np.int64(b[l4])
        l4 += size
    if _extension(next_header):  # more extension headers than followed
        return 0, 0, C_UNDECODABLE
    if next_header != 6:
        return 0, 0, C_NOT_TCP
    return l4, _be16(b, l3 + 4) - (l4 - l3 - 40), OK


@njit(cache=True, nogil=True)
def _decode_packets(b, offsets, caplen, origlen, linktype):  # type: ignore[no-untyped-def]
    """One pass over the packets of a chunk: the TCP segments' header fields, where
    each one's payload starts and how much of it was captured, and the counts of
    what was skipped. One compiled loop (per-packet work in NumPy took a dozen
    whole-column passes), a helper per layer below TCP."""
    n = len(offsets)
    index = np.empty(n, dtype=np.int64)
    af = np.empty(n, dtype=np.uint8)
    src_hi = np.zeros(n, dtype=np.uint64)
    src_lo = np.empty(n, dtype=np.uint64)
    dst_hi = np.zeros(n, dtype=np.uint64)
    dst_lo = np.empty(n, dtype=np.uint64)
    sport = np.empty(n, dtype=np.int32)
    dport = np.empty(n, dtype=np.int32)
    seq = np.empty(n, dtype=np.int64)
    ack = np.empty(n, dtype=np.int64)
    flags = np.empty(n, dtype=np.int32)
    window = np.empty(n, dtype=np.int32)
    paylen = np.empty(n, dtype=np.int32)
    tsval = np.empty(n, dtype=np.int64)
    payload_at = np.empty(n, dtype=np.int64)
    payload_cap = np.empty(n, dtype=np.int32)
    syn_start = np.empty(n, dtype=np.int64)
    syn_stop = np.empty(n, dtype=np.int64)
    counts = np.zeros(7, dtype=np.int64)
    # fragments: packet, where its IP header starts, and (IPv6) its fragment header
    frag_rows = np.empty(n, dtype=np.int64)
    frag_l3 = np.empty(n, dtype=np.int64)
    frag_hdr = np.empty(n, dtype=np.int64)
    f = 0
    m = 0
    for p in range(n):
        off = offsets[p]
        end = off + caplen[p]
        l3, ethertype, skip = _link_layer(b, off, end, linktype[p])
        l4, ip_payload = 0, 0
        is4 = ethertype == 0x0800
        if skip == OK:
            if is4:
                l4, ip_payload, skip = _ipv4(b, l3, end)
            elif ethertype == 0x86DD:
                l4, ip_payload, skip = _ipv6(b, l3, end)
            else:
                skip = C_NOT_IP
        if skip == OK and l4 + 20 > end:
            skip = C_TRUNCATED
        if skip != OK:
            counts[skip] += 1
            if skip == C_FRAGMENTS:
                frag_rows[f] = p
                frag_l3[f] = l3
                frag_hdr[f] = -1 if is4 else l4
                f += 1
            continue
        t = l4
        index[m] = p
        if is4:
            af[m] = 4
            src_lo[m] = np.uint64(_be32(b, l3 + 12))
            dst_lo[m] = np.uint64(_be32(b, l3 + 16))
        else:
            af[m] = 6
            src_hi[m] = _be64(b, l3 + 8)
            src_lo[m] = _be64(b, l3 + 16)
            dst_hi[m] = _be64(b, l3 + 24)
            dst_lo[m] = _be64(b, l3 + 32)
        sport[m] = _be16(b, t)
        dport[m] = _be16(b, t + 2)
        seq[m] = _be32(b, t + 4)
        ack[m] = _be32(b, t + 8)
        hlen = np.int64(b[t + 12] >> 4) * 4
        flags[m] = np.int32(b[t + 13]) | ((np.int32(b[t + 12]) & 1) << 8)
        window[m] = _be16(b, t + 14)
        # Linux puts the timestamps option first on every segment after the
        # handshake: NOP, NOP, kind 8, length 10 (tcp_options_write).
        if hlen >= 32 and t + 32 <= end and _be32(b, t + 20) == 0x0101080A:
            tsval[m] = _be32(b, t + 24)
        else:
            tsval[m] = -1
        # TSO/GSO packets captured on the sender carry IP length 0.
        if ip_payload <= 0:
            ip_payload = origlen[p] - (l4 - off)
            if ip_payload > MAX_GSO:
                counts[C_UNDECODABLE] += 1
                continue
        length = max(ip_payload - hlen, 0)
        paylen[m] = length
        start = t + hlen
        stop = min(start + length, end)
        payload_at[m] = start
        payload_cap[m] = max(stop - start, 0)
        syn_start[m] = t + 20
        syn_stop[m] = min(t + hlen, end)
        m += 1
    counts[C_TCP] = m
    return (
        index[:m],
        af[:m],
        src_hi[:m],
        src_lo[:m],
        dst_hi[:m],
        dst_lo[:m],
        sport[:m],
        dport[:m],
        seq[:m],
        ack[:m],
        flags[:m],
        window[:m],
        paylen[:m],
        tsval[:m],
        payload_at[:m],
        payload_cap[:m],
        syn_start[:m],
        syn_stop[:m],
        counts,
        frag_rows[:f],
        frag_l3[:f],
        frag_hdr[:f],
    )


def _decode_batch(batch: RawBatch) -> tuple[np.ndarray, ...]:
    return _decode_packets(  # type: ignore[no-any-return]
        np.frombuffer(batch.data, dtype=np.uint8),
        batch.offsets,
        batch.caplen,
        batch.origlen,
        batch.linktype,
    )


def decode(
    batch: RawBatch,
    first_frame: int,
    counts: DecodeCounts,
    fragments: Reassembler | None = None,
) -> TcpColumns:
    """TCP segments of ``batch``; ``first_frame`` numbers its first packet. IP
    fragments go to ``fragments`` (a new one per capture), and each datagram they
    complete is decoded at the frame of its last fragment."""
    counts.packets += len(batch)
    decoded = _decode_batch(batch)
    found, frag_rows, frag_l3, frag_hdr = decoded[-4:]
    fragments_read = int(found[C_FRAGMENTS])
    if fragments_read and fragments is not None:
        rebuilt = _reassembled(batch, frag_rows, frag_l3, frag_hdr, fragments)
        if rebuilt is not None:
            counts.reassembled += rebuilt[1]
            batch = rebuilt[0]
            decoded = _decode_batch(batch)
    b = np.frombuffer(batch.data, dtype=np.uint8)
    (
        rows,
        af,
        src_hi,
        src_lo,
        dst_hi,
        dst_lo,
        sport,
        dport,
        seq,
        ack,
        flags,
        window,
        paylen,
        tsval,
        payload_at,
        payload_cap,
        syn_start,
        syn_stop,
        found,
    ) = decoded[:-3]
    counts.tcp += int(found[C_TCP])
    counts.not_ip += int(found[C_NOT_IP])
    counts.not_tcp += int(found[C_NOT_TCP])
    counts.truncated_headers += int(found[C_TRUNCATED])
    counts.fragments += fragments_read
    counts.unsupported_linktype += int(found[C_UNSUPPORTED])
    counts.undecodable += int(found[C_UNDECODABLE])
    syn_rows = np.flatnonzero((flags & SYN) != 0)
    syn_options = walk.syn_options(b, syn_start[syn_rows], syn_stop[syn_rows])
    return TcpColumns(
        frame=rows + first_frame,
        ts_ns=batch.ts_ns[rows],
        af=af,
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
        payload_at=payload_at,
        payload_cap=payload_cap,
        data=b,
    )


def _reassembled(
    batch: RawBatch,
    frag_rows: np.ndarray,
    frag_l3: np.ndarray,
    frag_hdr: np.ndarray,
    fragments: Reassembler,
) -> tuple[RawBatch, int] | None:
    """``batch`` with each fragment that completes a datagram replaced by the whole
    datagram (raw IP, appended after the chunk's bytes); None when none completed."""
    data = batch.data
    extra: list[bytes] = []
    size = len(data)
    offsets, caplen = batch.offsets.copy(), batch.caplen.copy()
    origlen, linktype = batch.origlen.copy(), batch.linktype.copy()
    for p, l3, hdr in zip(frag_rows.tolist(), frag_l3.tolist(), frag_hdr.tolist(), strict=True):
        end = int(batch.offsets[p] + batch.caplen[p])
        whole = fragments.add(data, l3, end, hdr)
        if whole is None:
            continue
        packet, length, version = whole
        offsets[p], caplen[p], origlen[p] = size, len(packet), length
        linktype[p] = LINKTYPE_IPV4 if version == 4 else LINKTYPE_IPV6
        extra.append(packet)
        size += len(packet)
    if not extra:
        return None
    joined = bytes(data) + b"".join(extra)
    return RawBatch(joined, offsets, caplen, origlen, batch.ts_ns, linktype), len(extra)


def concatenate(parts: list[TcpColumns]) -> TcpColumns:
    """One table from the chunks (without their payload bytes), renumbering the SYN rows."""
    if not parts:
        return TcpColumns(
            **{k: np.zeros(0, dtype=v) for k, v in COLUMN_TYPES.items()},
            syn_rows=np.zeros(0, dtype=np.int64),
            syn_options=np.zeros((0, 5), dtype=np.int64),
            payload_at=np.zeros(0, dtype=np.int64),
            payload_cap=np.zeros(0, dtype=np.int32),
            data=np.zeros(0, dtype=np.uint8),
        )
    columns = {name: np.concatenate([getattr(p, name) for p in parts]) for name in COLUMN_TYPES}
    syn_rows = []
    base = 0
    for part in parts:
        syn_rows.append(part.syn_rows + base)
        base += len(part)
    return TcpColumns(
        **columns,
        syn_rows=np.concatenate(syn_rows),
        syn_options=np.concatenate([part.syn_options for part in parts]),
        payload_at=np.full(base, -1, dtype=np.int64),
        payload_cap=np.zeros(base, dtype=np.int32),
        data=np.zeros(0, dtype=np.uint8),
    )

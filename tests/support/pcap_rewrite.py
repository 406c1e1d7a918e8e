"""Rewrite the packets of a little-endian microsecond pcap (the public Kafka capture):
other link layers, VLAN tags, IPv6 with extension headers, IP fragments. Each kind
of rewrite is one a real network makes; tshark reads every result."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

Frame = bytes
Rewrite = Callable[[Frame], Iterable[Frame]]


def rewrite(src: Path, dst: Path, change: Rewrite, linktype: int | None = None) -> int:
    """Each packet of ``src`` through ``change`` (one frame in, frames out, each with
    the packet's timestamp); the number of packets written."""
    data = src.read_bytes()
    header = bytearray(data[:24])
    if linktype is not None:
        struct.pack_into("<I", header, 20, linktype)
    out = bytearray(header)
    pos, written = 24, 0
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, pos)
        frame = data[pos + 16 : pos + 16 + incl]
        whole = incl >= orig  # (the public capture records 16 bytes more than it holds)
        for new in change(frame) if whole else [frame]:
            cut = len(new) if whole else incl
            out += struct.pack("<IIII", sec, usec, cut, len(new) if whole else orig)
            new = new[:cut]
            out += new
            written += 1
        pos += 16 + incl
    dst.write_bytes(bytes(out))
    return written


def sll_to_ethernet(frame: Frame) -> list[Frame]:
    """Linux cooked v1 (16 bytes) to Ethernet (14 bytes), the same protocol."""
    return [b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02" + frame[14:16] + frame[16:]]


def vlan_tags(count: int) -> Rewrite:
    def tag(frame: Frame) -> list[Frame]:
        tags = b"\x88\xa8\x00\x64" + b"\x81\x00\x00\x0a" * (count - 1)
        return [frame[:12] + tags + frame[12:]]

    return tag


def _ipv6_address(v4: bytes) -> bytes:
    return ipaddress.IPv6Address("2001:db8::" + str(ipaddress.IPv4Address(v4))).packed


# hop-by-hop, destination options, routing (type 0, nothing left), destination options:
# each 8 bytes, its body (after the next-header byte) a length 0 and padding (PadN)
PADDING = b"\x00\x01\x04\x00\x00\x00\x00"
FOUR_EXTENSIONS = [(0, PADDING), (60, PADDING), (43, b"\x00" * 7), (60, PADDING)]


def sll_ipv4_to_ipv6(
    extensions: list[tuple[int, bytes]] = [],  # noqa: B006 (never changed)
    fragment: int = 0,
) -> Rewrite:
    """IPv4 in Linux cooked frames to IPv6 (2001:db8::a.b.c.d), with ``extensions``
    (next-header number, 7 bytes of body) before TCP; with ``fragment`` > 0 each
    packet whose TCP segment is longer is cut into fragments of that many bytes."""
    ident = [0x10000]

    def change(frame: Frame) -> list[Frame]:
        if frame[14:16] != b"\x08\x00":
            return [frame]
        ip = frame[16:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        upper = ip[ihl:total]
        link = frame[:14] + b"\x86\xdd"

        def chain(last: int) -> tuple[int, bytes]:
            """The extension headers, the last one's next header ``last``."""
            kinds = [kind for kind, _ in extensions] + [last]
            body = b"".join(bytes([kinds[i + 1]]) + b for i, (_, b) in enumerate(extensions))
            return kinds[0], body

        def packet(first: int, rest: bytes) -> bytes:
            head = struct.pack("!IHBB", 6 << 28, len(rest), first, 64)
            return link + head + _ipv6_address(ip[12:16]) + _ipv6_address(ip[16:20]) + rest

        if not fragment or len(upper) <= fragment:
            return [packet(*_joined(chain(6), upper))]
        ident[0] += 1
        first, lead = chain(44)
        pieces = []
        for offset in range(0, len(upper), fragment):
            more = 1 if offset + fragment < len(upper) else 0
            frag = struct.pack("!BBHI", 6, 0, offset | more, ident[0])
            pieces.append(packet(first, lead + frag + upper[offset : offset + fragment]))
        return pieces

    return change


def _joined(head: tuple[int, bytes], rest: bytes) -> tuple[int, bytes]:
    return head[0], head[1] + rest


def ipv4_fragments(size: int, hold_back: int = 0, at: int = 16) -> Rewrite:
    """Every IPv4 packet whose payload is longer than ``size`` (a multiple of 8) cut
    into fragments (DF cleared); the IP header starts at byte ``at`` of the frame.
    ``hold_back`` > 0 drops the last fragment of every that-many-th datagram."""
    seen = [0]

    def change(frame: Frame) -> list[Frame]:
        ip = frame[at:]
        if frame[at - 2 : at] != b"\x08\x00" or ip[0] >> 4 != 4:
            return [frame]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        payload = ip[ihl:total]
        if len(payload) <= size:
            return [frame]
        seen[0] += 1
        pieces = []
        for offset in range(0, len(payload), size):
            chunk = payload[offset : offset + size]
            more = 0x2000 if offset + size < len(payload) else 0
            head = bytearray(ip[:ihl])
            struct.pack_into("!H", head, 2, ihl + len(chunk))
            struct.pack_into("!H", head, 6, more | (offset // 8))
            pieces.append(frame[:at] + bytes(head) + chunk)
        if hold_back and seen[0] % hold_back == 0:
            pieces.pop()
        return pieces

    return change

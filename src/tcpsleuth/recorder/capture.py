"""An incident's capture: the packets of its window copied out of the ring files into
one pcap file, with the payload past the Kafka request header cut.

Captures can hold credentials: a SASL PLAIN ``SaslAuthenticate`` request carries
``\\0user\\0password`` right after its header, well within a 128- or 200-byte snap
length. With ``cut`` each packet keeps its link, IP and TCP headers and, of its
payload, only what the analysis reads:
- toward a service port, a Kafka request header at the start of the segment (size,
  api key, api version, correlation id, client.id) when the bytes read as one;
- from a service port, a response's size and correlation id (8 bytes);
- nothing of any other payload (what cannot be parsed is cut to its headers).
The original length stays in each record, as with a short snap length, so segment
sizes, sequence numbers and Kafka framing are analysed exactly as before.

pcap files as tcpdump writes them (micro- or nanosecond, either byte order) are read
record by record; a record cut short at the end of a file still being written is left
out.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tcpsleuth import safefile

MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
ETHERNET, RAW, LINUX_SLL, IPV4, IPV6, LINUX_SLL2 = 1, 101, 113, 228, 229, 276
RESPONSE_HEAD = 8  # size, correlation id
REQUEST_FIXED = 14  # size, api key, api version, correlation id, client.id length
MAX_API_KEY = 100  # Kafka's api keys are below 100 (74 in 4.x)
MAX_CLIENT_ID = 1024


@dataclass
class CopyCounts:
    packets: int = 0
    bytes_written: int = 0
    payload_bytes_cut: int = 0
    cut_short: bool = False  # stopped at the byte budget
    files: int = 0
    linktype: int | None = None
    skipped_files: list[str] | None = None


def _l3(data: bytes, linktype: int) -> tuple[int, int] | None:
    """(offset of the IP header, IP version) for the link types tcpdump writes."""
    if linktype == ETHERNET:
        at, ethertype = 14, data[12:14]
        while ethertype in (b"\x81\x00", b"\x88\xa8") and len(data) >= at + 4:
            ethertype, at = data[at + 2 : at + 4], at + 4
    elif linktype == LINUX_SLL:
        at, ethertype = 16, data[14:16]
    elif linktype == LINUX_SLL2:
        at, ethertype = 20, data[0:2]
    elif linktype in (RAW, IPV4, IPV6):
        at = 0
        ethertype = b"\x08\x00" if data[:1] and data[0] >> 4 == 4 else b"\x86\xdd"
    else:
        return None
    if ethertype == b"\x08\x00":
        return at, 4
    if ethertype == b"\x86\xdd":
        return at, 6
    return None


def kept_length(data: bytes, linktype: int, ports: frozenset[int]) -> tuple[int, int]:
    """(bytes of this captured packet to keep, payload bytes cut)."""
    found = _l3(data, linktype)
    if found is None:
        return min(len(data), 64), max(0, len(data) - 64)
    at, version = found
    if version == 4:
        if len(data) < at + 20:
            return len(data), 0
        ihl = (data[at] & 0x0F) * 4
        if data[at + 9] != 6 or struct.unpack_from("!H", data, at + 6)[0] & 0x1FFF:
            return at + ihl, max(0, len(data) - at - ihl)  # not TCP, or a later fragment
        tcp = at + ihl
    else:
        if len(data) < at + 40:
            return len(data), 0
        if data[at + 6] != 6:
            return at + 40, max(0, len(data) - at - 40)  # extension headers: cut to IP
        tcp = at + 40
    if len(data) < tcp + 20:
        return len(data), 0
    sport, dport = struct.unpack_from("!HH", data, tcp)
    payload = tcp + (data[tcp + 12] >> 4) * 4
    if payload >= len(data):
        return len(data), 0
    keep = 0
    if sport in ports:
        keep = RESPONSE_HEAD
    elif dport in ports:
        keep = _request_header(data, payload)
    end = min(len(data), payload + keep)
    return end, len(data) - end


def _request_header(data: bytes, at: int) -> int:
    """Length of the Kafka request header starting at ``at``, or 0 when these bytes
    are not one (a continuation of a larger request, say)."""
    if len(data) < at + REQUEST_FIXED:
        return 0
    size, api_key, api_version, _corr, client_len = struct.unpack_from("!ihhih", data, at)
    if size < 10 or not 0 <= api_key < MAX_API_KEY or not 0 <= api_version < 64:
        return 0
    if client_len == -1:
        return REQUEST_FIXED
    if not 0 <= client_len <= MAX_CLIENT_ID or REQUEST_FIXED + client_len > size + 4:
        return 0
    return REQUEST_FIXED + client_len


def _records(path: Path) -> Iterable[tuple[bytes, float, bytes, int]]:
    """(record header, timestamp, captured bytes, link type) of each whole record."""
    with path.open("rb") as stream:
        head = stream.read(24)
        if len(head) < 24 or head[:4] not in MAGICS:
            raise ValueError(f"{path.name}: not a pcap file tcpdump wrote")
        order, unit = MAGICS[head[:4]]
        linktype = struct.unpack(order + "I", head[20:24])[0] & 0x0FFFFFFF
        record = struct.Struct(order + "IIII")
        while True:
            header = stream.read(16)
            if len(header) < 16:
                return
            seconds, fraction, caplen, _origlen = record.unpack(header)
            if caplen > 262144:
                return  # not a record: the file is being written or is damaged
            data = stream.read(caplen)
            if len(data) < caplen:
                return
            yield header, seconds + fraction * unit, data, linktype


def copy_window(
    sources: list[Path],
    target: Path,
    start: float,
    end: float,
    ports: frozenset[int],
    cut: bool,
    budget: int,
) -> CopyCounts:
    """Packets stamped within [start, end] from ``sources`` (in order) to ``target``,
    a pcap file with the first source's header; at most ``budget`` bytes. ``target``
    is written whole or not at all (:mod:`tcpsleuth.safefile`): a full disk leaves no
    part of it."""
    counts = CopyCounts(skipped_files=[])
    skipped: list[str] = []
    counts.skipped_files = skipped
    out: BinaryIO | None = None
    first_header: bytes | None = None
    with contextlib.ExitStack() as stack:
        for source in sources:
            try:
                with source.open("rb") as probe:
                    file_header = probe.read(24)
            except OSError as problem:
                skipped.append(f"{source.name}: {problem.strerror}")
                continue
            if len(file_header) < 24 or file_header[:4] not in MAGICS:
                skipped.append(f"{source.name}: not a pcap file tcpdump wrote")
                continue
            counts.files += 1
            order = MAGICS[file_header[:4]][0]
            linktype = struct.unpack(order + "I", file_header[20:24])[0] & 0x0FFFFFFF
            if first_header is None:
                first_header = file_header
                counts.linktype = linktype
                out = stack.enter_context(safefile.replacing(target, 0o600))
                out.write(file_header)
                counts.bytes_written = 24
            elif file_header[:4] != first_header[:4] or linktype != counts.linktype:
                skipped.append(f"{source.name}: another pcap format or link type")
                continue
            assert out is not None
            record = struct.Struct(order + "IIII")
            for header, stamp, data, _linktype in _records(source):
                if stamp < start or stamp > end:
                    continue
                keep = len(data)
                if cut:
                    keep, removed = kept_length(data, linktype, ports)
                    counts.payload_bytes_cut += removed
                if counts.bytes_written + 16 + keep > budget:
                    counts.cut_short = True
                    return counts
                seconds, fraction, _caplen, origlen = record.unpack(header)
                out.write(record.pack(seconds, fraction, keep, origlen))
                out.write(data[:keep])
                counts.bytes_written += 16 + keep
                counts.packets += 1
    return counts

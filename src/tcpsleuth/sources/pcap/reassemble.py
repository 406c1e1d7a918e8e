"""IP fragments put back together, so a fragmented TCP segment is read as one.

The decoder hands every IPv4 fragment and every IPv6 packet with a fragment header
here; a datagram whose fragments cover it from its first byte to the end that its
last fragment names comes back as one IP packet (the first fragment's header,
lengths and fragment fields rewritten), decoded at the frame that completed it, as
tshark shows it. Fragments cut short by the snap length still give the datagram's
length: the packet comes back with as many bytes as were captured from its start.

Datagrams waiting for fragments are bounded (``MAX_PENDING``, each at most
``MAX_FRAGMENTS`` pieces): the oldest is given up first, and the fragments of every
datagram never completed are counted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAX_PENDING = 256  # datagrams waiting for fragments (each at most 128 KiB)
MAX_FRAGMENTS = 1024  # fragments of one datagram (64 KiB in 64-byte pieces) before giving up


@dataclass
class _Datagram:
    header: bytes = b""  # the first fragment's IP header (up to the fragment header)
    total: int = -1  # bytes after the header, known once the last fragment came
    received: list[tuple[int, int]] = field(default_factory=list)  # offset, length
    captured: list[tuple[int, bytes]] = field(default_factory=list)  # offset, bytes
    fragments: int = 0

    def whole(self) -> bool:
        if not self.header or self.total < 0:
            return False
        reach = 0
        for start, length in sorted(self.received):
            if start > reach:
                return False
            reach = max(reach, start + length)
        return reach >= self.total

    def packet(self, version: int) -> tuple[bytes, int]:
        """The datagram as one IP packet: its captured bytes, and its whole length."""
        body = bytearray(self.total)
        spans = []
        for start, data in self.captured:
            data = data[: max(self.total - start, 0)]
            body[start : start + len(data)] = data
            spans.append((start, start + len(data)))
        prefix = 0
        for start, stop in sorted(spans):
            if start > prefix:
                break
            prefix = max(prefix, stop)
        header = bytearray(self.header)
        if version == 4:
            whole = len(header) + self.total
            # a datagram beyond 64 KiB keeps length 0: the decoder then uses the
            # packet's original length, as for a TSO super-packet
            struct.pack_into("!H", header, 2, whole if whole <= 0xFFFF else 0)
            struct.pack_into("!H", header, 6, 0)
        else:
            struct.pack_into("!H", header, 4, self.total if self.total <= 0xFFFF else 0)
        return bytes(header) + bytes(body[:prefix]), len(header) + self.total


@dataclass
class Reassembler:
    pending: dict[tuple[object, ...], _Datagram] = field(default_factory=dict)
    incomplete: int = 0  # fragments of datagrams given up

    def add(
        self, data: bytes, l3: int, end: int, frag_header: int
    ) -> tuple[bytes, int, int] | None:
        """One fragment whose IP header starts at ``l3`` of ``data`` (captured bytes up
        to ``end``; ``frag_header`` where an IPv6 fragment header starts, -1 for IPv4).
        The whole datagram (packet bytes, original length, IP version) once complete."""
        if frag_header < 0:
            ihl = (data[l3] & 0x0F) * 4
            if l3 + ihl > end:
                self.incomplete += 1  # its header was not captured whole
                return None
            total, ident, word = struct.unpack_from("!HHH", data, l3 + 2)
            key: tuple[object, ...] = (4, data[l3 + 12 : l3 + 20], ident, data[l3 + 9])
            offset, more = (word & 0x1FFF) * 8, bool(word & 0x2000)
            start, length = l3 + ihl, total - ihl
            header = bytes(data[l3 : l3 + ihl])
            version = 4
        else:
            payload, word, ident = (
                struct.unpack_from("!H", data, l3 + 4)[0],
                struct.unpack_from("!H", data, frag_header + 2)[0],
                struct.unpack_from("!I", data, frag_header + 4)[0],
            )
            key = (6, data[l3 + 8 : l3 + 40], ident)
            offset, more = word & 0xFFF8, bool(word & 1)
            start = frag_header + 8
            length = payload - (start - l3 - 40)
            # the rebuilt packet: the fixed header only, its next header the fragment's
            header = bytes(data[l3 : l3 + 6]) + bytes([data[frag_header]]) + data[l3 + 7 : l3 + 40]
            version = 6
        datagram = self.pending.get(key)
        if datagram is None:
            if len(self.pending) >= MAX_PENDING:
                oldest = next(iter(self.pending))
                self.incomplete += self.pending.pop(oldest).fragments
            datagram = self.pending[key] = _Datagram()
        datagram.fragments += 1
        if datagram.fragments > MAX_FRAGMENTS:  # overlapping pieces without end: not a datagram
            self.incomplete += self.pending.pop(key).fragments
            return None
        if length <= 0:
            return None  # a fragment with nothing in it: counted, never completes
        if offset == 0:
            datagram.header = header
        if not more:
            datagram.total = offset + length
        datagram.received.append((offset, length))
        stop = min(start + length, end)
        if stop > start:
            datagram.captured.append((offset, bytes(data[start:stop])))
        if not datagram.whole():
            return None
        del self.pending[key]
        packet, whole = datagram.packet(version)
        return packet, whole, version

    def finish(self) -> int:
        """Fragments of the datagrams still waiting: never completed."""
        self.incomplete += sum(d.fragments for d in self.pending.values())
        self.pending.clear()
        return self.incomplete

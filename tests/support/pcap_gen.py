"""Captures written byte by byte for tests that need one a lab would take minutes to make:
Ethernet, IPv4 and TCP frames with both checksums right, in a microsecond pcap."""

from __future__ import annotations

import struct
from pathlib import Path


def checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def frame(src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int,
           window: int, payload: bytes = b"", options: bytes = b"") -> bytes:  # fmt: skip
    """One Ethernet, IPv4 and TCP frame, both checksums right."""
    tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq, ack, (20 + len(options)) // 4 << 4,
                      flags, window, 0, 0) + options + payload  # fmt: skip
    addresses = bytes(map(int, src[0].split("."))) + bytes(map(int, dst[0].split(".")))
    pseudo = addresses + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0) + addresses
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return b"\0" * 12 + b"\x08\x00" + ip + tcp


def held_back(path: Path, clients: int) -> str:
    """A capture of ``clients`` connections to 10.0.0.1:9092, each client held at the
    server's window 12 times: it fills the 1000-byte window, the server acknowledges with
    window 0 and opens it 10 ms later, and the client sends at once (rwnd-limited)."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    now = 1_000_000.0
    syn, ack, psh = 2, 16, 8
    handshake = b"\x02\x04\x05\xb4\x01\x03\x03\x00"  # MSS 1460, window scale 0

    def write(after: float, frame: bytes) -> None:
        nonlocal now
        now += after
        seconds, micros = int(now), round((now - int(now)) * 1e6)
        out.extend(struct.pack("<IIII", seconds, micros, len(frame), len(frame)) + frame)

    server = ("10.0.0.1", 9092)
    for n in range(clients):
        client, seq, peer = ("10.0.0.2", 40000 + n), 1001, 5001
        write(0, frame(client, server, seq - 1, 0, syn, 65535, options=handshake))
        write(1e-4, frame(server, client, peer - 1, seq, syn | ack, 1000, options=handshake))
        write(1e-4, frame(client, server, seq, peer, ack, 65535))
        for _ in range(12):
            write(5e-5, frame(client, server, seq, peer, ack | psh, 65535, b"x" * 1000))
            seq += 1000
            write(5e-4, frame(server, client, peer, seq, ack, 0))
            write(0.01, frame(server, client, peer, seq, ack, 1000))
        write(5e-5, frame(client, server, seq, peer, ack | psh, 65535, b"x" * 1000))
        write(5e-4, frame(server, client, peer, seq + 1000, ack, 1000))
    path.write_bytes(bytes(out))
    return str(path)

"""The capture analysis compiled on the host for the lab's guests.

A guest under software emulation (TCG) runs numba's compiler some 50 times slower than
the host: analysing a 770 KB lab capture took 4 min 49 s there, nearly all of it
compiling the loops, against 14 s in plain Python (measured 2026-12-07). And it cannot
keep what it compiled: the guest sees this machine's files read-only and its own
``/tmp`` goes with it. So before a guest boots, the host compiles every compiled loop
once for a CPU any guest has (``NUMBA_CPU_NAME=generic``: no instruction beyond
x86-64's baseline) into ``~/.cache/tcpsleuth/kernel/numba-generic/``, by analysing a
small capture written here; the guest copies that folder into its ``/tmp`` (numba
loads a cache only from a folder it can write) and loads the machine code instead of
making it. The folder is made again when tcpsleuth's sources, numba or Python change
(a stamp of them beside it); otherwise preparing costs a few file dates.

Numba checks each cached function against its source and the CPU it was made for, so
a stale or foreign entry is compiled afresh in the guest: slower, never wrong.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import ipaddress
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tcpsleuth
from tcpsleuth import compiled
from tcpsleuth.lab.kernel.build import cache_root

GENERIC = {"NUMBA_CPU_NAME": "generic"}
STAMP = "stamp.txt"
WARM_TIMEOUT_S = 600


def folder() -> Path:
    return cache_root() / "numba-generic"


def _stamp() -> str:
    """What the compiled code depends on: numba, Python, and tcpsleuth's sources."""
    digest = hashlib.sha256()
    digest.update(f"{importlib.metadata.version('numba')} {sys.version}".encode())
    package = Path(tcpsleuth.__file__).parent
    for source in sorted(package.rglob("*.py")):
        stat = source.stat()
        digest.update(f"{source} {stat.st_mtime_ns} {stat.st_size}\n".encode())
    return digest.hexdigest()


def prepare() -> Path | None:
    """The folder of compiled code for guests, made or brought up to date first; None
    without numba, or when it could not be made (said on stderr: the guest then
    compiles what it uses itself)."""
    if not compiled.numba_available():
        return None
    target, stamp = folder(), _stamp()
    if (target / STAMP).is_file() and (target / STAMP).read_text() == stamp:
        return target
    shutil.rmtree(target, ignore_errors=True)  # no entry of a function gone since
    target.mkdir(parents=True)
    started = time.monotonic()
    env = {**os.environ, **GENERIC, "NUMBA_CACHE_DIR": str(target)}
    with tempfile.TemporaryDirectory() as scratch:
        capture = Path(scratch) / "warm.pcap"
        capture.write_bytes(_capture())
        try:  # the command the guests run most, on a capture above its plain-Python size
            done = subprocess.run(
                [sys.executable, "-m", "tcpsleuth", "pcap", str(capture), "--format", "json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=WARM_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            done = None
    if done is None or done.returncode not in (0, 1):
        lines = [] if done is None else done.stderr.strip().splitlines()
        said = "timed out" if done is None else (lines or [f"exit {done.returncode}"])[-1][:300]
        print(
            f"tcpsleuth: could not compile the capture analysis for the guest ({said}): "
            "the guest compiles what it uses, which takes minutes under emulation",
            file=sys.stderr,
        )
        return None
    (target / STAMP).write_text(stamp)
    made = len({p.name.split("-")[0] for p in target.rglob("*.nbi")})
    print(
        f"tcpsleuth: compiled the capture analysis for the lab's guests in "
        f"{time.monotonic() - started:.0f} s ({made} compiled loops; once per change "
        "of tcpsleuth)",
        file=sys.stderr,
    )
    return target


def _frame(src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int, flags: int,
           payload: bytes = b"", options: bytes = b"") -> bytes:  # fmt: skip
    """An Ethernet frame with IPv4 or IPv6 (by the addresses) and TCP (checksums 0:
    the analysis does not read them)."""
    offset = (20 + len(options)) // 4 << 4
    tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq, ack, offset, flags, 512, 0, 0)
    tcp += options + payload
    if ":" in src[0]:
        ip = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64)
        ip += _v6(src[0]) + _v6(dst[0])
        return b"\0" * 12 + b"\x86\xdd" + ip + tcp
    addresses = bytes(map(int, src[0].split("."))) + bytes(map(int, dst[0].split(".")))
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0) + addresses
    return b"\0" * 12 + b"\x08\x00" + ip + tcp


def _v6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def _capture(pairs: int = 150) -> bytes:
    """``pairs`` times two Kafka connections (IPv4, IPv6), each: a handshake with every
    option, a Produce request and its response, and the close (some 300 KB)."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    syn, fin, psh, ack = 2, 1, 8, 16
    # MSS 1460, SACK permitted, timestamps, window scale 7
    opts = b"\x02\x04\x05\xb4\x04\x02\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x00\x01\x03\x03\x07"
    # Produce v9, correlation id 7, client id "cli"
    request = b"\x00\x00\x00\x09\x00\x00\x00\x07\x00\x03cli" + b"x" * 400
    request = struct.pack("!I", len(request)) + request
    response = struct.pack("!I", 40) + b"\x00\x00\x00\x07" + b"\0" * 36
    now = 1_000_000
    ends = [("10.0.0.2", "10.0.0.1"), ("fd00::2", "fd00::1")] * pairs
    for n, (cip, sip) in enumerate(ends):
        client, server, c, s = (cip, 20000 + n), (sip, 9092), 1000, 5000
        frames = [
            _frame(client, server, c - 1, 0, syn, options=opts),
            _frame(server, client, s - 1, c, syn | ack, options=opts),
            _frame(client, server, c, s, ack),
            _frame(client, server, c, s, psh | ack, request),
            _frame(server, client, s, c + len(request), psh | ack, response),
            _frame(client, server, c + len(request), s + len(response), fin | ack),
            _frame(server, client, s + len(response), c + len(request) + 1, fin | ack),
        ]
        for frame in frames:
            now += 100
            out += struct.pack("<IIII", now // 10**6, now % 10**6, len(frame), len(frame))
            out += frame
    return bytes(out)

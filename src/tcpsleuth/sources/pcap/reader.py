"""Capture files: pcap (micro- and nanosecond, either byte order) and pcapng, plain or gzip.

The file is read in chunks and cut into packet records as it streams past; each
chunk becomes a :class:`RawBatch` (the chunk's bytes plus, per packet, where its
captured bytes start, how many were captured, the original length, the timestamp
in nanoseconds and the link type), which :mod:`.decode` turns into TCP header
columns with NumPy. Only one chunk is held at a time.

Formats: pcap as libpcap writes it (``pcap-savefile(5)``), pcapng as in the
IETF draft (section header, interface description with ``if_tsresol`` and
``if_tsoffset``, enhanced, simple and obsolete packet blocks; several sections
and interfaces, each interface with its own link type and clock resolution).

About 530 lines: both file formats with their careful paths for damaged input
(truncated records, out-of-range timestamps, unknown blocks), which share the
batching and the read-once copy; the compiled record walks are in ``walk.py``, the
pcapng interfaces and their clocks in ``pcapng_interfaces.py``.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tcpsleuth.errors import InputError
from tcpsleuth.sources.pcap import walk
from tcpsleuth.sources.pcap.pcapng_interfaces import (
    Interface,
    StampRange,
    read_interface,
    stamp_error,
    timestamps,
)

CHUNK = 2 << 20
# libpcap refuses records larger than this (MAXIMUM_SNAPLEN, 256 KiB); so do we,
# because a larger length means the file is corrupt, not that a packet was big.
MAX_RECORD = 262144
MAX_BLOCK = 16 << 20

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),  # microseconds, little-endian
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class RawBatch:
    data: bytes
    offsets: np.ndarray  # int64: start of each packet's bytes in ``data``
    caplen: np.ndarray  # int64
    origlen: np.ndarray  # int64
    ts_ns: np.ndarray  # int64, nanoseconds since the epoch
    linktype: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class ReadReport:
    """What the reader saw besides packets: file kind, warnings, bytes read."""

    path: str
    kind: str = ""
    compressed: bool = False
    packets: int = 0
    bytes_read: int = 0
    warnings: list[str] = field(default_factory=list)
    linktypes: set[int] = field(default_factory=set)


class _Batcher:
    """Collects per-packet fields for one chunk: packets found one at a time by the
    careful path (Python lists) and runs found by the compiled walk (arrays), in
    file order."""

    def __init__(self) -> None:
        self.segments: list[tuple[np.ndarray, ...]] = []
        self.offsets: list[int] = []
        self.caplen: list[int] = []
        self.origlen: list[int] = []
        self.ts_ns: list[int] = []
        self.linktype: list[int] = []

    def __len__(self) -> int:
        return len(self.offsets) + sum(len(segment[0]) for segment in self.segments)

    def _flush(self) -> None:
        if self.offsets:
            self.segments.append(
                (
                    np.array(self.offsets, dtype=np.int64),
                    np.array(self.caplen, dtype=np.int64),
                    np.array(self.origlen, dtype=np.int64),
                    np.array(self.ts_ns, dtype=np.int64),
                    np.array(self.linktype, dtype=np.int32),
                )
            )
            self.offsets, self.caplen, self.origlen, self.ts_ns, self.linktype = [], [], [], [], []

    def add(self, *columns: np.ndarray) -> None:
        self._flush()
        self.segments.append(columns)

    def build(self, data: bytes) -> RawBatch:
        self._flush()
        if len(self.segments) == 1:
            columns = self.segments[0]
        else:
            columns = tuple(np.concatenate(parts) for parts in zip(*self.segments, strict=True))
        return RawBatch(data, *columns)


class _Keeping:
    """A file read once whose bytes are written to ``copy`` as they pass (a FIFO or a
    pipe, for a command that reads its capture again)."""

    def __init__(self, raw: BinaryIO, copy: BinaryIO) -> None:
        self.raw, self.copy = raw, copy

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        try:
            self.copy.write(data)
        except OSError as exc:
            raise InputError(
                f"{self.raw.name}: cannot keep a copy of the capture in "
                f"{Path(self.copy.name).parent} to read it again ({exc.strerror or exc})"
            ) from None
        return data

    def peek(self, size: int = 0) -> bytes:
        return self.raw.peek(size)  # type: ignore[attr-defined,no-any-return]

    def tell(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        self.raw.close()
        self.copy.flush()


def _open(path: Path, keep: BinaryIO | None = None) -> tuple[BinaryIO, BinaryIO]:
    """The capture's byte stream, and the file under it (the same one unless gzip);
    with ``keep``, every byte read from the file is written to it too."""
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a capture file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:  # a symlink loop, a name too long, ...
        raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from None
    if keep is not None:
        raw = _Keeping(raw, keep)  # type: ignore[assignment]
    head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    if head == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    return raw, raw


def _read(stream: BinaryIO, size: int, path: Path, where: int) -> bytes:
    try:
        return stream.read(size)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(
            f"{path}: compressed data is corrupt near byte {where} of the uncompressed "
            f"capture ({exc})"
        ) from None


def batches(
    path: Path,
    progress: Callable[[int], None] | None = None,
    chunk: int = CHUNK,
    name: str | None = None,
    keep: BinaryIO | None = None,
) -> tuple[ReadReport, Iterator[RawBatch]]:
    """Open ``path`` and return what it is plus an iterator over its packets in chunks;
    messages call it ``name`` (a capture kept in a temporary file names its source);
    ``keep`` receives a copy of every byte read.

    Bad headers raise :class:`InputError` at once; corruption found later raises
    it from the iterator; a file that ends inside a record ends the iteration and
    adds a warning to the report.
    """
    stream, raw = _open(path, keep)
    if name is not None:
        path = Path(name)
    compressed = stream is not raw
    report = ReadReport(str(path), compressed=compressed)
    if compressed and progress is not None:
        # progress in bytes of the file on disk, not of the decompressed capture
        on_disk = progress
        progress = lambda _done: on_disk(raw.tell())  # noqa: E731
    head = _read(stream, 24, path, 0)
    if len(head) < 4:
        stream.close()
        raise InputError(f"{path}: not a capture: only {len(head)} bytes long")
    magic = head[:4]
    if magic in PCAP_MAGIC:
        report.kind = "pcap"
        return report, _pcap(stream, head, path, report, progress, chunk)
    if magic == PCAPNG_SHB:
        report.kind = "pcapng"
        return report, _pcapng(stream, head, path, report, progress, chunk)
    stream.close()
    raise InputError(
        f"{path}: not a pcap or pcapng capture (unknown magic 0x{magic.hex()} at byte 0)"
    )


def _pcap(
    stream: BinaryIO,
    head: bytes,
    path: Path,
    report: ReadReport,
    progress: Callable[[int], None] | None,
    chunk: int,
) -> Iterator[RawBatch]:
    if len(head) < 24:
        stream.close()
        raise InputError(
            f"{path}: pcap file header truncated at byte {len(head)} (24 bytes expected)"
        )
    order, ns_per_frac = PCAP_MAGIC[head[:4]]
    major, _minor, _zone, _sigfigs, _snaplen, network = struct.unpack_from(
        order + "HHiIII", head, 4
    )
    if major != 2:
        stream.close()
        raise InputError(f"{path}: pcap version {major} at byte 4 is not 2: not a capture we know")
    # The upper bits of the link-type field carry FCS information (pcap-linktype(7)).
    linktype = network & 0x03FFFFFF
    report.linktypes.add(linktype)
    return _pcap_records(stream, path, report, progress, chunk, order, ns_per_frac, linktype)


def _pcap_records(
    stream: BinaryIO,
    path: Path,
    report: ReadReport,
    progress: Callable[[int], None] | None,
    chunk: int,
    order: str,
    ns_per_frac: int,
    linktype: int,
) -> Iterator[RawBatch]:
    big = order == ">"
    base = 24  # file offset of buf[0]
    buf = b""
    try:
        while True:
            more = _read(stream, chunk, path, base + len(buf))
            buf = buf + more if buf else more
            eof = not more
            end = len(buf)
            offsets, caplen, origlen, sec, frac, pos, reason = walk.pcap_records(
                np.frombuffer(buf, dtype=np.uint8), big, MAX_RECORD
            )
            if reason == walk.BAD_LENGTH:
                incl = struct.unpack_from(order + "I", buf, pos + 8)[0]
                raise InputError(
                    f"{path}: corrupt pcap record at byte {base + pos}: captured length "
                    f"{incl} is larger than any capture allows ({MAX_RECORD})"
                )
            if len(offsets):
                batch = RawBatch(
                    buf,
                    offsets,
                    caplen,
                    origlen,
                    sec * 1_000_000_000 + frac * ns_per_frac,
                    np.full(len(offsets), linktype, dtype=np.int32),
                )
                report.packets += len(batch)
                yield batch
            if _chunk_done(report, path, progress, base, pos, end, eof, "record"):
                return
            base += pos
            buf = buf[pos:]
    finally:
        stream.close()


def _chunk_done(
    report: ReadReport,
    path: Path,
    progress: Callable[[int], None] | None,
    base: int,
    pos: int,
    end: int,
    eof: bool,
    unit: str,
) -> bool:
    """Account for a chunk read up to ``pos``; at the end of the file, warn when the
    capture stops inside a record or block. True when reading is over."""
    report.bytes_read = base + pos
    if progress is not None:
        progress(base + pos)
    if eof and pos < end:
        report.warnings.append(
            f"{path}: capture ends inside a {unit} at byte {base + pos} "
            f"({end - pos} bytes of it present); analysed the "
            f"{report.packets} packets before it"
        )
    return eof


# pcapng block types
SHB, IDB, PB, SPB, EPB = 0x0A0D0D0A, 1, 2, 3, 6
EPB_LE, EPB_BE = struct.pack("<I", EPB), struct.pack(">I", EPB)


def _pcapng(
    stream: BinaryIO,
    head: bytes,
    path: Path,
    report: ReadReport,
    progress: Callable[[int], None] | None,
    chunk: int,
) -> Iterator[RawBatch]:
    if len(head) < 12:
        stream.close()
        raise InputError(f"{path}: pcapng section header truncated at byte {len(head)}")
    if head[8:12] not in (b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"):
        stream.close()
        raise InputError(
            f"{path}: corrupt pcapng section header: byte-order magic 0x{head[8:12].hex()} "
            "at byte 8"
        )
    return _pcapng_blocks(stream, head, path, report, progress, chunk)


def _section_order(bom: bytes, path: Path, at: int) -> str:
    """The struct byte order a section header's byte-order magic gives its blocks."""
    if bom == b"\x4d\x3c\x2b\x1a":
        return "<"
    if bom == b"\x1a\x2b\x3c\x4d":
        return ">"
    raise InputError(
        f"{path}: corrupt pcapng section header at byte {at}: byte-order magic 0x{bom.hex()}"
    )


def _pcapng_blocks(
    stream: BinaryIO,
    head: bytes,
    path: Path,
    report: ReadReport,
    progress: Callable[[int], None] | None,
    chunk: int,
) -> Iterator[RawBatch]:
    base = 0
    buf = head
    order = "<"
    interfaces: list[Interface] = []
    try:
        while True:
            more = _read(stream, chunk, path, base + len(buf))
            buf = buf + more if buf else more
            eof = not more
            end = len(buf)
            out = _Batcher()
            pos, order, interfaces = _pcapng_chunk(buf, base, order, interfaces, out, path, report)
            if len(out):
                batch = out.build(buf)
                report.packets += len(batch)
                yield batch
            if _chunk_done(report, path, progress, base, pos, end, eof, "block"):
                return
            base += pos
            buf = buf[pos:]
    finally:
        stream.close()


def _pcapng_chunk(
    buf: bytes,
    base: int,
    order: str,
    interfaces: list[Interface],
    out: _Batcher,
    path: Path,
    report: ReadReport,
) -> tuple[int, str, list[Interface]]:
    """Cut the blocks of one chunk (file offset ``base``) and put their packets in ``out``:
    runs of enhanced packet blocks by the compiled walk, the rest one block at a time.
    Returns where the first incomplete block starts, and the byte order and the
    interfaces of the section there."""
    end = len(buf)
    pos = 0
    array = np.frombuffer(buf, dtype=np.uint8)
    while pos + 12 <= end:
        btype_raw = buf[pos : pos + 4]
        if btype_raw == (EPB_BE if order == ">" else EPB_LE) and interfaces:
            stop = _packet_run(array, pos, order, interfaces, out, path, base)
            if stop is not None:
                pos = stop
                continue
            # anything unusual is left to the careful path below
        if btype_raw == PCAPNG_SHB:
            order = _section_order(buf[pos + 8 : pos + 12], path, base + pos)
        btype, blen = struct.unpack_from(order + "II", buf, pos)
        if blen < 12 or blen % 4 or blen > MAX_BLOCK:
            raise InputError(
                f"{path}: corrupt pcapng block at byte {base + pos}: "
                f"block length {blen} is impossible"
            )
        if pos + blen > end:
            break
        trailer = struct.unpack_from(order + "I", buf, pos + blen - 4)[0]
        if trailer != blen:
            raise InputError(
                f"{path}: corrupt pcapng block at byte {base + pos}: length {blen} "
                f"at its start, {trailer} at its end"
            )
        if btype == SHB:
            interfaces = []
        elif btype == IDB:
            iface = read_interface(buf[pos + 8 : pos + blen - 4], order, path, base + pos)
            interfaces.append(iface)
            report.linktypes.add(iface.linktype)
        elif btype in (EPB, PB, SPB):
            _packet_block(buf, pos, blen, btype, order, interfaces, out, path, base + pos)
        pos += blen
    return pos, order, interfaces


def _packet_run(
    array: np.ndarray,
    pos: int,
    order: str,
    interfaces: list[Interface],
    out: _Batcher,
    path: Path,
    base: int,
) -> int | None:
    """The run of enhanced packet blocks at ``pos``, by the compiled walk, into ``out``;
    where the run stops, or None for the careful path to take the block at ``pos``."""
    offsets, caplen, origlen, if_ids, ticks, stop, _why = walk.pcapng_packets(
        array, pos, order == ">", MAX_BLOCK
    )
    if not (len(offsets) and int(if_ids.max()) < len(interfaces)):
        return None
    try:
        ns_and_linktypes = timestamps(interfaces, if_ids, ticks)
    except StampRange as bad:
        raise stamp_error(path, base + int(offsets[bad.index]) - 28) from None
    out.add(offsets, caplen, origlen, *ns_and_linktypes)
    return stop  # type: ignore[no-any-return]


def _packet_block(
    buf: bytes,
    pos: int,
    blen: int,
    btype: int,
    order: str,
    interfaces: list[Interface],
    out: _Batcher,
    path: Path,
    where: int,
) -> None:
    """An enhanced, obsolete or simple packet block at ``pos`` (file offset ``where``):
    its packet into ``out``."""
    body_at = pos + 8
    if btype == SPB:
        if not interfaces:
            raise InputError(
                f"{path}: corrupt pcapng simple packet block at byte {where}: "
                "no interface described"
            )
        (orig,) = struct.unpack_from(order + "I", buf, body_at)
        iface = interfaces[0]
        incl = min(orig, blen - 16, iface.snaplen or orig)
        # A simple packet block has no timestamp; zero keeps the column whole.
        offset, ts_ns = body_at + 4, 0
    else:
        if btype == EPB:
            if_id, hi, lo, incl, orig = struct.unpack_from(order + "IIIII", buf, body_at)
        else:
            if_id, _drops, hi, lo, incl, orig = struct.unpack_from(order + "HHIIII", buf, body_at)
        if if_id >= len(interfaces):
            raise InputError(
                f"{path}: corrupt pcapng packet block at byte {where}: "
                f"interface {if_id} was never described"
            )
        if 28 + incl > blen - 4:
            raise InputError(
                f"{path}: corrupt pcapng packet block at byte {where}: "
                f"captured length {incl} overruns the block ({blen} bytes)"
            )
        iface = interfaces[if_id]
        if not iface.fits((hi << 32) | lo):
            raise stamp_error(path, where)
        offset, ts_ns = body_at + 20, iface.to_ns((hi << 32) | lo)
    out.offsets.append(offset)
    out.caplen.append(incl)
    out.origlen.append(orig)
    out.ts_ns.append(ts_ns)
    out.linktype.append(iface.linktype)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


__all__ = ["RawBatch", "ReadReport", "batches", "file_size"]

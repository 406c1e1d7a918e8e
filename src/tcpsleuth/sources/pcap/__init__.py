"""Capture files (pcap, pcapng, gzip) read into TCP header columns, chunk by chunk.

``open_capture`` streams a file chunk by chunk (:mod:`.reader`) and decodes each
chunk's link, IP and TCP headers in one compiled loop (:mod:`.decode`): the
analysis consumes the chunks one at a time, so memory does not grow with the
capture. ``read_capture`` keeps all the columns (about 60 bytes per TCP segment)
for small captures and tools that want every segment at once.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tcpsleuth.errors import InputError
from tcpsleuth.model.capture import CaptureFacts
from tcpsleuth.sources.pcap.decode import (
    SUPPORTED_LINKTYPES,
    DecodeCounts,
    TcpColumns,
    concatenate,
    decode,
)
from tcpsleuth.sources.pcap.reader import CHUNK, ReadReport, batches, file_size
from tcpsleuth.sources.pcap.reassemble import Reassembler


@dataclass
class Capture:
    path: str
    tcp: TcpColumns
    report: ReadReport
    counts: DecodeCounts


@dataclass
class CaptureStream:
    """A capture being read: what the reader saw so far, and its TCP segments chunk by
    chunk (iterate ``chunks`` once; the report and counts are complete after it)."""

    path: str
    report: ReadReport
    counts: DecodeCounts
    chunks: Iterator[TcpColumns]
    source: Path  # where its bytes can be read again
    kept: BinaryIO | None = None  # the copy of a capture that cannot be read twice

    def facts(self) -> CaptureFacts:
        """What reading it told (complete once ``chunks`` has been read)."""
        report = self.report
        return CaptureFacts(
            self.path,
            report.kind,
            report.compressed,
            frozenset(report.linktypes),
            tuple(report.warnings),
            self.counts,
        )

    def again(self) -> CaptureStream:
        """The same capture from its start, for another pass (after this one ended)."""
        if self.kept is not None:
            self.kept.flush()
        return open_capture(self.source, name=self.path)


def read_once(path: Path) -> bool:
    """True when ``path`` cannot be opened again for the same bytes: a FIFO, a pipe
    (``/dev/stdin``, ``<(...)``), a socket or a character device."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False  # the reader says what is wrong with it
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISBLK(mode))


def unread_text(report: ReadReport, counts: DecodeCounts) -> str:
    """What could not be read, in words: '3 of link type 147, which ...; 2 ...'."""
    parts = []
    if counts.unsupported_linktype:
        unknown = sorted(report.linktypes - set(SUPPORTED_LINKTYPES))
        known = ", ".join(sorted(set(SUPPORTED_LINKTYPES.values())))
        parts.append(
            f"{counts.unsupported_linktype} of link type "
            f"{', '.join(str(t) for t in unknown) or '?'}, which tcpsleuth does not read "
            f"(it reads {known})"
        )
    if counts.undecodable:
        parts.append(
            f"{counts.undecodable} whose bytes are not the IP header their link type "
            "announces, or have more VLAN tags or IPv6 extension headers than tcpsleuth "
            "follows (8)"
        )
    if counts.fragments_incomplete:
        parts.append(
            f"{counts.fragments_incomplete} IP fragments whose datagram never became whole"
        )
    return "; ".join(parts)


def _account(report: ReadReport, counts: DecodeCounts) -> None:
    """At the end of the capture: nothing readable is an input error, part of it a
    warning (the report's warnings reach stderr and the JSON document)."""
    if not counts.unread():
        return
    if counts.unread() == counts.packets:
        raise InputError(
            f"{report.path}: none of its {counts.packets} packets could be read: "
            f"{unread_text(report, counts)}"
        )
    report.warnings.append(
        f"{report.path}: {counts.unread()} of {counts.packets} packets could not be read "
        f"and are left out: {unread_text(report, counts)}"
    )


def open_capture(
    path: Path,
    progress: Callable[[int], None] | None = None,
    chunk: int = CHUNK,
    name: str | None = None,
    keep: BinaryIO | None = None,
) -> CaptureStream:
    """``path`` read chunk by chunk; ``name`` is what messages call it (default: path).
    With ``keep`` (a temporary file, for a capture that is :func:`read_once`) its bytes
    are copied there as they are read, and :meth:`CaptureStream.again` reads the copy."""
    report, packets = batches(path, progress, chunk, name, keep)
    counts = DecodeCounts()

    def chunks() -> Iterator[TcpColumns]:
        frame = 1
        fragments = Reassembler()
        for batch in packets:
            yield decode(batch, frame, counts, fragments)
            frame += len(batch)
        counts.fragments_incomplete = fragments.finish()
        _account(report, counts)

    source = path if keep is None else Path(keep.name)
    return CaptureStream(report.path, report, counts, chunks(), source, keep)


def read_capture(path: Path, progress: Callable[[int], None] | None = None) -> Capture:
    """Every TCP segment's columns at once (memory grows with the capture)."""
    stream = open_capture(path, progress)
    parts = list(stream.chunks)
    return Capture(str(path), concatenate(parts), stream.report, stream.counts)


__all__ = [
    "Capture",
    "CaptureStream",
    "DecodeCounts",
    "TcpColumns",
    "file_size",
    "open_capture",
    "read_capture",
    "read_once",
]

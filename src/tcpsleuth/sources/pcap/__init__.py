"""Capture files (pcap, pcapng, gzip) read into TCP header columns, chunk by chunk.

``open_capture`` streams a file chunk by chunk (:mod:`.reader`) and decodes each
chunk's link, IP and TCP headers in one compiled loop (:mod:`.decode`): the
analysis consumes the chunks one at a time, so memory does not grow with the
capture. ``read_capture`` keeps all the columns (about 60 bytes per TCP segment)
for small captures and tools that want every segment at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tcpsleuth.sources.pcap.decode import DecodeCounts, TcpColumns, concatenate, decode
from tcpsleuth.sources.pcap.reader import CHUNK, ReadReport, batches, file_size


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


def open_capture(
    path: Path, progress: Callable[[int], None] | None = None, chunk: int = CHUNK
) -> CaptureStream:
    report, packets = batches(path, progress, chunk)
    counts = DecodeCounts()

    def chunks() -> Iterator[TcpColumns]:
        frame = 1
        for batch in packets:
            yield decode(batch, frame, counts)
            frame += len(batch)

    return CaptureStream(str(path), report, counts, chunks())


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
]

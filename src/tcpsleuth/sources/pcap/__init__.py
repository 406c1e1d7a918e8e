"""Capture files (pcap, pcapng, gzip) read into TCP header columns.

``read_capture`` streams a file chunk by chunk (:mod:`.reader`), decodes each
chunk's link, IP and TCP headers with NumPy (:mod:`.decode`) and keeps only the
columns the analysis needs (about 60 bytes per TCP segment), the options of SYN
segments and the payload of segments to or from the ports asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tcpsleuth.sources.pcap.decode import DecodeCounts, TcpColumns, concatenate, decode
from tcpsleuth.sources.pcap.reader import ReadReport, batches, file_size


@dataclass
class Capture:
    path: str
    tcp: TcpColumns
    report: ReadReport
    counts: DecodeCounts


def read_capture(
    path: Path,
    payload_ports: frozenset[int] = frozenset(),
    progress: Callable[[int], None] | None = None,
) -> Capture:
    report, packets = batches(path, progress)
    counts = DecodeCounts()
    parts: list[TcpColumns] = []
    frame = 1
    for batch in packets:
        parts.append(decode(batch, frame, payload_ports, counts))
        frame += len(batch)
    return Capture(str(path), concatenate(parts), report, counts)


__all__ = ["Capture", "DecodeCounts", "TcpColumns", "file_size", "read_capture"]

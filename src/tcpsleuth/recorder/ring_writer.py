"""tcpdump's capture stream written into the ring's files by the recorder itself, so
that the disk cap is a hard one.

tcpdump writes pcap to its standard output (``-w -``, packet-buffered); this writer
cuts the stream at record boundaries into files rotated by time (a new file at the
first packet ``rotate_s`` seconds after the current one opened, named by that packet's
second, as ``tcpdump -G`` names them) and, before every write, takes the bytes the
write will allocate from a :class:`~tcpsleuth.recorder.disk.Budget`. A write the budget
refuses is not made: its packets are counted as kept out by the cap, and the guard is
woken to make room. When tcpdump wrote its files itself, the cap was only checked
every quarter second, and a storm could overshoot it in between.

If the recorder cannot keep up, the pipe fills, tcpdump blocks and the kernel drops
packets: they show in tcpdump's own count of drops, as before.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tcpsleuth.recorder.capture import MAGICS
from tcpsleuth.recorder.disk import Budget

BLOCK = 4096
READ_BYTES = 1 << 16
HEADER = 24
RECORD = 16
MAX_RECORD = 262144  # tcpdump's largest snap length


def allocated(size: int) -> int:
    """Bytes a file of ``size`` bytes takes on disk (whole blocks)."""
    return -(-size // BLOCK) * BLOCK


def ring_name(second: int, generation: int) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(second))
    return f"ring-{stamp}Z-g{generation}.pcap"


@dataclass
class WriterCounts:
    packets: int = 0  # written to ring files
    capped_packets: int = 0  # kept out: the budget refused their write


class _Open:
    """A ring file, created at its first write (with the stream's header before it)."""

    def __init__(self, path: Path, start: int) -> None:
        self.path = path
        self.start = start
        self.fd: int | None = None
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        if self.fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            self.fd = os.open(self.path, flags, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(data)

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)


class RingWriter:
    """Reads one tcpdump's standard output until it ends (run it in a thread)."""

    def __init__(
        self,
        stream: BinaryIO,
        directory: Path,
        generation: int,
        rotate_s: int,
        budget: Budget,
        wake: Callable[[], None],
        say: Callable[[str], None],
    ) -> None:
        self.stream = stream
        self.directory = directory
        self.generation = generation
        self.rotate_s = max(1, rotate_s)
        self.budget = budget
        self.wake = wake
        self.say = say
        self.counts = WriterCounts()
        self.problem: str | None = None
        self._file: _Open | None = None
        self._header = b""
        self._capped_said = False

    @property
    def current(self) -> Path | None:
        """The ring file being written (None before its first write)."""
        opened = self._file
        return opened.path if opened is not None and opened.fd is not None else None

    def run(self) -> None:
        try:
            self._pump()
        except OSError as problem:
            self._give_up(f"cannot write the ring in {self.directory}: {problem.strerror}")
        finally:
            # a writer that gave up closes the pipe: tcpdump ends (and is started again)
            # instead of blocking on a pipe no one reads
            with contextlib.suppress(OSError):
                self.stream.close()
            opened, self._file = self._file, None
            if opened is not None:
                opened.close()

    def _give_up(self, why: str) -> None:
        self.problem = why
        self.say(f"capture stopped: {why}")

    def _pump(self) -> None:
        buffer = bytearray()
        while len(buffer) < HEADER:
            chunk = self.stream.read(READ_BYTES)
            if not chunk:
                return
            buffer += chunk
        self._header = bytes(buffer[:HEADER])
        if self._header[:4] not in MAGICS:
            self._give_up("tcpdump wrote something that is not a pcap stream")
            return
        record = struct.Struct(MAGICS[self._header[:4]][0] + "IIII")
        del buffer[:HEADER]
        while True:
            at = 0
            start = 0  # of the bytes not yet written
            packets = 0
            while len(buffer) - at >= RECORD:
                second, _fraction, caplen, _length = record.unpack_from(buffer, at)
                if caplen > MAX_RECORD:
                    self._give_up(f"tcpdump's stream broke (a record of {caplen} bytes)")
                    return
                end = at + RECORD + caplen
                if end > len(buffer):
                    break
                if self._file is None or second >= self._file.start + self.rotate_s:
                    self._append(buffer, start, at, packets)
                    self._rotate(second)
                    start, packets = at, 0
                packets += 1
                at = end
            self._append(buffer, start, at, packets)
            del buffer[:at]
            chunk = self.stream.read(READ_BYTES)
            if not chunk:
                return
            buffer += chunk

    def _rotate(self, second: int) -> None:
        if self._file is not None:
            self._file.close()
        self._file = _Open(self.directory / ring_name(second, self.generation), second)

    def _append(self, buffer: bytearray, start: int, end: int, packets: int) -> None:
        """Write ``buffer[start:end]`` (``packets`` whole records) to the current file,
        if the budget allows all of it."""
        opened = self._file
        if end <= start or opened is None:
            return
        data = memoryview(buffer)[start:end]
        header = self._header if opened.size == 0 else b""
        charge = allocated(opened.size + len(header) + len(data)) - allocated(opened.size)
        if not self.budget.take(charge):
            self.counts.capped_packets += packets
            if not self._capped_said:
                self._capped_said = True
                self.say("capture at --max-disk: packets are kept out until there is room")
            self.wake()
            return
        self._capped_said = False
        if header:
            opened.write(header)
        opened.write(data)
        self.counts.packets += packets

"""The recorder's ring writer: tcpdump's pcap stream cut into time-rotated files, with
no write past the disk budget (the hard part of ``record --max-disk``)."""

from __future__ import annotations

import io
import random
import struct
import subprocess
from pathlib import Path

import pytest

from tcpsleuth.recorder.disk import Budget, blocks
from tcpsleuth.recorder.ring import parse_name, ring_files
from tcpsleuth.recorder.ring_writer import BLOCK, RingWriter

START = 1_764_000_000  # a whole second


def _stream(packets: int, seconds: float, seed: int, order: str = "<") -> tuple[bytes, list]:
    """A pcap stream as tcpdump writes it: its records (second, microsecond, data)."""
    rng = random.Random(seed)
    header = struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 200, 1)
    out = [header]
    records = []
    for index in range(packets):
        at = START + seconds * index / packets
        second, micro = int(at), int((at % 1) * 1e6)
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(54, 201)))
        out.append(struct.pack(order + "IIII", second, micro, len(data), len(data) + 1000))
        out.append(data)
        records.append((second, micro, data))
    return b"".join(out), records


class _Dribble(io.RawIOBase):
    """A pipe that hands over a few bytes at a time (records split anywhere)."""

    def __init__(self, data: bytes, seed: int) -> None:
        self.data, self.at, self.rng = data, 0, random.Random(seed)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = min(size if size >= 0 else len(self.data), self.rng.randrange(1, 700))
        chunk = self.data[self.at : self.at + size]
        self.at += len(chunk)
        return chunk


def _read_back(directory: Path) -> list:
    records = []
    for ring_file in ring_files(directory):
        data = ring_file.path.read_bytes()
        assert data[:4] == b"\xd4\xc3\xb2\xa1", ring_file.path.name  # its own header
        at = 24
        while at < len(data):
            second, micro, caplen, _length = struct.unpack_from("<IIII", data, at)
            records.append((second, micro, data[at + 16 : at + 16 + caplen]))
            at += 16 + caplen
        assert at == len(data)
    return records


def _write(directory: Path, data: bytes, room: int, rotate_s: int, seed: int) -> RingWriter:
    budget = Budget()
    budget.set(room, budget.mark())
    woken = []
    writer = RingWriter(
        _Dribble(data, seed), directory, 7, rotate_s, budget, lambda: woken.append(1), print
    )
    writer.run()
    assert writer.problem is None
    assert bool(woken) == (writer.counts.capped_packets > 0)
    return writer


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_record_lands_whole_in_the_file_of_its_time(tmp_path: Path, seed: int) -> None:
    data, records = _stream(3000, 9.5, seed)
    writer = _write(tmp_path, data, 1 << 30, 2, seed)
    assert _read_back(tmp_path) == records
    assert writer.counts.packets == len(records) and writer.counts.capped_packets == 0
    files = ring_files(tmp_path)
    # a file every 2 s of packet time, named by its first packet's second
    assert [f.start - START for f in files] == [0, 2, 4, 6, 8]
    for ring_file in files:
        parsed = parse_name(ring_file.path)
        assert parsed is not None and parsed.generation == 7
        seconds = {r[0] for r in _read_back_one(ring_file.path)}
        assert min(seconds) == ring_file.start and max(seconds) < ring_file.start + 2


def _read_back_one(path: Path) -> list:
    single = path.parent / "one"
    single.mkdir(exist_ok=True)
    (single / path.name).write_bytes(path.read_bytes())
    try:
        return _read_back(single)
    finally:
        (single / path.name).unlink()
        single.rmdir()


@pytest.mark.parametrize(("room_kib", "seed"), [(40, 4), (100, 5), (150, 6)])
def test_no_write_past_the_budget(tmp_path: Path, room_kib: int, seed: int) -> None:
    data, records = _stream(4000, 6, seed)
    assert len(data) > 3 * room_kib * 1024  # the stream is more than the room
    writer = _write(tmp_path, data, room_kib * 1024, 1, seed)
    on_disk = blocks(list(tmp_path.iterdir()))  # the files it wrote, not their folder
    assert 0 < on_disk <= room_kib * 1024, on_disk
    assert on_disk > room_kib * 1024 - 7 * BLOCK  # it used the room (a block a file lost)
    kept = _read_back(tmp_path)
    assert writer.counts.packets == len(kept) and 0 < len(kept) < len(records)
    assert writer.counts.packets + writer.counts.capped_packets == len(records)
    # what it kept is whole records, in order, beginning with the first
    remaining = iter(records)
    assert all(any(r == k for r in remaining) for k in kept)
    assert kept[0] == records[0]


def test_big_endian_and_nanosecond_streams_keep_their_header(tmp_path: Path) -> None:
    data, records = _stream(500, 3, 8, order=">")
    data = struct.pack(">I", 0xA1B23C4D) + data[4:]
    _write(tmp_path, data, 1 << 30, 1, 8)
    files = ring_files(tmp_path)
    assert len(files) == 3
    got = []
    for ring_file in files:
        raw = ring_file.path.read_bytes()
        assert raw[:24] == data[:24]
        at = 24
        while at < len(raw):
            second, fraction, caplen, _length = struct.unpack_from(">IIII", raw, at)
            got.append((second, fraction, raw[at + 16 : at + 16 + caplen]))
            at += 16 + caplen
    assert got == records


def test_a_broken_stream_stops_with_one_line(tmp_path: Path) -> None:
    said: list[str] = []
    budget = Budget()
    budget.set(1 << 30, budget.mark())
    writer = RingWriter(io.BytesIO(b"not a pcap stream at all...."), tmp_path, 1, 1, budget,
                        lambda: None, said.append)  # fmt: skip
    writer.run()
    assert writer.problem is not None and len(said) == 1 and "not a pcap" in said[0]
    assert ring_files(tmp_path) == []


def test_the_budget_counts_what_was_taken_while_measuring() -> None:
    budget = Budget()
    mark = budget.mark()
    budget.set(10 * BLOCK, mark)
    assert budget.take(4 * BLOCK)
    mark = budget.mark()
    assert budget.take(3 * BLOCK)  # taken while the guard measured
    budget.set(10 * BLOCK, mark)  # the guard measured 10 blocks of room
    assert not budget.take(8 * BLOCK) and budget.take(7 * BLOCK)
    budget.reserve("bundle", 5 * BLOCK)
    budget.set(20 * BLOCK, budget.mark())
    assert not budget.take(16 * BLOCK) and budget.take(15 * BLOCK)
    budget.release("bundle")
    assert budget.reserved == 0


def test_usage_is_what_du_counts(tmp_path: Path) -> None:
    """The cap is checked against ``du``: folders' own blocks count (a folder of many
    files grows past one block), hard links once, a symbolic link as itself."""
    top = tmp_path / "rec"
    ring = top / "ring"
    ring.mkdir(parents=True)
    for index in range(600):  # enough names to grow the folder past one block
        (ring / f"capture-{index:05d}-with-a-long-name.pcap").write_bytes(b"x" * (index * 7))
    incident = top / "incident-1"
    (incident / "sockets").mkdir(parents=True)
    for index in range(0, 600, 50):
        (incident / f"linked-{index}").hardlink_to(
            ring / f"capture-{index:05d}-with-a-long-name.pcap"
        )
    (incident / "sockets" / "snapshot.json").write_text("{}" * 5000)
    (incident / "latest").symlink_to(ring)
    du = int(subprocess.run(["du", "-s", "-B1", str(top)], capture_output=True, text=True,
                            check=True).stdout.split()[0])  # fmt: skip
    assert blocks([top]) == du
    assert ring.stat().st_blocks * 512 > BLOCK  # the folder did grow past one block

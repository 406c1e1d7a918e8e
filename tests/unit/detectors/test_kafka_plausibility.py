"""Kafka is decoded only where it is Kafka: request headers must carry an api key and
version Apache Kafka defines, a plausible size and a client_id inside the request.
Raw bytes and TLS on the Kafka port give no Kafka figures and no Kafka finding, and
are counted as such once per port. Each connection is named by its client.id.

The captures are built here, byte by byte, as tcpdump writes them (Ethernet, IPv4,
TCP); the client.ids are also checked against tshark's Kafka dissector."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, run_tcpsleuth
from support.tshark_diff import tshark

SERVER = "10.0.0.1"
KAFKA_PORT = 9092
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01
# the public capture shared/captures/ holds, kept in the repository with its licence
SHARED_KAFKA = DATA / "go-sniffer-kafka.pcap"


def _ip(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


class Capture:
    """Records of a pcap file (Ethernet link type, microseconds)."""

    def __init__(self) -> None:
        self.records: list[tuple[float, bytes, int]] = []

    def write(self, path: Path) -> Path:
        out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
        for ts, frame, length in sorted(self.records, key=lambda r: r[0]):
            usec = round(ts * 1e6)
            out.append(
                struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), length)
            )
            out.append(frame)
        path.write_bytes(b"".join(out))
        return path


class Connection:
    """One TCP connection from ``client``:``port`` to the Kafka port, segment by segment."""

    def __init__(self, capture: Capture, client: str, port: int, snap: int | None = None) -> None:
        self.capture, self.client, self.port, self.snap = capture, client, port, snap
        self.seq = {True: 1_000_000, False: 7_000_000}  # next sequence number per side

    def segment(self, ts: float, from_client: bool, flags: int, payload: bytes = b"") -> None:
        src, dst = (self.client, SERVER) if from_client else (SERVER, self.client)
        sport, dport = (self.port, KAFKA_PORT) if from_client else (KAFKA_PORT, self.port)
        seq, ack = self.seq[from_client], self.seq[not from_client]
        tcp = struct.pack(
            ">HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF if flags & ACK else 0,
            5 << 4,
            flags,
            65535,
            0,
            0,
        )
        ip = struct.pack(">BBHHHBBH", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6, 0)
        frame = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
        frame += ip + _ip(src) + _ip(dst) + tcp + payload
        self.seq[from_client] += len(payload) + (1 if flags & (SYN | FIN) else 0)
        captured = frame[: self.snap] if self.snap else frame
        self.capture.records.append((ts, captured, len(frame)))

    def handshake(self, ts: float) -> None:
        self.segment(ts, True, SYN)
        self.segment(ts + 0.0001, False, SYN | ACK)
        self.segment(ts + 0.0002, True, ACK)

    def send(self, ts: float, from_client: bool, *pieces: bytes, gap: float = 0.0) -> None:
        """``pieces`` in consecutive segments, ``gap`` seconds apart."""
        for n, piece in enumerate(pieces):
            self.segment(ts + n * gap, from_client, PSH | ACK, piece)


def produce_request(correlation: int, client_id: str | None, records: int = 600) -> bytes:
    """A Produce v7 request (request header v1) of one topic partition."""
    name = client_id.encode() if client_id is not None else None
    header = struct.pack(">hhi", 0, 7, correlation)
    header += struct.pack(">h", -1) if name is None else struct.pack(">h", len(name)) + name
    body = struct.pack(">hhi", -1, 1, 30000)  # transactional_id null, acks, timeout
    body += struct.pack(">ih", 1, 6) + b"orders" + struct.pack(">ii", 1, 0)
    body += struct.pack(">i", records) + bytes(records)
    message = header + body
    return struct.pack(">i", len(message)) + message


def response(correlation: int, body: int = 40) -> bytes:
    return struct.pack(">ii", 4 + body, correlation) + bytes(body)


def kafka_connections(capture: Capture) -> None:
    """Three producers: one with a slow request, one whose client.id is split over two
    segments, one captured with a snap length that cuts its (long) client.id short
    and whose slow request gets no response in the capture."""
    a = Connection(capture, "10.0.0.2", 40000)
    a.handshake(1.0)
    a.send(1.001, True, produce_request(1, "orders-producer-7"))
    a.send(1.003, False, response(1))
    slow = produce_request(2, "orders-producer-7", records=3000)
    a.send(1.010, True, slow[:1400], slow[1400:], gap=0.040)  # 40 ms on the wire
    a.send(1.051, False, response(2))

    b = Connection(capture, "10.0.0.3", 40001)
    b.handshake(2.0)
    request = produce_request(1, "billing-app-2")
    b.send(2.001, True, request[:21], request[21:], gap=0.0001)  # header + "bil" | the rest
    b.send(2.004, False, response(1))

    c = Connection(capture, "10.0.0.4", 40002, snap=80)  # 26 payload bytes kept
    c.handshake(3.0)
    request = produce_request(1, "a-very-long-client-id-from-spring-boot", records=2000)
    c.send(3.001, True, request[:1400], request[1400:], gap=0.030)


RAW = b"x" * 300
TLS_CLIENT_HELLO = bytes(
    [0x16, 0x03, 0x01, 0x00, 0xC0, 0x01, 0x00, 0x00, 0xBC, 0x03, 0x03]
) + bytes(189)
TLS_SERVER_HELLO = bytes(
    [0x16, 0x03, 0x03, 0x00, 0x5A, 0x02, 0x00, 0x00, 0x56, 0x03, 0x03]
) + bytes(85)


def raw_connections(capture: Capture) -> None:
    for n, client in enumerate(("10.0.0.5", "10.0.0.6")):
        raw = Connection(capture, client, 41000 + n)
        raw.handshake(4.0 + n)
        raw.send(4.001 + n, True, RAW[:150], RAW[150:], gap=0.05)
        raw.send(4.2 + n, False, b"y" * 64)


def tls_connection(capture: Capture) -> None:
    tls = Connection(capture, "10.0.0.7", 42000)
    tls.handshake(6.0)
    tls.send(6.001, True, TLS_CLIENT_HELLO)
    tls.send(6.002, False, TLS_SERVER_HELLO)
    tls.send(6.100, True, bytes([0x17, 0x03, 0x03, 0x01, 0x00]) + bytes(256), gap=0.0)


def mid_stream_raw(capture: Capture) -> None:
    """Raw bytes on a connection the capture joined after its handshake."""
    late = Connection(capture, "10.0.0.8", 43000)
    late.send(7.0, True, b"zzzz" * 40)
    late.send(7.1, False, b"q" * 30)


def _json(path: Path, *env: str) -> dict[str, Any]:
    if env:
        result = subprocess.run(
            [sys.executable, "-m", "tcpsleuth", "pcap", "--format", "json", str(path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            env={**os.environ, **dict(e.split("=", 1) for e in env)},
        )
    else:
        result = run_tcpsleuth("pcap", "--format", "json", str(path))
    assert result.returncode in (0, 1), result.stderr
    assert "None" not in result.stdout.replace("null", "")
    return json.loads(result.stdout)


def _kafka_findings(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in doc["findings"] if f["kind"].startswith("kafka")]


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("kafka-plausibility")
    out = {}
    for name, builders in (
        ("kafka", (kafka_connections,)),
        ("raw", (raw_connections,)),
        ("tls", (tls_connection,)),
        ("mixed", (kafka_connections, raw_connections, tls_connection, mid_stream_raw)),
    ):
        capture = Capture()
        for build in builders:
            build(capture)
        out[name] = capture.write(directory / f"{name}.pcap")
    return out


def test_kafka_requests_decoded_with_client_ids(captures: dict[str, Path]) -> None:
    doc = _json(captures["kafka"])
    kafka = doc["files"][0]["kafka"]
    assert kafka["connections_by_port"] == {
        "9092": {"undecided": 0, "kafka": 3, "not_kafka": 0, "tls": 0}
    }
    requests = kafka["requests"]
    assert [(r["client"], r["api_key"], r["api"], r["client_id"]) for r in requests] == [
        ("10.0.0.2:40000", 0, "produce", "orders-producer-7"),
        ("10.0.0.2:40000", 0, "produce", "orders-producer-7"),
        ("10.0.0.3:40001", 0, "produce", "billing-app-2"),
        # 80-byte snap length: 26 payload bytes, 14 of them the header
        ("10.0.0.4:40002", 0, "produce", "a-very-long-…"),
    ]
    assert [r["api_version"] for r in requests] == [7, 7, 7, 7]
    assert [r["broker_ms"] for r in requests] == [2.0, 1.0, 2.9, None]
    # tshark's Kafka dissector reads the same client.ids where the capture kept them
    # whole (it gives none for the one cut short)
    expected = {
        int(stream): client_id
        for stream, client_id in tshark(captures["kafka"], "tcp.stream", "kafka.client_id")
        if client_id
    }
    mine = {r["stream"]: r["client_id"] for r in requests}
    assert expected == {s: i for s, i in mine.items() if not i.endswith("…")}
    assert len(expected) == 2
    rows = {(row["client"], row["api"]): row for row in kafka["summary"]}
    assert rows[("10.0.0.2", "produce")]["client_ids"] == {"orders-producer-7": 2}

    slow = {f["subject"]["client"]: f for f in _kafka_findings(doc)}
    assert set(slow) == {"10.0.0.2", "10.0.0.4"}
    evidence = slow["10.0.0.2"]["evidence"]
    assert evidence["slow_client_ids"] == {"orders-producer-7": 1}
    assert evidence["slow_requests"] == 1
    assert "against 2.0 ms in the broker" in slow["10.0.0.2"]["summary"]
    # no response: the broker's time is said to be unknown, not "None"
    assert "broker's time is unknown" in slow["10.0.0.4"]["summary"]
    assert slow["10.0.0.4"]["evidence"]["slow_client_ids"] == {"a-very-long-…": 1}


@pytest.mark.parametrize(("name", "verdict", "count"), [("raw", "not_kafka", 2), ("tls", "tls", 1)])
def test_not_kafka_on_the_kafka_port_gives_no_kafka_figures(
    captures: dict[str, Path], name: str, verdict: str, count: int
) -> None:
    doc = _json(captures[name])
    kafka = doc["files"][0]["kafka"]
    assert kafka["requests_total"] == 0
    assert kafka["requests"] == []
    assert kafka["summary"] == []
    assert not _kafka_findings(doc)
    counts = {"undecided": 0, "kafka": 0, "not_kafka": 0, "tls": 0}
    assert kafka["connections_by_port"] == {"9092": {**counts, verdict: count}}


def test_mixed_capture_decodes_only_the_kafka_connections(captures: dict[str, Path]) -> None:
    mixed = _json(captures["mixed"])["files"][0]["kafka"]
    alone = _json(captures["kafka"])["files"][0]["kafka"]
    assert mixed["connections_by_port"] == {
        # the connection joined mid-stream may merely not be at a message boundary
        "9092": {"undecided": 1, "kafka": 3, "not_kafka": 2, "tls": 1}
    }
    assert mixed["summary"] == alone["summary"]
    strip = ("stream", "frame", "last_frame", "response_frame")
    assert [{k: v for k, v in r.items() if k not in strip} for r in mixed["requests"]] == [
        {k: v for k, v in r.items() if k not in strip} for r in alone["requests"]
    ]


def test_table_says_it_once_and_never_none(captures: dict[str, Path]) -> None:
    result = run_tcpsleuth("pcap", str(captures["mixed"]))
    assert result.returncode in (0, 1), result.stderr
    out = result.stdout
    kafka_part = out[out.index("Kafka requests: send time") :]  # the Kafka table onwards
    assert "None" not in kafka_part
    said = [line for line in out.splitlines() if "not Kafka" in line]
    assert len(said) == 1, out
    assert "Port 9092" in said[0] and "2 not Kafka" in said[0] and "1 TLS" in said[0]
    assert "broker time unknown: no response in the capture" in kafka_part  # said in words
    assert "Kafka requests" in out


def test_plain_python_gives_what_the_compiled_splitter_gives(captures: dict[str, Path]) -> None:
    compiled = _json(captures["mixed"])
    plain = _json(captures["mixed"], "NUMBA_DISABLE_JIT=1")
    assert plain["files"][0]["kafka"] == compiled["files"][0]["kafka"]


def test_client_ids_equal_tshark_on_the_shared_capture() -> None:
    assert SHARED_KAFKA.exists(), SHARED_KAFKA
    doc = _json(SHARED_KAFKA)
    mine = {(r["stream"], r["frame"]): r["client_id"] for r in doc["files"][0]["kafka"]["requests"]}
    expected = {
        (int(stream), int(frame)): client_id
        for frame, stream, client_id in tshark(
            SHARED_KAFKA, "frame.number", "tcp.stream", "kafka.client_id"
        )
        if client_id
    }
    assert mine == expected
    assert set(mine.values()) == {"kafka-python-producer-1"}
    assert doc["files"][0]["kafka"]["connections_by_port"]["9092"]["kafka"] == 2


def test_header_plausibility_rules() -> None:
    """The accepted api keys, versions, sizes and client_id lengths, on the splitter's
    own check (its plain-Python form)."""
    from tcpsleuth.detectors.capture import kafka as kt
    from tcpsleuth.detectors.capture import kafka_framing as wire

    check = getattr(wire._request_ok, "py_func", wire._request_ok)
    tls = getattr(wire._tls, "py_func", wire._tls)

    def header(size: int, key: int, version: int, id_len: int) -> bytes:
        return struct.pack(">ihhih", size, key, version, 1, id_len)

    assert check(header(100, 0, 7, 10), 100)
    assert check(header(100, 92, 0, -1), 100)  # the highest key Kafka defines, null id
    assert not check(header(100, 93, 0, 0), 100)
    assert not check(header(100, -1, 0, 0), 100)
    produce_max = int(wire.API_MAX_VERSION[0])
    assert check(header(100, 0, produce_max + wire.VERSION_HEADROOM, 0), 100)
    assert not check(header(100, 0, produce_max + wire.VERSION_HEADROOM + 1, 0), 100)
    assert not check(header(100, 0, -1, 0), 100)
    assert check(header(wire.MAX_REQUEST, 0, 7, 0), wire.MAX_REQUEST)
    assert not check(header(wire.MAX_REQUEST + 1, 0, 7, 0), wire.MAX_REQUEST + 1)
    assert not check(header(7, 0, 7, 0), 7)
    assert not check(header(100, 0, 7, -2), 100)
    assert not check(header(100, 0, 7, 91), 100)  # the client_id would end past the request
    assert check(header(100, 0, 7, 90), 100)
    assert check(header(12, 7, 0, 0x7FFF), 12)  # ControlledShutdown v0: no client_id field
    assert not check(b"xxxxxxxxxxxxxx", 0x78787878)
    assert tls(bytes([0x16, 0x03, 0x01])) and tls(bytes([0x17, 0x03, 0x03]))
    assert not tls(bytes([0x16, 0x03, 0x05])) and not tls(b"xxx")
    assert kt.api_name(7) == "controlled_shutdown" and kt.api_name(0) == "produce"


def test_many_producers_in_small_chunks(tmp_path: Path) -> None:
    """Hundreds of producers, each with its own client.id (more than the first
    client.id buffer holds), read in small chunks and with the smallest tables: every
    client.id is kept whole, as with one chunk, and equal to tshark's."""
    from tcpsleuth.detectors.capture.run import follow
    from tcpsleuth.sources.pcap import open_capture

    capture = Capture()
    names = {}
    for n in range(300):
        producer = Connection(capture, f"10.1.{n // 250}.{n % 250 + 2}", 30000 + n)
        producer.handshake(10.0 + n * 0.01)
        name = f"producer-{n:03d}-" + "x" * (n % 50)
        request = produce_request(n, name, records=100)
        cut = 10 + n % 40  # the header and the client.id split anywhere
        producer.send(10.001 + n * 0.01, True, request[:cut], request[cut:], gap=0.0001)
        producer.send(10.002 + n * 0.01, False, response(n))
        names[n] = name
    path = capture.write(tmp_path / "many.pcap")
    whole = follow(open_capture(path), frozenset({KAFKA_PORT}))[1]
    pieces = follow(open_capture(path, chunk=997), frozenset({KAFKA_PORT}), 1)[1]
    assert whole.client_ids() == pieces.client_ids() == names
    assert whole.verdicts_by_port == {
        KAFKA_PORT: {"undecided": 0, "kafka": 300, "not_kafka": 0, "tls": 0}
    }
    assert (whole.response_frame >= 0).all()
    expected = {
        int(stream): client_id
        for stream, client_id in tshark(path, "tcp.stream", "kafka.client_id")
        if client_id
    }
    assert expected == names

"""The capture reader on every format and link type it claims, each checked against
tshark reading the same file; and its answers to files that are not captures."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DATA, run_tcpsleuth
from support.tshark_diff import (
    assert_connections_equal,
    assert_kafka_equal,
    tcpsleuth_json,
    tshark,
)

KAFKA = DATA / "go-sniffer-kafka.pcap"


def test_public_kafka_capture_equals_tshark() -> None:
    doc = tcpsleuth_json(KAFKA)
    assert assert_connections_equal(KAFKA, doc) == 2
    assert assert_kafka_equal(KAFKA, doc) == 2
    apis = {r["api"] for r in doc["files"][0]["kafka"]["requests"]}
    assert apis == {"metadata", "produce"}
    # the broker announced shift 1 and used it: no mismatch
    assert not [f for f in doc["findings"] if f["kind"].startswith("wscale")]


@pytest.mark.parametrize(
    ("variant", "make"),
    [
        ("pcapng", ["editcap", "-F", "pcapng"]),
        ("nanoseconds", ["editcap", "-F", "nsecpcap"]),
    ],
)
def test_editcap_formats_equal_tshark(tmp_path: Path, variant: str, make: list[str]) -> None:
    path = tmp_path / f"kafka-{variant}"
    subprocess.run([*make, str(KAFKA), str(path)], check=True, capture_output=True)
    doc = tcpsleuth_json(path)
    assert doc["files"][0]["format"] == ("pcapng" if variant == "pcapng" else "pcap")
    assert_connections_equal(path, doc)
    assert_kafka_equal(path, doc)
    original = tcpsleuth_json(KAFKA)["files"][0]["kafka"]["requests"]
    assert doc["files"][0]["kafka"]["requests"] == original


def _swap_pcap(data: bytes) -> bytes:
    """The same capture written by a big-endian host: every header field byte-swapped."""
    out = bytearray(struct.pack(">IHHiIII", *struct.unpack_from("<IHHiIII", data, 0)))
    pos = 24
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, pos)
        out += struct.pack(">IIII", sec, usec, incl, orig) + data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
    return bytes(out)


def test_big_endian_and_gzip_equal_tshark(tmp_path: Path) -> None:
    big = tmp_path / "big.pcap"
    big.write_bytes(_swap_pcap(KAFKA.read_bytes()))
    assert big.read_bytes()[:4] == b"\xa1\xb2\xc3\xd4"
    zipped = tmp_path / "big.pcap.gz"
    with gzip.open(zipped, "wb") as out:
        out.write(big.read_bytes())
    for path in (big, zipped):
        doc = tcpsleuth_json(path)
        assert doc["files"][0]["gzip"] == (path == zipped)
        assert_connections_equal(path, doc)
        assert_kafka_equal(path, doc)


def _to_raw_ip(src: Path, dst: Path) -> None:
    """Strip the 16-byte Linux cooked header off every packet: LINKTYPE_RAW (101)."""
    data = src.read_bytes()
    header = bytearray(data[:24])
    struct.pack_into("<I", header, 20, 101)
    out = bytearray(header)
    pos = 24
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, pos)
        out += struct.pack("<IIII", sec, usec, incl - 16, orig - 16)
        out += data[pos + 16 + 16 : pos + 16 + incl]
        pos += 16 + incl
    dst.write_bytes(bytes(out))


def test_raw_ip_link_type_equals_tshark(tmp_path: Path) -> None:
    raw = tmp_path / "raw.pcap"
    _to_raw_ip(KAFKA, raw)
    assert tshark(raw, "frame.number", display_filter="kafka")  # tshark reads it too
    doc = tcpsleuth_json(raw)
    assert doc["files"][0]["linktypes"] == [101]
    assert_connections_equal(raw, doc)
    assert_kafka_equal(raw, doc)


def _add_vlan_tags(src: Path, dst: Path, tags: int) -> None:
    """Insert ``tags`` 802.1Q/802.1ad tags after the MAC addresses of each frame."""
    data = src.read_bytes()
    out = bytearray(data[:24])
    pos = 24
    tag = (b"\x88\xa8\x00\x64" if tags == 2 else b"") + b"\x81\x00\x00\x0a"
    while pos < len(data):
        sec, usec, incl, orig = struct.unpack_from("<IIII", data, pos)
        frame = data[pos + 16 : pos + 16 + incl]
        out += struct.pack("<IIII", sec, usec, incl + len(tag), orig + len(tag))
        out += frame[:12] + tag + frame[12:]
        pos += 16 + incl
    dst.write_bytes(bytes(out))


def test_ethernet_vlan_sll2_and_multi_interface_pcapng_equal_tshark(tmp_path: Path) -> None:
    from support.pcap_lab import make_capture

    eth = make_capture(tmp_path, "eth", clients=[(4, 2, 2, 5000), (6, 1, 2, 5000)]).path
    sll2 = make_capture(tmp_path, "sll2", clients=[(4, 2, 1, 3000)], iface="any").path
    micro = tmp_path / "eth-micro.pcap"
    subprocess.run(["editcap", "-F", "pcap", str(eth), str(micro)], check=True)
    for tags in (1, 2):
        tagged = tmp_path / f"vlan{tags}.pcap"
        _add_vlan_tags(micro, tagged, tags)
        doc = tcpsleuth_json(tagged)
        assert_connections_equal(tagged, doc)
        assert_kafka_equal(tagged, doc)
    merged = tmp_path / "merged.pcapng"
    subprocess.run(
        ["mergecap", "-F", "pcapng", "-w", str(merged), str(eth), str(sll2), str(KAFKA)],
        check=True,
    )
    for path in (eth, sll2, merged):
        doc = tcpsleuth_json(path)
        assert_connections_equal(path, doc)
        assert_kafka_equal(path, doc)
    doc = tcpsleuth_json(merged)
    assert doc["files"][0]["linktypes"] == [1, 113, 276]
    assert len(doc["files"][0]["connections"]) == 7


# Bad input: exit 2 and one line naming the problem and the byte offset.


def _error_line(path: Path, output_format: str = "table") -> str:
    result = run_tcpsleuth("pcap", "--format", output_format, str(path))
    assert result.returncode == 2 and not result.stdout, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


def test_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a capture\n")
    assert "unknown magic 0x68656c6c at byte 0" in _error_line(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    assert "only 0 bytes long" in _error_line(empty)
    assert "no such file" in _error_line(tmp_path / "missing.pcap")


def test_capture_starting_mid_connection_equals_tshark(tmp_path: Path) -> None:
    """No handshake seen for the first connection: the client is guessed, windows
    are unscaled, and the Kafka streams start at the first data segment."""
    cut = tmp_path / "mid.pcap"
    subprocess.run(["editcap", "-r", str(KAFKA), str(cut), "4-20"], check=True)
    doc = tcpsleuth_json(cut)
    assert assert_connections_equal(cut, doc) == 2
    assert assert_kafka_equal(cut, doc) == 2
    first = doc["files"][0]["connections"][0]
    assert first["syn"] is None and first["opened_by"] == "port-guess"
    assert first["client"] == "127.0.0.1:57372"


def test_capture_without_packets_is_not_an_error(tmp_path: Path) -> None:
    header_only = tmp_path / "header-only.pcap"
    header_only.write_bytes(KAFKA.read_bytes()[:24])
    ng = tmp_path / "none.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", "-r", str(KAFKA), str(ng), "100-200"], check=True)
    for path in (header_only, ng):
        result = run_tcpsleuth("pcap", "--format", "json", str(path), check_status=0)
        doc = json.loads(result.stdout)
        assert doc["files"][0]["packets"] == 0
        assert doc["files"][0]["connections"] == [] and doc["findings"] == []
        run_tcpsleuth("pcap", str(path), check_status=0)


def test_corrupt_record_length_names_its_offset(tmp_path: Path) -> None:
    data = bytearray(KAFKA.read_bytes())
    # the third record: skip the file header and two records
    pos = 24
    for _ in range(2):
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    struct.pack_into("<I", data, pos + 8, 0x7FFFFFF0)
    path = tmp_path / "corrupt.pcap"
    path.write_bytes(bytes(data))
    line = _error_line(path)
    assert f"corrupt pcap record at byte {pos}" in line


def test_corrupt_pcapng_block_names_its_offset(tmp_path: Path) -> None:
    ng = tmp_path / "k.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(KAFKA), str(ng)], check=True)
    data = bytearray(ng.read_bytes())
    # the second block follows the section header block
    second = struct.unpack_from("<I", data, 4)[0]
    struct.pack_into("<I", data, second + 4, 13)
    ng.write_bytes(bytes(data))
    assert f"corrupt pcapng block at byte {second}" in _error_line(ng)


def test_corrupt_gzip(tmp_path: Path) -> None:
    zipped = tmp_path / "k.pcap.gz"
    with gzip.open(zipped, "wb") as out:
        out.write(KAFKA.read_bytes())
    data = bytearray(zipped.read_bytes())
    data[40:60] = bytes(20)
    zipped.write_bytes(bytes(data))
    assert "compressed data is corrupt" in _error_line(zipped)


def test_capture_ending_mid_record_is_analysed_up_to_there(tmp_path: Path) -> None:
    data = KAFKA.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:2000])
    result = run_tcpsleuth("pcap", "--format", "json", str(cut))
    assert result.returncode == 0
    assert "capture ends inside a record at byte" in result.stderr
    doc = json.loads(result.stdout)
    # tshark on the same cut file reads the same packets (it warns too)
    frames = subprocess.run(
        ["tshark", "-r", str(cut), "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert doc["files"][0]["packets"] == len(frames)
    # the given file is left as it was
    assert cut.read_bytes() == data[:2000]


def test_tools_exist() -> None:
    for tool in ("tshark", "editcap", "mergecap"):
        assert shutil.which(tool), tool


def _signatures(function: object) -> list[object]:
    """What numba compiled ``function`` for: empty when it ran as plain Python (a
    marked function before its first compiled call, or numba missing)."""
    dispatcher = getattr(function, "dispatcher", None) or function
    return list(getattr(dispatcher, "signatures", []))


@pytest.fixture
def compiled_loops() -> Iterator[None]:
    """Marked functions compiled, whatever an earlier command in this process asked."""
    from tcpsleuth import compiled

    was = compiled.plain()
    compiled.use_python(False)
    yield
    compiled.use_python(was)


def test_compiled_and_python_record_walks_agree(tmp_path: Path, compiled_loops: None) -> None:
    """numba compiles the record walk; its plain-Python form must give the same."""
    import numpy as np

    from tcpsleuth.sources.pcap import walk

    data = np.frombuffer(KAFKA.read_bytes()[24:], dtype=np.uint8)
    fast = walk.pcap_records(data, False, 262144)
    assert _signatures(walk.pcap_records), "the record walk ran as Python, not compiled"
    slow = getattr(walk.pcap_records, "py_func", walk.pcap_records)(data, False, 262144)
    for a, b in zip(fast, slow, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert len(fast[0]) == 20
    ng = tmp_path / "k.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(KAFKA), str(ng)], check=True)
    raw = ng.read_bytes()
    # the first enhanced packet block follows the section header and interface blocks
    first = struct.unpack_from("<I", raw, 4)[0]
    first += struct.unpack_from("<I", raw, first + 4)[0]
    data = np.frombuffer(raw, dtype=np.uint8)
    fast = walk.pcapng_packets(data, first, False, 1 << 24)
    assert _signatures(walk.pcapng_packets), "the pcapng walk ran as Python, not compiled"
    slow = getattr(walk.pcapng_packets, "py_func", walk.pcapng_packets)(data, first, False, 1 << 24)
    for a, b in zip(fast, slow, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert len(fast[0]) == 20


def _follow(path: Path, chunk: int, capacity: int, shards: int = 1) -> tuple[dict, dict]:
    """Connections and Kafka requests of ``path`` read ``chunk`` bytes at a time."""
    from tcpsleuth.detectors.capture.run import follow
    from tcpsleuth.sources.pcap import open_capture

    analysis, requests = follow(
        open_capture(path, chunk=chunk), frozenset({9092}), capacity, shards
    )
    kafka = {
        name: getattr(requests, name)
        for name in (
            "stream",
            "api_key",
            "correlation_id",
            "frame",
            "last_frame",
            "response_frame",
            "client_id_code",
        )
    }
    kafka["client_id_names"] = requests.client_id_names
    kafka["verdicts_by_port"] = requests.verdicts_by_port
    columns = analysis.columns
    found = {f.name: getattr(columns, f.name) for f in dataclasses.fields(columns)}
    for name in ("conn", "c2s", "starts", "ends", "first_syn", "first_synack"):
        found[f"handshake {name}"] = getattr(analysis, name)
    for name in ("frame", "ts_ns", "flags", "tsval"):
        found[f"handshake {name}"] = getattr(analysis.tcp, name)
    found["hs_syn"], found["hs_synack"] = analysis.hs_syn, analysis.hs_synack
    return found, kafka


def _assert_same(one: dict, two: dict) -> None:
    import numpy as np

    assert one.keys() == two.keys()
    for name in one:
        if isinstance(one[name], np.ndarray):
            assert np.array_equal(one[name], two[name]), name
        else:
            assert one[name] == two[name], name


def test_compiled_and_python_analysis_loops_agree(
    monkeypatch: pytest.MonkeyPatch, compiled_loops: None
) -> None:
    """The loops numba compiles (decoding, connection tracking, Kafka framing) give the
    same in plain Python."""
    import importlib

    from tcpsleuth.detectors.capture import kafka_framing
    from tcpsleuth.detectors.capture import kernels as capture_kernels

    # the package exports a function of the module's name
    decode = importlib.import_module("tcpsleuth.sources.pcap.decode")
    compiled = _follow(KAFKA, 1 << 20, 4096)
    assert len(compiled[0]["first_frame"]) == 2
    assert len(compiled[1]["stream"]) == 2
    for module, name in (
        (capture_kernels, "assign"),
        (capture_kernels, "follow_handshakes"),
        (capture_kernels, "follow_streams"),
        (kafka_framing, "follow"),
        (decode, "_decode_packets"),
    ):
        function = getattr(module, name)
        assert _signatures(function), f"{name} ran as Python, not compiled"
        monkeypatch.setattr(module, name, getattr(function, "py_func", function))
    plain = _follow(KAFKA, 1 << 20, 4096)
    for one, two in zip(compiled, plain, strict=True):
        _assert_same(one, two)


def test_small_chunks_and_growing_tables_change_nothing() -> None:
    """Connections and Kafka messages spanning chunks, and tables that must grow
    (and rehash) many times, give what one chunk and roomy tables give."""
    whole = _follow(KAFKA, 1 << 20, 4096)
    for chunk in (97, 600):
        pieces = _follow(KAFKA, chunk, 1)
        for one, two in zip(whole, pieces, strict=True):
            _assert_same(one, two)


@pytest.mark.parametrize(
    "capture",
    ["go-sniffer-kafka.pcap", "storm-prefix/server.pcap", "storm-fixed/server.pcap"],
)
def test_connections_split_over_shards_give_what_one_tracker_gives(capture: str) -> None:
    """Connections followed in shards by 4-tuple (threads), merged by first frame:
    the same numbers, columns, handshake rows and Kafka requests as one tracker, in
    chunks small enough that connections and tables grow across many of them."""
    path = DATA / capture
    whole = _follow(path, 1 << 20, 4096)
    for shards, chunk, capacity in ((2, 1 << 20, 4096), (3, 4096, 1), (4, 600, 16)):
        split = _follow(path, chunk, capacity, shards)
        for one, two in zip(whole, split, strict=True):
            _assert_same(one, two)


def test_second_pass_in_shards_numbers_connections_as_the_first() -> None:
    """Window series (the JSON's second pass) read in shards give what one tracker
    gives: the shards' connections are numbered back as the first pass numbered them."""
    import numpy as np

    from tcpsleuth.detectors.capture import shards, tracking, windows
    from tcpsleuth.detectors.capture.run import follow
    from tcpsleuth.sources.pcap import open_capture

    path = DATA / "storm-prefix" / "server.pcap"
    analysis, _ = follow(open_capture(path), frozenset({9092}), shards=1)
    streams = list(range(len(analysis.connections)))
    one = windows.window_series(open_capture(path).chunks, analysis, streams)
    for count in (2, 3):
        rows = shards.numbered_rows(iter(open_capture(path, chunk=4096).chunks), analysis, count)
        single = tracking.ConnectionTracker()
        for tcp, split in rows:
            whole = single.feed(tcp)
            for name in ("conn", "direction", "rel_seq", "win_bytes"):
                assert np.array_equal(getattr(whole, name), getattr(split, name)), name
    assert one == windows.window_series(open_capture(path, chunk=4096).chunks, analysis, streams)


def test_one_second_pass_gives_the_series_and_the_segments() -> None:
    """`pcap --format json --html`: the JSON's window series and the graphs' segments
    come from one more read (run.second_pass), in shards, small chunks (each chunk's
    rows are written over by the next one's), the same as each read alone by one
    tracker."""
    import numpy as np

    from tcpsleuth import compiled
    from tcpsleuth.detectors.capture import tracking, windows
    from tcpsleuth.detectors.capture.run import follow, second_pass
    from tcpsleuth.sources.pcap import open_capture

    path = DATA / "storm-prefix" / "server.pcap"
    analysis, _ = follow(open_capture(path), frozenset({9092}), shards=1)
    every = list(range(len(analysis.connections)))
    drawn = every[::7]
    alone = tracking.DetailPass(analysis, drawn)
    single = tracking.ConnectionTracker()
    for tcp in open_capture(path).chunks:
        alone.feed(tcp, single.feed(tcp))
    expected = alone.finish()
    series = windows.window_series(open_capture(path).chunks, analysis, every)
    was = compiled.plain()
    compiled.use_python(False)  # compiled: the read below is in shards (2 cores or more)
    try:
        both = second_pass(open_capture(path, chunk=600).chunks, analysis, every, drawn)
    finally:
        compiled.use_python(was)
    assert both.series == series and len(series) == len(every)
    assert both.detail is not None
    assert len(both.detail.conn) == len(expected.conn) > 100
    assert set(np.unique(both.detail.conn).tolist()) == set(drawn)
    for name in ("conn", "c2s", "win_bytes", "rel_seq", "order", "starts", "ends"):
        assert np.array_equal(getattr(both.detail, name), getattr(expected, name)), name
    for name in ("frame", "ts_ns", "flags", "seq", "ack", "window"):
        assert np.array_equal(getattr(both.detail.tcp, name), getattr(expected.tcp, name)), name
    only_series = second_pass(open_capture(path).chunks, analysis, every[:3])
    assert only_series.detail is None and list(only_series.series) == every[:3]


# Packets a network really carries that the decoder once dropped or misread (issue 14
# item 2): each read as tshark reads it, or named in one line when nothing could be.


def _rewritten(tmp_path: Path, name: str, change, linktype: int | None = None) -> Path:  # type: ignore[no-untyped-def]
    from support import pcap_rewrite

    path = tmp_path / name
    pcap_rewrite.rewrite(KAFKA, path, change, linktype)
    return path


def _same_bytes_as_unfragmented(doc: dict) -> None:  # type: ignore[type-arg]
    original = tcpsleuth_json(KAFKA)["files"][0]
    got = {c["client"].rsplit(":", 1)[1]: c["bytes"] for c in doc["files"][0]["connections"]}
    want = {c["client"].rsplit(":", 1)[1]: c["bytes"] for c in original["connections"]}
    assert got == want and sum(b["c2s"] + b["s2c"] for b in got.values()) == 1290


def test_ipv4_fragments_are_reassembled_as_tshark_does(tmp_path: Path) -> None:
    from support import pcap_rewrite

    path = _rewritten(tmp_path, "frag4.pcap", pcap_rewrite.ipv4_fragments(24))
    doc = tcpsleuth_json(path)
    assert assert_connections_equal(path, doc) == 2
    assert assert_kafka_equal(path, doc) == 2
    _same_bytes_as_unfragmented(doc)
    data = doc["files"][0]
    assert data["packets"] == 93 and data["tcp_segments"] == 20
    assert data["ip_fragments"] == {"read": 93, "datagrams_reassembled": 20}
    assert data["skipped"]["ip_fragments"] == 0 and not data["warnings"]


@pytest.mark.parametrize(
    ("name", "extensions", "fragment"),
    [("four-extensions", True, 0), ("fragments", False, 24), ("both", True, 16)],
)
def test_ipv6_extension_headers_and_fragments_equal_tshark(
    tmp_path: Path, name: str, extensions: bool, fragment: int
) -> None:
    from support import pcap_rewrite

    chain = pcap_rewrite.FOUR_EXTENSIONS if extensions else []
    path = _rewritten(tmp_path, f"{name}.pcap", pcap_rewrite.sll_ipv4_to_ipv6(chain, fragment))
    doc = tcpsleuth_json(path)
    assert assert_connections_equal(path, doc) == 2
    assert assert_kafka_equal(path, doc) == 2
    _same_bytes_as_unfragmented(doc)


def test_three_vlan_tags_equal_tshark(tmp_path: Path) -> None:
    from support import pcap_rewrite

    eth = _rewritten(tmp_path, "eth.pcap", pcap_rewrite.sll_to_ethernet, linktype=1)
    tagged = tmp_path / "vlan3.pcap"
    pcap_rewrite.rewrite(eth, tagged, pcap_rewrite.vlan_tags(3))
    doc = tcpsleuth_json(tagged)
    assert assert_connections_equal(tagged, doc) == 2
    assert assert_kafka_equal(tagged, doc) == 2


def test_fragments_never_completed_are_counted_and_said(tmp_path: Path) -> None:
    from support import pcap_rewrite

    path = _rewritten(tmp_path, "lost.pcap", pcap_rewrite.ipv4_fragments(24, hold_back=5))
    result = run_tcpsleuth("pcap", "--format", "json", str(path))
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(result.stdout)["files"][0]
    assert data["skipped"]["ip_fragments"] == 4  # the 4 datagrams that lost their last
    assert data["ip_fragments"]["datagrams_reassembled"] == 16
    assert result.stderr.count("\n") == 1 and "4 IP fragments" in result.stderr
    assert data["warnings"] == [result.stderr.strip().removeprefix("tcpsleuth: warning: ")]


@pytest.mark.parametrize(
    ("linktype", "said"),
    [(147, "20 of link type 147, which tcpsleuth does not read"), (101, "not the IP header")],
)
def test_nothing_readable_is_an_input_error(tmp_path: Path, linktype: int, said: str) -> None:
    """Link type 147 (user-defined), and Ethernet frames labelled raw IP: exit 2, never
    'nothing of concern'."""
    from support import pcap_rewrite

    source = KAFKA
    if linktype == 101:
        source = _rewritten(tmp_path, "eth.pcap", pcap_rewrite.sll_to_ethernet, linktype=1)
    path = tmp_path / "odd.pcap"
    pcap_rewrite.rewrite(source, path, lambda frame: [frame], linktype)
    for output_format in ("table", "json"):
        line = _error_line(path, output_format)
        assert said in line and "none of its 20 packets could be read" in line


def test_four_gigabyte_original_length_breaks_nothing(tmp_path: Path) -> None:
    """A record claiming a 4 GB original length on a packet with IP length 0 (where
    the decoder takes the frame's length, as for a TSO super-packet): not read as a
    4 GB segment, and the connection's bytes stay what they were."""
    data = bytearray(KAFKA.read_bytes())
    pos = 24
    changed = 0
    while pos < len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        if data[pos + 16 + 14 : pos + 16 + 16] == b"\x08\x00" and changed == 0:
            struct.pack_into("<I", data, pos + 12, 0xFFFFFFFF)
            struct.pack_into("!H", data, pos + 16 + 16 + 2, 0)  # IP total length 0
            changed = pos
        pos += 16 + incl
    path = tmp_path / "huge.pcap"
    path.write_bytes(bytes(data))
    result = run_tcpsleuth("pcap", "--format", "json", str(path))
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)["files"][0]
    assert doc["skipped"]["undecodable"] == 1
    total = sum(c["bytes"]["c2s"] + c["bytes"]["s2c"] for c in doc["connections"])
    assert total <= 1290


def test_endless_overlapping_fragments_are_given_up(tmp_path: Path) -> None:
    """One datagram's first fragment sent again and again (never its last): memory stays
    bounded, the fragments are counted as never completed, the rest is read."""
    from support import pcap_rewrite

    def flood(frame: bytes) -> list[bytes]:
        pieces = pcap_rewrite.ipv4_fragments(24)(frame)
        return pieces[:1] * 3000 if len(pieces) > 1 and frame[16 + 9] == 6 else [frame]

    path = tmp_path / "flood.pcap"
    pcap_rewrite.rewrite(KAFKA, path, flood)
    result = run_tcpsleuth("pcap", "--format", "json", str(path))
    assert result.returncode == 2, result.stderr  # nothing but fragments: nothing readable
    assert "IP fragments whose datagram never became whole" in result.stderr


def test_reassembly_holds_at_most_its_bound_per_datagram() -> None:
    from tcpsleuth.sources.pcap.reassemble import MAX_FRAGMENTS, Reassembler

    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + 24, 7, 0x2000, 64, 6, 0, b"\x0a\0\0\1", b"\x0a\0\0\2"
    )
    packet = header + b"x" * 24
    fragments = Reassembler()
    for _ in range(5 * MAX_FRAGMENTS):
        assert fragments.add(packet, 0, len(packet), -1) is None
        held = sum(len(d.captured) for d in fragments.pending.values())
        assert held <= MAX_FRAGMENTS
    assert fragments.finish() == 5 * MAX_FRAGMENTS


def test_the_sides_field_table_is_kernels() -> None:
    """tracking.F names each per-direction field finish() reads as kernels names it: F.X
    is kernels' S_X in the 32-bit table or D_X in the 64-bit one, never another index."""
    from tcpsleuth.detectors.capture import kernels
    from tcpsleuth.detectors.capture.sides import F, Field

    table = {name: value for name, value in vars(F).items() if isinstance(value, Field)}
    assert len(table) >= 39
    for name, field in table.items():
        prefix = "S_" if field.small else "D_"
        assert getattr(kernels, prefix + name) == field.index, name
        limit = kernels.SMALL_FIELDS if field.small else kernels.DIR_FIELDS
        assert 0 <= field.index < limit, name

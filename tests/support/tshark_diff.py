"""Compare what ``tcpsleuth pcap`` reports with what tshark reads from the same file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

KAFKA_PORT = 9092


def tshark(path: Path, *fields: str, display_filter: str = "") -> list[list[str]]:
    argv = ["tshark", "-n", "-r", str(path), "-d", f"tcp.port=={KAFKA_PORT},kafka"]
    argv += ["-T", "fields", "-E", "separator=|"]
    for field in fields:
        argv += ["-e", field]
    if display_filter:
        argv += ["-Y", display_filter]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


def tcpsleuth_json(path: Path, *extra: str) -> dict[str, Any]:
    """``tcpsleuth pcap --format json [EXTRA...] PATH``'s document."""
    result = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "pcap", "--format", "json", *extra, str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


# both ends of a segment as tshark fields: source address (v4, v6) and port, then
# the destination's, for endpoint()
ENDPOINT_FIELDS = ("ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport")


def endpoint(ip4: str, ip6: str, port: str) -> str:
    """IP:PORT as tcpsleuth writes it, from tshark's ip/ipv6 and port fields."""
    return f"{ip4}:{port}" if ip4 else f"[{ip6}]:{port}"


def expected_connections(path: Path) -> dict[int, dict[str, Any]]:
    """Per tcp.stream: endpoints of the SYN, options of SYN and SYN-ACK, packets."""
    out: dict[int, dict[str, Any]] = {}
    for row in tshark(path, "tcp.stream"):
        if not row[0]:
            continue  # an IP fragment whose datagram tshark shows at its last fragment
        entry = out.setdefault(int(row[0]), {"packets": 0})
        entry["packets"] += 1
    rows = tshark(
        path,
        "tcp.stream",
        "tcp.flags.ack",
        "ip.src",
        "ipv6.src",
        "tcp.srcport",
        "ip.dst",
        "ipv6.dst",
        "tcp.dstport",
        "tcp.options.mss_val",
        "tcp.options.wscale.shift",
        "tcp.options.sack_perm",
        "tcp.options.timestamp.tsval",
        "tcp.window_size_value",
        display_filter="tcp.flags.syn==1",
    )
    for stream, ack, s4, s6, sport, d4, d6, dport, mss, ws, sack, tsval, win in rows:
        role = "synack" if ack == "1" else "syn"
        entry = out[int(stream)]
        if role in entry:
            continue  # a retransmission
        entry[role] = {
            "mss": mss,
            "wscale": ws,
            "sack": "1" if sack else "0",
            "tsval": tsval,
            "window": win,
        }
        if role == "syn":
            entry["client"] = endpoint(s4, s6, sport)
            entry["server"] = endpoint(d4, d6, dport)
    return out


def _options(opts: dict[str, Any] | None) -> dict[str, str] | None:
    if opts is None:
        return None
    return {
        "mss": "" if opts["mss"] is None else str(opts["mss"]),
        "wscale": "" if opts["wscale"] is None else str(opts["wscale"]),
        "sack": "1" if opts["sack_permitted"] else "0",
        "tsval": "" if opts["tsval"] is None else str(opts["tsval"]),
        "window": str(opts["window"]),
    }


def assert_connections_equal(path: Path, doc: dict[str, Any]) -> int:
    """Streams, endpoints, handshake options and packet counts equal tshark's."""
    expected = expected_connections(path)
    conns = {c["stream"]: c for c in doc["files"][0]["connections"]}
    assert sorted(conns) == sorted(expected)
    for stream, want in expected.items():
        got = conns[stream]
        assert got["packets"]["c2s"] + got["packets"]["s2c"] == want["packets"], stream
        if "syn" in want:
            assert (got["client"], got["server"]) == (want["client"], want["server"]), stream
        for role in ("syn", "synack"):
            if role in want:
                assert _options(got[role]) == want[role], (stream, role)
    return len(expected)


def kafka_requests(path: Path) -> list[tuple[int, int, int, int]]:
    """(stream, frame, api_key, correlation_id) of each request tshark decoded; the
    frame is the one that completes the request."""
    out = []
    for stream, frame, port, keys, corrs in tshark(
        path,
        "tcp.stream",
        "frame.number",
        "tcp.dstport",
        "kafka.api_key",
        "kafka.correlation_id",
        display_filter="kafka",
    ):
        if int(port) != KAFKA_PORT:
            continue
        for key, corr in zip(keys.split(","), corrs.split(","), strict=True):
            out.append((int(stream), int(frame), int(key), int(corr)))
    return sorted(out)


def kafka_responses(path: Path) -> list[tuple[int, int, int]]:
    """(stream, frame, correlation_id) of each response tshark decoded."""
    out = []
    for stream, frame, port, corrs in tshark(
        path,
        "tcp.stream",
        "frame.number",
        "tcp.srcport",
        "kafka.correlation_id",
        display_filter="kafka",
    ):
        if int(port) != KAFKA_PORT:
            continue
        for corr in corrs.split(","):
            out.append((int(stream), int(frame), int(corr)))
    return sorted(out)


def assert_kafka_equal(path: Path, doc: dict[str, Any]) -> int:
    requests = doc["files"][0]["kafka"]["requests"]
    mine = sorted(
        (r["stream"], r["last_frame"], r["api_key"], r["correlation_id"]) for r in requests
    )
    assert mine == kafka_requests(path)
    answered = sorted(
        (r["stream"], r["response_frame"], r["correlation_id"])
        for r in requests
        if r["response_frame"] is not None
    )
    # tshark puts a response on the frame that completes it; ours is the first frame
    # of the response: equal when a response fits one segment, as these do.
    assert answered == kafka_responses(path)
    return len(mine)


__all__ = ["Counter", "assert_connections_equal", "assert_kafka_equal", "tcpsleuth_json"]

"""SYN cookies without timestamps (issue 30, item 1), on storms this test makes: a
server namespace with net.ipv4.tcp_timestamps=0 and a backlog of 50, a few ordinary
connections first (IPv4 and IPv6), then 1,500 clients at once. A cookie SYN-ACK
without timestamps keeps the MSS alone; the capture tells it from a middlebox's strip
by the listener's other SYN-ACKs, which carry window scale and SACK.

Truth, independent of the analyzer: tshark's SYN-ACKs that carry no window scale and
no SACK (each client's SYN offers both) against the kernel's TcpExtSyncookiesSent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_tcpsleuth
from support.pcap_lab import make_capture
from support.storm_lab import StormConfig, run_storm
from support.tshark_diff import tshark as tshark_fields

# three IPv4 and two IPv6 connections (no requests: the storm's server answers none),
# one process each, before the storm
BEFORE = [(4, 3, 0, 0), (6, 2, 0, 0)]


def mss_only_synacks(path: Path) -> tuple[int, set[int], int]:
    """(SYN-ACK packets with neither window scale nor SACK, their streams, SYN-ACK
    packets with timestamps) as tshark reads them."""
    rows = tshark_fields(
        path,
        "tcp.stream",
        "tcp.options.wscale.shift",
        "tcp.options.sack_perm",
        "tcp.options.timestamp.tsval",
        display_filter="tcp.flags.syn==1 && tcp.flags.ack==1",
    )
    bare = [int(stream) for stream, ws, sack, _ in rows if not ws and not sack]
    timed = sum(1 for *_, tsval in rows if tsval)
    return len(bare), set(bare), timed


def test_cookies_without_timestamps_are_cookies_and_not_a_stripped_option(
    tmp_path: Path,
) -> None:
    capture = make_capture(
        tmp_path,
        "nots",
        clients=BEFORE,
        storm=1500,
        server_sysctls={"net.ipv4.tcp_timestamps": 0},
    )
    sent = capture.server_netstat["TcpExtSyncookiesSent"]
    assert sent > 100, capture.server_netstat
    packets, streams, timed = mss_only_synacks(capture.path)
    assert timed == 0
    # the truth: every cookie SYN-ACK lost both options, and no other SYN-ACK did
    assert packets == sent, (packets, sent)
    result = run_tcpsleuth("pcap", "--format", "json", "--all-connections", str(capture.path))
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    conns = doc["files"][0]["connections"]
    assert len(conns) == 1500 + 5
    called = {c["stream"] for c in conns if c["syn_cookie"]["cookie"] is True}
    ordinary = {c["stream"] for c in conns if c["syn_cookie"]["cookie"] is False}
    # every cookie connection called one (each SYN offered window scale and SACK), and
    # every other connection with a SYN-ACK called ordinary
    assert called == streams, (len(called), len(streams))
    synacked = {c["stream"] for c in conns if c["synack"] is not None}
    assert ordinary == synacked - streams
    # the connections made before the storm: ordinary, IPv4 and IPv6
    first = sorted(conns, key=lambda c: c["stream"])[:5]
    assert [c["syn_cookie"]["cookie"] for c in first] == [False] * 5
    assert sum(c["server"].startswith("[") for c in first) == 2
    kinds = [f["kind"] for f in doc["findings"]]
    assert "wscale-stripped" not in kinds, kinds
    [lost] = [f for f in doc["findings"] if f["kind"] == "wscale-lost-syn-cookies"]
    evidence = lost["evidence"]
    assert evidence["cookie_connections"] == len(streams)
    assert evidence["cookie_connections_high_confidence"] == len(streams)
    assert evidence["confidence"] == "high"
    assert evidence["offered"]["wscale"] == evidence["offered"]["sack"] == len(streams)
    assert evidence["returned"] == {"mss": len(streams), "wscale": 0, "sack": 0, "timestamps": 0}
    assert evidence["listener_synacks_with_options"] == len(ordinary) - 2  # the IPv6 pair
    assert evidence["window_ceiling_bytes"] == 65535
    rtt = evidence["rtt_ms"]
    assert rtt is not None and 0 < rtt < 1000
    assert evidence["throughput_ceiling_bytes_per_s"] == round(65535 / (rtt / 1e3))
    assert "net.ipv4.tcp_timestamps=1" in lost["advice"] and "backlog" in lost["advice"]
    [cookies] = [f for f in doc["findings"] if f["kind"] == "syn-cookies-seen"]
    assert cookies["evidence"]["cookie_synacks"] == sent
    assert cookies["evidence"]["cookie_connections"] == len(streams)
    print("kernel sent", sent, "cookie connections", len(streams), "rtt", rtt, "ms")


def verdicts_against_truth(pcap: Path, sent: int) -> tuple[set[int], dict]:
    """The capture's MSS-only SYN-ACKs (truth: as many as the kernel's cookies) against
    the analyzer's verdicts: exactly those connections cookies, every other answered
    one ordinary, no wscale-stripped; (cookie streams, the wscale-lost-syn-cookies
    finding)."""
    packets, streams, timed = mss_only_synacks(pcap)
    assert timed == 0
    assert packets == sent, (packets, sent)
    result = run_tcpsleuth("pcap", "--format", "json", "--all-connections", str(pcap))
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    conns = doc["files"][0]["connections"]
    called = {c["stream"] for c in conns if c["syn_cookie"]["cookie"] is True}
    ordinary = {c["stream"] for c in conns if c["syn_cookie"]["cookie"] is False}
    synacked = {c["stream"] for c in conns if c["synack"] is not None}
    assert called == streams, (len(called), len(streams))
    assert ordinary == synacked - streams
    kinds = [f["kind"] for f in doc["findings"]]
    assert "wscale-stripped" not in kinds, kinds
    [lost] = [f for f in doc["findings"] if f["kind"] == "wscale-lost-syn-cookies"]
    assert lost["evidence"]["cookie_connections"] == len(streams)
    assert lost["evidence"]["listener_synacks_with_options"] == len(ordinary)
    return streams, lost


@pytest.mark.parametrize(
    ("family", "addrs"), [(6, 1), (4, 8)], ids=["ipv6-one-address", "ipv4-8-addresses"]
)
def test_storms_without_timestamps_both_ends(tmp_path: Path, family: int, addrs: int) -> None:
    """The storms of test_capture_storms.py with timestamps off on the server, IPv6 and
    several client addresses, read from the server's and the client's capture."""
    storm = run_storm(tmp_path, StormConfig(clients=1500, addrs=addrs, family=family, timestamps=0))
    sent = storm.netstat["TcpExtSyncookiesSent"]
    assert sent >= 100, storm.netstat
    for pcap in (storm.server_pcap, storm.client_pcap):
        streams, lost = verdicts_against_truth(pcap, sent)
        assert len(lost["evidence"]["clients"]) == addrs
        print(family, addrs, pcap.name, "kernel sent", sent, "cookies", len(streams))

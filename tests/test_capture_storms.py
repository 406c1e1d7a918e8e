"""The capture analyzer on reconnect storms, per connection against the exact truth.

Each storm (tests/support/storm_lab.py) is made here, of a different shape: one
client address or many, IPv4 or IPv6, every SYN answered with a cookie or only
the overflow, timestamps with per-connection offsets or none, SYN-ACKs lost so
that SYNs are retransmitted. The truth is the kernel's: every cookie SYN-ACK is
marked by an nftables rule that sees it leave without a socket, each
connection's shifts come from ``ss`` on both ends, the cookie count from
``TcpExtSyncookiesSent``; tshark reads the marks. The analyzer reads the server's
and the client's capture, which carry the marks but never look at them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import needs_root, run_tcpsleuth
from support.storm_lab import Storm, StormConfig, run_storm
from support.storm_truth import ConnectionTruth, connections

from tcpsleuth.detectors import capture_cookies

pytestmark = [needs_root, pytest.mark.root]

STORMS = {
    # one producer host, overflow cookies, cookie SYN-ACKs rewritten to announce
    # shift 1 (the emulated bug), timestamps with per-connection offsets
    "one-address-emulated-bug": StormConfig(clients=1500, announce=1),
    # no offsets (tcp_timestamps=2): hundreds of cookies share one TSval
    "shared-tsvals": StormConfig(clients=1500, timestamps=2, announce=1),
    # 40 client hosts, every SYN a cookie, 1 in 10 SYN-ACKs lost: retransmitted SYNs
    "many-addresses-retransmits": StormConfig(
        clients=2000, addrs=40, syncookies=2, drop_synacks=10
    ),
    # IPv6 from 10 hosts, overflow cookies only
    "ipv6": StormConfig(clients=1200, addrs=10, family=6),
}
PRECISION, RECALL = 0.99, 0.95


@dataclass
class Score:
    true_pos: int = 0
    false_pos: int = 0
    false_neg: int = 0
    true_neg: int = 0
    undecided: int = 0
    undecided_cookies: int = 0

    @property
    def precision(self) -> float:
        return self.true_pos / max(self.true_pos + self.false_pos, 1)

    @property
    def recall(self) -> float:
        return self.true_pos / max(self.true_pos + self.false_neg, 1)


def analyse(path: Path) -> dict:
    result = run_tcpsleuth("pcap", "--format", "json", "--all-connections", str(path))
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def score(doc: dict, truth: dict[str, ConnectionTruth]) -> Score:
    conns = {c["client"]: c for c in doc["files"][0]["connections"]}
    assert set(conns) == set(truth)
    out = Score()
    for client, known in truth.items():
        said = conns[client]["syn_cookie"]["cookie"]
        if said is None:
            out.undecided += 1
            out.undecided_cookies += bool(known.cookie)
        elif said and known.cookie:
            out.true_pos += 1
        elif said:
            out.false_pos += 1
        elif known.cookie:
            out.false_neg += 1
        else:
            out.true_neg += 1
    return out


@pytest.fixture(scope="module", params=sorted(STORMS))
def storm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Storm:
    return run_storm(tmp_path_factory.mktemp(request.param), STORMS[request.param])


@pytest.mark.parametrize("side", ["server", "client"])
def test_storm_cookies_and_shifts_per_connection(storm: Storm, side: str) -> None:
    sent = storm.netstat["TcpExtSyncookiesSent"]
    # a backlog-50 listener that accepts nothing for half a second overflows under
    # any load: the storm's precondition, measured
    assert sent >= 100, storm.netstat
    pcap = storm.server_pcap if side == "server" else storm.client_pcap
    truth = connections(pcap, storm.server_ss, storm.client_ss)
    # the marks are exact: every cookie the kernel counted is in the capture
    assert sum(t.cookie_synacks for t in truth.values()) == sent
    doc = analyse(pcap)
    result = score(doc, truth)
    print(storm.config, side, result, f"precision {result.precision:.4f}")
    assert result.precision >= PRECISION, result
    assert result.recall >= RECALL, result
    [finding] = [f for f in doc["findings"] if f["kind"] == "syn-cookies"]
    evidence = finding["evidence"]
    assert evidence["cookie_connections"] == result.true_pos + result.false_pos
    assert evidence["undecided_connections"] == result.undecided
    if result.undecided == 0:
        # every cookie proven: the SYN-ACKs counted (packets, as the kernel counts)
        assert abs(evidence["cookie_synacks"] - sent) <= 0.05 * sent, (evidence, sent)
    assert evidence["cookie_synacks"] <= sent * 1.05
    # every client address hit is named, with its count
    hit = {}
    for client, known in truth.items():
        if known.cookie:
            address = client.rsplit(":", 1)[0]
            hit[address] = hit.get(address, 0) + 1
    assert set(evidence["clients"]) <= set(hit)
    assert len(evidence["clients"]) >= len(hit) * RECALL

    # window scale: each connection's verdict against both ends' sockets
    conns = {c["client"]: c for c in doc["files"][0]["connections"]}
    disagree = [c for c, t in truth.items() if t.disagree and t.server_windows_after]
    agree = [c for c, t in truth.items() if t.disagree is False]
    assert agree, "no connection established on both ends"
    flagged = [c for c in disagree if conns[c]["wscale_verdict"]["mismatch"] is True]
    assert flagged == disagree
    assert not [c for c in agree if conns[c]["wscale_verdict"]["mismatch"] is True]
    if storm.config.announce is not None:
        assert disagree
        for c in disagree:
            verdict = conns[c]["wscale_verdict"]
            assert verdict["announced"] == storm.config.announce
            assert verdict["inferred"] == truth[c].server_rcv_wscale
        [mismatch] = [f for f in doc["findings"] if f["kind"] == "wscale-mismatch"]
        assert mismatch["evidence"]["connections"] == len(disagree)
    else:
        assert not disagree


def test_no_cookies_without_syncookies(tmp_path: Path) -> None:
    storm = run_storm(tmp_path, StormConfig(clients=1500, syncookies=0))
    assert storm.netstat["TcpExtSyncookiesSent"] == 0
    # the storm did overflow: SYNs were dropped instead
    assert storm.netstat["TcpExtListenDrops"] + storm.netstat["TcpExtTCPReqQFullDrop"] > 0
    for pcap in (storm.server_pcap, storm.client_pcap):
        doc = analyse(pcap)
        assert not [f for f in doc["findings"] if f["kind"] == "syn-cookies"]
        conns = {c["client"]: c["syn_cookie"] for c in doc["files"][0]["connections"]}
        assert True not in [v["cookie"] for v in conns.values()]
        # the connections whose server said more than its SYN-ACK are judged ordinary,
        # but where the server's delay could hide a jump (no cookie to learn its clock
        # phase from), which is said
        truth = connections(pcap, storm.server_ss, storm.client_ss)
        answered = [conns[c] for c, t in truth.items() if t.server_windows_after]
        assert len(answered) >= 100
        judged = [v for v in answered if v["cookie"] is False]
        hidden = [v for v in answered if v["cookie"] is None]
        print(pcap.name, len(answered), "answered", len(judged), "judged ordinary")
        assert len(judged) >= len(answered) * RECALL
        assert {v["reason"] for v in hidden} <= {
            capture_cookies.REASONS[capture_cookies.R_JUMP_HIDDEN]
        }

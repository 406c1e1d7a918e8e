"""One shape per kind (issue 29): every finding kind has one subject type and one set of
evidence keys whatever command makes it, the ones model/kinds.py declares. Each kind is
made here by every command (or detector, where the command needs root, a kernel trace
or a live storm) that can make it, from committed inputs, and the shapes compared."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from support.pcap_gen import held_back

from tcpsleuth.cli import examples
from tcpsleuth.detectors import handshakes, probe, rates, tracing
from tcpsleuth.model import kinds
from tcpsleuth.model.findings import Finding, Severity, connection_subject, listener_subject
from tcpsleuth.model.records import Listener, ProbedConnection, ProbeResult, WindowSample

ROOT = REPO
DATA = ROOT / "tests" / "data"
SS = ROOT / "tests" / "fixtures" / "ss"
BUNDLES = ROOT / "tests" / "fixtures" / "bundles"

COMMANDS = {
    "doctor": ["doctor", "--example"],
    "audit": ["audit", "--bundle", str(examples.path(examples.DEFAULT))],
    "audit-centos": ["audit", "--bundle", str(BUNDLES / "centos7.7-old-formats")],
    "audit-storm": ["audit", "--bundle", str(BUNDLES / "debian12-6.18-storm")],
    "pcap-prefix": ["pcap", str(DATA / "storm-prefix" / "server.pcap")],
    "pcap-fixed": ["pcap", str(DATA / "storm-fixed" / "server.pcap")],
    "pcap-kafka": ["pcap", str(DATA / "go-sniffer-kafka.pcap")],
    "compare": ["compare", str(SS / "lab-fault-client-tni.txt"),
                str(SS / "lab-fault-server-tni.txt")],
    "sockets-fault": ["sockets", str(SS / "lab-fault-client-tni.txt")],
    "sockets-centos": ["sockets", str(SS / "jc-centos7.7-kernel3.10-a.txt")],
    "sockets-ubuntu": ["sockets", str(SS / "jc-ubuntu18.04-kernel4.15-a.txt")],
    "sockets-pcp": ["sockets", str(SS / "pcp-qa-ubuntu-iproute5-noemitauO.txt")],
}  # fmt: skip


def _json(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", *args, "--format", "json"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def _bundle(scratch: Path, name: str, sysctls: dict[str, str], kafka: str = "") -> str:
    """The built-in example with other settings: the kinds about settings."""
    bundle = scratch / name
    shutil.copytree(examples.path(examples.DEFAULT), bundle)
    text = (bundle / "sysctl-a.txt").read_text()
    for key, value in sysctls.items():
        text = "\n".join(
            f"{key} = {value}" if line.startswith(f"{key} = ") else line
            for line in text.splitlines()
        )
    (bundle / "sysctl-a.txt").write_text(text + "\n")
    with (bundle / "server.properties").open("a") as config:
        config.write("\n" + kafka + "\n")
    # the listener's buffer as `ss -ltnm` shows it: 2 x SO_RCVBUF 102400, locked
    (bundle / "ss-ltn.txt").write_text(
        "State  Recv-Q Send-Q Local Address:Port Peer Address:PortProcess\n"
        "LISTEN 0      50         127.0.0.1:9092      0.0.0.0:*\n"
        "\t skmem:(r0,rb204800,t0,tb16384,f0,w0,o0,bl0,d0)\n"
    )
    return str(bundle)


def _variants(scratch: Path) -> dict[str, list[str]]:
    no_ts = {"net.ipv4.tcp_timestamps": "0", "net.ipv4.tcp_window_scaling": "0",
             "net.core.somaxconn": "128"}  # fmt: skip
    backlog = "socket.listen.backlog.size=4096"
    server = (SS / "lab-fault-server-tni.txt").read_text()
    inconsistent = scratch / "inconsistent.txt"
    inconsistent.write_text(server.replace("wscale:10,7", "wscale:10,1", 1))
    unscaled = scratch / "unscaled.txt"
    unscaled.write_text(server.replace("bbr wscale:10,7 ", "bbr ", 1))
    return {
        "audit-no-timestamps": [
            "audit", "--bundle", _bundle(scratch, "a", no_ts, backlog), "--kafka-version", "3.1.2"
        ],
        "audit-caps": [
            "audit", "--bundle", _bundle(scratch, "b", no_ts, backlog), "--kafka-version", "3.3.1"
        ],
        "audit-always": [
            "audit", "--bundle", _bundle(scratch, "c", {"net.ipv4.tcp_syncookies": "2"})
        ],
        "doctor-off": [
            "doctor", "--bundle", _bundle(scratch, "d", {"net.ipv4.tcp_syncookies": "0"})
        ],
        "sockets-inconsistent": ["sockets", str(inconsistent)],
        "sockets-unscaled": ["sockets", str(unscaled)],
        "compare-unmatched": [
            "compare", str(SS / "lab-fault-client-tni.txt"), str(SS / "lab-clean-server-tni.txt")
        ],
        # rwnd-limited from a capture: one connection, and more than RWND_PER_LISTENER
        # connections of one server (one finding for the server)
        "pcap-rwnd": ["pcap", held_back(scratch / "held.pcap", 1)],
        "pcap-rwnd-storm": ["pcap", held_back(scratch / "held-storm.pcap", 11)],
    }  # fmt: skip


def _trace() -> list[Finding]:
    """``tcpsleuth trace``'s detector on two traced ends of one connection: the client
    reads the server's windows with shift 1, the server scales them by 7, and the
    client waits at that window for most of the time traced."""

    def sample(t: int, client: bool, wait: int) -> WindowSample:
        ends = ("10.0.0.2", 40000, "10.0.0.1", 9092)
        local_ip, local_port, remote_ip, remote_port = ends if client else (*ends[2:], *ends[:2])
        return WindowSample(
            t, 1, local_ip, local_port, remote_ip, remote_port,
            1 if client else 7, 7, 1024, 65536, 65536, 1024, 1448, True, wait, t // 1000,
        )  # fmt: skip

    samples = [sample(t * 10**9, c, t * 9 * 10**8) for t in range(3) for c in (True, False)]
    return tracing.trace_findings(tracing.fold(samples), frozenset({9092}))


def _probe() -> list[Finding]:
    def conn(ts: bool, used: int) -> ProbedConnection:
        return ProbedConnection("10.0.0.2:4000", "10.0.0.1:9092", "ipv4", ts, 1, 1, used, 1578)

    bug = ProbeResult("6.1.0", 102400, [conn(True, 7), conn(False, 0)], 2)
    ok = ProbeResult("6.18.0", 102400, [conn(True, 1)], 1)
    return probe.probe_findings(bug, "h") + probe.probe_findings(ok, "h")


def _rates() -> list[Finding]:
    names = ("TcpExtSyncookiesSent", "TcpExtListenOverflows", "TcpExtListenDrops")
    before = dict.fromkeys(names, 0)
    after = dict.fromkeys(names, 500)
    full = [Listener("10.0.0.1", 9092, 50, 51)]
    found = rates.sample_events(before, after, 1.0, [], full, "h")
    return found + rates.rwnd_limited_events(
        0, 40, 100, 1.0, [9092], "h", rates.Thresholds(rwnd_limited_jump=5)
    )


def _record() -> list[Finding]:
    """The recorder's join of a capture's SYN-ACKs with the server's sockets."""
    found = [handshakes.Disagreement(f"10.0.0.2:{p}", "10.0.0.1:9092", 1, 7, p) for p in (1, 2)]
    return handshakes.mismatch_findings(found, 2)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, set[Any]]]:
    """kind -> {"subject": {(command, subject keys)}, "evidence": {(command, keys)}}"""
    shapes: dict[str, dict[str, set[Any]]] = defaultdict(lambda: defaultdict(set))

    def add(command: str, finding: dict[str, Any]) -> None:
        kind = finding["kind"]
        shapes[kind]["subject"].add((command, tuple(sorted(finding["subject"]))))
        shapes[kind]["evidence"].add((command, tuple(finding["evidence"])))
        shapes[kind]["source"].add((command, finding["evidence"].get("source")))

    for name, args in COMMANDS.items():
        for finding in _json(*args)["findings"]:
            add(name, finding)
    scratch = tmp_path_factory.mktemp("inputs")
    for name, args in _variants(scratch).items():
        for finding in _json(*args)["findings"]:
            add(name, finding)
    incident = tmp_path_factory.mktemp("incident") / "incident-small"
    shutil.copytree(DATA / "incident-small", incident)
    for finding in _json("report", str(incident))["findings"]:
        add("report", finding)
    for name, findings in (
        ("trace", _trace()),
        ("probe", _probe()),
        ("watch", _rates()),
        ("record", _record()),
    ):
        for finding in findings:
            add(name, finding.to_dict())
    return shapes


def test_each_kind_has_one_subject_and_one_key_set(made: dict[str, dict[str, set[Any]]]) -> None:
    for kind, shape in made.items():
        spec = kinds.KINDS[kind]
        subjects = {keys for _, keys in shape["subject"]}
        assert subjects == {tuple(sorted(kinds.SUBJECT_KEYS[spec.subject]))}, (
            kind,
            shape["subject"],
        )
        key_sets = {keys for _, keys in shape["evidence"]}
        assert key_sets == {spec.evidence}, (kind, shape["evidence"])


def test_the_kinds_made_by_several_commands_were_made_by_each(
    made: dict[str, dict[str, set[Any]]],
) -> None:
    """The check above compared what it claims to: the kinds two commands make came
    from both, and a command that cannot know a key says so in ``source``."""
    by = {kind: {command for command, _ in shape["evidence"]} for kind, shape in made.items()}
    assert {"compare", "pcap-prefix", "trace", "record"} <= by["wscale-mismatch"]
    assert {"sockets-fault", "trace"} <= by["rwnd-limited"]
    assert {"audit", "probe"} <= by["kernel-cookie-wscale-bug"]
    assert {"pcap-prefix", "report"} <= by["syn-cookies-seen"]
    # every kind but the capture's own (wscale-stripped, wscale-lost-syn-cookies,
    # kafka-send-time: pcap alone makes them; the second on the storms of
    # test_cookie_options_lab.py) and kafka-listen-backlog-small
    missing = set(kinds.KINDS) - set(made)
    assert missing == {
        "wscale-stripped",
        "wscale-lost-syn-cookies",
        "kafka-send-time",
        "kafka-listen-backlog-small",
    }
    assert {"audit-caps", "audit-no-timestamps"} <= by["somaxconn-low"]
    assert {"doctor-off"} <= by["syncookies-disabled"]
    sources = dict(made["wscale-mismatch"]["source"])
    assert sources["compare"].startswith("sockets of both ends")
    assert sources["pcap-prefix"].startswith("capture")
    assert sources["trace"].startswith("trace")
    assert {"sockets-fault", "trace", "pcap-rwnd", "pcap-rwnd-storm"} <= by["rwnd-limited"]
    sources = dict(made["rwnd-limited"]["source"])
    assert sources["sockets-fault"].startswith("socket (tcp_info")
    assert sources["trace"].startswith("trace")
    assert sources["pcap-rwnd"].startswith("capture: the sender's segments")
    assert sources["pcap-rwnd-storm"] == sources["pcap-rwnd"]
    assert None not in {source for _, source in made["rwnd-limited"]["source"]}


def test_rwnd_limited_from_a_capture_names_its_sender_and_source(tmp_path: Path) -> None:
    """What sockets and trace put in ``sender``, ``source`` and ``busy_ms``, a capture
    puts there too: the client held back, what decided it, the time it had data."""
    [one] = _json("pcap", held_back(tmp_path / "held.pcap", 1))["findings"]
    evidence = one["evidence"]
    assert one["subject"] == {"client": "10.0.0.2:40000", "server": "10.0.0.1:9092"}
    assert (evidence["sender"], evidence["direction"], evidence["waits"]) == (
        "10.0.0.2:40000", "c2s", 12,
    )  # fmt: skip
    assert evidence["source"].startswith("capture")
    # 12 waits of 10.05 ms (window 0 at 0.5 ms, open at 10.5 ms, sent 0.05 ms later),
    # in 13 sends over 12 x 10.55 ms
    assert 12 * 10.0 <= evidence["rwnd_limited_ms"] <= evidence["busy_ms"] <= 12 * 10.6 + 1
    assert evidence["rwnd_limited_share"] == round(
        evidence["rwnd_limited_ms"] / evidence["busy_ms"], 3
    )
    [storm] = _json("pcap", held_back(tmp_path / "storm.pcap", 11))["findings"]
    assert storm["evidence"]["connections"] == 11 and storm["evidence"]["sender"] is None
    assert storm["evidence"]["source"] == evidence["source"]
    assert storm["evidence"]["worst"]["sender"].startswith("10.0.0.2:")


def test_wscale_mismatch_from_compare_and_pcap_reads_alike() -> None:
    """A script reading evidence.actual_wscale gets the shift in use from both."""
    [compare] = [
        f
        for f in _json("compare", str(SS / "lab-fault-client-tni.txt"),
                       str(SS / "lab-fault-server-tni.txt"))["findings"]
        if f["kind"] == "wscale-mismatch"
    ][:1]  # fmt: skip
    [pcap] = [
        f
        for f in _json("pcap", str(DATA / "storm-prefix" / "server.pcap"))["findings"]
        if f["kind"] == "wscale-mismatch"
    ]
    truth = json.loads((DATA / "storm-prefix" / "truth.json").read_text())["connections"]
    assert (pcap["evidence"]["announced_wscale"], pcap["evidence"]["actual_wscale"]) == (1, 7)
    assert {c["server_rcv_wscale"] for c in truth.values()} == {7}
    assert pcap["evidence"]["socket_wscale"] is None  # a capture cannot read the socket
    assert pcap["evidence"]["inferred_wscale"] == 7
    assert pcap["subject"] == {"client": "*", "server": "198.18.0.1:9092"}
    assert pcap["evidence"]["connections"] == len(truth)
    assert (compare["evidence"]["announced_wscale"], compare["evidence"]["actual_wscale"]) == (1, 7)
    assert (
        compare["evidence"]["socket_wscale"] == 7 and compare["evidence"]["inferred_wscale"] is None
    )
    assert compare["subject"]["client"].startswith("198.18.0.2:")
    assert compare["evidence"]["connections"] == 1


def test_compare_speaks_milliseconds_in_pairs_and_findings() -> None:
    doc = _json(
        "compare", str(SS / "lab-fault-client-tni.txt"), str(SS / "lab-fault-server-tni.txt")
    )
    text = (SS / "lab-fault-client-tni.txt").read_text()
    pair = doc["pairs"][0]
    assert not [k for k in pair if k.endswith("_us")]
    # ss prints rwnd_limited in ms (with the share): the same number in the pair
    port = pair["client"].rsplit(":", 1)[1]
    block = text[text.index(f":{port} ") :]
    printed = float(block.split("rwnd_limited:", 1)[1].split("ms", 1)[0])
    assert pair["client_rwnd_limited_ms"] == printed
    mismatch = next(
        f for f in doc["findings"]
        if f["kind"] == "wscale-mismatch" and f["subject"]["client"] == pair["client"]
        and f["evidence"]["direction"] == "server-to-client"
    )  # fmt: skip
    assert mismatch["evidence"]["rwnd_limited_ms"] == printed


def test_a_finding_refuses_a_key_or_subject_its_kind_lacks() -> None:
    with pytest.raises(kinds.UnknownKind, match="no evidence key 'made_up'"):
        Finding("somaxconn-low", Severity.INFO, {"host": "h"}, "x", {"made_up": 1})
    with pytest.raises(kinds.UnknownKind, match="about a host"):
        Finding("somaxconn-low", Severity.INFO, listener_subject("1.2.3.4:1"), "x", {})
    filled = Finding("somaxconn-low", Severity.INFO, {"host": "h"}, "x", {})
    assert filled.evidence == {"somaxconn": None}
    many = Finding("wscale-mismatch", Severity.CRITICAL, listener_subject("10.0.0.1:9092"), "x", {})
    assert many.subject == connection_subject("*", "10.0.0.1:9092")


def test_old_documents_are_read_in_the_current_shape() -> None:
    old = {
        "kind": "wscale-mismatch",
        "severity": "critical",
        "subject": {"listener": "10.0.0.1:9092"},
        "summary": "x",
        "evidence": {"announced_wscale": 1, "actual_wscale": 7, "verdict_source": "gone"},
    }
    finding = Finding.from_dict(old)
    assert finding.evidence["actual_wscale"] == 7 and "verdict_source" not in finding.evidence
    assert os.fspath(ROOT)  # the repository is where the fixtures are

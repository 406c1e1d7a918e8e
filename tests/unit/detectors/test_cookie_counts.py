"""Reports count SYN-cookie verdicts three ways (issue 30, item 3): cookie, ordinary (decided
not a cookie) and undecided with the reasons why, the kernel's TcpExtSyncookiesSent beside
them where it is known, and the cookies the capture could not attribute; never "0 of N"
while connections are undecided.

The undecided cases are real captures cut short: the first packets of the committed
incident's and storm's captures, as a capture stopped early holds them (SYN-ACKs with
nothing after them from the server, SYNs not yet answered)."""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
from conftest import REPO
from support.cli import tcpsleuth as run

from tcpsleuth.detectors.capture import cookies
from tcpsleuth.detectors.capture.run import analyse_stream
from tcpsleuth.sources.pcap import open_capture

ROOT = REPO
DATA = ROOT / "tests" / "data"


def flat(text: str) -> str:
    return " ".join(text.split())


def head(source: Path, target: Path, packets: int) -> None:
    """The first ``packets`` records of a classic little-endian pcap file."""
    data = source.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1", "a little-endian microsecond pcap"
    at = 24
    for _ in range(packets):
        (kept,) = struct.unpack("<I", data[at + 8 : at + 12])
        at += 16 + kept
    target.write_bytes(data[:at])


def verdict_counts(capture: Path, port: int = 9092) -> tuple[dict[str, Any], list[Any]]:
    """The capture's verdicts counted here from the per-connection column, and its
    syn-cookies-seen findings."""
    result = analyse_stream(open_capture(capture), frozenset({port}))
    verdict = np.asarray(result.cookies.verdict)
    counts = {
        "connections": len(verdict),
        "cookie": int((verdict == cookies.COOKIE).sum()),
        "ordinary": int((verdict == cookies.ORDINARY).sum()),
        "undecided": int((verdict == cookies.UNKNOWN).sum()),
    }
    return counts, [f for f in result.findings if f.kind == "syn-cookies-seen"]


def line(counts: dict[str, Any], of: int, unit: str = "connections") -> str:
    return (
        f"{counts['cookie']} SYN cookie, {counts['ordinary']} ordinary, "
        f"{counts['undecided']} undecided (of {of} {unit})"
    )


def test_recorder_report_with_undecided_connections(tmp_path: Path) -> None:
    """The committed incident with its capture cut to its first 400 packets: no cookie can
    be proven yet, the kernel counted 117. The table and the page say 0 cookie, how many
    ordinary and undecided and why, 117 sent and 117 not attributed."""
    incident = tmp_path / "incident-small"
    shutil.copytree(DATA / "incident-small", incident)
    head(DATA / "incident-small" / "capture.pcap", incident / "capture.pcap", 400)
    expected, _ = verdict_counts(incident / "capture.pcap")
    assert expected["cookie"] == 0 and expected["undecided"] > 0, expected  # the case itself
    shown = run("report", str(incident), "--again")
    assert shown.returncode in (0, 1), shown.stderr
    doc = json.loads((incident / "report.json").read_text())
    section = doc["syn_cookies"]
    sent = doc["counters"]["during"]["TcpExtSyncookiesSent"]
    assert sent == 117
    assert section["sent"] == sent
    assert section["cookie_connections"] == expected["cookie"]
    assert section["ordinary_connections"] == expected["ordinary"]
    assert section["undecided_connections"] == expected["undecided"]
    assert section["connections"] == expected["connections"] == 150
    assert sum(section["undecided_why"].values()) == expected["undecided"]
    assert section["sent_not_in_capture"] == sent - expected["cookie"]
    text = flat(shown.stdout)
    assert f"SYN cookies sent (TcpExtSyncookiesSent) {sent}" in text
    assert f"cookie verdicts in the capture {line(expected, 150)}" in text
    for reason, count in section["undecided_why"].items():
        assert f"{count}: {flat(reason)}" in text, reason
    assert f"cookies the capture did not attribute {sent} (the kernel counted {sent}," in text
    assert not re.search(r"(?<![\d,])0 of 150\b", text) and " of 150 handshakes" not in text
    page_file = tmp_path / "incident.html"
    assert run("report", str(incident), "--html", str(page_file)).returncode in (0, 1)
    page = page_file.read_text()
    assert f"<td>{html.escape(line(expected, 150))}</td>" in page
    for reason, count in section["undecided_why"].items():
        assert html.escape(f"{count}: {reason}") in page, reason
    assert f"{sent} (the kernel counted {sent}, the capture shows 0 cookie connections" in page
    assert not re.search(r"(?<![\d,])0 of 150\b", page)


def test_report_json_from_before_the_ordinary_count(tmp_path: Path) -> None:
    """The committed report.json has no ordinary_connections: the report derives them
    (connections less cookie and undecided), and the analysis anew counts the same."""
    incident = tmp_path / "incident-small"
    shutil.copytree(DATA / "incident-small", incident)
    stored = json.loads((incident / "report.json").read_text())["syn_cookies"]
    assert "ordinary_connections" not in stored
    old = flat(run("report", str(incident)).stdout)
    expected, _ = verdict_counts(incident / "capture.pcap")
    assert expected == {"connections": 150, "cookie": 117, "ordinary": 33, "undecided": 0}
    assert f"cookie verdicts in the capture {line(expected, 150)}" in old
    assert "undecided because" not in old and "did not attribute" not in old  # 117 - 117
    anew = flat(run("report", str(incident), "--again").stdout)
    assert f"cookie verdicts in the capture {line(expected, 150)}" in anew
    section = json.loads((incident / "report.json").read_text())["syn_cookies"]
    assert section["ordinary_connections"] == 33 and section["sent_not_in_capture"] == 0
    assert section["undecided_why"] == {}


def pcap_rows(text: str, counts: dict[str, Any], findings: list[Any]) -> None:
    assert f"cookie verdicts in the capture {line(counts, counts['connections'])}" in text
    for finding in findings:
        ev = finding.evidence
        shown = {
            "cookie": ev["cookie_connections"],
            "ordinary": ev["ordinary_connections"],
            "undecided": ev["undecided_connections"],
        }
        server = finding.subject["listener"]
        assert f"on {server} {line(shown, ev['handshakes'], 'handshakes')}" in text


def test_pcap_table_and_page_show_the_findings_counts(tmp_path: Path) -> None:
    """The storm on the pre-fix kernel: 400 cookies, as the kernel's truth has them."""
    capture = DATA / "storm-prefix" / "server.pcap"
    counts, findings = verdict_counts(capture)
    truth = json.loads((DATA / "storm-prefix" / "truth.json").read_text())
    assert counts["cookie"] == sum(c["cookie"] for c in truth["connections"].values()) == 400
    [finding] = findings
    assert finding.evidence["ordinary_connections"] == counts["ordinary"] == 0
    assert finding.evidence["cookie_connections"] == counts["cookie"]
    shown = run("pcap", str(capture))
    assert shown.returncode == 1, shown.stderr
    pcap_rows(flat(shown.stdout), counts, findings)
    page = tmp_path / "storm.html"
    assert run("pcap", str(capture), "--html", str(page)).returncode == 1
    assert f"<td>{html.escape(line(counts, 400))}</td>" in page.read_text()


def test_pcap_of_a_capture_cut_short_counts_the_undecided(tmp_path: Path) -> None:
    """The incident's capture cut to its first 600 packets: some cookies proven, the rest
    ordinary or undecided; the finding's counts and the capture's add up and are shown."""
    capture = tmp_path / "cut.pcap"
    head(DATA / "incident-small" / "capture.pcap", capture, 600)
    counts, findings = verdict_counts(capture)
    assert counts["cookie"] > 0 and counts["undecided"] > 0, counts  # the case itself
    [finding] = findings
    ev = finding.evidence
    assert (
        ev["cookie_connections"] + ev["ordinary_connections"] + ev["undecided_connections"]
        == ev["handshakes"]
    )
    assert sum(ev["undecided_why"].values()) == ev["undecided_connections"]
    shown = run("pcap", str(capture))
    assert shown.returncode in (0, 1), shown.stderr
    text = flat(shown.stdout)
    pcap_rows(text, counts, findings)
    doc = json.loads(run("pcap", str(capture), "--format", "json", "--all-connections").stdout)
    [listed] = doc["files"]
    why: dict[str, int] = {}
    for connection in listed["connections"]:
        if connection["syn_cookie"]["cookie"] is None:
            reason = connection["syn_cookie"]["reason"]
            why[reason] = why.get(reason, 0) + 1
    assert sum(why.values()) == counts["undecided"]
    for reason, count in why.items():
        assert f"{count}: {flat(reason)}" in text, reason
    assert not re.search(rf"(?<![\d,])0 of {counts['connections']}\b", text)


def test_a_report_json_with_counts_of_another_shape_is_one_line(tmp_path: Path) -> None:
    """The report adds and subtracts the counts: a report.json from elsewhere whose
    undecided reasons are not counted in integers is refused in one line (exit 2)."""
    incident = tmp_path / "incident-small"
    shutil.copytree(DATA / "incident-small", incident)
    doc = json.loads((incident / "report.json").read_text())
    doc["syn_cookies"]["undecided_why"] = {"no SYN-ACK in the capture": "many"}
    (incident / "report.json").write_text(json.dumps(doc))
    shown = run("report", str(incident))
    assert shown.returncode == 2, shown.stderr
    [said] = shown.stderr.strip().splitlines()
    assert "syn_cookies.undecided_why" in said and "expected an integer" in said, said
    assert "internal error" not in said

"""The verdict first (issue 29): at risk or not, of what, on which numbers, and the
actions once each, in the terms of the program that owns the listener; the same in the
JSON's top-level ``verdict``. Checked against the built-in example and the storm
captures' kernel truth (tests/data/*/truth.json)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import REPO

from tcpsleuth.cli import examples
from tcpsleuth.cli.audit import snapshot_from
from tcpsleuth.detectors import heal as heal_detect
from tcpsleuth.detectors.kernel import KernelVerdict
from tcpsleuth.detectors.listeners import ListenerFacts
from tcpsleuth.detectors.verdict import capture_verdict
from tcpsleuth.detectors.verdict_heal import heal_verdict
from tcpsleuth.detectors.verdict_host import host_verdict
from tcpsleuth.model.findings import Finding, Severity, listener_subject
from tcpsleuth.model.heal import DiagSocket, Ended
from tcpsleuth.model.records import Listener
from tcpsleuth.reports.healview import HealResult
from tcpsleuth.usecases.audit import run_audit

ROOT = REPO
DATA = ROOT / "tests" / "data"
EXAMPLE = str(examples.path(examples.DEFAULT))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "tcpsleuth", *args],
        capture_output=True, text=True, check=False, timeout=300, env=env,
    )  # fmt: skip


def truth(name: str) -> dict[str, dict[str, int]]:
    return json.loads((DATA / name / "truth.json").read_text())["connections"]


def test_doctor_example_verdict_in_json() -> None:
    result = run("doctor", "--example", "--format", "json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert list(doc)[:4] == ["tool", "version", "command", "verdict"]
    verdict = doc["verdict"]
    assert verdict["at_risk"] is True
    actions = verdict["actions"]
    assert len(actions) == len(set(actions)) >= 3
    # in Kafka's own terms, each once: the backlog for 800 clients, the unlocked buffer
    assert sum("socket.listen.backlog.size=1024" in a for a in actions) == 1
    assert sum("socket.receive.buffer.bytes=-1" in a for a in actions) == 1
    assert sum("net.ipv4.tcp_syncookies=0" in a for a in actions) == 1
    assert sum("909172a14974" in a for a in actions) == 1
    backlog = next(f for f in doc["findings"] if f["kind"] == "listen-backlog-small")
    cookies = next(f for f in doc["findings"] if f["kind"] == "syn-cookies-sent")
    summary = verdict["summary"]
    assert f"backlog {backlog['evidence']['backlog']} against " in summary
    assert f"{backlog['evidence']['established']} established" in summary
    assert f"{cookies['evidence']['TcpExtSyncookiesSent']} SYN cookies sent" in summary
    assert "lacks the fix" in summary and "SO_RCVBUF=102400" in summary
    listener = verdict["evidence"]["listeners"][0]
    assert (listener["backlog"], listener["established"], listener["so_rcvbuf"]) == (
        50,
        800,
        102400,
    )


def test_doctor_table_starts_with_the_verdict_and_shows_listeners() -> None:
    result = run("doctor", "--example")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("AT RISK:"), lines[:3]
    head = " ".join(" ".join(lines[:12]).split())
    assert "1. Apache Kafka 127.0.0.1:9092: set socket.listen.backlog.size=1024" in head
    assert "Listeners (busiest first)" in result.stdout
    listing = result.stdout[result.stdout.index("Listeners (busiest first)") :]
    assert "127.0.0.1:9092" in listing and "established 800" in " ".join(listing.split())
    assert result.stderr == ""  # no progress when standard error is not a terminal


def test_audit_bundle_shows_the_buffer_its_config_locks() -> None:
    doc = json.loads(run("audit", "--bundle", EXAMPLE, "--format", "json").stdout)
    listener = doc["listeners"][0]
    assert listener["rcvbuf_locked"] == "yes"
    assert "102400" in listener["rcvbuf_locked_why"]
    text = " ".join(run("audit", "--bundle", EXAMPLE).stdout.split())
    assert "rcvbuf SO_RCVBUF=102400 (config) · locked yes" in text
    assert doc["verdict"]["at_risk"] is True


def test_host_verdict_on_a_fixed_kernel_drops_the_bug() -> None:
    snapshot = snapshot_from(None, None, None, examples.DEFAULT)
    audited = run_audit(snapshot, None)
    fixed = dataclasses.replace(audited.verdict, status="fixed", source="probe")
    findings = [f for f in audited.findings if f.kind != "kernel-cookie-wscale-bug"]
    verdict = host_verdict(snapshot, fixed, audited.listeners, findings)
    assert verdict.at_risk  # the backlog still overflows on a restart
    assert "kernel bug" not in verdict.summary and "has the fix (probe)" in verdict.summary
    assert not any("socket.receive.buffer.bytes" in a for a in verdict.actions)
    quiet = [f for f in findings if f.severity == Severity.INFO]
    calm = host_verdict(snapshot, fixed, audited.listeners, quiet)
    assert not calm.at_risk and calm.summary.startswith("Not at risk")


def test_pcap_fixed_kernel_cookies_did_no_harm() -> None:
    result = run("pcap", str(DATA / "storm-fixed" / "server.pcap"), "--format", "json")
    doc = json.loads(result.stdout)
    verdict = doc["verdict"]
    known = truth("storm-fixed")
    agreeing = sum(1 for c in known.values() if c["server_rcv_wscale"] == c["client_snd_wscale"])
    assert verdict["at_risk"] is False
    assert "did no harm to window scaling" in verdict["summary"]
    assert verdict["evidence"]["wscale_agreeing_connections"] == agreeing == 400
    assert verdict["evidence"]["cookie_connections"] == sum(c["cookie"] for c in known.values())
    assert doc["files"][0]["verdict"] == verdict
    assert not any("909172a14974" in a for a in verdict["actions"])


def test_pcap_prefix_kernel_verdict_and_table() -> None:
    path = str(DATA / "storm-prefix" / "server.pcap")
    verdict = json.loads(run("pcap", path, "--format", "json").stdout)["verdict"]
    known = truth("storm-prefix")
    hit = sum(1 for c in known.values() if c["server_rcv_wscale"] != c["client_snd_wscale"])
    assert verdict["at_risk"] is True
    assert verdict["evidence"]["wscale_mismatch_connections"] == hit == 400
    assert verdict["evidence"]["clients_hit"] == {"198.18.0.2": hit}
    assert verdict["evidence"]["client_ids_hit"] == {"producer-0": hit}
    assert "client.ids hit: producer-0 (400)" in " ".join(verdict["summary"].split())
    text = run("pcap", path).stdout
    assert text.splitlines()[0] == path and text.splitlines()[1].startswith("AT RISK")
    rows = " ".join(text.split())
    # every listed connection carries its verdicts: a cookie, shift 1 announced, 7 used
    assert rows.count("SYN cookie yes") == 20
    assert rows.count("shift announced→used 1→7 HIT") == 20


def test_pcap_fixed_table_shows_agreement() -> None:
    rows = " ".join(run("pcap", str(DATA / "storm-fixed" / "server.pcap")).stdout.split())
    assert rows.count("shift announced→used 1→1 ok") == 20 and "HIT" not in rows


def test_capture_verdict_counts_every_client() -> None:
    mismatch = Finding(
        "wscale-mismatch",
        Severity.CRITICAL,
        listener_subject("10.0.0.1:9092"),
        "x",
        {"announced_wscale": 1, "inferred_wscale": 7, "shrink_factor": 64, "connections": 3,
         "clients": {"10.0.0.2": 2, "10.0.0.3": 1}, "client_ids": {"a": 3}},
    )  # fmt: skip
    verdict = capture_verdict([mismatch], 5, 2)
    assert verdict.at_risk and verdict.evidence["clients_hit"] == {"10.0.0.2": 2, "10.0.0.3": 1}
    assert "were scaled by 7: windows 64x too small" in verdict.summary
    assert "did no harm" not in verdict.summary


def test_capture_verdict_says_windows_read_too_large() -> None:
    """A server scaling by less than its SYN-ACK announced: its clients read each
    window larger than it is (they may send past it), not "1x too small"."""
    mismatch = Finding(
        "wscale-mismatch",
        Severity.CRITICAL,
        listener_subject("10.0.0.1:9092"),
        "x",
        {"announced_wscale": 9, "inferred_wscale": 7, "shrink_factor": 0.25, "connections": 3},
    )
    summary = capture_verdict([mismatch], 5, 2).summary
    assert "were scaled by 7: windows 4x too large" in summary
    assert "too small" not in summary


def test_capture_verdict_names_the_undecided_handshakes() -> None:
    """A handshake the capture cannot decide is neither a cookie nor ordinary (#30)."""

    def cookies(undecided: int) -> Finding:
        return Finding(
            "syn-cookies-seen",
            Severity.WARNING,
            listener_subject("10.0.0.1:9092"),
            "x",
            {"cookie_connections": 40, "handshakes": 1500, "undecided_connections": undecided},
        )

    verdict = capture_verdict([cookies(1450)], 1500)
    assert "SYN cookies on 40 of 1500 handshakes (1450 undecided)" in verdict.summary
    assert verdict.evidence["undecided_connections"] == 1450
    decided = capture_verdict([cookies(0)], 1500)
    assert "SYN cookies on 40 of 1500 handshakes" in decided.summary
    assert "undecided" not in decided.summary


def test_report_has_the_verdict(tmp_path: Path) -> None:
    incident = tmp_path / "incident"
    shutil.copytree(DATA / "incident-small", incident)
    doc = json.loads(run("report", str(incident), "--format", "json").stdout)
    stored = json.loads((DATA / "incident-small" / "report.json").read_text())
    verdict = doc["verdict"]
    assert verdict["evidence"]["connections"] == stored["capture"]["connections"]
    assert verdict["evidence"]["cookie_connections"] == stored["syn_cookies"]["cookie_connections"]
    assert verdict["at_risk"] is True
    assert run("report", str(incident)).stdout.startswith("AT RISK:")


def test_pcap_html_verdict_clients_and_captions(tmp_path: Path) -> None:
    page = tmp_path / "storm.html"
    path = str(DATA / "storm-prefix" / "server.pcap")
    assert run("pcap", path, "--html", str(page)).returncode == 1
    text = page.read_text()
    assert "<div class='verdict'><p class='critical'>AT RISK:" in text
    assert "<td>client.id</td><td>producer-0</td><td>400</td>" in text
    captions = text.split("<figcaption>")[1:]
    graphs = [c for c in captions if "Why it matters" in c]
    # the ten hit connections the findings name look alike: drawn once, said so
    assert len(graphs) == 1, len(captions)
    assert "It stands for 10 connections that look alike" in graphs[0]
    assert "announced window scale 1 but the server scales its windows by 7" in graphs[0]


# -- heal: what is hit, how many, what --apply would do or did ----------------------------


AFFECTED = KernelVerdict("5.4.0", "affected", "test")


def _heal(
    kernel: KernelVerdict = AFFECTED,
    sockets: tuple[DiagSocket, ...] = (),
    **changes: Any,
) -> HealResult:
    """A heal result on a listener locked at 204800 bytes whose SYN-ACKs announce shift
    1 while a cookie connection uses 7 (its connections: two with 1, one with 7)."""
    fact = ListenerFacts(
        "0.0.0.0", 9092, [Listener("0.0.0.0", 9092, backlog=50, accept_queue=0, rcvbuf=409600)],
        "kafka", 3, 204800, "yes", "test", shifts=(1, 7), connection_shifts={1: 2, 7: 1},
    )  # fmt: skip
    plans = heal_detect.plan_listeners([fact], kernel)
    hits = heal_detect.hit(list(sockets), plans)
    result = HealResult("this host", 9092, kernel, plans, hits, False)
    return dataclasses.replace(result, **changes)


def _socket(port: int, rcv: int, cookie: int) -> DiagSocket:
    return DiagSocket(
        socket.AF_INET, "10.0.0.1", 9092, "10.0.0.2", port, 0, cookie, "ESTAB", 7, rcv
    )


HIT = (_socket(40001, 1, 1), _socket(40002, 7, 2), _socket(40003, 1, 3))


def test_heal_dry_run_verdict_says_what_is_hit_and_what_apply_would_do() -> None:
    result = _heal(sockets=HIT, per_second=25, netns="kafka1")
    judged = result.judged()
    assert judged.at_risk is True
    head, numbers = judged.summary.split("\n")
    assert head == (
        "AT RISK: 1 of 3 connections on port 9092 are hit by the kernel's cookie "
        "window-scale bug: windows 64x too small; heal --apply would end them."
    )
    assert "Kafka 0.0.0.0:9092: backlog 50, receive buffer locked" in numbers
    assert "1 connections use the bug's shift 7" in numbers
    first = judged.actions[0]
    assert "sudo tcpsleuth heal --port 9092 --netns kafka1 --apply" in first
    assert "at most 25 a second" in first and "comes back with shift 1" in first
    assert sum("socket.receive.buffer.bytes=-1" in a for a in judged.actions) == 1
    assert sum("909172a14974" in a for a in judged.actions) == 1
    assert judged.evidence["hit"] == 1 and judged.evidence["connections"] == 3
    # the JSON: the verdict first, after the tool's own keys
    assert judged.to_dict() == heal_verdict(result.data()).to_dict()


def test_heal_dry_run_verdict_says_apply_would_refuse() -> None:
    why = heal_detect.refusal_by_settings({"net.ipv4.tcp_syncookies": "2"})
    judged = _heal(sockets=HIT, per_second=25, would_refuse=why).judged()
    assert judged.actions[0] == f"Before --apply, take away what it would refuse: {why}."
    assert why is not None and why.startswith("net.ipv4.tcp_syncookies=2 sends")
    assert f"--apply would refuse now: {why}" in judged.summary


def test_heal_apply_verdicts() -> None:
    base = _heal(sockets=HIT, per_second=25, method="destroy", cookies_during=0)
    [(plan, sock)] = base.hit
    ended = [Ended(sock, plan.local, "destroy", "ended", 0.1)]
    back = [{"client": sock.remote, "rcv_wscale": 1}]
    healed = dataclasses.replace(base, applied=True, ended=ended, came_back=back).judged()
    assert healed.at_risk is False
    assert healed.summary.startswith(
        "Healed: 1 of 1 connections hit on port 9092 were ended and came back with the "
        "listener's own shift.\n"
    )
    assert "ended 1 of 1 by destroy (at most 25 a second), 1 came back" in healed.summary
    assert "1 connections used the bug's shift 7" in healed.summary
    assert not any("--apply" in a for a in healed.actions)
    stopped = dataclasses.replace(
        base, applied=True, stopped="1 SYN cookie(s) sent while heal worked", cookies_during=1
    ).judged()
    assert stopped.at_risk is True
    assert stopped.summary.startswith(
        "AT RISK: heal ended 0 of 1 connections hit on port 9092; 1 are not back"
    )
    assert "stopped early: 1 SYN cookie(s) sent" in stopped.summary
    assert stopped.actions[0].startswith("Once no SYN cookie is sent any more, run sudo")
    # its client closed it before heal came to it: no longer hit, nothing left at risk
    gone = [Ended(sock, plan.local, "destroy", "gone", 0.1, "closed before heal came to it")]
    closed = dataclasses.replace(base, applied=True, ended=gone).judged()
    assert closed.at_risk is False and closed.evidence["gone"] == 1
    assert closed.summary.startswith(
        "Healed: 0 of 1 connections hit on port 9092 were ended and came back with the "
        "listener's own shift; 1 closed by their clients first.\n"
    ), closed.summary
    assert "1 closed by their clients before heal came to them" in closed.summary
    missing = Ended(sock, plan.local, "destroy", "ended", 0.1)
    lost = dataclasses.replace(base, applied=True, ended=ended, not_back=[missing]).judged()
    assert lost.at_risk is True
    assert lost.actions[0].startswith("Look at the 1 clients listed as not back")
    refused = dataclasses.replace(base, applied=True, refused="still overflowing").judged()
    assert refused.at_risk is True
    assert refused.summary.startswith(
        "AT RISK: heal refused; the 1 connections hit on port 9092 keep windows 64x too small."
    )
    assert refused.actions[0].startswith("Take away the reason heal refused (still overflowing)")


def test_heal_verdict_with_nothing_hit() -> None:
    exposed = _heal(sockets=HIT[:1]).judged()
    assert exposed.at_risk is False
    assert exposed.summary.startswith("Nothing to heal now: no connection on port 9092 uses")
    assert sum("909172a14974" in a for a in exposed.actions) == 1
    fixed = _heal(KernelVerdict("6.1.0", "fixed", "test"), sockets=HIT).judged()
    assert fixed.at_risk is False and fixed.actions == ()
    assert fixed.summary.startswith("Not at risk: nothing to heal on port 9092.\n")
    assert "has the fix" in fixed.summary and fixed.evidence["hit"] == 0

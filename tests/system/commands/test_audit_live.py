"""`tcpsleuth audit` on this host and inside namespaces made by the test."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import Farm, nstat_in, run_tcpsleuth

from tcpsleuth.lab import namespaces
from tcpsleuth.sources.procfs import AUDIT_SYSCTLS


def _audit(*args: str) -> tuple[int, dict]:
    result = run_tcpsleuth("audit", "--format", "json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_audit_reports_this_hosts_kernel_and_sysctls() -> None:
    status, doc = _audit()
    assert doc["host"]["kernel_release"] == Path("/proc/sys/kernel/osrelease").read_text().strip()
    assert doc["host"]["kernel_release"] == os.uname().release
    for name in AUDIT_SYSCTLS:
        proc = Path("/proc/sys") / name.replace(".", "/")
        if proc.exists():
            assert doc["sysctls"][name] == " ".join(proc.read_text().split()), name
    # and `sysctl -n`, the standard tool, reads the same values
    trusted = subprocess.run(
        ["sysctl", "-n", "net.ipv4.tcp_syncookies", "net.core.somaxconn"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [
        doc["sysctls"]["net.ipv4.tcp_syncookies"],
        doc["sysctls"]["net.core.somaxconn"],
    ] == trusted
    worst = {f["severity"] for f in doc["findings"]}
    assert status == (1 if worst & {"critical", "warning"} else 0)


def _ss_established(ns: str, port: int) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    )
    return len(out.stdout.splitlines())


def _ss_backlog(ns: str, port: int) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-Hltn", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[2])


def _ss_rcvbuf(ns: str, port: int) -> int:
    """The listener's receive buffer as `ss -ltm` prints it (skmem rb)."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-Hltm", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split("skmem:(")[1].split(",")[1].removeprefix("rb"))


def test_small_backlog_against_established_connections(netns: str) -> None:
    namespaces.sysctl(netns, "net.core.somaxconn", 4096)
    farm = Farm(netns, "--port", "9092", "--backlog", "50", "--clients", "1000")
    try:
        status, doc = _audit("--netns", netns)
        established = _ss_established(netns, 9092)
        backlog = _ss_backlog(netns, 9092)
        rcvbuf = _ss_rcvbuf(netns, 9092)
    finally:
        farm.stop()
    assert farm.connected == established == 1000
    assert doc["sysctls"]["net.core.somaxconn"] == "4096"
    small = [f for f in doc["findings"] if f["kind"] == "listen-backlog-small"]
    assert len(small) == 1
    finding = small[0]
    assert finding["subject"] == {"listener": "127.0.0.1:9092"}
    assert finding["evidence"]["backlog"] == backlog == 50
    assert finding["evidence"]["established"] == established
    assert finding["severity"] == "critical"  # 1000 >= 10 x 50
    assert status == 1
    [listener] = [x for x in doc["listeners"] if x["listener"] == "127.0.0.1:9092"]
    assert {k: listener[k] for k in ("backlog", "accept_queue", "established", "sockets")} == {
        "backlog": backlog,
        "accept_queue": 0,
        "established": established,
        "sockets": 1,
    }
    # the farm's process (`ip netns exec` execs it), and its buffer as `ss -ltm` shows it
    assert listener["processes"] == [{"comm": "python3", "pid": farm.process.pid}]
    assert listener["rcvbuf"] == rcvbuf == listener["rcvbuf_unlocked"]


def test_big_backlog_gives_no_backlog_finding(netns: str) -> None:
    namespaces.sysctl(netns, "net.core.somaxconn", 4096)
    farm = Farm(netns, "--port", "9092", "--backlog", "4096", "--clients", "1000")
    try:
        _, doc = _audit("--netns", netns)
        backlog = _ss_backlog(netns, 9092)
    finally:
        farm.stop()
    assert backlog == 4096
    assert [f for f in doc["findings"] if f["kind"] == "listen-backlog-small"] == []
    listener = [x for x in doc["listeners"] if x["listener"] == "127.0.0.1:9092"]
    assert listener[0]["backlog"] == 4096 and listener[0]["established"] == 1000


def test_somaxconn_caps_the_backlog(netns: str) -> None:
    namespaces.sysctl(netns, "net.core.somaxconn", 64)
    farm = Farm(netns, "--port", "9092", "--backlog", "4096", "--clients", "200")
    try:
        _, doc = _audit("--netns", netns)
    finally:
        farm.stop()
    small = [f for f in doc["findings"] if f["kind"] == "listen-backlog-small"]
    assert [f["evidence"]["backlog"] for f in small] == [64]
    assert small[0]["severity"] == "warning"  # 200 < 10 x 64
    assert "somaxconn" in small[0]["advice"]


def test_counters_after_a_reconnect_storm(netns: str) -> None:
    """A storm on a backlog-50 listener: the audit's counters equal nstat's, and it says so."""
    namespaces.sysctl(netns, "net.ipv4.tcp_syncookies", 1)
    farm = Farm(netns, "--port", "9092", "--backlog", "50", "--clients", "1500", "--storm")
    try:
        _, doc = _audit("--netns", netns)
        trusted = nstat_in(netns)
    finally:
        farm.stop()
    for name, value in doc["counters"].items():
        assert value == trusted[name], name
    assert doc["counters"]["TcpExtSyncookiesSent"] > 0
    kinds = {f["kind"] for f in doc["findings"]}
    assert {"syn-cookies-sent", "listen-overflows"} <= kinds
    sent = next(f for f in doc["findings"] if f["kind"] == "syn-cookies-sent")
    assert sent["evidence"]["TcpExtSyncookiesSent"] == trusted["TcpExtSyncookiesSent"]


def test_netns_needs_an_existing_namespace() -> None:
    result = run_tcpsleuth("audit", "--netns", "tcpsleuth-does-not-exist")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "tcpsleuth-does-not-exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_syn_backlog_caps_the_queue_when_cookies_are_off(netns: str) -> None:
    """With tcp_syncookies=0 a big listen backlog is not enough: the kernel drops SYNs of
    unproven peers once tcp_max_syn_backlog is three quarters full."""
    namespaces.sysctl(netns, "net.core.somaxconn", 4096)
    namespaces.sysctl(netns, "net.ipv4.tcp_syncookies", 0)
    namespaces.sysctl(netns, "net.ipv4.tcp_max_syn_backlog", 128)
    farm = Farm(netns, "--port", "9092", "--backlog", "4096", "--clients", "300")
    try:
        _, doc = _audit("--netns", netns)
    finally:
        farm.stop()
    [small] = [f for f in doc["findings"] if f["kind"] == "listen-backlog-small"]
    assert small["evidence"]["backlog"] == 4096
    assert small["evidence"]["syn_queue_limit"] == 128 - 128 // 4
    assert small["evidence"]["queue_limit"] == 96
    assert "tcp_max_syn_backlog" in small["advice"]
    assert any(f["kind"] == "syncookies-disabled" for f in doc["findings"])

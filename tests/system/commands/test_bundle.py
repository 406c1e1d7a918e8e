"""Bundles: real tool output from other hosts, analysed exactly as a live host is."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, Farm, run_tcpsleuth

from tcpsleuth.lab import namespaces

STORM = FIXTURES / "bundles" / "debian12-6.18-storm"
KAFKA_STOCK = FIXTURES / "kafka" / "server.properties"


def _audit_bundle(bundle: Path, *args: str) -> tuple[int, dict]:
    result = run_tcpsleuth("audit", "--bundle", str(bundle), "--format", "json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _kinds(doc: dict) -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for finding in doc["findings"]:
        by_kind.setdefault(finding["kind"], []).append(finding)
    return by_kind


def _counter_pairs(path: Path) -> dict[str, int]:
    """An independent reading of /proc/net/netstat: zip each header with its values."""
    lines = path.read_text().splitlines()
    out = {}
    for head, values in zip(lines[::2], lines[1::2], strict=True):
        group = head.split(":")[0]
        for name, value in zip(head.split()[1:], values.split()[1:], strict=True):
            out[group + name] = int(value)
    return out


def _used_shift(tcp_rmem_max: int) -> int:
    """Shift a socket with an unlocked buffer scales by: enough to fit tcp_rmem[2] in 16 bits."""
    return max(0, math.ceil(math.log2(tcp_rmem_max / 65535)))


def _sysctl(bundle: Path, name: str) -> str:
    for line in (bundle / "sysctl-a.txt").read_text().splitlines():
        key, _, value = line.partition(" = ")
        if key == name:
            return value
    raise KeyError(name)


def test_storm_bundle_is_read_like_a_host() -> None:
    status, doc = _audit_bundle(STORM)
    kinds = _kinds(doc)
    # what the standard tools' files say, read independently of tcpsleuth's parsers
    ltn = [line.split() for line in (STORM / "ss-ltn.txt").read_text().splitlines()[1:]]
    backlog = int(next(row[2] for row in ltn if row[3].endswith(":9092")))
    established = sum(
        1
        for line in (STORM / "ss-tni.txt").read_text().splitlines()
        if line.startswith("ESTAB") and line.split()[3].endswith(":9092")
    )
    counters = _counter_pairs(STORM / "proc-net-netstat.txt")
    assert doc["host"]["kernel_release"] == (STORM / "uname-r.txt").read_text().strip()
    assert doc["kernel"]["status"] == "fixed"
    assert "kernel-cookie-wscale-bug" not in kinds
    [small] = kinds["listen-backlog-small"]
    assert small["evidence"]["backlog"] == backlog
    assert small["evidence"]["established"] == established
    assert small["severity"] == ("critical" if established >= 10 * backlog else "warning")
    assert doc["counters"]["TcpExtSyncookiesSent"] == counters["TcpExtSyncookiesSent"] > 0
    assert (
        kinds["syn-cookies-sent"][0]["evidence"]["TcpExtSyncookiesSent"]
        == counters["TcpExtSyncookiesSent"]
    )
    assert (
        kinds["listen-overflows"][0]["evidence"]["TcpExtListenOverflows"]
        == counters["TcpExtListenOverflows"]
    )
    assert status == 1


def _hand_bundle(tmp_path: Path, release: str, keep_ss: bool) -> Path:
    """A bundle as an operator makes it by hand: this host's real tool output, an old
    kernel's `uname -r`, and the broker's stock server.properties."""
    bundle = tmp_path / "bundle"
    shutil.copytree(STORM, bundle)
    (bundle / "uname-r.txt").write_text(release + "\n")
    (bundle / "proc-version.txt").unlink()
    if not keep_ss:
        (bundle / "ss-ltn.txt").unlink()
        (bundle / "ss-tni.txt").unlink()
    shutil.copy(KAFKA_STOCK, bundle / "server.properties")
    return bundle


def test_old_kernel_bundle_has_the_cookie_bug(tmp_path: Path) -> None:
    bundle = _hand_bundle(tmp_path, "3.10.0-1160.el7.x86_64", keep_ss=False)
    assert _sysctl(bundle, "net.ipv4.tcp_syncookies") == "1"
    assert _sysctl(bundle, "net.ipv4.tcp_timestamps") == "1"
    assert "socket.listen.backlog.size" not in KAFKA_STOCK.read_text()
    status, doc = _audit_bundle(bundle)
    kinds = _kinds(doc)
    [bug] = kinds["kernel-cookie-wscale-bug"]
    assert bug["severity"] == "critical"
    assert bug["evidence"]["so_rcvbuf"] == 102400
    assert bug["evidence"]["announced_wscale"] == 1  # 102400-byte locked buffer
    rmem_max = int(_sysctl(bundle, "net.ipv4.tcp_rmem").split()[2])
    assert bug["evidence"]["actual_wscale"] == _used_shift(rmem_max)
    assert bug["evidence"]["window_shrink_factor"] == 2 ** (_used_shift(rmem_max) - 1)
    [backlog] = kinds["kafka-listen-backlog-small"]
    assert backlog["evidence"]["effective_backlog"] == 50
    assert backlog["evidence"]["socket_listen_backlog_size"] is None
    assert doc["findings"][0]["severity"] == "critical"  # worst first
    assert status == 1


def test_old_kernel_bundle_with_sockets_reports_the_live_listener(tmp_path: Path) -> None:
    bundle = _hand_bundle(tmp_path, "3.10.0-1160.el7.x86_64", keep_ss=True)
    _, doc = _audit_bundle(bundle)
    kinds = _kinds(doc)
    assert kinds["kernel-cookie-wscale-bug"][0]["severity"] == "critical"
    assert kinds["listen-backlog-small"][0]["evidence"]["backlog"] == 50
    assert "kafka-listen-backlog-small" not in kinds  # the live listener is the better evidence


@pytest.mark.parametrize("release", ["6.1.0-26-amd64", "5.10.0-8-amd64", "4.19.158"])
def test_fixed_kernel_bundle_has_no_bug_finding(tmp_path: Path, release: str) -> None:
    _, doc = _audit_bundle(_hand_bundle(tmp_path, release, keep_ss=False))
    assert doc["kernel"]["status"] == "fixed"
    assert not {"kernel-cookie-wscale-bug", "kernel-cookie-wscale-unknown"} & set(_kinds(doc))
    assert "kafka-listen-backlog-small" in _kinds(doc)


def test_unknown_kernel_says_so(tmp_path: Path) -> None:
    _, doc = _audit_bundle(_hand_bundle(tmp_path, "5.4.0-42-generic", keep_ss=False))
    assert doc["kernel"]["status"] == "unknown"
    [unknown] = _kinds(doc)["kernel-cookie-wscale-unknown"]
    assert unknown["severity"] == "warning"
    assert "experiment" in unknown["advice"]


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def _cut_inside(text: str, marker: str) -> str:
    """The text cut in the middle of the last line containing ``marker``."""
    at = text.rindex(marker)
    return text[: at + len(marker) // 2]


BROKEN = {
    "uname-r.txt": [b"", b"hello world\n", b"\x7fELF\x02\x01\x01\x00\x00"],
    "sysctl-a.txt": [
        lambda t: _cut_inside(t, "net.ipv4.tcp_window_scaling"),
        b"\x00\x01garbage",
        "this is not sysctl output\n",
    ],
    "proc-net-netstat.txt": [
        lambda t: t[: t.rindex("\n", 0, len(t) - 1) + 40],
        "TcpExt: a b c\nTcpExt: 1 2\n",
        b"\xff\xfe\xfd",
    ],
    "proc-net-snmp.txt": [lambda t: t[: len(t) // 2], "Ip: 1 2 3\n"],
    "ss-ltn.txt": [
        "State Recv-Q Send-Q Local Address:Port Peer Address:Port\nLISTEN 0 x y z\n",
        lambda t: _cut_inside(t, "127.0.0.1:9092"),
    ],
    "ss-tni.txt": [
        lambda t: _cut_inside(t, "127.0.0.1:9092"),
        "ESTAB 0 0 not-an-address peer\n",
        b"\x00" * 64,
    ],
}


@pytest.mark.parametrize(
    ("name", "damage"), [(name, damage) for name, damages in BROKEN.items() for damage in damages]
)
def test_broken_bundle_file_is_one_clear_line(tmp_path: Path, name: str, damage) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(STORM, bundle)
    if callable(damage):
        (bundle / name).write_text(damage((bundle / name).read_text()))
    elif isinstance(damage, bytes):
        (bundle / name).write_bytes(damage)
    else:
        (bundle / name).write_text(damage)
    before = _digest(bundle)
    result = run_tcpsleuth("audit", "--bundle", str(bundle))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert name in result.stderr
    assert result.stdout == ""
    assert _digest(bundle) == before  # nothing the user gave is modified


def test_missing_bundle_pieces(tmp_path: Path) -> None:
    result = run_tcpsleuth("audit", "--bundle", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "not a directory" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run_tcpsleuth("audit", "--bundle", str(tmp_path / "empty"))
    assert result.returncode == 2 and "uname-r.txt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_collect_refuses_a_directory_with_files(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = run_tcpsleuth("collect", str(tmp_path))
    assert result.returncode == 2 and "not an empty directory" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_collect_then_audit_equals_live_audit(netns: str, tmp_path: Path) -> None:
    namespaces.sysctl(netns, "net.core.somaxconn", 1024)
    farm = Farm(netns, "--port", "9092", "--backlog", "50", "--clients", "400")
    try:
        live = run_tcpsleuth(
            "audit", "--netns", netns, "--kafka-config", str(KAFKA_STOCK), "--format", "json"
        )
        collected = run_tcpsleuth(
            "collect",
            str(tmp_path / "b"),
            "--netns",
            netns,
            "--kafka-config",
            str(KAFKA_STOCK),
            "--format",
            "json",
        )
    finally:
        farm.stop()
    assert collected.returncode == 0, collected.stderr
    written = json.loads(collected.stdout)["files"]
    assert {
        "uname-r.txt",
        "sysctl-a.txt",
        "proc-net-netstat.txt",
        "ss-ltn.txt",
        "ss-ltnmp.txt",
        "ss-tni.txt",
        "server.properties",
    } <= set(written)
    from_bundle = run_tcpsleuth("audit", "--bundle", str(tmp_path / "b"), "--format", "json")
    # the broker's file is named where each audit read it: the one given, the bundle's copy
    live_doc = json.loads(live.stdout.replace(str(KAFKA_STOCK), "server.properties"))
    bundle_doc = json.loads(
        from_bundle.stdout.replace(str(tmp_path / "b" / "server.properties"), "server.properties")
    )
    assert live.returncode == from_bundle.returncode == 1
    # the farm's listener, its buffer and its process, as the kernel and `ss -ltnmp` say
    [farm_listener] = [x for x in live_doc["listeners"] if x["listener"] == "127.0.0.1:9092"]
    # `ip netns exec` execs the farm: its pid is the farm's
    assert farm_listener["processes"] == [{"comm": "python3", "pid": farm.process.pid}]
    assert farm_listener["rcvbuf"] == farm_listener["rcvbuf_unlocked"]
    assert farm_listener["rcvbuf_locked"] == "no"  # its 400 connections' shift says so
    assert bundle_doc["findings"] == live_doc["findings"]
    assert bundle_doc["listeners"] == live_doc["listeners"]
    assert bundle_doc["sysctls"] == live_doc["sysctls"]
    assert bundle_doc["host"] == live_doc["host"]


OLD = FIXTURES / "bundles" / "centos7.7-old-formats"


def test_old_host_bundle_with_old_formats() -> None:
    """`uname -a`, TAB-separated `sysctl -a` of a 3.10 kernel, `ss -a` of CentOS 7's
    iproute (Netid column, service names, every family) and an old /proc/net/netstat."""
    status, doc = _audit_bundle(OLD)
    uname = (OLD / "uname-a.txt").read_text().split()
    assert doc["host"] == {"hostname": uname[1], "kernel_release": uname[2]}
    assert doc["kernel"]["status"] == "unknown"  # a RHEL 7.7 z-stream build
    sysctl = {
        k.strip(): v
        for k, _, v in (
            line.partition("=") for line in (OLD / "sysctl-a.txt").read_text().splitlines()
        )
    }
    assert doc["sysctls"]["net.core.somaxconn"] == sysctl["net.core.somaxconn"].strip() == "128"
    assert doc["sysctls"]["net.ipv4.tcp_rmem"].split() == sysctl["net.ipv4.tcp_rmem"].split()
    # the listeners and backlogs `ss -a` printed for TCP, with service names resolved
    rows = [
        line.split()
        for line in (OLD / "ss-a.txt").read_text().splitlines()
        if line.startswith("tcp ")
    ]
    listening = [r for r in rows if r[1] == "LISTEN"]
    assert sorted(x["backlog"] for x in doc["listeners"]) == sorted(int(r[3]) for r in listening)
    assert {x["listener"] for x in doc["listeners"]} >= {"0.0.0.0:22", "[::]:22"}
    counters = _counter_pairs(OLD / "proc-net-netstat.txt")
    assert doc["counters"]["TcpExtSyncookiesFailed"] == counters["TcpExtSyncookiesFailed"]
    assert "TcpExtTCPFastOpenActive" not in counters  # the old layout really is old
    [unknown] = _kinds(doc)["kernel-cookie-wscale-unknown"]
    # CentOS 7 defaults: tcp_rmem[2] 6291456 and rmem_max 212992 give the talk's 1 and 7
    assert (unknown["evidence"]["announced_wscale"], unknown["evidence"]["actual_wscale"]) == (1, 7)
    assert status == 1


@pytest.mark.parametrize(
    "path", sorted((FIXTURES / "proc").glob("proc-net-[ns]*.txt")), ids=lambda p: p.name
)
def test_counter_files_of_other_kernels(path: Path) -> None:
    from tcpsleuth.sources.procfs import read_counter_file

    counters = read_counter_file(path)
    assert counters == _counter_pairs(path)
    lines = path.read_text().splitlines()
    assert len(counters) == sum(len(line.split()) - 1 for line in lines[::2])

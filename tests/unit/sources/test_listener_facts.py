"""Listener facts from `ss -ltnmp` text of today's iproute2 and of the 3.10 era
(tests/fixtures/ss/PROVENANCE.md), and the audit's findings from them: the same
listeners, buffers, processes and findings from either."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import FIXTURES, run_tcpsleuth

from tcpsleuth.sources.sstext import read_ss_file

MODERN = FIXTURES / "ss" / "iproute2-6.1-ltnmp-servers.txt"
OLD = FIXTURES / "ss" / "iproute2-3.10-ltnmp-transformed.txt"
STORM = FIXTURES / "bundles" / "debian12-6.18-storm"


def _listeners(path: Path) -> set[tuple[str, int, int, int | None, tuple]]:
    table = read_ss_file(path, default_state="LISTEN")
    return {
        (
            x.local_ip,
            x.local_port,
            x.backlog,
            x.rcvbuf,
            tuple((o.comm, o.pid, o.fd) for o in x.owners),
        )
        for x in table.listeners
    }


def _ss_columns(path: Path) -> set[tuple[int, int, int]]:
    """(port, Send-Q, rb) read with the plainest split, independent of the parser."""
    lines = path.read_text().splitlines()
    out = set()
    for head, detail in zip(lines[1::2], lines[2::2], strict=True):
        fields = head.split()
        rb = int(detail.split("rb")[1].split(",")[0])
        out.add((int(fields[3].rsplit(":", 1)[1]), int(fields[2]), rb))
    return out


def test_both_eras_give_the_same_listeners() -> None:
    modern, old = _listeners(MODERN), _listeners(OLD)
    assert modern == old
    assert {(port, backlog, rcvbuf) for _, port, backlog, rcvbuf, _ in modern} == _ss_columns(
        MODERN
    )
    by_port = {(ip, port): owners for ip, port, _, _, owners in modern}
    assert ("::ffff:7f00:1", 2181) in by_port  # the Java listener, ::ffff:127.0.0.1
    assert [o[0] for o in by_port[("::ffff:7f00:1", 2181)]] == ["java"]
    assert {o[0] for o in by_port[("127.0.0.1", 8080)]} == {"nginx"}
    assert len(by_port[("127.0.0.1", 8080)]) == 2  # master and worker
    # `*:9092` is the dual-stack IPv6 wildcard today; 3.10 wrote it `:::9092`
    assert ("::", 9092) in by_port and ("0.0.0.0", 80) in by_port and ("::", 80) in by_port


def _bundle(tmp_path: Path, ss_file: Path, release: str) -> Path:
    bundle = tmp_path / ss_file.stem
    shutil.copytree(STORM, bundle)
    (bundle / "ss-ltn.txt").unlink()
    (bundle / "ss-tni.txt").unlink()
    shutil.copy(ss_file, bundle / "ss-ltnmp.txt")
    (bundle / "uname-r.txt").write_text(release + "\n")
    (bundle / "proc-version.txt").unlink()
    return bundle


def test_old_host_bundle_gives_the_same_listener_findings(tmp_path: Path) -> None:
    """A RHEL 7.9 GA kernel (without the fix): the listeners whose buffer differs from
    tcp_rmem[1] (131072 in the bundle) are flagged, with the program and the shifts."""
    docs = []
    for ss_file in (MODERN, OLD):
        result = run_tcpsleuth(
            "audit",
            "--bundle",
            str(_bundle(tmp_path, ss_file, "3.10.0-1160.el7.x86_64")),
            "--format",
            "json",
        )
        assert result.returncode == 1, result.stderr
        docs.append(json.loads(result.stdout))
    modern, old = docs
    assert modern["listeners"] == old["listeners"]
    assert modern["findings"] == old["findings"]
    locked = {
        f["subject"]["listener"]: f
        for f in modern["findings"]
        if f["kind"] == "listener-rcvbuf-locked"
    }
    assert set(locked) == {"127.0.0.1:8080", "[::]:9092"}
    nginx = locked["127.0.0.1:8080"]
    assert nginx["severity"] == "critical"
    assert nginx["evidence"]["program"] == "nginx" and nginx["evidence"]["rcvbuf"] == 196608
    assert "rcvbuf=" in nginx["advice"]
    # rb 196608: window space 98304 -> shift 1; tcp_rmem[2] 6291456 -> shift 7 (here 33554432: 9)
    assert nginx["evidence"]["announced_wscale"] == 1
    assert nginx["evidence"]["actual_wscale"] > 1
    states = {x["listener"]: x["rcvbuf_locked"] for x in modern["listeners"]}
    assert states == {
        "127.0.0.1:8080": "yes",
        "[::]:9092": "yes",
        "0.0.0.0:80": "undetermined",
        "[::]:80": "undetermined",
        "127.0.0.1:2181": "undetermined",
    }
    programs = {x["listener"]: x["program"] for x in modern["listeners"]}
    assert programs["127.0.0.1:2181"] == "java" and programs["0.0.0.0:80"] == "nginx"
    [bug] = [f for f in modern["findings"] if f["kind"] == "kernel-cookie-wscale-bug"]
    assert bug["severity"] == "critical"
    assert bug["evidence"]["locked_listeners"] == ["127.0.0.1:8080", "[::]:9092"]

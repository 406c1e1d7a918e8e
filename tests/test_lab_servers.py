"""Real servers besides Kafka in lab namespaces (tcpsleuth.lab.nginx: Debian's nginx
with its own configuration), audited with no configuration file given: the audit
names each listener's program, backlog and receive buffer, and flags exactly the
listeners whose buffer `ss -ltm` shows locked."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import needs_root, run_tcpsleuth

from tcpsleuth.lab.nginx import Listen, NginxServer
from tcpsleuth.lab.zookeeper import ZooKeeperServer

pytestmark = [
    needs_root,
    pytest.mark.skipif(
        shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
        reason="nginx not installed (scripts/install.sh)",
    ),
]


def _ss_listeners(ns: str) -> dict[int, tuple[int, int]]:
    """port -> (Send-Q, rb), from `ss -Hltnm` with the plainest split."""
    lines = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-Hltnm"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    out = {}
    for head, detail in zip(lines[::2], lines[1::2], strict=True):
        fields = head.split()
        rb = int(detail.split("rb")[1].split(",")[0])
        out[int(fields[3].rsplit(":", 1)[1])] = (int(fields[2]), rb)
    return out


def _tcp_rmem_default(ns: str) -> int:
    text = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/tcp_rmem"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(text.split()[1])


def test_audit_flags_exactly_the_locked_listeners(netns: str, tmp_path: Path) -> None:
    listens = [
        Listen("127.0.0.1", 8080, rcvbuf=98304),  # locked: rb 196608
        Listen("127.0.0.1", 8081),  # nginx's defaults: backlog 511, no rcvbuf=
        Listen("::1", 8082, backlog=64, rcvbuf=8192),  # locked small: rb 16384
        Listen("127.0.0.1", 8083, rcvbuf=65536),  # locked at tcp_rmem[1] / 2: rb 131072
    ]
    zookeeper = ZooKeeperServer(netns, "127.0.0.1", 2181, workdir=tmp_path / "zookeeper")
    with NginxServer(netns, listens, tmp_path / "nginx") as server, zookeeper:
        result = run_tcpsleuth("audit", "--netns", netns, "--format", "json")
        ss = _ss_listeners(netns)
        master = server.pid
        zookeeper_pid = zookeeper.pid
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    unlocked = _tcp_rmem_default(netns)
    assert unlocked == 131072  # the namespace's default; 8083 is set to look the same
    listeners = {int(x["listener"].rsplit(":", 1)[1]): x for x in doc["listeners"]}
    assert set(listeners) == set(ss) == {8080, 8081, 8082, 8083, 2181}
    # ZooKeeper from Maven Central: a JVM (an IPv6 socket bound to ::ffff:127.0.0.1),
    # backlog 50 without clientPortListenBacklog, no buffer set; its zoo.cfg found from
    # its command line says it sets none
    zk = listeners.pop(2181)
    assert zk["listener"] == "127.0.0.1:2181" and zk["program"] == "zookeeper"
    assert zk["processes"] == [{"comm": "java", "pid": zookeeper_pid}]
    assert zk["backlog"] == ss[2181][0] == 50
    assert zk["rcvbuf"] == ss.pop(2181)[1] == zk["rcvbuf_unlocked"]
    assert zk["rcvbuf_locked"] == "no"
    assert zk["config"]["where"].startswith(str(tmp_path / "zookeeper" / "zoo.cfg"))
    for port, (backlog, rb) in ss.items():
        assert listeners[port]["backlog"] == backlog, port
        assert listeners[port]["rcvbuf"] == rb, port
        assert listeners[port]["rcvbuf_unlocked"] == unlocked
        assert listeners[port]["program"] == "nginx"
        pids = {p["pid"] for p in listeners[port]["processes"]}
        assert master in pids and len(pids) == 2  # master and its one worker
    assert (ss[8081][0], ss[8082][0]) == (511, 64)
    # exactly the listeners whose buffer ss shows other than tcp_rmem[1] are locked by the
    # kernel's numbers; nginx's own file (found from the master's command line) settles
    # the two whose buffer equals it: 8083 sets rcvbuf=65536, 8081 none
    by_kernel = {port for port, (_, rb) in ss.items() if rb != unlocked}
    assert by_kernel == {8080, 8082}
    states = {port: x["rcvbuf_locked"] for port, x in listeners.items()}
    assert states == {8080: "yes", 8081: "no", 8082: "yes", 8083: "yes"}
    config = str(tmp_path / "nginx" / "nginx.conf")
    assert listeners[8083]["config"]["where"].startswith(config + ":")
    assert "rcvbuf=65536" in listeners[8083]["config"]["text"]
    flagged = {
        int(f["subject"]["listener"].rsplit(":", 1)[1]): f
        for f in doc["findings"]
        if f["kind"] == "listener-rcvbuf-locked"
    }
    assert set(flagged) == {8080, 8082, 8083}  # and not ZooKeeper
    # this host's kernel has the fix: noted, not a warning
    assert {f["severity"] for f in flagged.values()} == {"info"}
    assert flagged[8082]["evidence"]["so_rcvbuf"] == 8192
    assert "rcvbuf=" in flagged[8080]["advice"]

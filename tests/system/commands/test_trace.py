"""`tcpsleuth trace` against real kernels: two namespaces, real traffic, the fault or not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import SUPPORT, run_tcpsleuth
from support import ss_text

from tcpsleuth.lab import faults, namespaces, topology
from tcpsleuth.sources.procfs import local_ports_of_pid

PORT = 9092


def _ss_wscale(ns: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(local, peer) -> (snd_wscale, rcv_wscale) as `ss -tni` prints them."""
    return ss_text.shifts(
        subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-tni"], capture_output=True, text=True, check=True
        ).stdout
    )


@pytest.fixture
def traffic(request: pytest.FixtureRequest) -> Iterator[tuple[topology.Pair, dict]]:
    """Two namespaces, a sink on the server, two senders for 8 s; the fault if asked."""
    with topology.server_client_pair("trace") as pair:
        # the incident's numbers: tcp_rmem max 6291456 makes the server's shift 7
        namespaces.sysctl(pair.server, "net.ipv4.tcp_rmem", "4096 131072 6291456")
        if request.param == "fault":
            faults.announce_wscale(pair.server, PORT, 1)
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pair.server,
                sys.executable,
                str(SUPPORT / "bulk.py"),
                "serve",
                pair.server_ip4,
                str(PORT),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        client = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pair.client,
                sys.executable,
                str(SUPPORT / "bulk.py"),
                "send",
                pair.server_ip4,
                str(PORT),
                "12",
                "2",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        # the shifts are fixed at the handshake: read them now, while the senders run
        client_shifts, server_shifts = _ss_wscale(pair.client), _ss_wscale(pair.server)
        result = run_tcpsleuth(
            "trace",
            "--netns",
            pair.server,
            "--netns",
            pair.client,
            "--port",
            str(PORT),
            "--duration",
            "4",
            "--format",
            "json",
        )
        assert result.returncode in (0, 1), result.stderr
        seen = {
            "client": client_shifts,
            "server": server_shifts,
            "doc": json.loads(result.stdout),
            "status": result.returncode,
            "server_pid": server.pid,
        }
        yield pair, seen
        client.wait(timeout=30)
        server.kill()


def _by_side(doc: dict, pair: topology.Pair) -> tuple[list[dict], list[dict]]:
    conns = doc["connections"]
    clients = [c for c in conns if c["local"].startswith(pair.client_ip4)]
    servers = [c for c in conns if c["local"].startswith(pair.server_ip4 + ":")]
    return clients, servers


@pytest.mark.parametrize("traffic", ["fault"], indirect=True)
def test_trace_sees_the_announced_and_the_used_shift(traffic) -> None:
    pair, seen = traffic
    doc = seen["doc"]
    clients, servers = _by_side(doc, pair)
    assert len(clients) == len(servers) == 2
    for conn in clients:
        # the same numbers `ss -tni` shows at the client: wscale:<snd>,<rcv>
        assert (conn["snd_wscale"], conn["rcv_wscale"]) == seen["client"][
            (conn["local"], conn["remote"])
        ]
        assert conn["snd_wscale"] == 1
    for conn in servers:
        assert (conn["snd_wscale"], conn["rcv_wscale"]) == seen["server"][
            (conn["local"], conn["remote"])
        ]
        assert conn["rcv_wscale"] == 7
    mismatches = [f for f in doc["findings"] if f["kind"] == "wscale-mismatch"]
    assert sorted(f["subject"]["client"] for f in mismatches) == sorted(c["local"] for c in clients)
    for finding in mismatches:
        evidence = finding["evidence"]
        assert (evidence["announced_wscale"], evidence["actual_wscale"]) == (1, 7)
        assert evidence["shrink_factor"] == 64
        # the client believes a window about 64 times smaller than the server offers
        ratio = evidence["offered_window_bytes"] / evidence["believed_window_bytes"]
        assert 32 <= ratio <= 128, ratio
    limited = [f for f in doc["findings"] if f["kind"] == "rwnd-limited"]
    assert {f["evidence"]["sender"] for f in limited} <= {c["local"] for c in clients}
    assert limited and all(f["evidence"]["rwnd_limited_ms"] > 0 for f in limited)
    assert seen["status"] == 1


@pytest.mark.parametrize("traffic", ["clean"], indirect=True)
def test_trace_clean_run_has_matching_shifts(traffic) -> None:
    pair, seen = traffic
    doc = seen["doc"]
    clients, servers = _by_side(doc, pair)
    assert len(clients) == len(servers) == 2
    server_rcv = {c["remote"]: c["rcv_wscale"] for c in servers}
    for conn in clients:
        assert conn["snd_wscale"] == server_rcv[conn["local"]] == 7
        assert (conn["snd_wscale"], conn["rcv_wscale"]) == seen["client"][
            (conn["local"], conn["remote"])
        ]
    assert not [f for f in doc["findings"] if f["kind"] == "wscale-mismatch"]


def test_trace_without_bpftrace_says_what_to_use() -> None:
    env = {**os.environ, "PATH": "/nonexistent"}
    result = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "trace", "--duration", "1"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "bpftrace is not installed" in result.stderr and "tcpsleuth sockets" in result.stderr


def test_trace_pid_of_a_listener(netns: str) -> None:
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            str(SUPPORT / "bulk.py"),
            "serve",
            "127.0.0.1",
            "9093",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        python_pid = subprocess.run(
            ["ip", "netns", "pids", netns], capture_output=True, text=True, check=True
        ).stdout.split()
        ports = set()
        for pid in python_pid:
            ports |= local_ports_of_pid(int(pid))
        assert ports == {9093}
    finally:
        server.kill()
        server.wait()
    bad = run_tcpsleuth("trace", "--pid", "999999999")
    assert bad.returncode == 2 and "no process with pid" in bad.stderr

"""`tcpsleuth compare` on two real namespaces: the server's SYN-ACK announces shift 1
while the server uses 7 (nftables on its egress), client-to-server traffic, then
both ends read live and from `ss -tni` text. And the same without the fault."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES, SUPPORT, run_tcpsleuth

sys.path.insert(0, str(SUPPORT))
import wscale_lab
from support import ss_text

from tcpsleuth.model.findings import endpoint
from tcpsleuth.sources.sstext import parse_endpoint


def _ss_tni(ns: str, path: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """Save `ss -tni` of a namespace; return (local, remote) -> wscale as ss prints it."""
    text = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-tni"], capture_output=True, text=True, check=True
    ).stdout
    path.write_text(text)
    return {
        tuple(endpoint(*parse_endpoint(t)) for t in key): found
        for key, found in ss_text.shifts(text).items()
    }


def _json(*args: str) -> tuple[int, dict]:
    result = run_tcpsleuth(*args, "--format", "json")
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def _kinds(doc: dict, kind: str) -> list[dict]:
    return [f for f in doc["findings"] if f["kind"] == kind]


def test_fault_found_from_both_ends(tmp_path: Path) -> None:
    with wscale_lab.paced_traffic(fault=True) as traffic:
        pair = traffic.pair
        client_ss = _ss_tni(pair.client, tmp_path / "client.txt")
        server_ss = _ss_tni(pair.server, tmp_path / "server.txt")
        live_status, live = _json("compare", f"netns:{pair.client}", f"netns:{pair.server}")
        text_status, text = _json(
            "compare", str(tmp_path / "client.txt"), str(tmp_path / "server.txt")
        )
        _, client_side = _json("sockets", "--netns", pair.client)
        snapshot = run_tcpsleuth("sockets", "--netns", pair.server, "--format", "json")
        (tmp_path / "server.json").write_text(snapshot.stdout)
        _, from_json = _json("compare", str(tmp_path / "client.txt"), str(tmp_path / "server.json"))
        _, doctor = _json("doctor", "--netns", pair.client)

    connections = traffic.ipv4_connections + traffic.ipv6_connections
    # what ss shows at each end: the client believes 1, the server applies 7
    assert len(client_ss) == len(server_ss) == connections
    believed_1 = sorted(local for (local, _), (snd, _) in client_ss.items() if snd == 1)
    assert len(believed_1) == connections
    assert {rcv for _, rcv in server_ss.values()} == {wscale_lab.ACTUAL}

    for doc, status in ((live, live_status), (text, text_status), (from_json, 1)):
        assert doc["counts"]["matched"] == connections
        assert doc["counts"]["client_only"] == doc["counts"]["server_only"] == 0
        mismatches = _kinds(doc, "wscale-mismatch")
        assert sorted(f["subject"]["client"] for f in mismatches) == believed_1
        for finding in mismatches:
            evidence = finding["evidence"]
            assert (evidence["announced_wscale"], evidence["actual_wscale"]) == (1, 7)
            assert evidence["shrink_factor"] == 2 ** (7 - 1)
        assert status == 1
    # the client's senders waited at the (misread) window; nothing on the server side
    limited = _kinds(live, "rwnd-limited") + _kinds(client_side, "rwnd-limited")
    assert limited
    assert {f["evidence"]["sender"] for f in limited} <= {local for local, _ in client_ss}
    for finding in limited:
        assert finding["evidence"]["rwnd_limited_share"] >= 0.2
        # the window the client sees is under two segments
        assert finding["evidence"]["effective_window_segments"] < 2
    # doctor runs the same socket checks on the live namespace
    (check,) = [c for c in doctor["checks"] if c["name"] == "sockets"]
    assert check["ran"] and check["data"]["connections"] == connections
    assert {f["evidence"]["sender"] for f in _kinds(doctor, "rwnd-limited")} == {
        f["evidence"]["sender"] for f in _kinds(client_side, "rwnd-limited")
    }
    tiny = _kinds(live, "tiny-window")
    assert tiny and all(f["evidence"]["peer_recv_q"] is not None for f in tiny)


def test_clean_run_finds_nothing(tmp_path: Path) -> None:
    with wscale_lab.paced_traffic(fault=False) as traffic:
        pair = traffic.pair
        client_ss = _ss_tni(pair.client, tmp_path / "client.txt")
        server_ss = _ss_tni(pair.server, tmp_path / "server.txt")
        status, live = _json("compare", f"netns:{pair.client}", f"netns:{pair.server}")
        client_status, client_side = _json("sockets", "--netns", pair.client)
        # Another pair of hosts (NAT or simply the wrong file): nothing matches,
        # and what did not match is counted.
        _, unrelated = _json(
            "compare", f"netns:{pair.client}", str(FIXTURES / "ss" / "lab-clean-server-tni.txt")
        )
    connections = traffic.ipv4_connections + traffic.ipv6_connections
    assert {snd for snd, _ in client_ss.values()} == {rcv for _, rcv in server_ss.values()} == {7}
    assert live["counts"]["matched"] == connections
    assert live["findings"] == [] and status == 0
    assert client_side["findings"] == [] and client_status == 0
    assert unrelated["counts"]["matched"] == 0
    assert unrelated["counts"]["client_only"] == connections
    (note,) = unrelated["findings"]
    assert note["kind"] == "unmatched-connections" and note["severity"] == "info"


def test_cookie_connections_seen_from_one_namespace() -> None:
    """One listener, 40 connections made with SYN cookies and 60 without; only the
    cookie SYN-ACKs announce shift 1 (what the pre-fix kernel does with SO_RCVBUF
    set). Both ends are in one namespace, so `sockets` alone pairs them; the
    clients' view of one server with two different shifts is the one-sided sign."""
    from tcpsleuth.lab import faults, namespaces

    cookies, normal = 40, 60
    with namespaces.namespace("sockcookie") as ns:
        namespaces.sysctl(ns, "net.ipv4.tcp_rmem", wscale_lab.SERVER_RMEM)
        faults.announce_wscale(ns, 9092, 1, cookies_only=True)
        mix = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                str(SUPPORT / "cookie_mix.py"),
                "--port",
                "9092",
                "--cookies",
                str(cookies),
                "--normal",
                str(normal),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert mix.stdout is not None and mix.stdout.readline().strip() == "ready"
            client_view = _ss_tni(ns, Path(os.devnull))
            counters = subprocess.run(
                ["ip", "netns", "exec", ns, "nstat", "-az", "TcpExtSyncookiesSent"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            status, doc = _json("sockets", "--netns", ns)
        finally:
            mix.kill()
            mix.wait()
    sent = int(re.search(r"TcpExtSyncookiesSent\s+(\d+)", counters).group(1))
    assert sent == cookies
    # ss: client sockets (remote port 9092) that read the server's windows with shift 1
    believed_1 = sorted(
        local
        for (local, remote), (snd, _) in client_view.items()
        if remote.endswith(":9092") and snd == 1
    )
    assert len(believed_1) == cookies
    mismatches = _kinds(doc, "wscale-mismatch")
    assert sorted(f["subject"]["client"] for f in mismatches) == believed_1
    assert {
        (f["evidence"]["announced_wscale"], f["evidence"]["actual_wscale"]) for f in mismatches
    } == {(1, 7)}
    (inconsistent,) = _kinds(doc, "wscale-inconsistent")
    assert inconsistent["subject"] == {"client": "*", "server": "127.0.0.1:9092"}
    assert inconsistent["evidence"]["shifts"] == {"1": cookies, "7": normal}
    assert status == 1


def test_stripped_window_scale_counts_as_shift_0(tmp_path: Path) -> None:
    """A middlebox strips the option from the SYN-ACK: the client believes scaling
    is off, the server shifts by 7."""
    from tcpsleuth.lab import faults

    with wscale_lab.paced_traffic(
        fault=False, seconds=1.0, ipv6_connections=0, before_traffic=faults.strip_wscale
    ) as traffic:
        pair = traffic.pair
        client_ss = _ss_tni(pair.client, tmp_path / "client.txt")
        status, doc = _json("compare", f"netns:{pair.client}", f"netns:{pair.server}")
        _, client_side = _json("sockets", "--netns", pair.client)
    # ss prints no wscale at all on the client
    assert client_ss == {}
    mismatches = _kinds(doc, "wscale-mismatch")
    to_client = [f for f in mismatches if f["evidence"]["direction"] == "server-to-client"]
    to_server = [f for f in mismatches if f["evidence"]["direction"] == "client-to-server"]
    assert len(to_client) == len(to_server) == traffic.ipv4_connections
    for finding in to_client:
        assert (finding["evidence"]["announced_wscale"], finding["evidence"]["actual_wscale"]) == (
            0,
            7,
        )
        assert finding["severity"] == "critical"
    for finding in to_server:
        # the server applies the client's SYN shift to windows the client never scales
        assert finding["evidence"]["actual_wscale"] == 0 and finding["severity"] == "warning"
    (off,) = _kinds(client_side, "wscale-off")
    assert off["evidence"]["connections"] == traffic.ipv4_connections
    assert status == 1


def test_ipv4_mapped_server_side_matches_ipv4_client(tmp_path: Path) -> None:
    """A dual-stack listener on [::] sees an IPv4 client as ::ffff:a.b.c.d."""
    with wscale_lab.paced_traffic(
        fault=True, seconds=1.0, ipv4_connections=2, ipv6_connections=0, dual_stack=True
    ) as traffic:
        pair = traffic.pair
        server_text = subprocess.run(
            ["ip", "netns", "exec", pair.server, "ss", "-tni"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        _, doc = _json("compare", f"netns:{pair.client}", f"netns:{pair.server}")
    assert server_text.count("[::ffff:198.18.0.1]:9092") == 2
    assert doc["counts"]["matched"] == 2
    mismatches = _kinds(doc, "wscale-mismatch")
    assert len(mismatches) == 2
    assert all(f["subject"]["server"] == "198.18.0.1:9092" for f in mismatches)


def test_nat_between_the_hosts() -> None:
    """The client connects to a virtual address that the server's namespace DNATs
    to the server: no 4-tuple matches; --nat pairs them by ports."""
    with wscale_lab.paced_traffic(
        fault=True, seconds=1.0, ipv4_connections=3, ipv6_connections=0, nat=True
    ) as traffic:
        pair = traffic.pair
        client, server = f"netns:{pair.client}", f"netns:{pair.server}"
        _, plain = _json("compare", client, server)
        _, nat = _json("compare", client, server, "--nat")
    assert plain["counts"]["matched"] == 0
    assert plain["counts"]["client_only"] == plain["counts"]["server_only"] == 3
    (note,) = _kinds(plain, "unmatched-connections")
    assert "--nat" in note["advice"]
    assert not _kinds(plain, "wscale-mismatch")
    assert nat["counts"]["matched"] == nat["counts"]["matched_by_ports"] == 3
    assert {p["server"] for p in nat["pairs"]} == {"198.18.0.1:9092"}
    mismatches = _kinds(nat, "wscale-mismatch")
    assert len(mismatches) == 3
    assert {f["subject"]["server"] for f in mismatches} == {"198.18.0.1:9092"}
    assert {
        (f["evidence"]["announced_wscale"], f["evidence"]["actual_wscale"]) for f in mismatches
    } == {(1, 7)}

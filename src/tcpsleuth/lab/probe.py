"""The kernel self-test: does this kernel have the SYN-cookie window-scale bug?

A version table cannot tell for distribution kernels; an experiment can. In a
throwaway pair of namespaces joined by veth, with SYN cookies forced for every
connection (tcp_syncookies=2, timestamps on) inside the server namespace only, a
listener with SO_RCVBUF set before listen() takes a few connections over IPv4 and
IPv6 that carry some data. Then, per connection, three numbers are compared:
the shift the SYN-ACK announced (read from a capture of the handshake), the shift
the client applies to the server's windows (its ``snd_wscale``), and the shift the
server really uses (its ``rcv_wscale``), both from sock_diag. A second round with
timestamps off shows what cookies without timestamps do (no scaling at all).
Nothing outside the namespaces is touched; they are removed on every exit path.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tcpsleuth import compiled
from tcpsleuth.lab import namespaces, topology
from tcpsleuth.lab.processes import Child
from tcpsleuth.model.records import ProbedConnection, ProbeResult
from tcpsleuth.sources import sockdiag

PORT = 9092
PEER = [sys.executable, "-m", "tcpsleuth.lab.probe_peer"]


def _synack_shifts(capture: Path) -> dict[tuple[str, str], int | None]:
    """(client, server) -> the window-scale shift announced in the server's SYN-ACK."""
    from tcpsleuth.detectors.capture import analyse
    from tcpsleuth.sources.pcap import read_capture

    compiled.use_python_for(capture.stat().st_size)  # a few packets: no numba to load
    analysis = analyse(read_capture(capture).tcp)
    return {
        (c.client, c.server): c.synack.wscale for c in analysis.connections if c.synack is not None
    }


@contextlib.contextmanager
def _round(pair: topology.Pair, timestamps: int, rcvbuf: int, workdir: Path) -> Iterator[Path]:
    namespaces.sysctl(pair.server, "net.ipv4.tcp_syncookies", 2)
    namespaces.sysctl(pair.server, "net.ipv4.tcp_timestamps", timestamps)
    capture = workdir / f"handshakes-ts{timestamps}.pcap"
    children = []
    try:
        tcpdump = Child(
            [
                "tcpdump",
                "-i",
                topology.IFNAME,
                "-n",
                "--immediate-mode",  # a few hundred packets: deliver each at once
                "-s",
                "128",
                "-U",
                "-w",
                str(capture),
                f"tcp port {PORT}",  # tcp[tcpflags] would see IPv4 only
            ],
            ns=pair.client,
            merge_stderr=True,
        )
        children.append(tcpdump)
        tcpdump.wait_for(lambda line: "listening on" in line)
        server = Child(
            [*PEER, "serve", str(rcvbuf), "50", str(PORT), pair.server_ip4, pair.server_ip6],
            ns=pair.server,
            stdin=True,
        )
        children.append(server)
        server.wait_for(lambda line: line.strip() == "listening")
        client = Child(
            [
                *PEER,
                "connect",
                str(256 * 1024),
                str(PORT),
                pair.server_ip4,
                pair.server_ip4,
                pair.server_ip6,
                pair.server_ip6,
            ],
            ns=pair.client,
            stdin=True,
        )
        children.append(client)
        client.wait_for(lambda line: line.strip() == "connected")
        yield capture
    finally:
        for child in reversed(children):
            child.stop(2)  # SIGINT lets tcpdump flush its file


def run_probe(rcvbuf: int = 102400) -> ProbeResult:
    namespaces.require_root("tcpsleuth probe")
    from tcpsleuth.sources import netns, procfs

    result = ProbeResult(procfs.kernel_release(), rcvbuf)
    with (
        tempfile.TemporaryDirectory(prefix="tcpsleuth-probe-") as tmp,
        topology.server_client_pair("probe") as pair,
    ):
        for timestamps in (1, 0):
            with _round(pair, timestamps, rcvbuf, Path(tmp)) as capture:
                server = sockdiag.snapshot(pair.server, ports=frozenset({PORT}))
                client = sockdiag.snapshot(pair.client, ports=frozenset({PORT}))
            announced = _synack_shifts(capture)
            by_pair = {
                (c.remote, c.local): c
                for c in server.connections
                if c.local_port == PORT and c.state == "ESTAB"
            }
            for conn in client.connections:
                if conn.remote_port != PORT or conn.state != "ESTAB":
                    continue
                peer = by_pair.get((conn.local, conn.remote))
                key = (conn.local, conn.remote)
                result.connections.append(
                    ProbedConnection(
                        client=conn.local,
                        server=conn.remote,
                        family="IPv6" if conn.local.startswith("[") else "IPv4",
                        timestamps=bool(timestamps),
                        announced_wscale=announced.get(key),
                        client_snd_wscale=conn.snd_wscale,
                        server_rcv_wscale=peer.rcv_wscale if peer else None,
                        client_snd_wnd=conn.snd_wnd,
                    )
                )
            # the connections of this round end with it; the next round starts afresh
        with netns.entered(pair.server):
            result.syncookies_sent = procfs.read_live_counters().get("TcpExtSyncookiesSent", 0)
    return result


__all__ = ["ProbeResult", "ProbedConnection", "run_probe"]

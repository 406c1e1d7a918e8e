"""Findings from traced window samples (tcpsleuth trace).

A connection whose two ends are both on this host (loopback, or two namespaces)
is seen from both sides, so the shift the client applies to the server's windows
(client snd_wscale) can be compared with the shift the server really uses when it
advertises them (server rcv_wscale). A sender that keeps data queued while what it
has in flight fills the peer's window is waiting at the window.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from tcpsleuth.detectors.thresholds import RWND_LIMITED_MIN_NS, RWND_LIMITED_SHARE
from tcpsleuth.model.findings import (
    Finding,
    Severity,
    connection_subject,
    endpoint,
    misread,
    shrink_factor,
)
from tcpsleuth.model.records import WindowSample

SERIES_POINTS = 200


@dataclass
class TracedSocket:
    """One socket's samples folded together, keyed by (netns, local, remote)."""

    netns: int
    local: str
    remote: str
    local_port: int
    remote_port: int
    samples: list[WindowSample] = field(default_factory=list)

    @property
    def last(self) -> WindowSample:
        return self.samples[-1]

    @property
    def span_ns(self) -> int:
        return self.samples[-1].time_ns - self.samples[0].time_ns

    @property
    def wait_ns(self) -> int:
        # the program's counter is cumulative from the socket's first traced segment
        return self.samples[-1].wait_ns - self.samples[0].wait_ns

    @property
    def believed_window(self) -> int:
        """Median of the peer's window as this socket believes it (bytes)."""
        return int(statistics.median(s.snd_wnd for s in self.samples))

    @property
    def offered_window(self) -> int:
        return int(statistics.median(s.rcv_wnd for s in self.samples))

    def summary(self) -> dict[str, object]:
        last = self.last
        step = max(1, len(self.samples) // SERIES_POINTS)
        t0 = self.samples[0].time_ns
        return {
            "netns": self.netns,
            "local": self.local,
            "remote": self.remote,
            "snd_wscale": last.snd_wscale,
            "rcv_wscale": last.rcv_wscale,
            "snd_wnd": last.snd_wnd,
            "rcv_wnd": last.rcv_wnd,
            "believed_window_median": self.believed_window,
            "offered_window_median": self.offered_window,
            "window_clamp": last.window_clamp,
            "mss": last.mss,
            "segments": last.segs - self.samples[0].segs + 1,
            "traced_ms": round(self.span_ns / 1e6, 3),
            "waiting_ms": round(self.wait_ns / 1e6, 3),
            "series": [
                {
                    "t_ms": round((s.time_ns - t0) / 1e6, 3),
                    "snd_wnd": s.snd_wnd,
                    "rcv_wnd": s.rcv_wnd,
                    "inflight": s.inflight,
                }
                for s in self.samples[::step]
            ],
        }


def fold(samples: Iterable[WindowSample]) -> list[TracedSocket]:
    sockets: dict[tuple[int, str, str], TracedSocket] = {}
    for sample in samples:
        local = endpoint(sample.local_ip, sample.local_port)
        remote = endpoint(sample.remote_ip, sample.remote_port)
        key = (sample.netns, local, remote)
        if key not in sockets:
            sockets[key] = TracedSocket(
                sample.netns, local, remote, sample.local_port, sample.remote_port
            )
        sockets[key].samples.append(sample)
    return list(sockets.values())


def _client_server(
    a: TracedSocket, b: TracedSocket, server_ports: frozenset[int]
) -> tuple[TracedSocket, TracedSocket]:
    if a.local_port in server_ports and b.local_port not in server_ports:
        return b, a
    if b.local_port in server_ports and a.local_port not in server_ports:
        return a, b
    # without a listener to tell, the well-known (lower) port is the server's
    return (b, a) if a.local_port < b.local_port else (a, b)


def trace_findings(
    sockets: list[TracedSocket], server_ports: frozenset[int] = frozenset()
) -> list[Finding]:
    by_pair: dict[tuple[str, str], list[TracedSocket]] = defaultdict(list)
    for sock in sockets:
        by_pair[(sock.local, sock.remote)].append(sock)
    findings = _wscale_mismatches(sockets, by_pair, server_ports)
    for sock in sockets:
        finding = _rwnd_limited(sock, by_pair, server_ports)
        if finding is not None:
            findings.append(finding)
    return findings


def _wscale_mismatches(
    sockets: list[TracedSocket],
    by_pair: dict[tuple[str, str], list[TracedSocket]],
    server_ports: frozenset[int],
) -> list[Finding]:
    """A finding for each direction of a connection traced at both ends whose reader
    applies another shift than the writer of its windows uses."""
    findings: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for sock in sockets:
        key = (sock.local, sock.remote)
        peers = by_pair.get((sock.remote, sock.local), [])
        if key in seen or len(peers) != 1 or len(by_pair[key]) != 1:
            continue  # one end not traced, or the 4-tuple is ambiguous across namespaces
        seen.update({key, (sock.remote, sock.local)})
        client, server = _client_server(sock, peers[0], server_ports)
        for sender, receiver, direction in (
            (client, server, "server's windows"),
            (server, client, "client's windows"),
        ):
            finding = _mismatch(client, server, sender, receiver, direction)
            if finding is not None:
                findings.append(finding)
    return findings


def _mismatch(
    client: TracedSocket,
    server: TracedSocket,
    sender: TracedSocket,
    receiver: TracedSocket,
    direction: str,
) -> Finding | None:
    """The finding when ``sender`` reads the windows of ``receiver`` with another shift
    than ``receiver`` scales them by, else None."""
    announced, actual = sender.last.snd_wscale, receiver.last.rcv_wscale
    if announced == actual:
        return None
    factor = shrink_factor(announced, actual)
    return Finding(
        "wscale-mismatch",
        Severity.CRITICAL,
        connection_subject(client.local, server.local),
        f"{sender.local} reads the {direction} with shift {announced} but "
        f"{receiver.local} scales them by {actual}: every window is read "
        f"{misread(announced, actual)}",
        {
            "announced_wscale": announced,
            "actual_wscale": actual,
            "shrink_factor": factor,
            "source": "trace (tcp:tcp_probe, struct tcp_sock via BTF)",
            "socket_wscale": actual,
            "direction": "server-to-client" if sender is client else "client-to-server",
            "connections": 1,
            "clients": {client.local.rsplit(":", 1)[0]: 1},
            "reader": sender.local,
            "believed_window_bytes": sender.believed_window,
            "offered_window_bytes": receiver.offered_window,
            "rwnd_limited_ms": round(sender.wait_ns / 1e6, 3),
        },
        "Both ends must agree on the shift announced in the handshake. If the "
        "server's SYN-ACK was a SYN cookie on a kernel without the fix, disable SYN "
        "cookies or raise the listen backlog (see `tcpsleuth audit`); if a middlebox "
        "rewrites TCP options, fix or bypass it.",
    )


def _rwnd_limited(
    sock: TracedSocket,
    by_pair: dict[tuple[str, str], list[TracedSocket]],
    server_ports: frozenset[int],
) -> Finding | None:
    """A finding when the socket spent a large share of its traced time waiting at its
    peer's receive window, else None."""
    span = sock.span_ns
    if span <= 0 or sock.wait_ns < RWND_LIMITED_MIN_NS:
        return None
    share = sock.wait_ns / span
    if share < RWND_LIMITED_SHARE:
        return None
    peer = by_pair.get((sock.remote, sock.local), [])
    client, server = _client_server(sock, peer[0], server_ports) if len(peer) == 1 else (sock, None)
    subject = (
        connection_subject(client.local, server.local)
        if server is not None
        else connection_subject(sock.local, sock.remote)
    )
    window = sock.believed_window
    mss = sock.last.mss or 1
    return Finding(
        "rwnd-limited",
        Severity.WARNING if share < 0.5 else Severity.CRITICAL,
        subject,
        f"{sock.local} waited at its peer's receive window for "
        f"{sock.wait_ns / 1e6:.0f} ms of {span / 1e6:.0f} ms traced ({share:.0%}); the "
        f"window it sees is {window} bytes ({window / mss:.1f} segments)",
        {
            "sender": sock.local,
            "source": "trace (tcp:tcp_probe)",
            "rwnd_limited_ms": round(sock.wait_ns / 1e6, 3),
            "rwnd_limited_share": round(share, 4),
            "busy_ms": round(span / 1e6, 3),
            "effective_window_bytes": window,
            "effective_window_segments": round(window / mss, 2),
            "snd_wscale": sock.last.snd_wscale,
        },
        "The receiver's window, not the network, is the limit: check the receiver's "
        "window scale (wscale-mismatch), its receive buffer (SO_RCVBUF, tcp_rmem) and "
        "whether it reads fast enough.",
    )

"""Findings from one snapshot of TCP sockets (``tcpsleuth sockets``).

What ``tcp_info`` shows from one end of a connection:
- ``rwnd_limited``: the kernel counts how long a sender had data to send but
  the peer's receive window was full (``tcp_chrono_start(sk, TCP_CHRONO_RWND_LIMITED)``
  in tcp_write_xmit). As a share of ``busy_time`` it says how much of the time
  spent sending was spent waiting for the peer's window.
- tiny windows: ``snd_wnd`` is the peer's window as this end reads it (already
  shifted by ``snd_wscale``). Under two segments, the sender can have at most one
  full segment in flight per round trip. That is normal when the peer's reader
  is behind (its receive queue is full), and a sign of a misread window when it
  is not.
- window scaling off, or handshakes on one port ending with different shifts
  (a listener's connections normally all get the shift of the same buffers; on
  kernels with the SYN-cookie bug, cookie connections get another one).
When both ends of a connection are in the snapshot (loopback, or a host talking
to itself), ``detectors.compare.socket_findings`` adds the two-sided check.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

from tcpsleuth.detectors.thresholds import RWND_LIMITED_MIN_US, RWND_LIMITED_SHARE
from tcpsleuth.model.findings import (
    ALL_CLIENTS,
    ConnectionKey,
    Finding,
    Severity,
    connection_subject,
    host,
    key,
)
from tcpsleuth.model.records import Listener, TcpConnection
from tcpsleuth.model.units import ms_from_us

TINY_WINDOW_SEGMENTS = 2
# The peer's receive queue counts as backed up from this many segments on: a window
# closes because the reader is behind only once the queue holds most of the buffer.
BACKED_UP_SEGMENTS = 4
# Lowest ephemeral port of the default net.ipv4.ip_local_port_range.
EPHEMERAL_FROM = 32768


def server_ports(listeners: Iterable[Listener] | None) -> frozenset[int]:
    return frozenset(lst.local_port for lst in listeners or ())


def local_is_server(conn: TcpConnection, listening: frozenset[int]) -> bool:
    """Which end accepted the connection: a local listener on the port says so;
    without one, the end with the ephemeral (or else the higher) port is the client."""
    if conn.local_port in listening:
        return True
    if conn.remote_port in listening:
        return False  # this host serves that port too: the peer is the server here
    local_ephemeral = conn.local_port >= EPHEMERAL_FROM
    remote_ephemeral = conn.remote_port >= EPHEMERAL_FROM
    if local_ephemeral != remote_ephemeral:
        return remote_ephemeral
    return conn.local_port < conn.remote_port


def subject(conn: TcpConnection, listening: frozenset[int]) -> dict[str, str]:
    if local_is_server(conn, listening):
        return connection_subject(conn.remote, conn.local)
    return connection_subject(conn.local, conn.remote)


def peers_of(connections: Iterable[TcpConnection]) -> dict[ConnectionKey, TcpConnection]:
    """(local, remote) -> the other end, for connections whose two ends are both here."""
    by_key = {key(conn): conn for conn in connections}
    return {k: by_key[(k[1], k[0])] for k in by_key if (k[1], k[0]) in by_key}


def _segments(window: int | None, mss: int | None) -> float | None:
    if window is None or not mss:
        return None
    return round(window / mss, 2)


def rwnd_limited(
    connections: Iterable[TcpConnection], listening: frozenset[int] = frozenset()
) -> list[Finding]:
    findings = []
    for conn in connections:
        busy, limited = conn.busy_time, conn.rwnd_limited
        if not busy or limited is None or limited < RWND_LIMITED_MIN_US:
            continue
        share = limited / busy
        if share < RWND_LIMITED_SHARE:
            continue
        window = conn.snd_wnd
        segments = _segments(window, conn.mss)
        seen = (
            f"; the window it sees is {window} bytes ({segments:g} segments)"
            if window is not None and segments is not None
            else ""
        )
        findings.append(
            Finding(
                "rwnd-limited",
                Severity.CRITICAL if share >= 0.5 else Severity.WARNING,
                subject(conn, listening),
                f"{conn.local} waited at its peer's receive window for {limited / 1000:.0f} ms "
                f"of {busy / 1000:.0f} ms busy ({share:.0%}){seen}",
                {
                    "sender": conn.local,
                    "source": "socket (tcp_info: ss -tni or sock_diag)",
                    "rwnd_limited_ms": ms_from_us(limited),
                    "rwnd_limited_share": round(share, 4),
                    "busy_ms": ms_from_us(busy),
                    "effective_window_bytes": window,
                    "effective_window_segments": segments,
                    "mss": conn.mss,
                    "snd_wscale": conn.snd_wscale,
                    "sndbuf_limited_ms": ms_from_us(conn.sndbuf_limited),
                    "rtt_ms": conn.rtt,
                },
                "The receiver's window, not the network, is the limit: compare both ends' "
                "window scale (`tcpsleuth compare`), check the receiver's buffers (SO_RCVBUF, "
                "tcp_rmem) and whether its application reads fast enough.",
            )
        )
    return findings


def tiny_windows(
    connections: Iterable[TcpConnection],
    listening: frozenset[int] = frozenset(),
    peers: Mapping[ConnectionKey, TcpConnection] | None = None,
) -> list[Finding]:
    """Effective send windows under two segments while the peer's receive queue is
    not backed up. Without the peer in view, reported as info: the peer's reader
    may be behind."""
    findings = []
    for conn in connections:
        window, mss = conn.snd_wnd, conn.mss
        if conn.state != "ESTAB" or window is None or not mss:
            continue
        if window >= TINY_WINDOW_SEGMENTS * mss:
            continue
        peer = (peers or {}).get(key(conn))
        if peer is not None and peer.recv_q >= BACKED_UP_SEGMENTS * mss:
            continue  # the peer's application is behind: a closing window is correct
        if peer is None and window == 0:
            continue  # a zero window is the classic slow reader; can't tell from here
        where_ = (
            f"the peer's receive queue holds {peer.recv_q} bytes"
            if peer is not None
            else "the peer's receive queue is not in this snapshot"
        )
        findings.append(
            Finding(
                "tiny-window",
                Severity.WARNING if peer is not None else Severity.INFO,
                subject(conn, listening),
                f"{conn.local} may send only {window} bytes ({window / mss:.2g} segments of "
                f"{mss}) before waiting for an ACK; {where_}",
                {
                    "sender": conn.local,
                    "effective_window_bytes": window,
                    "effective_window_segments": round(window / mss, 2),
                    "mss": mss,
                    "snd_wscale": conn.snd_wscale,
                    "peer_recv_q": None if peer is None else peer.recv_q,
                    "peer_rcv_wscale": None if peer is None else peer.rcv_wscale,
                    "send_q": conn.send_q,
                },
                "A window this small with an idle reader means the sender misreads the "
                "window: compare both ends' window scale (`tcpsleuth compare`).",
            )
        )
    return findings


def _shifts(values: Counter[int]) -> str:
    return ", ".join(f"{shift} ({count})" for shift, count in sorted(values.items()))


def wscale_anomalies(
    connections: Sequence[TcpConnection], listening: frozenset[int] = frozenset()
) -> list[Finding]:
    """What one end shows about window scaling: scaling off, and one service port
    whose connections ended their handshakes with different shifts."""
    findings: list[Finding] = []
    unscaled: dict[tuple[str, str], list[TcpConnection]] = defaultdict(list)
    # server side: the shift this host applies (rcv_wscale) per listening port;
    # client side: the shift the server announced (snd_wscale) per server endpoint
    served: dict[str, Counter[int]] = defaultdict(Counter)
    used: dict[str, Counter[int]] = defaultdict(Counter)
    for conn in connections:
        if conn.state != "ESTAB" or conn.snd_wscale is None or conn.rcv_wscale is None:
            continue
        server = local_is_server(conn, listening)
        local, remote = key(conn)
        service = local if server else remote
        if conn.snd_wscale == 0 and conn.rcv_wscale == 0:
            peer_ip = conn.remote_ip if server else conn.local_ip
            unscaled[(service, host(peer_ip))].append(conn)
        if server:
            served[service][conn.rcv_wscale] += 1
        else:
            used[service][conn.snd_wscale] += 1
    for (service, peer), conns in sorted(unscaled.items()):
        findings.append(
            Finding(
                "wscale-off",
                Severity.INFO,
                connection_subject(peer, service),
                f"{len(conns)} connection(s) between {service} and {peer} have no window "
                "scaling: their windows cannot exceed 65535 bytes",
                {
                    "connections": len(conns),
                    "timestamps": sorted({str(c.timestamps) for c in conns}),
                    "sack": sorted({str(c.sack) for c in conns}),
                },
                "Scaling is lost when a SYN cookie is sent without TCP timestamps, or when a "
                "middlebox strips the option; check tcp_timestamps and SYN cookie counters "
                "(`tcpsleuth audit`).",
            )
        )
    for role, table, what in (
        ("listener", served, "applies to its windows (rcv_wscale)"),
        ("server", used, "announced (snd_wscale as this client read it)"),
    ):
        for service, shifts in sorted(table.items()):
            if len(shifts) < 2:
                continue
            findings.append(
                Finding(
                    "wscale-inconsistent",
                    Severity.WARNING,
                    connection_subject(ALL_CLIENTS, service),
                    f"connections of {service} ended their handshakes with different "
                    f"window-scale shifts the server {what}: {_shifts(shifts)}",
                    {
                        "side": "server" if role == "listener" else "client",
                        "shifts": {str(shift): count for shift, count in sorted(shifts.items())},
                        "connections": sum(shifts.values()),
                    },
                    "One listener's connections normally share one shift. Different shifts "
                    "mean some handshakes took another path: SYN cookies (on kernels before "
                    "the window_clamp fix, with SO_RCVBUF set, they announce one shift and use "
                    "another). Compare both ends with `tcpsleuth compare`.",
                )
            )
    return findings


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else round((values[mid - 1] + values[mid]) / 2, 3)


def _group_summary(conns: list[TcpConnection]) -> dict[str, object]:
    shifts = Counter(f"{c.snd_wscale},{c.rcv_wscale}" for c in conns if c.snd_wscale is not None)
    limited = [
        c
        for c in conns
        if c.busy_time
        and c.rwnd_limited is not None
        and c.rwnd_limited >= RWND_LIMITED_MIN_US
        and c.rwnd_limited / c.busy_time >= RWND_LIMITED_SHARE
    ]
    return {
        "connections": len(conns),
        "established": sum(1 for c in conns if c.state == "ESTAB"),
        "wscale": dict(shifts.most_common()),
        "rtt_ms_median": _median([c.rtt for c in conns if c.rtt is not None]),
        "snd_wnd_median": _median([c.snd_wnd for c in conns if c.snd_wnd is not None]),
        "rwnd_limited_connections": len(limited),
        "recv_q": sum(c.recv_q for c in conns),
        "send_q": sum(c.send_q for c in conns),
    }


def summary_by_peer(
    connections: Iterable[TcpConnection], listening: frozenset[int] = frozenset()
) -> list[dict[str, object]]:
    """One row per peer address, most connections first."""
    groups: dict[str, list[TcpConnection]] = defaultdict(list)
    for conn in connections:
        groups[host(conn.remote_ip)].append(conn)
    rows = [{"peer": peer, **_group_summary(conns)} for peer, conns in groups.items()]
    return sorted(rows, key=lambda r: (-int(r["connections"]), str(r["peer"])))


def summary_by_port(
    connections: Iterable[TcpConnection], listening: frozenset[int] = frozenset()
) -> list[dict[str, object]]:
    """One row per service port (the server's end), with which side this host is."""
    groups: dict[tuple[int, str], list[TcpConnection]] = defaultdict(list)
    for conn in connections:
        if local_is_server(conn, listening):
            groups[(conn.local_port, "server")].append(conn)
        else:
            groups[(conn.remote_port, "client")].append(conn)
    rows = [
        {
            "port": port,
            "side": side,
            "peers": len({c.remote_ip for c in conns}),
            **_group_summary(conns),
        }
        for (port, side), conns in groups.items()
    ]
    return sorted(rows, key=lambda r: (-int(r["connections"]), int(r["port"])))

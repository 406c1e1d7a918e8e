"""Joining two snapshots, one from each end, and the two-sided window-scale check.

Each end of a connection keeps two shifts (``ss``'s ``wscale:<snd>,<rcv>``):
``snd_wscale`` is the shift the peer announced in its SYN or SYN-ACK, which this
end applies to the windows it receives; ``rcv_wscale`` is the shift this end
applies to the windows it advertises. They must pair up: the client's
``snd_wscale`` equals the server's ``rcv_wscale``. When a SYN-ACK announces one
shift and the server socket uses another (SYN cookies on kernels before the
window_clamp fix, with SO_RCVBUF set on the listener; or a middlebox rewriting
the option), every window the server advertises is read ``2**(actual -
announced)`` times too small (or too large) by the client. Only the two ends
together show it; no single snapshot can.

The join is by 4-tuple: the client's (local, remote) is the server's (remote,
local). Addresses are compared as ``endpoint()`` writes them, so an
IPv4-mapped IPv6 address matches its IPv4 form. Connections that find no
partner (NAT or a proxy in between, a snapshot taken a moment later, a
connection to another host) are counted, never silently dropped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tcpsleuth.detectors import sockets
from tcpsleuth.model.findings import (
    Finding,
    Severity,
    connection_subject,
    host,
    misread,
    shrink_factor,
)
from tcpsleuth.model.records import Listener, TcpConnection


@dataclass(frozen=True)
class Pair:
    """One connection seen from both ends."""

    client: TcpConnection
    server: TcpConnection
    matched_by: str = "4-tuple"  # or "ports": addresses differ (NAT), see join()


@dataclass(frozen=True)
class Join:
    pairs: list[Pair]
    client_only: list[TcpConnection] = field(default_factory=list)
    server_only: list[TcpConnection] = field(default_factory=list)
    ambiguous: int = 0  # 4-tuples seen more than once on one side (several namespaces)

    def counts(self) -> dict[str, int]:
        return {
            "matched": len(self.pairs),
            "matched_by_ports": sum(1 for p in self.pairs if p.matched_by == "ports"),
            "client_only": len(self.client_only),
            "server_only": len(self.server_only),
            "ambiguous": self.ambiguous,
        }


def _index(connections: Iterable[TcpConnection]) -> tuple[dict, set]:
    index: dict[sockets.ConnectionKey, TcpConnection] = {}
    duplicated: set[sockets.ConnectionKey] = set()
    for conn in connections:
        if conn.state == "LISTEN":
            continue
        k = sockets.key(conn)
        if k in index:
            duplicated.add(k)
        index[k] = conn
    return index, duplicated


def join(
    client: Iterable[TcpConnection], server: Iterable[TcpConnection], by_ports: bool = False
) -> Join:
    """Pair the two snapshots by 4-tuple. With ``by_ports``, connections left over
    are also paired by their two ports alone, when exactly one connection on each
    side has them: NAT between the hosts rewrites addresses but (Linux NAT, and
    most others, as long as the port is free) keeps the client's source port."""
    client_index, client_dup = _index(client)
    server_index, server_dup = _index(server)
    pairs = []
    client_only = []
    matched: set[sockets.ConnectionKey] = set()
    for k, conn in client_index.items():
        mirror = (k[1], k[0])
        partner = server_index.get(mirror)
        if partner is None:
            client_only.append(conn)
        elif k in client_dup or mirror in server_dup:
            continue  # counted as ambiguous below
        else:
            pairs.append(Pair(conn, partner))
            matched.add(mirror)
    server_only = [
        conn
        for k, conn in server_index.items()
        if k not in matched and (k[1], k[0]) not in client_index
    ]
    if by_ports and client_only and server_only:
        by_client: dict[tuple[int, int], list[TcpConnection]] = defaultdict(list)
        by_server: dict[tuple[int, int], list[TcpConnection]] = defaultdict(list)
        for conn in client_only:
            by_client[(conn.local_port, conn.remote_port)].append(conn)
        for conn in server_only:
            by_server[(conn.remote_port, conn.local_port)].append(conn)
        paired: set[int] = set()
        for ports, conns in by_client.items():
            partners = by_server.get(ports, [])
            if len(conns) == 1 and len(partners) == 1:
                pairs.append(Pair(conns[0], partners[0], matched_by="ports"))
                paired.update({id(conns[0]), id(partners[0])})
        client_only = [c for c in client_only if id(c) not in paired]
        server_only = [c for c in server_only if id(c) not in paired]
    return Join(pairs, client_only, server_only, len(client_dup) + len(server_dup))


def pairs_within(
    connections: Sequence[TcpConnection], listening: frozenset[int] = frozenset()
) -> list[Pair]:
    """Connections whose two ends are both in one snapshot (loopback, a host
    talking to itself), each once, client first."""
    peers = sockets.peers_of(connections)
    pairs = []
    for conn in connections:
        peer = peers.get(sockets.key(conn))
        if peer is not None and not sockets.local_is_server(conn, listening):
            pairs.append(Pair(conn, peer))
    return pairs


def wscale_mismatches(pairs: Iterable[Pair]) -> list[Finding]:
    findings = []
    for pair in pairs:
        client, server = pair.client, pair.server
        # (reader, writer): the reader applies its snd_wscale to the windows the
        # writer shifted by its rcv_wscale; absent scaling counts as shift 0.
        for reader, writer, whose in (
            (client, server, "server's"),
            (server, client, "client's"),
        ):
            announced = reader.snd_wscale or 0
            actual = writer.rcv_wscale or 0
            if reader.snd_wscale is None or writer.rcv_wscale is None or announced == actual:
                continue
            factor = float(shrink_factor(announced, actual))  # sockets compare: 64.0
            smaller = actual > announced
            window = reader.snd_wnd
            findings.append(
                Finding(
                    "wscale-mismatch",
                    Severity.CRITICAL if smaller else Severity.WARNING,
                    connection_subject(client.local, server.local),
                    f"{reader.local} reads the {whose} windows with shift {announced} but "
                    f"{writer.local} shifts them by {actual}: every window is read "
                    f"{misread(announced, actual)}",
                    {
                        "announced_wscale": announced,
                        "actual_wscale": actual,
                        "shrink_factor": factor,
                        "source": "sockets of both ends (ss -tni / sock_diag tcp_info)",
                        "socket_wscale": actual,
                        "direction": "server-to-client" if reader is client else "client-to-server",
                        "connections": 1,
                        "clients": {host(client.local_ip): 1},
                        "reader": reader.local,
                        "believed_window_bytes": window,
                        "mss": reader.mss,
                        "rcv_space": writer.rcv_space,
                        "rwnd_limited_ms": None
                        if reader.rwnd_limited is None
                        else round(reader.rwnd_limited / 1000, 3),
                    },
                    "Both ends must agree on the shift announced in the handshake. If the "
                    "server's SYN-ACK was a SYN cookie on a kernel without the window_clamp "
                    "fix and the listener sets SO_RCVBUF, disable SYN cookies or raise the "
                    "listen backlog so cookies are not needed (see `tcpsleuth audit`); if a "
                    "middlebox rewrites TCP options, fix or bypass it.",
                )
            )
    return findings


def unmatched(result: Join) -> list[Finding]:
    if not result.client_only and not result.server_only and not result.ambiguous:
        return []
    counts = result.counts()
    none = not result.pairs
    summary = (
        "no connection of one snapshot has its mirror 4-tuple in the other"
        if none
        else f"{counts['client_only']} client and {counts['server_only']} server connection(s) "
        "have no partner in the other snapshot"
    )
    server_ports = Counter(c.remote_port for c in result.client_only)
    return [
        Finding(
            "unmatched-connections",
            Severity.INFO,
            {"snapshots": "client and server"},
            summary + (f"; {result.ambiguous} 4-tuple(s) ambiguous" if result.ambiguous else ""),
            {
                **counts,
                "client_only_top_remote_ports": dict(server_ports.most_common(5)),
            },
            "Connections to other hosts, and ones opened or closed between the two snapshots, "
            "have no partner. If none match, NAT or a proxy sits between the hosts (each side "
            "sees other addresses): with NAT, `--nat` pairs connections by their ports; "
            "through a proxy, compare the client with the proxy.",
        )
    ]


def compare_findings(
    result: Join,
    client_listeners: Iterable[Listener] | None = None,
    server_listeners: Iterable[Listener] | None = None,
) -> list[Finding]:
    """The two-sided check, plus each side's own checks with the other end's
    receive queue in view."""
    client_conns = [p.client for p in result.pairs] + result.client_only
    server_conns = [p.server for p in result.pairs] + result.server_only
    peers = {sockets.key(p.client): p.server for p in result.pairs}
    peers.update({sockets.key(p.server): p.client for p in result.pairs})
    # In compare the roles are known: the client snapshot's ends are the clients
    # unless a listener there says otherwise.
    client_ports = sockets.server_ports(client_listeners)
    server_ports = sockets.server_ports(server_listeners) | frozenset(
        p.server.local_port for p in result.pairs
    )
    return [
        *wscale_mismatches(result.pairs),
        *sockets.rwnd_limited(client_conns, client_ports),
        *sockets.rwnd_limited(server_conns, server_ports),
        *sockets.tiny_windows(client_conns, client_ports, peers),
        *sockets.tiny_windows(server_conns, server_ports, peers),
        *unmatched(result),
    ]


def socket_findings(
    connections: Sequence[TcpConnection], listeners: Iterable[Listener] | None = None
) -> list[Finding]:
    """Every one-snapshot check; the two-sided check for connections whose two ends
    are both in the snapshot."""
    listening = sockets.server_ports(listeners)
    peers = sockets.peers_of(connections)
    return [
        *wscale_mismatches(pairs_within(connections, listening)),
        *sockets.rwnd_limited(connections, listening),
        *sockets.tiny_windows(connections, listening, peers),
        *sockets.wscale_anomalies(connections, listening),
    ]

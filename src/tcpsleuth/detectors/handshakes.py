"""What a server's SYN-ACK announced against what its socket uses: the window-scale
mismatch proven from the server alone.

A capture holds each connection's SYN-ACK with the shift the server announced; the
server's own socket, read over sock_diag a moment later, holds the shift it really
applies to the windows it advertises (``rcv_wscale``). On a kernel with the SYN-cookie
bug the two differ for every cookie connection to a listener with SO_RCVBUF set: the
client scales the server's windows by the announced shift, the server by the other.
Pure: (client, server, announced shift) triples and socket records in, findings out.
A four-tuple that several connections in a capture used (a client that reconnected from
the same port) holds only the last of them against the socket: the socket snapshot,
taken after the capture's handshakes, is that connection's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tcpsleuth.model.findings import (
    ALL_CLIENTS,
    Finding,
    Severity,
    connection_subject,
    key,
    misread,
    shrink_factor,
)
from tcpsleuth.model.records import TcpConnection

LISTED = 200  # connections named in a finding's evidence


@dataclass(frozen=True)
class Handshake:
    client: str  # endpoint text, as endpoint() writes it
    server: str
    announced_wscale: int | None  # the SYN-ACK's window-scale option (None: none)


@dataclass(frozen=True)
class Disagreement:
    client: str
    server: str
    announced_wscale: int
    rcv_wscale: int
    index: int  # the handshake's position among those given


def disagreements(
    handshakes: Sequence[Handshake], server_sockets: Iterable[TcpConnection]
) -> tuple[list[Disagreement], int]:
    """Connections whose server socket scales by another shift than its SYN-ACK
    announced, and how many handshakes could be held against a socket at all."""
    sockets = {key(c): c for c in server_sockets if c.rcv_wscale is not None}
    last = {(shake.server, shake.client): i for i, shake in enumerate(handshakes)}
    found, joined = [], 0
    for i, shake in enumerate(handshakes):
        sock = sockets.get((shake.server, shake.client))
        if sock is None or shake.announced_wscale is None or sock.rcv_wscale is None:
            continue
        if last[(shake.server, shake.client)] != i:
            continue  # an earlier connection on the four-tuple: the socket is a later one's
        joined += 1
        if sock.rcv_wscale != shake.announced_wscale:
            found.append(
                Disagreement(shake.client, shake.server, shake.announced_wscale, sock.rcv_wscale, i)
            )
    return found, joined


def mismatch_findings(found: list[Disagreement], joined: int) -> list[Finding]:
    """One ``wscale-mismatch`` per server and pair of shifts."""
    groups: dict[tuple[str, int, int], list[Disagreement]] = {}
    for d in found:
        groups.setdefault((d.server, d.announced_wscale, d.rcv_wscale), []).append(d)
    out = []
    for (server, announced, actual), group in sorted(groups.items()):
        factor = shrink_factor(announced, actual)
        clients = Counter(d.client.rsplit(":", 1)[0] for d in group)
        out.append(
            Finding(
                "wscale-mismatch",
                Severity.CRITICAL if factor >= 8 else Severity.WARNING,
                connection_subject(ALL_CLIENTS, server),
                f"{len(group)} of {joined} connections: the SYN-ACK announced window scale "
                f"{announced} but the server's socket scales its windows by {actual}; its "
                f"clients read windows {misread(announced, actual)}",
                {
                    "announced_wscale": announced,
                    "actual_wscale": actual,
                    "shrink_factor": factor,
                    "source": "SYN-ACK in the capture against the server's sock_diag",
                    "socket_wscale": actual,
                    "direction": "server-to-client",
                    "connections": len(group),
                    "clients": dict(clients.most_common()),
                    "handshakes_joined": joined,
                    "connections_listed": [d.client for d in group[:LISTED]],
                },
                "The kernel's SYN-cookie path gave these connections another window scale "
                "than their SYN-ACK announced: upgrade to a kernel with commit 909172a14974, "
                "raise the listen backlog so that restarts do not overflow it, or turn SYN "
                "cookies off (`tcpsleuth audit` says which applies).",
            )
        )
    return out

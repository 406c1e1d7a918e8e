"""SYN-ACKs held against the server's sockets (detectors.handshakes) when a client
reconnected from the same port: only the four-tuple's last connection in the capture is
held against the socket, which is that connection's. The socket is a real one on
loopback, read over sock_diag; the handshakes are what a capture would say of it.

The lab's recorder met this (CI of a983783): a client whose cookie connection and whose
earlier ordinary connection shared a four-tuple was listed twice as a mismatch, once
with the ordinary connection's SYN-ACK (shift 7 against a socket using 7)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tcpsleuth.detectors import handshakes
from tcpsleuth.model.records import TcpConnection
from tcpsleuth.sources import sockdiag


@pytest.fixture
def server_socket() -> Iterator[TcpConnection]:
    """One established loopback connection, as the server's end shows it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            with accepted:
                here = client.getsockname()[1]
                table = sockdiag.snapshot(ports=frozenset({port}))
                [sock] = [
                    c for c in table.connections if c.local_port == port and c.remote_port == here
                ]
                yield sock


def _shake(sock: TcpConnection, announced: int | None) -> handshakes.Handshake:
    return handshakes.Handshake(sock.remote, sock.local, announced)


def test_only_the_four_tuples_last_handshake_meets_the_socket(server_socket) -> None:
    sock = server_socket
    assert sock.rcv_wscale is not None
    other = 1 if sock.rcv_wscale != 1 else 2
    agreeing, disagreeing = _shake(sock, sock.rcv_wscale), _shake(sock, other)
    # an earlier connection announced another shift; the last one agrees: nothing found
    found, joined = handshakes.disagreements([disagreeing, agreeing], [sock])
    assert (found, joined) == ([], 1)
    # the last one disagrees: found once, and named by its position among the handshakes
    found, joined = handshakes.disagreements([agreeing, agreeing, disagreeing], [sock])
    assert joined == 1
    assert [(d.index, d.announced_wscale, d.rcv_wscale) for d in found] == [
        (2, other, sock.rcv_wscale)
    ]
    # a handshake with no window-scale option, or no socket, is not joined
    assert handshakes.disagreements([_shake(sock, None)], [sock]) == ([], 0)
    assert handshakes.disagreements([agreeing], []) == ([], 0)

"""Both ends of a reconnect storm, run inside test namespaces.

storm_peers.py serve HOST PORT BACKLOG RCVBUF ACCEPT_DELAY
    listen with BACKLOG (RCVBUF > 0: SO_RCVBUF set before listen, as Kafka does);
    accept nothing for ACCEPT_DELAY seconds (a broker still loading its logs; a
    negative delay counts from the first connection, not from the listen), then
    accept as fast as possible, answer every Kafka-framed request with a small
    response, and hold the connections until killed
storm_peers.py clients HOST PORT COUNT SIZE SETTLE START_MS ADDR [ADDR ...]
    COUNT connections started together (START_MS >= 0: once the kernel's
    millisecond clock, which TCP timestamps follow, is 0.3 ms short of START_MS
    modulo 64), non-blocking, bound round-robin to the source addresses ADDR;
    each sends one Produce-like request of SIZE bytes whose
    header carries client.id ``producer-<index of its address>`` and reads the
    response (SIZE 0: sends nothing and waits until SETTLE seconds after the last
    connection was made, so that every server's next segment after its SYN-ACK, its
    answer to the client's FIN, comes SETTLE seconds or more after it: a handshake
    that a dropped SYN delayed by seconds under an emulated CPU gets its full SETTLE).
    Prints ``settled CONNECTED ANSWERED`` once every connection is answered or
    failed, or after SETTLE seconds; holds the sockets until stdin closes.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import struct
import sys
import time

RESPONSE = 12


def _raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(host: str, port: int, backlog: int, rcvbuf: int, accept_delay: float) -> None:
    _raise_nofile()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf > 0:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    server.bind((host, port))
    server.listen(backlog)
    print("listening", flush=True)
    if accept_delay < 0:  # the setup before the clients can take seconds in a guest
        first = selectors.DefaultSelector()
        first.register(server, selectors.EVENT_READ)
        first.select()
        first.close()
    time.sleep(abs(accept_delay))
    server.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ, None)
    pending: dict[socket.socket, bytearray] = {}
    while True:
        for key, _ in selector.select():
            if key.data is None:
                while True:
                    try:
                        conn, _ = server.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    pending[conn] = bytearray()
                    selector.register(conn, selectors.EVENT_READ, "conn")
                continue
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            try:
                chunk = conn.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                selector.unregister(conn)
                pending.pop(conn, None)
                conn.close()
                continue
            data = pending[conn]
            data += chunk
            while len(data) >= 4:
                (size,) = struct.unpack_from(">i", data)
                if len(data) < 4 + size:
                    break
                correlation_id = struct.unpack_from(">i", data, 8)[0]
                del data[: 4 + size]
                with contextlib.suppress(OSError):
                    conn.send(struct.pack(">ii", RESPONSE - 4, correlation_id) + bytes(4))


def request(size: int, client_id: str, correlation_id: int) -> bytes:
    """A Produce v7 request header with ``client_id`` and a body of zeros."""
    name = client_id.encode()
    header = struct.pack(">hhih", 0, 7, correlation_id, len(name)) + name
    body = bytes(max(size - 4 - len(header), 0))
    return struct.pack(">i", len(header) + len(body)) + header + body


def _wait_for_phase(start_ms: int) -> None:
    """Until CLOCK_MONOTONIC (tcp_clock_ns) reads start_ms - 0.3 modulo 64 ms."""
    target = (start_ms * 1_000_000 - 300_000) % 64_000_000
    now = time.monotonic_ns()
    wait = (target - now % 64_000_000) % 64_000_000
    time.sleep(max(wait - 2_000_000, 0) / 1e9)
    end = now + wait
    while time.monotonic_ns() < end:
        pass


def clients(
    host: str, port: int, count: int, size: int, settle: float, start_ms: int, addrs: list[str]
) -> None:
    _raise_nofile()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    selector = selectors.DefaultSelector()
    socks = []
    for i in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        which = i % len(addrs)
        if len(addrs) > 1:
            sock.bind((addrs[which], 0))
        sock.setblocking(False)
        if start_ms < 0:
            sock.connect_ex((host, port))
            selector.register(sock, selectors.EVENT_WRITE, [which, i, b"", 0])
        socks.append(sock)
    if start_ms >= 0:
        # made first, so that the SYNs leave as close together as connect() allows (a
        # burst timed to the clock's phase must fit in it). Only then: 1,500 clients
        # so, in one CI run, left a cookie SYN-ACK out of the client's capture
        _wait_for_phase(start_ms)
        for sock in socks:
            sock.connect_ex((host, port))
        for i, sock in enumerate(socks):
            selector.register(sock, selectors.EVENT_WRITE, [i % len(addrs), i, b"", 0])
    connected = answered = failed = 0
    deadline = time.monotonic() + settle
    while connected + failed < count or answered < connected:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for key, events in selector.select(timeout=min(left, 0.5)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            state = key.data
            if events & selectors.EVENT_WRITE and not state[2]:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                    selector.unregister(sock)
                    failed += 1
                    continue
                connected += 1
                if size == 0:
                    selector.unregister(sock)  # idle until stdin closes
                    deadline = max(deadline, time.monotonic() + settle)
                    continue
                state[2] = request(size, f"producer-{state[0]}", state[1])
            if state[2] and state[3] < len(state[2]):
                try:
                    state[3] += sock.send(state[2][state[3] :])
                except BlockingIOError:
                    pass
                except OSError:
                    selector.unregister(sock)
                    failed += 1
                    continue
                if state[3] >= len(state[2]):
                    selector.modify(sock, selectors.EVENT_READ, state)
                continue
            if events & selectors.EVENT_READ:
                try:
                    got = sock.recv(RESPONSE)
                except OSError:
                    got = b""
                selector.unregister(sock)
                if got:
                    answered += 1
    print(f"settled {connected} {answered}", flush=True)
    sys.stdin.read()
    for sock in socks:
        sock.close()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
    else:
        clients(
            sys.argv[2],
            int(sys.argv[3]),
            int(sys.argv[4]),
            int(sys.argv[5]),
            float(sys.argv[6]),
            int(sys.argv[7]),
            sys.argv[8:],
        )

"""Kafka-framed request/response traffic for capture tests, run inside test namespaces.

  kafka_like.py serve HOST PORT [RCVBUF]
      (RCVBUF -1: for storms, accept only after 0.5 s, then hold connections silently)
      answer every request (size, api_key, api_version, correlation_id, body) with a
      response (size, correlation_id, 8 bytes); RCVBUF sets SO_RCVBUF before listen,
      as Kafka's SocketServer does
  kafka_like.py send HOST PORT CONNS REQUESTS SIZE [START_MS]
      CONNS connections one after another, each sending REQUESTS Produce requests of
      SIZE bytes and reading each response; prints the seconds each request took.
      START_MS >= 0: the first connects once the kernel's millisecond clock is 0.3 ms
      short of START_MS modulo 64 (storm_peers.py)
The request bodies are zeros: only the headers matter to the capture analyzer.
"""

from __future__ import annotations

import resource
import socket
import struct
import sys
import threading
import time

TIMEOUT = 20.0


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return bytes(data)


def serve(host: str, port: int, rcvbuf: int) -> None:
    # a storm holds thousands of connections open at once
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf > 0:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    server.bind((host, port))
    server.listen(50)
    print("listening", flush=True)

    if rcvbuf < 0:
        # sink mode for storms: like a broker still starting, accept nothing for a
        # moment (the accept queue fills, the SYN queue overflows into cookies),
        # then accept as fast as possible and hold the sockets
        held = []
        time.sleep(0.5)
        while True:
            conn, _ = server.accept()
            held.append(conn)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        with conn:
            try:
                while True:
                    (size,) = struct.unpack(">i", _recv_exact(conn, 4))
                    body = _recv_exact(conn, size)
                    correlation_id = struct.unpack_from(">i", body, 4)[0]
                    conn.sendall(struct.pack(">ii", 12, correlation_id) + bytes(8))
            except (ConnectionError, OSError):
                return

    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def send(host: str, port: int, conns: int, requests: int, size: int, start_ms: int = -1) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    timings = []
    correlation_id = 0
    if start_ms >= 0:
        from storm_peers import _wait_for_phase  # beside this script

        _wait_for_phase(start_ms)
    for _ in range(conns):
        with socket.socket(family, socket.SOCK_STREAM) as conn:
            conn.settimeout(TIMEOUT)
            conn.connect((host, port))
            for _ in range(requests):
                correlation_id += 1
                # api_key 0 (Produce), version 7, then a client id of length 0
                header = struct.pack(">hhih", 0, 7, correlation_id, 0)
                body = header + bytes(size - len(header))
                start = time.monotonic()
                conn.sendall(struct.pack(">i", len(body)) + body)
                (rsize,) = struct.unpack(">i", _recv_exact(conn, 4))
                _recv_exact(conn, rsize)
                timings.append(time.monotonic() - start)
    print(" ".join(f"{t:.6f}" for t in timings), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    else:
        send(sys.argv[2], *[int(a) for a in sys.argv[3:8]])

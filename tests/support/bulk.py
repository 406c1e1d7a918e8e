"""Bulk traffic for tests: a sink server and senders, run inside test namespaces.

  bulk.py serve HOST PORT                 accept connections, read them to the end
  bulk.py send HOST PORT SECONDS [CONNS]  CONNS connections sending for SECONDS
The sender prints one line: the bytes each connection sent, space-separated.
"""

from __future__ import annotations

import socket
import sys
import threading
import time


def serve(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(128)
    print("listening", flush=True)

    def drain(conn: socket.socket) -> None:
        with conn:
            while conn.recv(1 << 16):
                pass

    while True:
        conn, _ = server.accept()
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


def send(host: str, port: int, seconds: float, conns: int) -> None:
    sent = [0] * conns
    chunk = b"x" * 16384

    def one(i: int) -> None:
        with socket.create_connection((host, port), timeout=seconds + 10) as sock:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                sent[i] += sock.send(chunk)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(conns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(" ".join(map(str, sent)), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        send(
            sys.argv[2],
            int(sys.argv[3]),
            float(sys.argv[4]),
            int(sys.argv[5]) if len(sys.argv) > 5 else 1,
        )

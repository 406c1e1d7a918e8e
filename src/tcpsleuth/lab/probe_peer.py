"""The two ends of the kernel self-test, run inside its namespaces.

probe_peer.py serve RCVBUF BACKLOG PORT ADDR [ADDR ...]
    listen on each address with SO_RCVBUF set before listen(), read everything;
    print "listening" once ready
probe_peer.py connect BYTES PORT ADDR [ADDR ...]
    one connection per address, send BYTES on each and keep them open; print
    "connected" once every byte is acknowledged, then wait for standard input to close
"""

from __future__ import annotations

import socket
import sys
import threading
import time


def serve(rcvbuf: int, backlog: int, port: int, addresses: list[str]) -> None:
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf > 0:
            # before listen(), as Kafka does: the bug needs a listener with a locked buffer
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        listener.bind((address, port))
        listener.listen(backlog)
        threading.Thread(target=_accept, args=(listener,), daemon=True).start()
    print("listening", flush=True)
    sys.stdin.read()


def _accept(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_drain, args=(conn,), daemon=True).start()


def _drain(conn: socket.socket) -> None:
    while conn.recv(1 << 16):
        pass


def connect(size: int, port: int, addresses: list[str]) -> None:
    held = []
    for address in addresses:
        conn = socket.create_connection((address, port), timeout=30)
        conn.sendall(b"p" * size)
        held.append(conn)
    time.sleep(0.2)  # the last ACKs
    print("connected", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])
    else:
        connect(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])

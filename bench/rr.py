"""Request/response traffic for benchmarks: run inside lab namespaces.

  rr.py serve HOST PORT
  rr.py load HOST PORT SECONDS CONNS REQUEST_BYTES
The load prints the number of completed requests.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

RESPONSE = b"r" * 64


def _read_exactly(sock: socket.socket, size: int) -> bool:
    while size:
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            return False
        size -= len(chunk)
    return True


def serve(host: str, port: int) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(128)
    print("listening", flush=True)

    def handle(conn: socket.socket) -> None:
        with conn:
            while True:
                header = conn.recv(4, socket.MSG_WAITALL)
                if len(header) < 4 or not _read_exactly(conn, int.from_bytes(header, "big")):
                    return
                conn.sendall(RESPONSE)

    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def load(host: str, port: int, seconds: float, conns: int, size: int) -> None:
    done = [0] * conns
    request = size.to_bytes(4, "big") + b"q" * size

    def one(i: int) -> None:
        with socket.create_connection((host, port)) as sock:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                sock.sendall(request)
                _read_exactly(sock, len(RESPONSE))
                done[i] += 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(conns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(sum(done), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))

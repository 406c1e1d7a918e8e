"""Paced request traffic for socket tests, run inside test namespaces.

  paced.py send HOST PORT SECONDS CONNS BYTES INTERVAL_MS
CONNS connections each write BYTES every INTERVAL_MS for SECONDS (like a producer
sending batches), then print "done" and hold the connections open until stdin
closes, so both ends can still be inspected. With a sane window each batch fits
in the window and the sender is never held back; with a misread window every
batch takes many round trips. Pair with `bulk.py serve` on the other end.
"""

from __future__ import annotations

import socket
import sys
import threading
import time


def main() -> None:
    host, port = sys.argv[2], int(sys.argv[3])
    seconds, conns = float(sys.argv[4]), int(sys.argv[5])
    size, interval = int(sys.argv[6]), float(sys.argv[7]) / 1000
    batch = b"p" * size
    sockets = [socket.create_connection((host, port), timeout=30) for _ in range(conns)]
    print("connected", flush=True)

    def run(sock: socket.socket) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sock.sendall(batch)
            time.sleep(interval)

    threads = [threading.Thread(target=run, args=(s,)) for s in sockets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("done", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()

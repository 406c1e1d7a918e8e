"""Run inside a test namespace: a listener with connections of two window-scale shifts,
and clients that reconnect when their connection is ended (for `tcpsleuth heal`).

Usage: heal_clients.py --port 9092 --early 12 --late 20 [--rcvbuf 102400] [--backlog 50]
[--host 127.0.0.1] [--connect ADDR ...] [--client-netns NAME] [--no-lock]

The listener starts with its buffer unlocked; ``--early`` clients connect; then the
listener's SO_RCVBUF is set (the kernel reads the lock when each SYN arrives, so only
later handshakes see it) and ``--late`` clients connect. The early connections use the
shift of an unlocked buffer, the late ones the locked buffer's: on this host's fixed
kernel, the two shifts a pre-fix kernel gives cookie and ordinary connections.
With --no-lock the buffer is never set (a clean listener). The clients connect to
--host, or in turn to each --connect address; with --client-netns their sockets are
made in that namespace (the listener stays in the one this runs in), as remote hosts'.
With --no-reconnect an ended client stays away.

Every client that reads a reset or end of file reconnects once, at once, as a Kafka
client does. The server side closes a connection whose read fails. Prints
"ready <early> <late>" once everything is connected and accepted, then
"reconnected <n>" lines as clients come back; holds until standard input closes.
"""

from __future__ import annotations

import argparse
import itertools
import selectors
import socket
import sys
import threading
import time

from tcpsleuth.sources import netns


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--early", type=int, required=True)
    parser.add_argument("--late", type=int, required=True)
    parser.add_argument("--rcvbuf", type=int, default=102400)
    parser.add_argument("--backlog", type=int, default=50)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--no-lock", action="store_true")
    parser.add_argument("--connect", action="append", default=[])
    parser.add_argument("--client-netns", default=None)
    parser.add_argument("--no-reconnect", action="store_true")
    args = parser.parse_args()
    targets = itertools.cycle(args.connect or [args.host])
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((args.host, args.port))
    server.listen(args.backlog)
    lock = threading.Lock()
    selector = selectors.DefaultSelector()
    accepted: list[socket.socket] = []
    reconnected = 0

    def accept_forever() -> None:
        while True:
            conn, _ = server.accept()
            with lock:
                accepted.append(conn)
                selector.register(conn, selectors.EVENT_READ, "server")

    threading.Thread(target=accept_forever, daemon=True).start()

    def connect() -> socket.socket:
        with netns.entered(args.client_netns):
            client = socket.create_connection((next(targets), args.port), timeout=30)
        with lock:
            selector.register(client, selectors.EVENT_READ, "client")
        return client

    for _ in range(args.early):
        connect()
    if not args.no_lock:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    for _ in range(args.late):
        connect()
    total = args.early + args.late
    deadline = time.monotonic() + 60
    while len(accepted) < total and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"ready {args.early} {args.late}", flush=True)

    def watch_stdin() -> None:
        sys.stdin.read()
        sys.exit(0)

    stopper = threading.Thread(target=watch_stdin, daemon=True)
    stopper.start()
    while stopper.is_alive():
        with lock:
            ready = selector.select(timeout=0) if selector.get_map() else []
        if not ready:
            time.sleep(0.02)
            continue
        for key, _ in ready:
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if data:
                continue
            with lock:
                selector.unregister(sock)
            sock.close()
            if key.data == "client" and not args.no_reconnect:
                connect()
                reconnected += 1
                print(f"reconnected {reconnected}", flush=True)


if __name__ == "__main__":
    main()

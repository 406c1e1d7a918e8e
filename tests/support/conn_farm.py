"""Run inside a test namespace: a listener and many established connections to it.

Usage: conn_farm.py --port 9092 --backlog 50 --clients 1000
Prints "ready <n>" once all clients are connected and accepted, then holds the
connections until its standard input closes (or it is killed).
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import threading


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backlog", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rcvbuf", type=int, default=0)
    args = parser.parse_args()
    need = 2 * args.clients + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, soft), max(need, hard)))

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.rcvbuf:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    server.bind((args.host, args.port))
    server.listen(args.backlog)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept_all() -> None:
        while len(accepted) < args.clients:
            conn, _ = server.accept()
            accepted.append(conn)
        done.set()

    threading.Thread(target=accept_all, daemon=True).start()
    clients = []
    for _ in range(args.clients):
        client = socket.create_connection((args.host, args.port), timeout=30)
        clients.append(client)
    if not done.wait(60):
        print(f"only {len(accepted)} of {args.clients} accepted", flush=True)
        sys.exit(1)
    print(f"ready {len(accepted)}", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()

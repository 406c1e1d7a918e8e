"""Run inside a test namespace: a listener and many established connections to it.

Usage: conn_farm.py --port 9092 --backlog 50 --clients 1000 [--storm]
With --storm every client connects at once (non-blocking), as after a server
restart, so a small backlog overflows and the kernel sends SYN cookies; each
client then sends one byte so that connections whose final ACK was dropped on
a full accept queue are completed by the retransmission.
Prints "ready <accepted> <connected>" once all clients are connected and
accepted, then holds the connections until its standard input closes (or it is killed).
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import selectors
import socket
import subprocess
import sys
import threading
import time


def storm(family: int, args: argparse.Namespace) -> list[socket.socket]:
    clients = []
    for _ in range(args.clients):
        client = socket.socket(family, socket.SOCK_STREAM)
        client.setblocking(False)
        client.connect_ex((args.host, args.port))
        clients.append(client)
    pending = set(clients)
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client, selectors.EVENT_WRITE)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1):
            client = key.fileobj
            assert isinstance(client, socket.socket)
            selector.unregister(client)
            pending.discard(client)
            if client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                client.send(b"x")
    return clients


HELD: list[object] = []


def slow_loopback(on: bool) -> None:
    """On this namespace's loopback, handshakes complete within the connect() call that
    starts them, so even thousands of them hardly ever overlap, and whether a storm
    overflows the SYN queue would depend on how the two CPUs happen to interleave. A
    5 Mbit/s token bucket on lo for the storm's duration makes the handshakes overlap,
    as the reconnects of thousands of clients do on a broker, so the SYN queue fills
    every time. Only the namespace this runs in is changed."""
    argv = ["tc", "qdisc", "replace" if on else "del", "dev", "lo", "root"]
    if on:
        argv += ["tbf", "rate", "5mbit", "burst", "10kb", "limit", "20mb"]
    subprocess.run(argv, check=on, capture_output=True)


def storm_with_acceptor_process(
    server: socket.socket, family: int, args: argparse.Namespace
) -> int:
    """Accept in a separate process, so that accepting runs truly alongside the
    connecting loop (one process's threads would take turns on the interpreter lock
    and the listener would see either no accepts or no SYNs for long stretches)."""
    report_r, report_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        os.close(hold_w)
        time.sleep(0.5)  # a restarting server is busy before it accepts: the queue fills
        held = [server.accept()[0] for _ in range(args.clients)]
        os.write(report_w, f"{len(held)}\n".encode())
        os.read(hold_r, 1)  # until the parent exits or closes its end
        os._exit(0)
    os.close(report_w)
    os.close(hold_r)
    server.close()
    slow_loopback(True)
    try:
        clients = storm(family, args)
        ready, _, _ = select.select([report_r], [], [], 90)
    finally:
        slow_loopback(False)
    if not ready:
        print(f"the acceptor did not accept all {args.clients} connections", flush=True)
        sys.exit(1)
    HELD.extend(clients)  # the connections live as long as this process
    HELD.append(hold_w)
    return int(os.read(report_r, 64).split()[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backlog", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rcvbuf", type=int, default=0)
    parser.add_argument("--storm", action="store_true")
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
    if args.storm:
        accepted_count = storm_with_acceptor_process(server, family, args)
        print(f"ready {accepted_count} {args.clients}", flush=True)
        sys.stdin.read()
        return
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept_all() -> None:
        while len(accepted) < args.clients:
            conn, _ = server.accept()
            accepted.append(conn)
        done.set()

    threading.Thread(target=accept_all, daemon=True).start()
    held = [
        socket.create_connection((args.host, args.port), timeout=30) for _ in range(args.clients)
    ]
    if not done.wait(90):
        print(f"only {len(accepted)} of {args.clients} accepted", flush=True)
        sys.exit(1)
    print(f"ready {len(accepted)} {len(held)}", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()

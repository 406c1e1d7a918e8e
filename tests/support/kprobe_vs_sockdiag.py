"""Run inside a guest kernel (tests/system/lab/test_lab_kernel.py): the shifts the kprobe trace
reads from __tcp_select_window against the shifts sock_diag reports, on the same
connections.

In a namespace of its own with tcp_syncookies=2 (every connection a cookie one), a
listener with SO_RCVBUF=102400 takes 4 IPv4 and 4 IPv6 connections whose clients keep
sending 1 KB every 20 ms; while they do, the kprobe trace runs for 3 s and then one
sock_diag snapshot is taken. Prints one JSON document: both views, keyed by the
socket's (local address, local port, remote address, remote port).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

from tcpsleuth.detectors.tracing import fold
from tcpsleuth.lab import namespaces
from tcpsleuth.sources import netns, sockdiag
from tcpsleuth.sources.bpf import tracer

PORT = 9092
RCVBUF = 102400
PER_FAMILY = 4


def serve(listener: socket.socket, stop: threading.Event) -> None:
    listener.settimeout(0.2)
    conns = []
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
            conn.setblocking(False)
            conns.append(conn)
        except TimeoutError:
            pass
        for conn in conns:
            try:
                while conn.recv(65536):
                    pass
            except BlockingIOError:
                pass


def send(clients: list[socket.socket], stop: threading.Event) -> None:
    while not stop.is_set():
        for client in clients:
            client.send(b"x" * 1024)
        time.sleep(0.02)


def main() -> int:
    stop = threading.Event()
    with namespaces.namespace("kprobe") as ns:
        namespaces.sysctl(ns, "net.ipv4.tcp_syncookies", 2)
        inode = tracer.netns_inode(ns)
        with netns.entered(ns):
            listeners, clients = [], []
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                listener = socket.socket(family, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                listener.bind((host, PORT))
                listener.listen(50)
                listeners.append(listener)
                threading.Thread(target=serve, args=(listener, stop), daemon=True).start()
                for _ in range(PER_FAMILY):
                    clients.append(socket.create_connection((host, PORT)))
            threading.Thread(target=send, args=(clients, stop), daemon=True).start()
            program = tracer.build_program(frozenset({PORT}), frozenset({inode}), 10, "kprobe")
            samples = list(tracer.trace(program, 3.0, method="kprobe"))
            table = sockdiag.snapshot(None, ports=frozenset({PORT}))
            stop.set()
        traced = [
            {
                "key": [s.last.local_ip, s.local_port, s.last.remote_ip, s.remote_port],
                "snd_wscale": s.last.snd_wscale,
                "rcv_wscale": s.last.rcv_wscale,
                "samples": len(s.samples),
            }
            for s in fold(samples)
        ]
        listed = [
            {
                "key": [c.local_ip, c.local_port, c.remote_ip, c.remote_port],
                "snd_wscale": c.snd_wscale,
                "rcv_wscale": c.rcv_wscale,
                "server_side": c.local_port == PORT,
            }
            for c in table.connections
            if c.state == "ESTAB"
        ]
    json.dump({"traced": traced, "sock_diag": listed}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

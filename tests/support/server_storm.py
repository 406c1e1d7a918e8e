"""A reconnect storm against a real server (nginx, ZooKeeper) in the server namespace,
speaking the server's own protocol (nginx's connections stay open for `ss`):

  server_storm.py HOST PORT COUNT SETTLE http|zookeeper

COUNT connections started together (non-blocking); each sends one request (an HTTP/1.1
GET with keep-alive, or ZooKeeper's ``srvr`` four-letter word, after which ZooKeeper
closes the connection; a hand-made ConnectRequest was closed at once, without a log
line, by 3.9.5) and reads the first bytes of the answer. Prints ``settled CONNECTED
ANSWERED`` once every connection is answered or failed, or after SETTLE seconds; holds
the sockets until stdin closes.
"""

from __future__ import annotations

import resource
import selectors
import socket
import sys
import time


def request(protocol: str, host: str) -> bytes:
    if protocol == "http":
        return f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode()
    # the four-letter word ZooKeeper allows by default (4lw.commands.whitelist=srvr): it
    # answers with its state and closes the connection
    return b"srvr"


def main(host: str, port: int, count: int, settle: float, protocol: str) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    payload = request(protocol, host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    selector = selectors.DefaultSelector()
    socks = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((host, port))
        selector.register(sock, selectors.EVENT_WRITE, [False])
        socks.append(sock)
    connected = answered = failed = 0
    deadline = time.monotonic() + settle
    while connected + failed < count or answered < connected:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for key, events in selector.select(timeout=min(left, 0.5)):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if events & selectors.EVENT_WRITE and not key.data[0]:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                    selector.unregister(sock)
                    failed += 1
                    continue
                connected += 1
                key.data[0] = True
                try:
                    sock.send(payload)
                except OSError:
                    selector.unregister(sock)
                    failed += 1
                    continue
                selector.modify(sock, selectors.EVENT_READ, key.data)
            elif events & selectors.EVENT_READ:
                try:
                    got = sock.recv(4096)
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
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])

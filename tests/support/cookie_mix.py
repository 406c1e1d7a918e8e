"""Run inside a test namespace: one listener whose connections are part SYN
cookies, part normal handshakes, deterministically.

Usage: cookie_mix.py --port 9092 --cookies 40 --normal 60
With net.ipv4.tcp_syncookies=2 the kernel answers every SYN with a cookie; the
first --cookies clients connect so, then the sysctl goes back to 1 (cookies only
on overflow, and the backlog is large enough for none) for the --normal ones.
Prints "ready" once all are accepted, then holds them until stdin closes.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

SYNCOOKIES = Path("/proc/sys/net/ipv4/tcp_syncookies")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cookies", type=int, required=True)
    parser.add_argument("--normal", type=int, required=True)
    args = parser.parse_args()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", args.port))
    server.listen(1024)
    held = []
    for mode, count in (("2", args.cookies), ("1", args.normal)):
        SYNCOOKIES.write_text(mode)
        for _ in range(count):
            client = socket.create_connection(("127.0.0.1", args.port), timeout=10)
            # a cookie connection exists on the server only once the client's first
            # segment after the handshake has arrived; a byte makes sure of it
            client.send(b"x")
            accepted, _ = server.accept()
            held += [client, accepted]
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()

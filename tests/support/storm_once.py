"""Many clients connecting at once (a reconnect storm), run inside a test namespace.

  storm_once.py HOST PORT CLIENTS
All connects are started non-blocking together; each connected client sends one
byte; all are closed 7 s later (time for the server to accept them all). Prints how
many connected.
"""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import sys
import time

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 100)), hard))
selector = selectors.DefaultSelector()
clients = []
for _ in range(count):
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setblocking(False)
    client.connect_ex((host, port))
    selector.register(client, selectors.EVENT_WRITE)
    clients.append(client)
connected = 0
deadline = time.monotonic() + 10
while connected < count and time.monotonic() < deadline:
    for key, _ in selector.select(timeout=0.5):
        sock = key.fileobj
        selector.unregister(sock)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            connected += 1
            with contextlib.suppress(OSError):
                sock.send(b"x")
time.sleep(7)
for client in clients:
    client.close()
print(connected, flush=True)

"""A delay link without netem: a user-space relay between two tun devices.

This machine's kernel has no netem qdisc, so the lab makes its link delay itself:
each of two namespaces gets a tun device (L3, raw IP packets), and this process
reads every packet one side sends and writes it to the other side's tun after
half the round-trip time, paced to the link rate like a serialising wire. The
tun devices belong to this process: when it exits, for any reason, they vanish.

  python3 -m tcpsleuth.lab.relay --client NS --server NS --rtt-ms 1 --rate-mbit 1000
prints "ready" once both ends are configured, and runs until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import heapq
import os
import select
import signal
import struct
import subprocess
import sys
import time

from tcpsleuth.lab.topology import CLIENT_IP4, CLIENT_IP6, SERVER_IP4, SERVER_IP6
from tcpsleuth.sources import netns

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
TUN_NAME = "tun0"
MTU = 1500
PR_SET_TIMERSLACK = 29
EARLY = 0.0002  # seconds
# What one direction costs before any delay is added: tun to this process and back out,
# measured here as about 50 us (a round trip through the relay with no delay takes
# 0.07 ms where the same handshake over veth takes 0.04 ms, and the rest is wake-up).
FORWARDING = 0.00005


def open_tun(ns: str) -> int:
    """A tun device named tun0 created inside namespace ``ns``; returns its fd."""
    with netns.entered(ns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TUN_NAME.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def configure(ns: str, local4: str, peer4: str, local6: str, peer6: str) -> None:
    for argv in (
        ["ip", "-n", ns, "link", "set", TUN_NAME, "mtu", str(MTU), "up"],
        ["ip", "-n", ns, "addr", "add", local4, "peer", peer4, "dev", TUN_NAME],
        ["ip", "-n", ns, "-6", "addr", "add", f"{local6}/128", "dev", TUN_NAME, "nodad"],
        ["ip", "-n", ns, "-6", "route", "add", f"{peer6}/128", "dev", TUN_NAME],
    ):
        subprocess.run(argv, check=True, capture_output=True)


def relay(client_fd: int, server_fd: int, one_way_s: float, bytes_per_s: float) -> None:
    """Forward packets both ways, each after ``one_way_s``, paced to ``bytes_per_s``."""
    queue: list[tuple[float, int, int, bytes]] = []  # (due, seq, out fd, packet)
    wire_free = {client_fd: 0.0, server_fd: 0.0}  # when each direction's wire is idle
    peer = {client_fd: server_fd, server_fd: client_fd}
    fds = [client_fd, server_fd]
    seq = 0
    while True:
        now = time.monotonic()
        # select() waits in microseconds; poll() and epoll() round up to whole milliseconds,
        # which would add up to 2 ms to every round trip.
        # Waking up takes the scheduler tens of microseconds; sleep until EARLY before the
        # next packet is due and poll the last stretch, so that packets leave on time.
        timeout = max(0.0, queue[0][0] - now - EARLY) if queue else 0.1
        readable, _, _ = select.select(fds, [], [], timeout)
        for fd in readable:
            for _ in range(256):  # drain a burst without starving the other side
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                now = time.monotonic()
                sent_at = max(now, wire_free[fd]) + len(packet) / bytes_per_s
                wire_free[fd] = sent_at
                seq += 1
                heapq.heappush(queue, (sent_at + one_way_s, seq, peer[fd], packet))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, packet = heapq.heappop(queue)
            try:  # noqa: SIM105 (hot path: cheaper than contextlib.suppress)
                os.write(out, packet)
            except OSError:
                pass  # the far side's queue is full: the packet is lost, as on a wire


def _tight_timers() -> None:
    """Wake up on time: the default 50 us timer slack, paid twice per packet, would add
    about 0.2 ms to every round trip."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--rtt-ms", type=float, default=1.0)
    parser.add_argument("--rate-mbit", type=float, default=1000.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _tight_timers()
    client_fd, server_fd = open_tun(args.client), open_tun(args.server)
    configure(args.client, CLIENT_IP4, SERVER_IP4, CLIENT_IP6, SERVER_IP6)
    configure(args.server, SERVER_IP4, CLIENT_IP4, SERVER_IP6, CLIENT_IP6)
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        # The packet's own trip through tun and this loop is part of the link too.
        one_way = max(0.0, args.rtt_ms / 2000 - FORWARDING)
        relay(client_fd, server_fd, one_way, args.rate_mbit * 1e6 / 8)


if __name__ == "__main__":
    main()

"""Two namespaces with paced client-to-server traffic, with or without the
window-scale fault (the server's SYN-ACKs announce shift 1 while it uses 7).

Used by the socket tests and by tests/fixtures/ss/capture.py, so the fixtures
come from the same setup the tests check live.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tcpsleuth.lab import faults, namespaces, topology

SUPPORT = Path(__file__).parent
PORT = 9092
ANNOUNCED, ACTUAL = 1, 7
# tcp_rmem max 6291456 makes a Linux listener without SO_RCVBUF use shift 7
SERVER_RMEM = "4096 131072 6291456"


@dataclass(frozen=True)
class Traffic:
    pair: topology.Pair
    ipv4_connections: int
    ipv6_connections: int


def _spawn(ns: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


VIRTUAL_IP4 = "198.18.0.100"


def _dnat(pair: topology.Pair) -> str:
    """Clients connect to VIRTUAL_IP4, which the server's namespace rewrites to its
    own address on the way in (DNAT, as a load balancer in front of a broker does):
    the client sees the virtual address, the server its real one; ports are kept."""
    ruleset = (
        "table ip tcpsleuth_nat {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority -100; policy accept;\n"
        f"    ip daddr {VIRTUAL_IP4} tcp dport {PORT} dnat to {pair.server_ip4}\n"
        "  }\n"
        "}\n"
    )
    faults.load_ruleset(pair.server, ruleset)
    subprocess.run(
        ["ip", "-n", pair.client, "route", "add", f"{VIRTUAL_IP4}/32", "via", pair.server_ip4],
        check=True,
    )
    return VIRTUAL_IP4


@contextlib.contextmanager
def paced_traffic(
    fault: bool,
    seconds: float = 3.0,
    ipv4_connections: int = 3,
    ipv6_connections: int = 1,
    batch_bytes: int = 16384,
    interval_ms: float = 5.0,
    before_traffic: Callable[[str, int], None] | None = None,
    dual_stack: bool = False,
    nat: bool = False,
) -> Iterator[Traffic]:
    """Yields once the traffic has finished; the connections stay open (idle)
    until the block ends, so both ends can be read at leisure."""
    with topology.server_client_pair("socktest") as pair:
        namespaces.sysctl(pair.server, "net.ipv4.tcp_rmem", SERVER_RMEM)
        # Without receive-buffer autotuning the server's window stays near its
        # initial 64 KB, as on a broker whose buffers are already in use: misread
        # 64 times too small it stays under one segment for the whole run.
        namespaces.sysctl(pair.server, "net.ipv4.tcp_moderate_rcvbuf", 0)
        if fault:
            faults.announce_wscale(pair.server, PORT, ANNOUNCED)
        target4 = pair.server_ip4
        if nat:
            target4 = _dnat(pair)
        if before_traffic is not None:
            before_traffic(pair.server, PORT)  # another fault of tcpsleuth.lab.faults
        processes = []
        try:
            # dual stack: one listener on [::] sees IPv4 clients as ::ffff:a.b.c.d
            for host in ("::",) if dual_stack else (pair.server_ip4, pair.server_ip6):
                server = _spawn(pair.server, str(SUPPORT / "bulk.py"), "serve", host, str(PORT))
                processes.append(server)
                assert server.stdout is not None
                assert server.stdout.readline().strip() == "listening"
            senders = []
            for host, count in (
                (target4, ipv4_connections),
                (pair.server_ip6, ipv6_connections),
            ):
                if count:
                    sender = _spawn(
                        pair.client,
                        str(SUPPORT / "paced.py"),
                        "send",
                        host,
                        str(PORT),
                        str(seconds),
                        str(count),
                        str(batch_bytes),
                        str(interval_ms),
                    )
                    processes.append(sender)
                    senders.append(sender)
            for sender in senders:
                assert sender.stdout is not None
                assert sender.stdout.readline().strip() == "connected"
            for sender in senders:
                assert sender.stdout is not None
                assert sender.stdout.readline().strip() == "done"
            time.sleep(0.2)  # last ACKs
            yield Traffic(pair, ipv4_connections, ipv6_connections)
        finally:
            for process in processes:
                if process.stdin:
                    process.stdin.close()
                process.kill()
                process.wait()

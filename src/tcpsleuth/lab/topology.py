"""Two hosts on one machine: a server and a client namespace joined by a veth pair.

Addresses come from the benchmarking ranges (198.18.0.0/15, RFC 2544; 2001:db8::/32,
RFC 3849): they exist only inside the namespaces the lab or a test made, so no
traffic can leave the machine. The veth ends are created directly inside the two
namespaces (same name, ``eth0``, in each), so deleting the namespaces removes them.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.lab.namespaces import namespace

SERVER_IP4, CLIENT_IP4 = "198.18.0.1", "198.18.0.2"
SERVER_IP6, CLIENT_IP6 = "2001:db8::1", "2001:db8::2"
IFNAME = "eth0"


@dataclass(frozen=True)
class Pair:
    server: str  # namespace names
    client: str
    server_ip4: str = SERVER_IP4
    client_ip4: str = CLIENT_IP4
    server_ip6: str = SERVER_IP6
    client_ip6: str = CLIENT_IP6


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EnvironmentProblem(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")


def _veth(server: str, client: str) -> Pair:
    """A veth pair named eth0 in both namespaces, with the benchmarking addresses."""
    _run(
        "ip",
        "link",
        "add",
        IFNAME,
        "netns",
        server,
        "type",
        "veth",
        "peer",
        "name",
        IFNAME,
        "netns",
        client,
    )
    pair = Pair(server, client)
    for ns, ip4, ip6 in (
        (server, pair.server_ip4, pair.server_ip6),
        (client, pair.client_ip4, pair.client_ip6),
    ):
        _run("ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", IFNAME)
        _run("ip", "-n", ns, "addr", "add", f"{ip6}/64", "dev", IFNAME, "nodad")
        _run("ip", "-n", ns, "link", "set", IFNAME, "up")
    return pair


@contextlib.contextmanager
def server_client_pair(role: str = "pair") -> Iterator[Pair]:
    """A server and a client namespace over veth, IPv4 and IPv6, removed afterwards."""
    with namespace(f"{role}-srv") as server, namespace(f"{role}-cli") as client:
        yield _veth(server, client)


def netem_link(server: str, client: str, rtt_ms: float, rate_mbit: float) -> bool:
    """Join two namespaces by veth with netem delaying each direction by half the
    round-trip time at the link rate. False (and nothing left behind) when the kernel
    has no netem, as this machine's has not; the lab then uses its relay."""
    _veth(server, client)
    for ns in (server, client):
        result = subprocess.run(
            [
                "tc",
                "-n",
                ns,
                "qdisc",
                "add",
                "dev",
                IFNAME,
                "root",
                "netem",
                "delay",
                f"{rtt_ms / 2:.3f}ms",
                "rate",
                f"{rate_mbit:g}mbit",
                "limit",
                "100000",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            subprocess.run(["ip", "-n", server, "link", "del", IFNAME], capture_output=True)
            return False
    return True

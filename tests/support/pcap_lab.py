"""Captures made by tests: tcpdump in a client namespace, Kafka-framed traffic to a
server namespace over veth, with an optional nftables fault on the server's egress."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tcpsleuth.lab import faults
from tcpsleuth.lab.namespaces import sysctl
from tcpsleuth.lab.topology import Pair, server_client_pair

SUPPORT = Path(__file__).parent
PORT = 9092


@dataclass
class LabCapture:
    path: Path
    timings: list[float]
    server_netstat: dict[str, int]


def netstat(ns: str) -> dict[str, int]:
    """Absolute counters of namespace ``ns`` (-s: no history file, which nstat would
    otherwise share between namespaces and turn counts into increments)."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nstat", "-asz", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counters = json.loads(out)
    return {k: int(v) for table in counters.values() for k, v in table.items()}


def option_bits(namespace: str) -> int:
    """The low TSval bits a cookie carries for this namespace's SYNs: the window
    scale tcp_select_initial_window picks from the largest receive buffer, and SACK."""

    def read(name: str) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "exec", namespace, "sysctl", "-n", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [int(x) for x in out.split()]

    space = max(read("net.ipv4.tcp_rmem")[2], read("net.core.rmem_max")[0])
    wscale = min(max(space.bit_length() - 1 - 15, 0), 14)
    return wscale | (16 if read("net.ipv4.tcp_sack")[0] else 0)


class Tcpdump:
    def __init__(self, ns: str, path: Path, snaplen: int, iface: str = "eth0") -> None:
        argv = ["ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-n"]
        # a large buffer: a storm of 1,500 handshakes must not be dropped by the kernel
        argv += ["-B", "65536", "-s", str(snaplen), "-w", str(path)]
        argv += ["tcp", "port", str(PORT)]
        self.process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        if "data link type" in line:  # -i any says which cooked header it writes
            line = self.process.stderr.readline()
        if "listening" not in line:
            self.process.kill()
            raise RuntimeError(f"tcpdump did not start: {line!r}")

    def stop(self) -> None:
        # Without immediate mode the kernel hands packets over in blocks, at the
        # latest after a second; wait for the last block before stopping.
        time.sleep(1.2)
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=10)
        assert self.process.stderr is not None
        report = self.process.stderr.read()
        if not re.search(r"^0 packets dropped by kernel", report, re.MULTILINE):
            raise RuntimeError(f"tcpdump lost packets: {report!r}")


def make_capture(
    tmp: Path,
    name: str,
    clients: list[tuple[int, int, int, int]] | None = None,
    fault: Callable[[Pair], None] | None = None,
    server_sysctls: dict[str, str | int] | None = None,
    rcvbuf: int = 0,
    snaplen: int = 262144,
    storm: int = 0,
    iface: str = "eth0",
    in_phase: frozenset[int] = frozenset(),
) -> LabCapture:
    """Capture on the client side. ``clients``: (address family, conns, requests, size),
    one process each, one after another; ``in_phase``: the positions in ``clients``
    whose process connects first when the kernel's millisecond clock reads the
    option bits a cookie of its SYN carries (modulo 64: such a cookie's TSval shows no
    rounding)."""
    path = tmp / f"{name}.pcap"
    with server_client_pair("pcap") as pair:
        for key, value in (server_sysctls or {}).items():
            sysctl(pair.server, key, value)
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pair.server,
                sys.executable,
                str(SUPPORT / "kafka_like.py"),
                "serve",
                "::",
                str(PORT),
                str(-1 if storm else rcvbuf),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            assert server.stdout.readline().startswith("listening")
            if fault is not None:
                fault(pair)
            dump = Tcpdump(pair.client, path, snaplen, iface)
            timings: list[float] = []
            try:
                # 0.7 ms after the clock read the bits (kafka_like starts 0.3 ms
                # short of the millisecond it is given): not before, when the
                # cookie steps back by 64 ms
                start_ms = option_bits(pair.client) + 1 if in_phase else -1
                for at, (family, conns, requests, size) in enumerate(clients or []):
                    host = pair.server_ip4 if family == 4 else pair.server_ip6
                    result = subprocess.run(
                        [
                            "ip",
                            "netns",
                            "exec",
                            pair.client,
                            sys.executable,
                            str(SUPPORT / "kafka_like.py"),
                            "send",
                            host,
                            str(PORT),
                            str(conns),
                            str(requests),
                            str(size),
                            str(start_ms if at in in_phase else -1),
                        ],
                        capture_output=True,
                        text=True,
                        timeout=120,
                        check=True,
                    )
                    timings += [float(t) for t in result.stdout.split()]
                if storm:
                    farm = subprocess.run(
                        [
                            "ip",
                            "netns",
                            "exec",
                            pair.client,
                            sys.executable,
                            str(SUPPORT / "storm_once.py"),
                            pair.server_ip4,
                            str(PORT),
                            str(storm),
                        ],
                        capture_output=True,
                        text=True,
                        timeout=120,
                        check=True,
                    )
                    del farm
            finally:
                dump.stop()
            counters = netstat(pair.server)
        finally:
            server.kill()
            server.wait()
            faults.clear(pair.server)
    return LabCapture(path, timings, counters)


def drop_client_data(pair: Pair, one_in: int) -> None:
    """Drop one in ``one_in`` of the data segments the server receives (nftables in
    the server namespace), so that the client retransmits."""
    ruleset = (
        "table inet tcpsleuth_pcaptest {\n"
        "  chain data_in {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    tcp dport {PORT} meta length > 200 numgen random mod {one_in} == 0 drop\n"
        "  }\n"
        "}\n"
    )
    faults.load_ruleset(pair.server, ruleset)

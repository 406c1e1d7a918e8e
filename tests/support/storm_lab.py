"""Reconnect storms with their exact truth, for the capture detectors' tests.

A storm: COUNT clients (from one source address or many) connect at once to a
backlog-50 listener in another namespace, over veth; each sends one request and
reads the answer. tcpdump captures both ends. The truth comes from the kernel,
not from the analyzer:

- every SYN cookie: a cookie SYN-ACK leaves without a socket (tcp_make_synack()
  attaches an ordinary one to its request socket), so an nftables rule on the
  server's output that passes SYN-ACKs with an owner (``meta skuid``) and marks
  the rest with DSCP CS1 marks exactly the cookies, in both ends' captures (an
  nflog group read by ``tcpdump -i nflog:N`` lost most of them in a storm here);
  the analyzer never reads DSCP;
- every connection's shifts: ``ss -tni`` on both ends while the connections are
  open (the client's ``snd_wscale``, the server's ``rcv_wscale``);
- the kernel's ``TcpExtSyncookiesSent``.

Run as a program (inside a guest kernel, say) it writes the storm to a folder:

  storm_lab.py OUT_DIR [--clients N] [--addrs K] [--syncookies 1|2] ...
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

SUPPORT = Path(__file__).parent
sys.path[:0] = [str(SUPPORT.parent), str(SUPPORT.parent.parent / "src")]

from support.pcap_lab import netstat, option_bits  # noqa: E402
from tcpsleuth.lab import faults  # noqa: E402
from tcpsleuth.lab.namespaces import sysctl  # noqa: E402
from tcpsleuth.lab.topology import Pair, server_client_pair  # noqa: E402

PORT = 9092
TRUTH_TABLE = "tcpsleuth_truth"


@dataclass(frozen=True)
class StormConfig:
    clients: int = 1500
    addrs: int = 1  # client source addresses
    syncookies: int = 1
    timestamps: int = 1
    rcvbuf: int = 0  # SO_RCVBUF on the listener (0: not set)
    announce: int | None = None  # rewrite the cookie SYN-ACKs' shift to this
    backlog: int = 50
    size: int = 4096  # request bytes
    settle: float = 12.0
    accept_delay: float = 0.5  # negative: counted from the first connection
    family: int = 4
    drop_synacks: int = 0  # the client drops 1 in N SYN-ACKs: its SYN is retransmitted
    # start the clients when the kernel's ms clock modulo 64 equals the option bits of
    # their SYNs: the ordinary SYN-ACKs that fill the queue share the cookies' phase
    burst_in_phase: bool = False


@dataclass
class Storm:
    config: StormConfig
    server_pcap: Path
    client_pcap: Path
    netstat: dict[str, int]
    server_ss: str
    client_ss: str
    settled: str
    dropped: dict[str, int] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        doc = {
            "config": asdict(self.config),
            "netstat": self.netstat,
            "settled": self.settled,
            "dropped": self.dropped,
        }
        (folder / "storm.json").write_text(json.dumps(doc, indent=1))
        (folder / "server-ss.txt").write_text(self.server_ss)
        (folder / "client-ss.txt").write_text(self.client_ss)

    @classmethod
    def load(cls, folder: Path) -> Storm:
        doc = json.loads((folder / "storm.json").read_text())
        return cls(
            StormConfig(**doc["config"]),
            folder / "server.pcap",
            folder / "client.pcap",
            doc["netstat"],
            (folder / "server-ss.txt").read_text(),
            (folder / "client-ss.txt").read_text(),
            doc["settled"],
            doc["dropped"],
        )


class Dump:
    """tcpdump in a namespace, writing to ``path``."""

    def __init__(self, ns: str, iface: str, path: Path, *expr: str) -> None:
        argv = ["ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-n", "-B", "65536"]
        argv += ["-s", "256", "-w", str(path), *expr]
        self.process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        if "listening" not in line:
            self.process.kill()
            raise RuntimeError(f"tcpdump did not start: {line!r}")

    def stop(self) -> int:
        """Stop; the number of packets the kernel dropped."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=20)
        assert self.process.stderr is not None
        report = self.process.stderr.read()
        found = re.search(r"^(\d+) packets dropped by kernel", report, re.MULTILINE)
        return int(found.group(1)) if found else -1


def _ss(ns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-tniH", "state", "established"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _truth_rules(ns: str) -> None:
    """Mark every SYN-ACK sent without a socket (a SYN cookie) with DSCP CS1."""
    match = f"tcp sport {PORT} tcp flags & (syn | ack) == syn | ack"
    faults.load_ruleset(
        ns,
        f"table inet {TRUTH_TABLE} {{\n"
        "  chain synack_out {\n"
        "    type filter hook output priority -10; policy accept;\n"
        f"    {match} meta skuid >= 0 accept\n"
        f"    {match} meta nfproto ipv4 ip dscp set cs1\n"
        f"    {match} meta nfproto ipv6 ip6 dscp set cs1\n"
        "  }\n"
        "}\n",
    )


def _drop_synacks(ns: str, one_in: int) -> None:
    """The client loses 1 in ``one_in`` SYN-ACKs (after the capture point), so it
    retransmits its SYN and the server answers it again."""
    faults.load_ruleset(
        ns,
        f"table inet {TRUTH_TABLE} {{\n"
        "  chain synack_in {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"    tcp sport {PORT} tcp flags & (syn | ack) == syn | ack "
        f"numgen random mod {one_in} == 0 drop\n"
        "  }\n"
        "}\n",
    )


def _client_addrs(pair: Pair, config: StormConfig) -> list[str]:
    if config.addrs <= 1:
        return [pair.client_ip4 if config.family == 4 else pair.client_ip6]
    base4 = ipaddress.IPv4Address(pair.client_ip4) + 8
    base6 = ipaddress.IPv6Address(pair.client_ip6) + 8
    out = []
    for i in range(config.addrs):
        if config.family == 4:
            addr, prefix = str(base4 + i), 24
        else:
            addr, prefix = str(base6 + i), 64
        subprocess.run(
            ["ip", "-n", pair.client, "addr", "add", f"{addr}/{prefix}", "dev", "eth0", "nodad"]
            if config.family == 6
            else ["ip", "-n", pair.client, "addr", "add", f"{addr}/{prefix}", "dev", "eth0"],
            check=True,
        )
        out.append(addr)
    return out


@contextlib.contextmanager
def _process(argv: list[str], **kwargs: object) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(argv, text=True, **kwargs)  # type: ignore[call-overload]
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def run_storm(folder: Path, config: StormConfig) -> Storm:
    """One storm; its captures, truth and snapshots go to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    server_pcap, client_pcap = folder / "server.pcap", folder / "client.pcap"
    with server_client_pair("storm") as pair:
        sysctl(pair.server, "net.ipv4.tcp_syncookies", config.syncookies)
        sysctl(pair.server, "net.ipv4.tcp_timestamps", config.timestamps)
        sysctl(pair.client, "net.ipv4.ip_local_port_range", "10000 65000")
        addrs = _client_addrs(pair, config)
        host = pair.server_ip4 if config.family == 4 else pair.server_ip6
        serve = [sys.executable, str(SUPPORT / "storm_peers.py"), "serve", host, str(PORT)]
        serve += [str(config.backlog), str(config.rcvbuf), str(config.accept_delay)]
        with _process(
            ["ip", "netns", "exec", pair.server, *serve], stdout=subprocess.PIPE
        ) as server:
            assert server.stdout is not None
            if not server.stdout.readline().startswith("listening"):
                raise RuntimeError("storm server did not start")
            _truth_rules(pair.server)
            if config.drop_synacks:
                _drop_synacks(pair.client, config.drop_synacks)
            if config.announce is not None:
                faults.announce_wscale(pair.server, PORT, config.announce, cookies_only=True)
            dumps = {
                "server": Dump(pair.server, "eth0", server_pcap, "tcp", "port", str(PORT)),
                "client": Dump(pair.client, "eth0", client_pcap, "tcp", "port", str(PORT)),
            }
            try:
                clients = [sys.executable, str(SUPPORT / "storm_peers.py"), "clients", host]
                clients += [str(PORT), str(config.clients), str(config.size)]
                start_ms = option_bits(pair.client) if config.burst_in_phase else -1
                clients += [str(config.settle), str(start_ms), *addrs]
                with _process(
                    ["ip", "netns", "exec", pair.client, *clients],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                ) as farm:
                    assert farm.stdout is not None and farm.stdin is not None
                    settled = farm.stdout.readline().strip()
                    server_ss, client_ss = _ss(pair.server), _ss(pair.client)
                    farm.stdin.close()
                    farm.wait(timeout=30)
                # blocks of captured packets reach tcpdump within a second
                time.sleep(1.2)
            finally:
                dropped = {name: dump.stop() for name, dump in dumps.items()}
            counters = netstat(pair.server)
            faults.clear(pair.server)
    storm = Storm(
        config,
        server_pcap,
        client_pcap,
        counters,
        server_ss,
        client_ss,
        settled,
        dropped,
    )
    storm.save(folder)
    return storm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    defaults = StormConfig()
    for name, value in asdict(defaults).items():
        kind = float if isinstance(value, float) else int
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=value)
    args = vars(parser.parse_args())
    out = args.pop("out")
    storm = run_storm(out, StormConfig(**args))
    print(json.dumps({"netstat_cookies": storm.netstat.get("TcpExtSyncookiesSent", 0)}))


if __name__ == "__main__":
    main()

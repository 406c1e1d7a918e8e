"""Regenerate the built-in example bundle (src/tcpsleuth/examples/incident-broker).

It is real tool output from a lab namespace on this machine, shaped like a broker
host on the morning of the incident: a Kafka-style listener (backlog 50, SO_RCVBUF
102400) on port 9092, a reconnect storm of 800 clients that overflowed it
(tcp_syncookies=1), and the old default tcp_rmem (max 6291456). Two things are
not from the lab host and are said so in the bundle's NOTE.txt: uname-r.txt names
a RHEL 7.9 GA kernel (3.10.0-1160.el7, which lacks the fix) so that the example
shows the kernel finding, and ss-tni.txt is `ss -tni '( sport = :9092 )'` (the
server side only) to keep the example small.

Run as root from the repository root: python3 scripts/make_example_bundle.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tcpsleuth.lab import namespaces

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "src" / "tcpsleuth" / "examples" / "incident-broker"
KAFKA = REPO / "tests" / "fixtures" / "kafka" / "server.properties"
RELEASE = "3.10.0-1160.el7.x86_64"


def main() -> None:
    with namespaces.namespace("example") as ns:
        namespaces.sysctl(ns, "net.ipv4.tcp_syncookies", 1)
        namespaces.sysctl(ns, "net.ipv4.tcp_rmem", "4096 87380 6291456")
        farm = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                str(REPO / "tests/support/conn_farm.py"),
                "--port",
                "9092",
                "--backlog",
                "50",
                "--clients",
                "800",
                "--storm",
                "--rcvbuf",
                "102400",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert farm.stdout is not None
            print(farm.stdout.readline().strip())
            if OUT.exists():
                shutil.rmtree(OUT)
            OUT.mkdir(parents=True)

            def run(name: str, *argv: str) -> None:
                result = subprocess.run(
                    ["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, text=True
                )
                (OUT / name).write_text(result.stdout)

            run("sysctl-a.txt", "sysctl", "-a")
            run("proc-net-netstat.txt", "cat", "/proc/net/netstat")
            run("proc-net-snmp.txt", "cat", "/proc/net/snmp")
            run("ss-ltn.txt", "ss", "-ltn")
            run("ss-tni.txt", "ss", "-tni", "( sport = :9092 )")
        finally:
            assert farm.stdin is not None
            farm.stdin.close()
            farm.wait()
    (OUT / "uname-r.txt").write_text(RELEASE + "\n")
    (OUT / "hostname.txt").write_text("broker-1\n")
    shutil.copy(KAFKA, OUT / "server.properties")
    (OUT / "NOTE.txt").write_text(__doc__.split("Run as root")[0].strip() + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

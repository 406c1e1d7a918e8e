"""Two reconnect storms against real nginx, run as one program (inside a guest kernel):
one on a listener with ``rcvbuf=`` (its buffer locked), one without; every SYN answered
with a cookie (tcp_syncookies=2). Each storm's server capture, both ends' ``ss -tni``
while the connections are open, and the cookie counter go to OUT_DIR/rcvbuf and
OUT_DIR/plain.

  guest_nginx_storms.py OUT_DIR [CLIENTS]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUPPORT = Path(__file__).parent
sys.path[:0] = [str(SUPPORT.parent), str(SUPPORT.parent.parent / "src")]

from support.pcap_lab import netstat  # noqa: E402
from support.storm_lab import Dump  # noqa: E402
from tcpsleuth.lab.namespaces import sysctl  # noqa: E402
from tcpsleuth.lab.nginx import Listen, NginxServer  # noqa: E402
from tcpsleuth.lab.topology import server_client_pair  # noqa: E402

PORT = 8080


def storm(out: Path, rcvbuf: int | None, clients: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with server_client_pair("gstorm") as pair, tempfile.TemporaryDirectory() as tmp:
        sysctl(pair.server, "net.ipv4.tcp_syncookies", 2)
        listen = Listen(pair.server_ip4, PORT, backlog=64, rcvbuf=rcvbuf)
        with NginxServer(pair.server, [listen], Path(tmp) / "nginx"):
            before = netstat(pair.server)
            dump = Dump(pair.server, "eth0", out / "server.pcap", "tcp", "port", str(PORT))
            farm = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    pair.client,
                    sys.executable,
                    str(SUPPORT / "server_storm.py"),
                    pair.server_ip4,
                    str(PORT),
                    str(clients),
                    "90",
                    "http",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert farm.stdout is not None and farm.stdin is not None
            settled = farm.stdout.readline().split()
            for side, ns in (("server", pair.server), ("client", pair.client)):
                (out / f"{side}-ss.txt").write_text(
                    subprocess.run(
                        ["ip", "netns", "exec", ns, "ss", "-tni", "state", "established"],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                )
            farm.stdin.close()
            farm.wait(timeout=60)
            time.sleep(2)
            dump.stop()
            after = netstat(pair.server)
    cookies = after.get("TcpExtSyncookiesSent", 0) - before.get("TcpExtSyncookiesSent", 0)
    (out / "storm.json").write_text(
        json.dumps({"settled": settled, "cookies": cookies, "rcvbuf": rcvbuf})
    )


def main() -> None:
    out = Path(sys.argv[1])
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    storm(out / "rcvbuf", 98304, clients)
    storm(out / "plain", None, clients)
    print("done")


if __name__ == "__main__":
    main()

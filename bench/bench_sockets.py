"""Snapshot of 50,000 established connections: the live sock_diag source against
`ss -tni` plus parsing its text.

Makes a namespace holding N loopback connections (both ends inside, so 2 x N
established sockets) spread over ten listeners, one process each (a process may
hold at most 20,000 files here), then times, median of --repeat runs:
- sockdiag.dump(): the netlink dump decoded into NumPy arrays (all tcp_info fields);
- sockdiag.snapshot(): the same plus one TcpConnection record per socket;
- `ss -tni` run in the namespace (nsenter --net), output read into Python;
- parse_ss() of that output into the same records;
and checks that both sources saw the same number of sockets.

Run as root:  python3 bench/bench_sockets.py [--connections 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import Farm  # noqa: E402

from tcpsleuth.lab import namespaces  # noqa: E402
from tcpsleuth.sources import sockdiag  # noqa: E402
from tcpsleuth.sources.sstext import parse_ss  # noqa: E402

LISTENERS = 10


def timed(func: Callable[[], object], repeat: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - started)
    return times, result


def line(name: str, times: list[float]) -> str:
    return (
        f"{name:<34} median {statistics.median(times) * 1000:8.1f} ms"
        f"   min {min(times) * 1000:8.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    per_listener = args.connections // LISTENERS
    with namespaces.namespace("benchsock") as ns:
        started = time.monotonic()
        farms = []
        try:
            for index in range(LISTENERS):
                farms.append(
                    Farm(
                        ns,
                        "--port",
                        str(9092 + index),
                        "--backlog",
                        "4096",
                        "--clients",
                        str(per_listener),
                    )
                )
            connections = sum(f.connected for f in farms)
            print(
                f"{connections} connections ({2 * connections} established sockets, "
                f"{LISTENERS} listeners) made in {time.monotonic() - started:.1f} s",
                flush=True,
            )
            ss_argv = ["nsenter", f"--net=/run/netns/{ns}", "ss", "-tni"]

            def ss_text() -> str:
                return subprocess.run(ss_argv, capture_output=True, text=True, check=True).stdout

            dump_times, dump = timed(lambda: sockdiag.dump(ns), args.repeat)
            record_times, table = timed(lambda: sockdiag.snapshot(ns), args.repeat)
            ss_times, text = timed(ss_text, args.repeat)
            assert isinstance(text, str)
            parse_times, parsed = timed(lambda: parse_ss(text, "ss -tni"), args.repeat)
            both = [a + b for a, b in zip(ss_times, parse_times, strict=True)]
            assert isinstance(table, sockdiag.SocketTable) and isinstance(
                parsed, sockdiag.SocketTable
            )
            assert isinstance(dump, sockdiag.DiagDump)
            assert len(table.connections) == len(parsed.connections) == 2 * connections, (
                len(table.connections),
                len(parsed.connections),
            )
            print(f"sockets read: live {len(dump)}, ss {len(parsed.connections)}")
            print(line("live: sock_diag -> NumPy arrays", dump_times))
            print(line("live: sock_diag -> records", record_times))
            print(line("ss -tni (text only)", ss_times))
            print(line("parse_ss of that text", parse_times))
            print(line("ss -tni + parse_ss", both))
            print(
                f"speed-up over ss -tni + parsing: arrays "
                f"{statistics.median(both) / statistics.median(dump_times):.1f}x, records "
                f"{statistics.median(both) / statistics.median(record_times):.1f}x; "
                f"over ss -tni alone: arrays "
                f"{statistics.median(ss_times) / statistics.median(dump_times):.1f}x"
            )
        finally:
            for farm in farms:
                farm.stop()


if __name__ == "__main__":
    main()

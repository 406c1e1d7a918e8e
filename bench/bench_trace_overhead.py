"""Overhead of `tcpsleuth trace`: request throughput with and without the trace.

Two lab namespaces over veth, a request/response server and 8 connections sending
16 KB requests (64-byte responses) for 10 s, three rounds alternating without and
with `tcpsleuth trace --port 9092` running. Prints requests/s and the overhead.
Run as root from the repository root:  python3 bench/bench_trace_overhead.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from tcpsleuth.lab import topology

HERE = Path(__file__).parent
SECONDS, CONNS, SIZE, ROUNDS = 10.0, 8, 16384, 3


def measure(pair: topology.Pair) -> float:
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            pair.client,
            sys.executable,
            str(HERE / "rr.py"),
            "load",
            pair.server_ip4,
            "9092",
            str(SECONDS),
            str(CONNS),
            str(SIZE),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out) / SECONDS


def main() -> None:
    with topology.server_client_pair("bench") as pair:
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pair.server,
                sys.executable,
                str(HERE / "rr.py"),
                "serve",
                pair.server_ip4,
                "9092",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        without, with_trace = [], []
        try:
            for _ in range(ROUNDS):
                without.append(measure(pair))
                tracer = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tcpsleuth",
                        "trace",
                        "--port",
                        "9092",
                        "--duration",
                        str(SECONDS + 8),
                        "--format",
                        "json",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(4)  # bpftrace compiles and attaches
                with_trace.append(measure(pair))
                tracer.wait()
        finally:
            server.kill()
    base, traced = statistics.median(without), statistics.median(with_trace)
    print(
        f"requests/s without trace: {base:,.0f} (rounds: {', '.join(f'{x:,.0f}' for x in without)})"
    )
    rounds = ", ".join(f"{x:,.0f}" for x in with_trace)
    print(f"requests/s with trace:    {traced:,.0f} (rounds: {rounds})")
    print(f"overhead: {100 * (base - traced) / base:.1f}% of request throughput")


if __name__ == "__main__":
    main()

"""Cost of one exporter scrape on a namespace holding many TCP connections.

Makes a namespace with N loopback connections spread over six listeners (one
process per listener: a process may hold at most 20,000 files here, and both ends
live in the namespace, so the exporter reads 2 x N established sockets),
then times:
- the scrape in process, split into reading (counters + sock_diag dump with
  tcp_info, the listeners' owners remembered as the exporter remembers them),
  summarising per port and rendering the text exposition;
- GET /metrics from a running `tcpsleuth exporter --netns` over loopback, as
  Prometheus sees it.

Run as root:  python3 bench/bench_exporter.py [--connections 50000] [--repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import Farm  # noqa: E402
from support.monitoring import Exporter  # noqa: E402

from tcpsleuth.detectors.port_summary import TimesSeen, summarize  # noqa: E402
from tcpsleuth.lab import namespaces  # noqa: E402
from tcpsleuth.reports import prometheus  # noqa: E402
from tcpsleuth.sources import owners, sampling  # noqa: E402

PORTS = tuple(range(9092, 9098))


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.1f} ms, min {min(values) * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    per_port = args.connections // len(PORTS)
    with namespaces.namespace("bench") as ns:
        started = time.monotonic()
        farms = [
            Farm(ns, "--port", str(port), "--backlog", "4096", "--clients", str(per_port))
            for port in PORTS
        ]
        print(
            f"{sum(f.connected for f in farms)} connections "
            f"({2 * sum(f.connected for f in farms)} established sockets) "
            f"in {time.monotonic() - started:.1f} s",
            flush=True,
        )
        try:
            read, summ, render, total = [], [], [], []
            times = TimesSeen()
            size = 0
            cache = owners.OwnerCache()  # as the exporter keeps one: owners read once
            sampling.scrape(ns, cache)
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                sample = sampling.scrape(ns, cache)
                t1 = time.perf_counter()
                summary = summarize(sample.sockets, times)
                times = summary.times
                t2 = time.perf_counter()
                text = prometheus.exposition(
                    [
                        *prometheus.counter_families(sample.counters),
                        *prometheus.summary_families(summary),
                        *prometheus.scrape_families(summary, sample.read_seconds),
                    ]
                )
                t3 = time.perf_counter()
                read.append(t1 - t0)
                summ.append(t2 - t1)
                render.append(t3 - t2)
                total.append(t3 - t0)
                size = len(text)
            series = sum(1 for line in text.decode().splitlines() if not line.startswith("#"))
            print(f"sockets read per scrape: {summary.connections} established + listeners")
            print(f"exposition: {size} bytes, {series} series")
            print(f"in process, read (counters + sock_diag):  {ms(read)}")
            print(f"in process, summarise per port:          {ms(summ)}")
            print(f"in process, render exposition:           {ms(render)}")
            print(f"in process, whole scrape:                {ms(total)}")
            exporter = Exporter("--netns", ns)
            try:
                http = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    with urllib.request.urlopen(exporter.url, timeout=30) as response:
                        response.read()
                    http.append(time.perf_counter() - t0)
                rss = subprocess.run(
                    ["ps", "-o", "rss=", "-p", str(exporter.process.pid)],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout.strip()
            finally:
                exporter.stop()
            print(f"GET /metrics from tcpsleuth exporter:    {ms(http)}")
            reference = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                subprocess.run(
                    ["ip", "netns", "exec", ns, "ss", "-tniH", "state", "established"],
                    stdout=subprocess.DEVNULL,
                    check=True,
                )
                reference.append(time.perf_counter() - t0)
            print(f"for reference, ss -tni of the same:      {ms(reference)}")
            print(f"exporter resident memory after scrapes:  {int(rss) // 1024} MiB")
        finally:
            for farm in farms:
                farm.stop()


if __name__ == "__main__":
    main()

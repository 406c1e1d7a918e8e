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

With ``--against OTHER/src`` (the src/ of another checkout, e.g. a ``git worktree``
of the commit before a change) it also serves that build's exporter on the same
namespace and alternates GET /metrics between the two, request by request, so that
both meet the same machine; it prints both medians and their ratio.

Run as root:  python3 bench/bench_exporter.py [--connections 50000] [--repeat 10]
              [--against OTHER/src]
"""

from __future__ import annotations

import argparse
import os
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


def get_seconds(url: str) -> float:
    """Seconds one GET of ``url`` takes, the body read."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
    return time.perf_counter() - t0


def against(ns: str, other: Path, repeat: int) -> None:
    """GET /metrics of this checkout's exporter and ``other``'s (its src/), alternated."""
    builds = {"before": str(other), "after": str(REPO / "src")}
    exporters = {
        name: Exporter("--netns", ns, env={**os.environ, "PYTHONPATH": src})
        for name, src in builds.items()
    }
    times: dict[str, list[float]] = {name: [] for name in builds}
    try:
        for exporter in exporters.values():
            get_seconds(exporter.url)  # the first scrape walks /proc for owners
        for round_ in range(repeat):
            # who goes first alternates too
            order = list(builds) if round_ % 2 == 0 else list(reversed(builds))
            for name in order:
                times[name].append(get_seconds(exporters[name].url))
    finally:
        for exporter in exporters.values():
            exporter.stop()
    for name, src in builds.items():
        print(f"GET /metrics, {name} ({src}): {ms(times[name])}")
    ratio = statistics.median(times["after"]) / statistics.median(times["before"])
    print(f"after / before (medians): {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--against", type=Path, help="the src/ of another checkout")
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
                http = [get_seconds(exporter.url) for _ in range(args.repeat)]
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
            if args.against is not None:
                against(ns, args.against.resolve(), args.repeat)
        finally:
            for farm in farms:
                farm.stop()


if __name__ == "__main__":
    main()

"""What the always-on parts cost on a host shaped like a Kafka broker: many open files
(log segments, clients' sockets) and many established connections.

For each layout, with and without ``--files`` extra open files held by ``--holders``
processes (as many as their RLIMIT_NOFILE needs), and with a few hundred or
``--connections`` loopback connections over six listeners in a namespace of its own
(both ends live there, so twice as many established sockets):

- one exporter scrape in process, split into its parts: counters, sysctls, the
  sock_diag dump with tcp_info (the bare netlink read), the listeners with their
  buffers, their owners (a cold walk of /proc, then the cache a running exporter
  keeps), the per-port summary and the rendering; then GET /metrics from a running
  ``tcpsleuth exporter --netns`` as Prometheus sees it;
- ``watch``'s per-sample read (``sampling.take``) and the recorder's per-second read
  (the watched ports' sockets with tcp_info, filtered by the kernel);
- ``tcpsleuth record`` idle: CPU of the recorder's own process over ``--seconds``
  (and with tcpdump and its other children), read from /proc/PID/stat.

``--tree DIR`` runs the exporter and the recorder from another checkout's src/ (for
a before/after comparison in one session, e.g. a ``git worktree`` of the previous
commit); the in-process parts always use this checkout.

Run as root:
    python3 bench/bench_broker_host.py [--files 200000] [--connections 25000] [--seconds 60]
Prints a table per layout and, with --json FILE, writes the figures there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from bench_record import cpu_seconds  # noqa: E402
from conftest import Farm  # noqa: E402
from support.monitoring import Exporter  # noqa: E402

from tcpsleuth.detectors.port_summary import TimesSeen, summarize  # noqa: E402
from tcpsleuth.lab import namespaces  # noqa: E402
from tcpsleuth.reports import prometheus  # noqa: E402
from tcpsleuth.sources import netns, owners, procfs, sampling, sockdiag  # noqa: E402

PORTS = tuple(range(9092, 9098))
TICK = os.sysconf("SC_CLK_TCK")

HOLDER = textwrap.dedent(
    """
    import os, resource, sys
    n = int(sys.argv[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(n + 64, hard), hard))
    files = [os.open("/dev/null", os.O_RDONLY) for _ in range(n)]
    print("ready", flush=True)
    sys.stdin.read()
    """
)


@contextlib.contextmanager
def open_files(total: int, holders: int) -> Iterator[int]:
    """``total`` files held open across ``holders`` processes until the block ends."""
    procs = []
    # a process may hold at most its hard RLIMIT_NOFILE (raising it needs
    # CAP_SYS_RESOURCE, which root here lacks: 20,000), so as many holders as that takes
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    holders = max(holders, -(-total // max(1, hard - 1000)))
    try:
        for i in range(holders if total else 0):
            share = total // holders + (1 if i < total % holders else 0)
            proc = subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(share)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
        yield total
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=30)


def host_open_files() -> int:
    """Allocated file handles on the host (/proc/sys/fs/file-nr's first field)."""
    return int(Path("/proc/sys/fs/file-nr").read_text().split()[0])


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median seconds of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def scrape_parts(ns: str, repeat: int) -> dict[str, float]:
    """Each part of one exporter scrape, median seconds."""
    out: dict[str, float] = {}
    out["counters"], _ = timed(lambda: sampling.read_counters(ns), repeat)

    def sysctls() -> object:
        with netns.entered(ns):
            return procfs.read_live_sysctls()

    out["sysctls"], _ = timed(sysctls, repeat)
    out["netlink_read"], dump = timed(
        lambda: sockdiag.dump(ns, states=sampling.ESTABLISHED_AND_LISTEN, with_info=True), repeat
    )
    out["listeners"], found = timed(lambda: sockdiag.listeners(ns), repeat)
    inodes = [x.inode for x in found if x.inode]  # type: ignore[union-attr]
    out["owners_cold_walk"], _ = timed(lambda: owners.socket_owners(inodes), max(1, repeat // 3))
    cache = owners.OwnerCache()
    cache.owners(inodes)
    out["owners_cached"], _ = timed(lambda: cache.owners(inodes), repeat)
    times = TimesSeen()
    summary = None

    def summarise() -> object:
        nonlocal times, summary
        summary = summarize(dump, times)  # type: ignore[arg-type]
        times = summary.times
        return summary

    out["summary"], _ = timed(summarise, repeat)
    sample = sampling.scrape(ns, cache)
    out["render"], _ = timed(
        lambda: prometheus.exposition(
            [
                *prometheus.counter_families(sample.counters),
                *prometheus.summary_families(summary),  # type: ignore[arg-type]
                *prometheus.scrape_families(summary, sample.read_seconds),  # type: ignore[arg-type]
            ]
        ),
        repeat,
    )
    out["scrape_in_process"], _ = timed(lambda: sampling.scrape(ns, cache), repeat)
    out["watch_sample"], _ = timed(lambda: sampling.take(ns), repeat)
    if hasattr(sampling, "port_sockets"):
        out["recorder_second"], _ = timed(
            lambda: sampling.port_sockets(ns, frozenset(PORTS)), repeat
        )
    out["sockets"] = float(len(dump))  # type: ignore[arg-type]
    return out


def get_metrics(ns: str, repeat: int) -> float:
    exporter = Exporter("--netns", ns)
    try:
        times = []
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            with urllib.request.urlopen(exporter.url, timeout=60) as response:
                response.read()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])  # the first also warms the exporter's caches
    finally:
        exporter.stop()


def _own_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def recorder_idle(ns: str, seconds: float) -> dict[str, float]:
    """Share of one core the recorder uses while nothing happens."""
    with tempfile.TemporaryDirectory() as scratch:
        args = [a for p in PORTS for a in ("--port", str(p))]
        recorder = subprocess.Popen(
            [sys.executable, "-m", "tcpsleuth", "record", *args, "--dir", f"{scratch}/rec",
             "--netns", ns, "--format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert recorder.stdout is not None
            while '"ready"' not in (line := recorder.stdout.readline()):
                if not line:
                    raise RuntimeError("the recorder ended before it was ready")
            time.sleep(3)
            own0, all0, t0 = _own_seconds(recorder.pid), cpu_seconds(recorder.pid), time.monotonic()
            time.sleep(seconds)
            own1, all1, t1 = _own_seconds(recorder.pid), cpu_seconds(recorder.pid), time.monotonic()
        finally:
            recorder.terminate()
            recorder.wait(timeout=60)
    return {
        "recorder_idle_percent": 100 * (own1 - own0) / (t1 - t0),
        "recorder_with_children_percent": 100 * (all1 - all0) / (t1 - t0),
    }


def layout(ns: str, args: argparse.Namespace, files: int, connections: int) -> dict[str, float]:
    per_port = max(1, connections // len(PORTS))
    farms = [
        Farm(ns, "--port", str(port), "--backlog", "4096", "--clients", str(per_port))
        for port in PORTS
    ]
    try:
        result: dict[str, float] = {"extra_files": files, "host_open_files": host_open_files()}
        result.update(scrape_parts(ns, args.repeat))
        result["get_metrics"] = get_metrics(ns, args.repeat)
        result.update(recorder_idle(ns, args.seconds))
        return result
    finally:
        for farm in farms:
            farm.stop()


def show(name: str, figures: dict[str, float]) -> None:
    print(f"\n{name}", flush=True)
    for key, value in figures.items():
        if key.endswith("_percent"):
            print(f"  {key:32} {value:8.2f} %")
        elif key in ("extra_files", "host_open_files", "sockets"):
            print(f"  {key:32} {int(value):8d}")
        else:
            print(f"  {key:32} {value * 1000:8.1f} ms")
    print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--holders", type=int, default=4)
    parser.add_argument("--connections", type=int, default=25_000)
    parser.add_argument("--few", type=int, default=150, help="connections of the small layout")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--tree", type=Path, help="run exporter and recorder from DIR/src")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.tree:
        os.environ["PYTHONPATH"] = str(args.tree.resolve() / "src")
    figures: dict[str, dict[str, float]] = {}
    with namespaces.namespace("bench-host") as ns:
        for files in (0, args.files):
            with open_files(files, args.holders):
                for connections in (args.few, args.connections):
                    name = f"{files} extra open files, {connections} connections"
                    figures[name] = layout(ns, args, files, connections)
                    show(name, figures[name])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

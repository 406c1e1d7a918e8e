"""``tcpsleuth exporter``: a Prometheus exporter for listen queues, window scales and
window-limited connections, with the kernel's cookie and listen counters.

The HTTP server listens in the namespace the command starts in (the host, where
Prometheus runs); every scrape reads counters and sockets from the namespace
named by ``--netns``, so one exporter per namespace reports on that namespace.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import click
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from tcpsleuth.cli import serving
from tcpsleuth.cli.options import netns_option
from tcpsleuth.cli.serving import serve
from tcpsleuth.detectors.kernel import assess_kernel
from tcpsleuth.detectors.listeners import listener_facts
from tcpsleuth.detectors.port_summary import DEFAULT_MAX_PORTS, TimesSeen, summarize
from tcpsleuth.errors import InputError
from tcpsleuth.model.records import HostSnapshot
from tcpsleuth.recorder.healing import hit_per_listener, test_override
from tcpsleuth.reports import prometheus
from tcpsleuth.sources import owners, procfs, sampling
from tcpsleuth.sources.host import proc_version

DEFAULT_LISTEN = "127.0.0.1:9469"


class ScrapeCollector:
    """Reads the namespace on every scrape. Scrapes are serialised: the window-limited
    shares are measured between consecutive scrapes."""

    def __init__(self, netns_name: str | None, max_ports: int) -> None:
        self.netns_name = netns_name
        self.max_ports = max_ports
        self._lock = threading.Lock()
        self._times = TimesSeen()
        # listeners' owners remembered between scrapes (one /proc walk per new listener)
        self.owner_cache = owners.OwnerCache()
        self.kernel = assess_kernel(procfs.kernel_release(), proc_version())

    def describe(self) -> list[Metric]:
        return []  # families depend on what the kernel has: nothing to declare up front

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            try:
                sample = sampling.scrape(self.netns_name, self.owner_cache)
            except InputError as problem:
                # e.g. the namespace went away with its container: say so once per
                # scrape and keep serving, so the scrape fails visibly, not the exporter
                click.echo(f"tcpsleuth exporter: scrape failed: {problem}", err=True)
                return [prometheus.success_family(False)]
            summary = summarize(sample.sockets, self._times, self.max_ports)
            self._times = summary.times
        snapshot = HostSnapshot(
            origin="exporter scrape",
            hostname="",
            kernel_release=self.kernel.release,
            sysctls=sample.sysctls,
            counters=sample.counters,
            listeners=list(sample.listeners),
            connections=None,
        )
        facts = listener_facts(snapshot)
        return [
            *prometheus.counter_families(sample.counters),
            *prometheus.summary_families(summary),
            *prometheus.listener_lock_families(facts, self.kernel, sample.sysctls),
            *prometheus.heal_families(
                hit_per_listener(sample.sockets, facts, test_override(self.kernel))
            ),
            *prometheus.scrape_families(summary, sample.read_seconds),
            prometheus.success_family(True),
        ]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT``."""
    return serving.parse_listen(text, "--listen", DEFAULT_LISTEN)


@click.command("exporter")
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Where to serve /metrics (in the namespace the command starts in).",
)
@click.option(
    "--max-ports",
    type=click.IntRange(1, 1000),
    default=DEFAULT_MAX_PORTS,
    show_default=True,
    help="Service ports reported by number (most connections first); the rest are "
    "folded into port=other.",
)
@netns_option
def exporter_command(listen: str, max_ports: int, netns: str | None) -> int:
    """Serve Prometheus metrics node_exporter does not have: per listener backlog and
    accept queue, established connections and window-scale shifts per service port,
    connections held back by the peer's receive window, and the SYN-cookie and listen
    counters under node_exporter's own names (node_netstat_TcpExt_SyncookiesSent...).

    With --netns the metrics describe that namespace while the server still listens
    on the host. Stop with Ctrl-C or SIGTERM (exit status 130 or 143, 128+N, as for
    every tcpsleuth command). A client that resets its connection mid-request is one
    line on standard error, and the exporter goes on.

    \b
    Examples:
      tcpsleuth exporter
      tcpsleuth exporter --listen 0.0.0.0:9469 --max-ports 10
      tcpsleuth exporter --netns broker1 --listen 127.0.0.1:9470
      curl -s 127.0.0.1:9469/metrics | grep -E 'tcpsleuth_listen|Syncookies'
    """
    host, port = parse_listen(listen)
    collector = ScrapeCollector(netns, max_ports)
    # a bad --netns or missing privilege fails here, before serving (and the owners
    # of the listeners are found once, before the first scrape)
    sampling.scrape(netns, collector.owner_cache)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    server = serve(host, port, registry, "tcpsleuth exporter")
    click.echo(
        f"tcpsleuth exporter: serving http://{listen}/metrics"
        + (f" for namespace {netns}" if netns else ""),
        err=True,
    )
    try:
        # until a signal: SIGINT, SIGTERM and SIGHUP raise here (cli.main's handlers),
        # and cli.main makes the exit status 128+N of it. Never an untimed wait: the
        # kernel may hand the signal to another thread (numpy's, the server's), and
        # Python runs its handler only when the main thread next runs bytecode
        while True:
            time.sleep(0.25)
    finally:
        server.shutdown()
        server.server_close()
    return 0

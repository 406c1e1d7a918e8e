"""Prometheus exposition of a scrape: counters under node_exporter's names, plus
what node_exporter does not have (listen queues, window scales and window-limited
connections per port).

Kernel counters keep node_exporter's netstat collector names and type
(``node_netstat_<Group>_<Field>``, untyped, help ``Statistic <GroupField>.``), so a
dashboard or alert written for node_exporter works on either. Exported are the TCP
fields of node_exporter's default ``--collector.netstat.fields`` (Listen*, Syncookies*,
TCPSynRetrans, TCPTimeouts, TCPOFOQueue, TCPRcvQDrop and the Tcp group's opens,
segments, resets and CurrEstab) and the two request-queue counters that tell cookies
from drops (TCPReqQFullDoCookies, TCPReqQFullDrop), which node_exporter exports under
the same names once its field pattern includes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric, UntypedMetricFamily
from prometheus_client.exposition import generate_latest

from tcpsleuth.detectors.heal import ListenerPlan
from tcpsleuth.detectors.kernel import KernelVerdict
from tcpsleuth.detectors.listeners import ListenerFacts
from tcpsleuth.detectors.port_summary import Summary
from tcpsleuth.model.text import to_int

# node_exporter's default field pattern, TCP part, plus the request-queue counters.
NETSTAT_FIELDS = re.compile(
    r"^(TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts|TCPOFOQueue|TCPRcvQDrop"
    r"|TCPReqQFullDoCookies|TCPReqQFullDrop)"
    r"|Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab|InErrs))$"
)
# nstat joins group and field; longest group first so TcpExt is not read as Tcp + "Ext...".
_GROUPS = ("TcpExt", "Tcp")


def node_exporter_key(nstat_name: str) -> str | None:
    """``TcpExtSyncookiesSent`` -> ``TcpExt_SyncookiesSent`` when node_exporter would
    export it; None otherwise."""
    for group in _GROUPS:
        if nstat_name.startswith(group):
            key = f"{group}_{nstat_name[len(group) :]}"
            return key if NETSTAT_FIELDS.match(key) else None
    return None


def counter_families(counters: Mapping[str, int]) -> Iterator[Metric]:
    for name in sorted(counters):
        key = node_exporter_key(name)
        if key is None:
            continue
        family = UntypedMetricFamily(f"node_netstat_{key}", f"Statistic {name}.")
        family.add_metric([], float(counters[name]))
        yield family


def summary_families(summary: Summary) -> Iterator[Metric]:
    listener_labels = ["address", "port"]
    backlog = GaugeMetricFamily(
        "tcpsleuth_listen_backlog",
        "Listen backlog of the listener (sk_max_ack_backlog, ss -lt Send-Q), "
        "summed over SO_REUSEPORT sockets.",
        labels=listener_labels,
    )
    queue = GaugeMetricFamily(
        "tcpsleuth_listen_accept_queue",
        "Connections waiting for accept() on the listener (ss -lt Recv-Q).",
        labels=listener_labels,
    )
    sockets = GaugeMetricFamily(
        "tcpsleuth_listen_sockets",
        "Listening sockets bound to this address and port (more than one with SO_REUSEPORT).",
        labels=listener_labels,
    )
    for listener in summary.listeners:
        labels = [listener.address, str(listener.port)]
        backlog.add_metric(labels, listener.backlog)
        queue.add_metric(labels, listener.accept_queue)
        sockets.add_metric(labels, listener.sockets)
    yield from (backlog, queue, sockets)

    port_labels = ["side", "port"]
    established = GaugeMetricFamily(
        "tcpsleuth_established_connections",
        "Established connections per service port: side=server for connections to a "
        "local listener, side=client for connections to a remote port; ports beyond "
        "the limit are folded into port=other.",
        labels=port_labels,
    )
    wscale = GaugeMetricFamily(
        "tcpsleuth_connections_by_wscale",
        "Established connections per service port and window-scale shifts "
        "(snd_wscale: the peer's shift as this end reads it; rcv_wscale: this end's own).",
        labels=[*port_labels, "snd_wscale", "rcv_wscale"],
    )
    limited = GaugeMetricFamily(
        "tcpsleuth_rwnd_limited_connections",
        "Established connections that spent at least 20% (and 20 ms) of their busy time "
        "since the previous scrape waiting for the peer's receive window.",
        labels=port_labels,
    )
    share = GaugeMetricFamily(
        "tcpsleuth_rwnd_limited_busy_ratio",
        "Of the window-limited connections' busy time since the previous scrape, the share "
        "spent waiting for the peer's receive window (tcp_info rwnd_limited / busy_time).",
        labels=port_labels,
    )
    for port in summary.ports:
        labels = [port.side, port.port]
        established.add_metric(labels, port.connections)
        for (snd, rcv), count in sorted(port.by_wscale.items()):
            wscale.add_metric([*labels, str(snd), str(rcv)], count)
        limited.add_metric(labels, port.rwnd_limited_connections)
        share.add_metric(labels, round(port.rwnd_limited_share, 6))
    yield from (established, wscale, limited, share)


LOCK_STATES = {"yes": "locked", "no": "unlocked", "undetermined": "undetermined"}
KERNEL_STATES = ("affected", "fixed", "unknown")


def listener_lock_families(
    facts: Iterable[ListenerFacts], verdict: KernelVerdict, sysctls: Mapping[str, str]
) -> Iterator[Metric]:
    """The receive-buffer lock of every listener, whatever program owns it, and what
    decides whether it matters: the kernel's fix and the cookie settings. One series per
    lock state and listener, 1 for its state and 0 for the others (node_exporter's
    systemd unit state style), so a dashboard or rule selects state="locked"."""
    labels = ["address", "port", "program"]
    rcvbuf = GaugeMetricFamily(
        "tcpsleuth_listen_rcvbuf_bytes",
        "Receive buffer of the listening socket (sk_rcvbuf, ss -ltm rb).",
        labels=labels,
    )
    lock = GaugeMetricFamily(
        "tcpsleuth_listen_rcvbuf_lock",
        "1 for the listener's receive-buffer state: locked (differs from tcp_rmem[1], set "
        "with SO_RCVBUF: the precondition of the SYN-cookie window-scale bug), unlocked, or "
        "undetermined (equal to tcp_rmem[1], which SO_RCVBUF=tcp_rmem[1]/2 also gives).",
        labels=[*labels, "state"],
    )
    for fact in facts:
        values = [fact.local_ip, str(fact.local_port), fact.program or ""]
        if fact.rcvbuf is not None:
            rcvbuf.add_metric(values, fact.rcvbuf)
        for state, name in LOCK_STATES.items():
            lock.add_metric([*values, name], 1 if fact.rcvbuf_locked == state else 0)
    kernel = GaugeMetricFamily(
        "tcpsleuth_kernel_cookie_wscale_fix",
        "1 for the kernel's status against the SYN-cookie window-scale fix (commit "
        "909172a14974, mainline 5.10): affected, fixed, or unknown (release table).",
        labels=["release", "status"],
    )
    for status in KERNEL_STATES:
        kernel.add_metric([verdict.release, status], 1 if verdict.status == status else 0)
    yield from (rcvbuf, lock, kernel)
    for name in ("net.ipv4.tcp_syncookies", "net.ipv4.tcp_timestamps"):
        words = sysctls.get(name, "").split()
        value = to_int(words[0]) if words else None
        if value is not None:
            family = GaugeMetricFamily(
                "tcpsleuth_" + name.rsplit(".", 1)[1], f"The namespace's {name} sysctl."
            )
            family.add_metric([], value)
            yield family


def heal_families(hit: Iterable[tuple[ListenerPlan, int]]) -> Iterator[Metric]:
    """Per listener, its established connections whose receive shift is the SYN-cookie
    bug's for it (what `tcpsleuth heal` would end); 0 on a listener that is not locked
    or a kernel with the fix (the shift labels are then empty where nothing predicts them)."""
    family = GaugeMetricFamily(
        "tcpsleuth_listen_wscale_bug_connections",
        "Established connections of a listener whose window-scale shift (rcv_wscale) is the "
        "one a SYN-cookie connection gets on a kernel without the fix, not the one the "
        "listener's locked receive buffer gives: what `tcpsleuth heal` would end.",
        labels=["address", "port", "program", "own_wscale", "bug_wscale"],
    )
    for plan, count in hit:
        family.add_metric(
            [
                plan.local_ip,
                str(plan.local_port),
                plan.program or "",
                "" if plan.own_wscale is None else str(plan.own_wscale),
                "" if plan.bug_wscale is None else str(plan.bug_wscale),
            ],
            count,
        )
    yield family


def scrape_families(summary: Summary, read_seconds: float) -> Iterator[Metric]:
    seen = GaugeMetricFamily(
        "tcpsleuth_scrape_connections",
        "Established connections read in this scrape (before folding into ports).",
    )
    seen.add_metric([], summary.connections)
    folded = GaugeMetricFamily(
        "tcpsleuth_scrape_folded_ports", "Service ports folded into port=other in this scrape."
    )
    folded.add_metric([], summary.folded_ports)
    took = GaugeMetricFamily(
        "tcpsleuth_scrape_read_seconds",
        "Seconds spent reading counters and sockets from the kernel in this scrape.",
    )
    took.add_metric([], round(read_seconds, 6))
    yield from (seen, folded, took)


def success_family(ok: bool) -> Metric:
    family = GaugeMetricFamily(
        "tcpsleuth_scrape_success",
        "1 when this scrape read the namespace's counters and sockets, 0 when it could not "
        "(the exporter's log says why).",
    )
    family.add_metric([], 1 if ok else 0)
    return family


class _Families:
    """The smallest object generate_latest accepts: something with collect()."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def exposition(families: Iterable[Metric]) -> bytes:
    """Prometheus text format (version 0.0.4)."""
    return generate_latest(_Families(families))  # type: ignore[arg-type]


def recorder_families(health: Any, directory: str) -> Iterator[Metric]:
    """The recorder's state (``tcpsleuth record --metrics-listen/--metrics-file``):
    incidents recorded and the recorder's health. ``health`` is a
    ``recorder.health.Health``."""
    from prometheus_client.core import CounterMetricFamily

    def gauge(name: str, text: str, value: float) -> Metric:
        family = GaugeMetricFamily(f"tcpsleuth_recorder_{name}", text, labels=["dir"])
        family.add_metric([directory], value)
        return family

    def counter(name: str, text: str, value: float) -> Metric:
        family = CounterMetricFamily(f"tcpsleuth_recorder_{name}", text, labels=["dir"])
        family.add_metric([directory], value)
        return family

    yield counter(
        "incidents",
        "Incidents recorded (a storm frozen into incident-<time>/) since the recorder started.",
        health.incidents_total,
    )
    yield gauge(
        "incidents_on_disk",
        "Incident directories kept in the recorder's directory.",
        health.incidents_on_disk,
    )
    yield gauge(
        "last_incident_timestamp_seconds",
        "When the last incident recorded since the start began (0: none yet).",
        health.last_incident,
    )
    events = CounterMetricFamily(
        "tcpsleuth_recorder_events", "Events seen, by finding kind.", labels=["dir", "kind"]
    )
    for kind, count in sorted(health.events_total.items()):
        events.add_metric([directory, kind], count)
    yield events
    yield counter(
        "events_suppressed",
        "Events not recorded because the hourly limit of incidents was reached (--per-hour).",
        health.events_suppressed_total,
    )
    yield gauge("capture_up", "1 while tcpdump is writing the ring.", 1 if health.capture_up else 0)
    yield counter(
        "capture_packets", "Packets tcpdump wrote to the ring.", health.capture_packets_total
    )
    yield counter(
        "capture_dropped_packets",
        "Packets the kernel dropped before tcpdump could read them (its buffer was full).",
        health.capture_dropped_total,
    )
    yield counter(
        "capture_capped_packets",
        "Packets tcpdump captured that were not written: the ring was at --max-disk.",
        health.capture_capped_total,
    )
    yield gauge(
        "disk_bytes", "Bytes the recorder holds on disk (ring and incidents).", health.disk_bytes
    )
    yield gauge(
        "disk_limit_bytes",
        "The most it may hold: --max-disk, or less when the file system is nearly full.",
        health.disk_limit_bytes,
    )
    yield gauge("ring_seconds", "How far back the ring reaches now.", health.ring_seconds)
    yield gauge("sample_seconds", "How long the last sample took.", health.sample_seconds)
    yield counter("samples", "Samples of counters and listeners taken.", health.samples_total)
    problems = GaugeMetricFamily(
        "tcpsleuth_recorder_problem",
        "1 while the recorder cannot do something (what: capture, trace, sampling, metrics, "
        "incident); "
        "its log says why in one line.",
        labels=["dir", "what"],
    )
    for what in ("capture", "trace", "sampling", "metrics", "incident"):
        problems.add_metric([directory, what], 1 if what in health.problems else 0)
    yield problems

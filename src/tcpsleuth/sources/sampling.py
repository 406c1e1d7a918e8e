"""Samples of a namespace's TCP counters and listen queues, for rates over time.

One sample is what ``tcpsleuth watch`` and the exporter read at one moment:
the counters of ``/proc/net/snmp`` and ``/proc/net/netstat`` (nstat names) and
every LISTEN socket with its backlog and accept queue (sock_diag). Counters are
per network namespace, so the files are opened inside the namespace.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from tcpsleuth.model.records import STATE_NUMBERS, Listener
from tcpsleuth.sources import netns, owners, procfs, sockdiag

LISTEN_ONLY = 1 << STATE_NUMBERS["LISTEN"]
ESTABLISHED_AND_LISTEN = LISTEN_ONLY | (1 << STATE_NUMBERS["ESTAB"])


@dataclass(frozen=True)
class CounterSample:
    """Counters and listeners at ``at`` (seconds on the monotonic clock)."""

    at: float
    wall_time: float
    counters: Mapping[str, int]
    listeners: tuple[Listener, ...]


def host_label(netns_name: str | None) -> str:
    """What events are about: this host, or one of its namespaces."""
    host = socket.gethostname()
    return f"{host} netns {netns_name}" if netns_name else host


def read_counters(netns_name: str | None) -> dict[str, int]:
    with netns.entered(netns_name):
        return procfs.read_live_counters()


def read_sysctls(netns_name: str | None) -> dict[str, str]:
    """The namespace's sysctls (procfs.AUDIT_SYSCTLS). net.core.rmem_max is one value
    for the whole system, which kernel 6.1 shows only in the initial namespace
    (measured in the lab's guest): there it is read from this process's own."""
    with netns.entered(netns_name):
        sysctls = procfs.read_live_sysctls()
    if netns_name and "net.core.rmem_max" not in sysctls:
        sysctls["net.core.rmem_max"] = procfs.read_live_sysctls().get("net.core.rmem_max", "")
    return sysctls


def take(netns_name: str | None = None) -> CounterSample:
    """Counters first, listeners right after: both within a millisecond or so."""
    at, wall = time.monotonic(), time.time()
    counters = read_counters(netns_name)
    table = sockdiag.snapshot(netns_name, states=LISTEN_ONLY, with_info=False)
    return CounterSample(at, wall, counters, tuple(table.listeners))


@dataclass(frozen=True)
class ScrapeSample:
    """What one exporter scrape reads: counters, and listeners and established
    sockets with their tcp_info as sock_diag's bulk arrays (no record per socket)."""

    counters: Mapping[str, int]
    sockets: sockdiag.DiagDump
    read_seconds: float
    # every listener with its receive buffer and owning processes, and the namespace's
    # sysctls, for the receive-buffer lock per listener
    listeners: tuple[Listener, ...] = ()
    sysctls: Mapping[str, str] = field(default_factory=dict)


def every(
    netns_name: str | None, interval: float, count: int | None = None
) -> Iterator[CounterSample]:
    """The first sample, then one every ``interval`` seconds on a fixed schedule (a slow
    read does not push the later ones back); ``count`` intervals, or without end."""
    first = take(netns_name)
    yield first
    n = 0
    while count is None or n < count:
        n += 1
        delay = first.at + n * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield take(netns_name)


def scrape(
    netns_name: str | None = None, owner_cache: owners.OwnerCache | None = None
) -> ScrapeSample:
    """Everything an exporter scrape reports. Give the same ``owner_cache`` to every
    scrape of a long-lived process: without one, finding the listeners' owners walks
    every open file of the host each time."""
    started = time.perf_counter()
    counters = read_counters(netns_name)
    sysctls = read_sysctls(netns_name)
    sockets = sockdiag.dump(netns_name, states=ESTABLISHED_AND_LISTEN, with_info=True)
    found = sockdiag.listeners(netns_name)
    inodes = [x.inode for x in found if x.inode]
    held = (
        owner_cache.owners(inodes)
        if owner_cache is not None
        else owners.socket_owners(inodes, with_cmdline=True)
    )
    found = sockdiag.with_owners(found, held)
    return ScrapeSample(counters, sockets, time.perf_counter() - started, tuple(found), sysctls)


def port_sockets(netns_name: str | None, ports: frozenset[int]) -> sockdiag.DiagDump:
    """Established and listening sockets with a local or remote port in ``ports``, with
    tcp_info: what the recorder judges each second. The kernel filters by port, so the
    cost follows the watched ports' sockets, not every socket of the host."""
    return sockdiag.dump(netns_name, states=ESTABLISHED_AND_LISTEN, with_info=True, ports=ports)


def sockets_in_use(netns_name: str | None) -> int | None:
    """TCP sockets of the namespace (/proc/net/sockstat's ``TCP: inuse``), without
    dumping them; None where the file cannot be read."""
    with netns.entered(netns_name):
        return procfs.tcp_sockets_in_use()

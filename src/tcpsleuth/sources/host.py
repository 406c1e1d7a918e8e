"""A snapshot of the live host (or of one of its network namespaces)."""

from __future__ import annotations

import socket
from pathlib import Path

from tcpsleuth.model.records import STATE_NUMBERS, HostSnapshot, KafkaConfig
from tcpsleuth.sources import netns, owners, procfs, sockdiag

LISTEN_AND_ESTABLISHED = (1 << STATE_NUMBERS["LISTEN"]) | (1 << STATE_NUMBERS["ESTAB"])


def proc_version() -> str | None:
    try:
        return Path("/proc/version").read_text()
    except OSError:
        return None


def live_snapshot(
    netns_name: str | None = None, kafka_config: KafkaConfig | None = None
) -> HostSnapshot:
    """Kernel, sysctls, counters, listeners (with their receive buffers and owning
    processes) and established sockets, read read-only."""
    with netns.entered(netns_name):
        sysctls = procfs.read_live_sysctls()
        counters = procfs.read_live_counters()
    # with tcp_info: an accepted connection's window scale tells whether its listener's
    # buffer was locked where the buffer's size cannot (detectors/listeners.py)
    table = sockdiag.snapshot(netns_name, states=1 << STATE_NUMBERS["ESTAB"], with_info=True)
    # listeners with their receive buffers, and the processes holding them
    found = sockdiag.listeners(netns_name)
    found = sockdiag.with_owners(found, owners.socket_owners(x.inode for x in found if x.inode))
    hostname = socket.gethostname()
    return HostSnapshot(
        origin=f"live network namespace {netns_name}" if netns_name else "live host",
        hostname=f"{hostname}/{netns_name}" if netns_name else hostname,
        kernel_release=procfs.kernel_release(),
        sysctls=sysctls,
        counters=counters,
        listeners=found,
        connections=table.connections,
        kafka_config=kafka_config,
        proc_version=proc_version(),
    )

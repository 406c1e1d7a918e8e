"""A snapshot of the live host (or of one of its network namespaces)."""

from __future__ import annotations

import socket
from pathlib import Path

from tcpsleuth.model.records import STATE_NUMBERS, HostSnapshot, KafkaConfig
from tcpsleuth.sources import netns, procfs, sockdiag

LISTEN_AND_ESTABLISHED = (1 << STATE_NUMBERS["LISTEN"]) | (1 << STATE_NUMBERS["ESTAB"])


def proc_version() -> str | None:
    try:
        return Path("/proc/version").read_text()
    except OSError:
        return None


def live_snapshot(
    netns_name: str | None = None, kafka_config: KafkaConfig | None = None
) -> HostSnapshot:
    """Kernel, sysctls, counters, listeners and established sockets, read read-only."""
    with netns.entered(netns_name):
        sysctls = procfs.read_live_sysctls()
        counters = procfs.read_live_counters()
    table = sockdiag.snapshot(netns_name, states=LISTEN_AND_ESTABLISHED, with_info=False)
    hostname = socket.gethostname()
    return HostSnapshot(
        origin=f"live network namespace {netns_name}" if netns_name else "live host",
        hostname=f"{hostname}/{netns_name}" if netns_name else hostname,
        kernel_release=procfs.kernel_release(),
        sysctls=sysctls,
        counters=counters,
        listeners=table.listeners,
        connections=table.connections,
        kafka_config=kafka_config,
        proc_version=proc_version(),
    )

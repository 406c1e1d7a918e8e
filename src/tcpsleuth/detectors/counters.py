"""Kernel counters that show listen queues have already overflowed on this host.

Names are nstat's (/proc/net/netstat TcpExt group). They count since boot (or
since the network namespace was made), so a non-zero value says it happened,
not that it is happening: `tcpsleuth` commands that sample rates say when.
"""

from __future__ import annotations

from tcpsleuth.model.findings import Finding, Severity, host_subject
from tcpsleuth.model.records import HostSnapshot

COOKIE_COUNTERS = (
    "TcpExtSyncookiesSent",
    "TcpExtSyncookiesRecv",
    "TcpExtSyncookiesFailed",
    "TcpExtTCPReqQFullDoCookies",
)
OVERFLOW_COUNTERS = ("TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPReqQFullDrop")
AUDIT_COUNTERS = COOKIE_COUNTERS + OVERFLOW_COUNTERS


def _present(snapshot: HostSnapshot, names: tuple[str, ...]) -> dict[str, int]:
    return {name: snapshot.counters[name] for name in names if name in snapshot.counters}


def counter_findings(snapshot: HostSnapshot) -> list[Finding]:
    findings: list[Finding] = []
    subject = host_subject(snapshot.hostname)
    cookies = _present(snapshot, COOKIE_COUNTERS)
    if cookies.get("TcpExtSyncookiesSent", 0) > 0:
        findings.append(
            Finding(
                "syn-cookies-sent",
                Severity.WARNING,
                subject,
                f"{cookies['TcpExtSyncookiesSent']} SYN cookies sent since boot: a listen queue "
                "overflowed and connections were made by cookie",
                cookies,
                "Find the listener (tcpsleuth audit lists backlogs against connections) and raise "
                "its backlog; connections made by cookie may run with a wrong window scale on "
                "kernels without the fix.",
            )
        )
    overflows = _present(snapshot, OVERFLOW_COUNTERS)
    if any(overflows.values()):
        findings.append(
            Finding(
                "listen-overflows",
                Severity.WARNING,
                subject,
                f"{overflows.get('TcpExtListenOverflows', 0)} listen-queue overflows and "
                f"{overflows.get('TcpExtListenDrops', 0)} dropped connection attempts since boot",
                overflows,
                "An accept queue was full (the application accepted too slowly or its backlog is "
                "too small): raise the backlog and net.core.somaxconn; check the application's "
                "accept loop.",
            )
        )
    return findings

"""What the host's TCP settings mean for a reconnect storm.

Kernel behaviour relied on (net/ipv4/tcp_input.c, syncookies.c):
- tcp_syncookies=1 sends cookies only when a listener's SYN queue is full; =2
  for every SYN. A cookie keeps no per-connection state, so the client's
  window scale, SACK and ECN survive only encoded in the SYN-ACK's timestamp:
  with tcp_timestamps=0 a cookie connection has no window scaling (64 KB
  window at most) and no SACK.
- With tcp_syncookies=0 a full queue drops the SYN; the client retransmits it
  after 1 s, then 3 s, 7 s ... Unproven peers are also dropped once the SYN
  queue is within a quarter of tcp_max_syn_backlog.
"""

from __future__ import annotations

from tcpsleuth.model.findings import Finding, Severity, host_subject
from tcpsleuth.model.records import HostSnapshot


def sysctl_findings(snapshot: HostSnapshot) -> list[Finding]:
    findings: list[Finding] = []
    subject = host_subject(snapshot.hostname)
    syncookies = snapshot.sysctl_int("net.ipv4.tcp_syncookies")
    timestamps = snapshot.sysctl_int("net.ipv4.tcp_timestamps")
    scaling = snapshot.sysctl_int("net.ipv4.tcp_window_scaling")
    max_syn_backlog = snapshot.sysctl_int("net.ipv4.tcp_max_syn_backlog")
    somaxconn = snapshot.sysctl_int("net.core.somaxconn")

    if scaling == 0:
        findings.append(
            Finding(
                "window-scaling-disabled",
                Severity.WARNING,
                subject,
                "TCP window scaling is off: every connection's window is capped at 65,535 bytes",
                {"tcp_window_scaling": scaling},
                "Set net.ipv4.tcp_window_scaling=1 (the default); with it off a sender can have "
                "at most 64 KB in flight, about 64 MB/s at 1 ms round trip.",
            )
        )
    if syncookies in (1, 2) and timestamps == 0:
        findings.append(
            Finding(
                "syncookies-without-timestamps",
                Severity.WARNING,
                subject,
                "SYN cookies are on but TCP timestamps are off: connections made by cookie during "
                "a listen-queue overflow lose window scaling (64 KB window) and SACK",
                {"tcp_syncookies": syncookies, "tcp_timestamps": timestamps},
                "Set net.ipv4.tcp_timestamps=1 so cookies can carry the client's options, or "
                "net.ipv4.tcp_syncookies=0 and a listen backlog that fits reconnect storms.",
            )
        )
    if syncookies == 2:
        findings.append(
            Finding(
                "syncookies-always",
                Severity.WARNING,
                subject,
                "net.ipv4.tcp_syncookies=2: every connection is made by SYN cookie, even "
                "without an overflow",
                {"tcp_syncookies": syncookies, "tcp_timestamps": timestamps},
                "Use net.ipv4.tcp_syncookies=1 (cookies only on overflow) or 0; =2 is meant for "
                "testing and exposes every connection to cookie limitations and bugs.",
            )
        )
    if syncookies == 0:
        evidence: dict[str, object] = {"tcp_syncookies": 0, "tcp_max_syn_backlog": max_syn_backlog}
        findings.append(
            Finding(
                "syncookies-disabled",
                Severity.INFO,
                subject,
                "SYN cookies are off: a full listen queue drops SYNs and clients retry after "
                "1 s, 3 s, 7 s ...",
                evidence,
                "This avoids every cookie side effect; make sure listen backlogs (and "
                "net.ipv4.tcp_max_syn_backlog) are large enough that a reconnect storm fits.",
            )
        )
    if somaxconn is not None and somaxconn < 1024:
        findings.append(
            Finding(
                "somaxconn-low",
                Severity.INFO,
                subject,
                f"net.core.somaxconn={somaxconn} caps every listen backlog at {somaxconn}",
                {"somaxconn": somaxconn},
                "Raise net.core.somaxconn (4096 is the default since Linux 5.4) so applications "
                "that ask for a large backlog get it.",
            )
        )
    return findings

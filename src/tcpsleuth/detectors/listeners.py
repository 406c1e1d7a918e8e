"""Listeners: what the kernel knows about every one of them, whatever program owns it,
and the two risks a restart of that program meets.

- The backlog against the clients that will come back at once. When a server
  restarts, every client that was connected to a port reconnects within moments. The
  kernel queues at most ``backlog`` (``listen()``'s argument capped by
  net.core.somaxconn; ``ss -ltn`` Send-Q) half-open connections per listener before it
  sends SYN cookies or drops SYNs (inet_csk_reqsk_queue_is_full).
- A locked receive buffer. A program that sets SO_RCVBUF on its listening socket
  (before or after listen(): the kernel reads the lock when each SYN and each cookie
  ACK arrives) locks it (SOCK_RCVBUF_LOCK). On a kernel without commit 909172a14974,
  a connection completed from a SYN cookie then scales its windows by another shift
  than its SYN-ACK announced (detectors/kernel.py).

The facts each family reads, and how a buffer is judged locked, are in
:mod:`.listener_facts`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tcpsleuth.detectors import servers
from tcpsleuth.detectors.kafka import configured_listener_findings
from tcpsleuth.detectors.kernel import FIX_COMMIT, KernelVerdict, Status
from tcpsleuth.detectors.listener_facts import (
    NO,
    UNDETERMINED,
    YES,
    ListenerFacts,
    listener_facts,
)
from tcpsleuth.model.findings import Finding, Severity, listener_subject
from tcpsleuth.model.records import HostSnapshot

__all__ = [
    "NO",
    "UNDETERMINED",
    "YES",
    "ListenerFacts",
    "listener_facts",
    "listener_findings",
    "rcvbuf_findings",
    "syn_queue_limit",
]

# At this many times the backlog, most of a reconnect storm cannot be queued at once.
CRITICAL_RATIO = 10


def _suggested_backlog(established: int) -> int:
    size = 1024
    while size < established:
        size *= 2
    return size


def syn_queue_limit(max_syn_backlog: int) -> int:
    """Half-open connections a listener keeps when SYN cookies are off.

    tcp_conn_request() drops a SYN from an unproven peer once fewer than a
    quarter of tcp_max_syn_backlog slots are left, whatever the listen backlog.
    """
    return max_syn_backlog - (max_syn_backlog >> 2)


# -- backlog against the clients that come back -----------------------------------------------


def _advice(
    port: int,
    established: int,
    somaxconn: int | None,
    group: list[ListenerFacts],
    syn_limited: bool = False,
) -> str:
    target = _suggested_backlog(established)
    steps = []
    program = servers.program(next((x.program for x in group if x.program), None))
    where = next((x.config.where for x in group if x.config is not None), "")
    if program is not None:
        steps.append(program.backlog_advice(target, where))
    else:
        steps.append(f"have the application listen() with a backlog of at least {target}")
    if somaxconn is None or somaxconn < target:
        steps.append(f"raise net.core.somaxconn to {target} (it caps every backlog)")
    if syn_limited:
        steps.append(
            f"raise net.ipv4.tcp_max_syn_backlog to {target + target // 3} (with SYN cookies "
            "off the kernel keeps at most three quarters of it half-open)"
        )
    text = "; ".join(steps)
    return (
        text[0].upper() + text[1:] + ". Until then a restart overflows the queue: "
        "SYN cookies or dropped SYNs."
    )


def _backlog_findings(snapshot: HostSnapshot, facts: list[ListenerFacts]) -> list[Finding]:
    findings: list[Finding] = []
    somaxconn = snapshot.sysctl_int("net.core.somaxconn")
    max_syn_backlog = snapshot.sysctl_int("net.ipv4.tcp_max_syn_backlog")
    cookies_off = snapshot.sysctl_int("net.ipv4.tcp_syncookies") == 0
    by_port: dict[int, list[ListenerFacts]] = defaultdict(list)
    for fact in facts:
        by_port[fact.local_port].append(fact)
    for port, group in sorted(by_port.items()):
        count = sum(x.established or 0 for x in group)
        # Listeners sharing a port (IPv4 and IPv6, or SO_REUSEPORT) each queue their own.
        sockets = [s for x in group for s in x.sockets]
        backlog = sum(x.backlog for x in group)
        limit = backlog
        syn_limit = None
        if cookies_off and max_syn_backlog:
            syn_limit = syn_queue_limit(max_syn_backlog)
            limit = min(backlog, syn_limit * len(sockets))
        if count <= limit:
            continue
        severity = Severity.CRITICAL if count >= CRITICAL_RATIO * limit else Severity.WARNING
        program = servers.program(next((x.program for x in group if x.program), None))
        who = f"{program.title} listener " if program else ""
        summary = (
            f"{who}{group[0].local} queues {limit} connection attempts but has {count} "
            "established connections that will reconnect at once after a restart"
        )
        if limit < backlog:
            summary += (
                f" (backlog {backlog}, but with SYN cookies off tcp_max_syn_backlog="
                f"{max_syn_backlog} keeps only {syn_limit} half-open)"
            )
        configured = next((x.config for x in group if x.config is not None), None)
        findings.append(
            Finding(
                "listen-backlog-small",
                severity,
                listener_subject(group[0].local),
                summary,
                {
                    "backlog": backlog,
                    "established": count,
                    "queue_limit": limit,
                    "somaxconn": somaxconn,
                    "tcp_max_syn_backlog": max_syn_backlog,
                    "syn_queue_limit": syn_limit,
                    "accept_queue": sum(x.accept_queue for x in group),
                    "listeners": [s.local for s in sockets],
                    "program": program.name if program else None,
                    "processes": servers.process_names(o for x in group for o in x.owners),
                    "backlog_setting": program.backlog_setting if program else None,
                    "program_default_backlog": program.default_backlog if program else None,
                    "configured_backlog": configured.backlog if configured else None,
                    "config": configured.where if configured else None,
                },
                _advice(port, count, somaxconn, group, syn_limited=limit < backlog),
            )
        )
    return findings


# -- locked receive buffers ---------------------------------------------------------------------


def rcvbuf_findings(
    snapshot: HostSnapshot, verdict: KernelVerdict, facts: list[ListenerFacts]
) -> list[Finding]:
    """One finding per listener whose receive buffer is locked, as serious as the
    kernel and the cookie settings make it."""
    findings = []
    syncookies = snapshot.sysctl_int("net.ipv4.tcp_syncookies")
    timestamps = snapshot.sysctl_int("net.ipv4.tcp_timestamps")
    for fact in facts:
        if fact.rcvbuf_locked != YES or fact.rcvbuf is None:
            continue
        program = servers.program(fact.program)
        who = f"{program.title} listener" if program else "listener"
        processes = servers.process_names(fact.owners)
        if processes and not program:
            who += f" of {processes[0]['comm']}"
        where = fact.config.where if fact.config else ""
        change = (
            program.rcvbuf_advice(where)
            if program
            else "find what sets SO_RCVBUF on this listening socket and leave the buffer to "
            "the kernel (tcp_rmem), or set it on accepted sockets only"
        )
        evidence: dict[str, Any] = {
            "rcvbuf": fact.rcvbuf,
            "rcvbuf_unlocked": fact.rcvbuf_unlocked,
            "so_rcvbuf": fact.rcvbuf // 2,
            "rcvbuf_locked_why": fact.lock_reason,
            "program": fact.program,
            "processes": processes,
            "rcvbuf_setting": program.rcvbuf_setting if program else None,
            "config": where or None,
            "kernel_release": verdict.release,
            "kernel_status": verdict.status,
            "verdict_source": verdict.source,
            "tcp_syncookies": syncookies,
            "tcp_timestamps": timestamps,
        }
        shifts, shrink = _shifts(fact)
        evidence.update(shifts)
        base = f"{who} {fact.local} locks its receive buffer at {fact.rcvbuf} bytes"
        severity, summary, advice = _rcvbuf_judgement(
            verdict, syncookies, timestamps, base, shrink, change
        )
        findings.append(
            Finding(
                "listener-rcvbuf-locked",
                severity,
                listener_subject(fact.local),
                summary,
                evidence,
                advice,
            )
        )
    return findings


def _shifts(fact: ListenerFacts) -> tuple[dict[str, Any], str]:
    """The listener's announced and used shifts as evidence (none when unknown), and how
    much too small its windows read when the used shift is the larger, as a sentence's end."""
    if fact.shifts is None:
        return {}, ""
    announced, used = fact.shifts
    evidence = {
        "announced_wscale": announced,
        "actual_wscale": used,
        "window_shrink_factor": 2 ** (used - announced) if used >= announced else 1,
    }
    shrink = ""
    if used > announced:
        shrink = (
            f": its SYN-ACKs announce window scale {announced}, a cookie socket on a "
            f"kernel without the fix uses {used}, so clients read its windows "
            f"{2 ** (used - announced)}x too small"
        )
    return evidence, shrink


def _rcvbuf_judgement(
    verdict: KernelVerdict,
    syncookies: int | None,
    timestamps: int | None,
    base: str,
    shrink: str,
    change: str,
) -> tuple[Severity, str, str]:
    """The severity, summary and advice of a locked listener's finding, from the kernel's
    verdict and the cookie settings; ``base`` begins the summary, ``change`` is the advice
    for the program."""
    kernel_fix = f"a kernel with commit {FIX_COMMIT[:12]} (mainline 5.10) removes the bug"
    if verdict.status == Status.FIXED:
        severity = Severity.INFO
        summary = (
            f"{base}; kernel {verdict.release} has the SYN-cookie window-scale fix, but "
            "connections accepted from it inherit the lock and do not autotune their "
            "receive buffer"
        )
        advice = (
            f"Nothing urgent on this kernel. Before moving this server to an older kernel: "
            f"{change}."
        )
    elif syncookies == 0 or timestamps == 0:
        severity = Severity.INFO
        why = (
            "SYN cookies are off (net.ipv4.tcp_syncookies=0)"
            if syncookies == 0
            else "timestamps are off, so cookie connections lose window scaling altogether"
        )
        summary = (
            f"{base}; kernel {verdict.release} lacks the SYN-cookie window-scale fix, but {why}"
        )
        advice = f"Keep it that way until the kernel is upgraded, or {change}; {kernel_fix}."
    elif verdict.status == Status.AFFECTED:
        severity = Severity.CRITICAL
        summary = (
            f"{base} on kernel {verdict.release}, which lacks the SYN-cookie window-scale "
            f"fix{shrink or ': cookie connections get another window scale than announced'}"
        )
        advice = (
            f"{change[0].upper() + change[1:]}; or keep the listen queue from overflowing "
            "(a backlog above the clients that reconnect at once), or set "
            f"net.ipv4.tcp_syncookies=0 (SYNs are dropped and retried instead); {kernel_fix}."
        )
    else:
        severity = Severity.WARNING
        summary = (
            f"{base}; whether kernel {verdict.release} has the SYN-cookie window-scale fix "
            f"cannot be told from its release{shrink and ' (without it' + shrink[1:] + ')'}"
        )
        advice = (
            "Run `tcpsleuth probe` (or `tcpsleuth audit --probe`) to test this kernel; "
            f"until then {change}."
        )
    return severity, summary, advice


def listener_findings(
    snapshot: HostSnapshot,
    verdict: KernelVerdict | None = None,
    facts: list[ListenerFacts] | None = None,
) -> list[Finding]:
    if facts is None:
        facts = listener_facts(snapshot)
    findings = []
    if snapshot.listeners is not None and snapshot.connections is not None:
        findings += _backlog_findings(snapshot, facts)
    findings += configured_listener_findings(snapshot)  # Kafka's, not listening yet
    if verdict is not None:
        findings += rcvbuf_findings(snapshot, verdict, facts)
    return findings

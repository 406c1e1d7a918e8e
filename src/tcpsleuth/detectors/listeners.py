"""Listeners against the clients that will come back at once after a restart.

When a server restarts, every client that was connected to a port reconnects
within moments. The kernel queues at most ``backlog`` (``listen()``'s argument
capped by net.core.somaxconn; ``ss -ltn`` Send-Q) half-open connections per
listener before it sends SYN cookies or drops SYNs (inet_csk_reqsk_queue_is_full).
"""

from __future__ import annotations

from collections import defaultdict

from tcpsleuth.model.findings import Finding, Severity, listener_subject
from tcpsleuth.model.records import HostSnapshot, KafkaConfig, Listener

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


def _advice(
    port: int,
    established: int,
    somaxconn: int | None,
    kafka: KafkaConfig | None,
    syn_limited: bool = False,
) -> str:
    target = _suggested_backlog(established)
    steps = []
    if kafka is not None and port in {listener.port for listener in kafka.listeners}:
        steps.append(
            f"set socket.listen.backlog.size={target} in server.properties "
            "(Kafka 3.2.0 and later; older brokers hard-code 50)"
        )
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


def listener_findings(snapshot: HostSnapshot) -> list[Finding]:
    findings: list[Finding] = []
    somaxconn = snapshot.sysctl_int("net.core.somaxconn")
    max_syn_backlog = snapshot.sysctl_int("net.ipv4.tcp_max_syn_backlog")
    cookies_off = snapshot.sysctl_int("net.ipv4.tcp_syncookies") == 0
    kafka = snapshot.kafka_config
    if snapshot.listeners is not None and snapshot.connections is not None:
        established = snapshot.established_per_port()
        by_port: dict[int, list[Listener]] = defaultdict(list)
        for listener in snapshot.listeners:
            by_port[listener.local_port].append(listener)
        for port, group in sorted(by_port.items()):
            count = established.get(port, 0)
            # Listeners sharing a port (IPv4 and IPv6, or SO_REUSEPORT) each queue their own.
            backlog = sum(listener.backlog for listener in group)
            limit = backlog
            syn_limit = None
            if cookies_off and max_syn_backlog:
                syn_limit = syn_queue_limit(max_syn_backlog)
                limit = min(backlog, syn_limit * len(group))
            if count <= limit:
                continue
            severity = Severity.CRITICAL if count >= CRITICAL_RATIO * limit else Severity.WARNING
            summary = (
                f"{group[0].local} queues {limit} connection attempts but has {count} "
                "established connections that will reconnect at once after a restart"
            )
            if limit < backlog:
                summary += (
                    f" (backlog {backlog}, but with SYN cookies off tcp_max_syn_backlog="
                    f"{max_syn_backlog} keeps only {syn_limit} half-open)"
                )
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
                        "accept_queue": sum(listener.accept_queue for listener in group),
                        "listeners": [listener.local for listener in group],
                    },
                    _advice(port, count, somaxconn, kafka, syn_limited=limit < backlog),
                )
            )
    if kafka is not None:
        live_ports = {listener.local_port for listener in snapshot.listeners or ()}
        for listener in kafka.listeners:
            if listener.port in live_ports:
                continue  # the live listener above is the better evidence
            backlog = kafka.effective_listen_backlog
            effective = min(backlog, somaxconn) if somaxconn else backlog
            if effective >= 1024:
                continue
            where = f"{listener.host or '0.0.0.0'}:{listener.port}"
            if ":" in listener.host:
                where = f"[{listener.host}]:{listener.port}"
            findings.append(
                Finding(
                    "kafka-listen-backlog-small",
                    Severity.WARNING,
                    listener_subject(where),
                    f"Kafka listener {listener.name} ({where}) will listen with backlog "
                    f"{effective}: more than {effective} clients reconnecting after a broker "
                    "restart overflow it",
                    {
                        "listener_name": listener.name,
                        "socket_listen_backlog_size": kafka.listen_backlog_size,
                        "effective_backlog": effective,
                        "somaxconn": somaxconn,
                    },
                    _advice(listener.port, max(effective + 1, 1024), somaxconn, kafka),
                )
            )
    return findings

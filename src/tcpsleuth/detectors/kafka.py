"""Kafka broker settings that shape how its sockets behave: every finding on a broker's
configuration file (its receive buffer, a backlog setting this version ignores, the
backlog of listeners it names that are not listening yet)."""

from __future__ import annotations

from tcpsleuth.model.findings import Finding, Severity, host_subject, listener_subject
from tcpsleuth.model.programs import PROGRAMS
from tcpsleuth.model.records import HostSnapshot


def kafka_findings(snapshot: HostSnapshot) -> list[Finding]:
    kafka = snapshot.kafka_config
    if kafka is None:
        return []
    findings: list[Finding] = []
    somaxconn = snapshot.sysctl_int("net.core.somaxconn")
    if kafka.sets_so_rcvbuf:
        findings.append(
            Finding(
                "kafka-so-rcvbuf-set",
                Severity.INFO,
                host_subject(snapshot.hostname),
                f"socket.receive.buffer.bytes={kafka.receive_buffer_bytes}: the broker locks "
                "SO_RCVBUF on its listeners, which turns off receive-buffer autotuning and is the "
                "precondition of the SYN-cookie window-scale bug",
                {
                    "socket_receive_buffer_bytes": kafka.receive_buffer_bytes,
                    "explicit": "socket.receive.buffer.bytes" in kafka.properties,
                },
                "socket.receive.buffer.bytes=-1 lets the kernel size the buffer (tcp_rmem) and "
                "avoids the bug's precondition.",
            )
        )
    if kafka.listen_backlog_size is not None and kafka.honours_listen_backlog is False:
        findings.append(
            Finding(
                "kafka-listen-backlog-ignored",
                Severity.WARNING,
                host_subject(snapshot.hostname),
                f"socket.listen.backlog.size={kafka.listen_backlog_size} has no effect on "
                f"Kafka {kafka.version}: the setting exists from 3.2.0 (KIP-764), so this "
                f"broker listens with backlog {kafka.KAFKA_DEFAULT_BACKLOG} whatever the file "
                "says",
                {
                    "socket_listen_backlog_size": kafka.listen_backlog_size,
                    "kafka_version": kafka.version,
                    "version_source": kafka.version_source,
                    "effective_listen_backlog": kafka.effective_listen_backlog,
                },
                "Upgrade the broker to Kafka 3.2.0 or later for socket.listen.backlog.size to "
                "apply; until then SYN cookies (net.ipv4.tcp_syncookies=1) or a kernel with "
                "the window-scale fix are what stand between a restart and slow clients.",
            )
        )
    if (
        kafka.listen_backlog_size is not None
        and kafka.honours_listen_backlog is not False
        and somaxconn is not None
        and kafka.listen_backlog_size > somaxconn
    ):
        findings.append(
            Finding(
                "somaxconn-caps-backlog",
                Severity.WARNING,
                host_subject(snapshot.hostname),
                f"socket.listen.backlog.size={kafka.listen_backlog_size} but net.core.somaxconn="
                f"{somaxconn}: the kernel silently gives the listener {somaxconn}",
                {"socket_listen_backlog_size": kafka.listen_backlog_size, "somaxconn": somaxconn},
                f"Raise net.core.somaxconn to at least {kafka.listen_backlog_size}.",
            )
        )
    return findings


def configured_listener_findings(snapshot: HostSnapshot) -> list[Finding]:
    """Kafka listeners the file names but that are not listening (the broker is down,
    or this is a bundle without `ss`): the backlog they will get."""
    kafka = snapshot.kafka_config
    if kafka is None:
        return []
    findings = []
    somaxconn = snapshot.sysctl_int("net.core.somaxconn")
    live_ports = {listener.local_port for listener in snapshot.listeners or ()}
    program = PROGRAMS["kafka"]
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
        target = max(effective + 1, 1024)
        steps = [program.backlog_advice(target)]
        if somaxconn is None or somaxconn < target:
            steps.append(f"raise net.core.somaxconn to {target} (it caps every backlog)")
        text = "; ".join(steps)
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
                text[0].upper() + text[1:] + ". Until then a restart overflows the queue: "
                "SYN cookies or dropped SYNs.",
            )
        )
    return findings

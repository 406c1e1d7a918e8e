"""``tcpsleuth audit`` rendered: its JSON document and its tables, from one
:class:`AuditResult` (``doctor`` shows the same)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group

from tcpsleuth.detectors import verdict_host
from tcpsleuth.detectors.counters import AUDIT_COUNTERS
from tcpsleuth.detectors.kernel import KernelVerdict
from tcpsleuth.detectors.listeners import ListenerFacts
from tcpsleuth.detectors.verdict import Verdict
from tcpsleuth.model.findings import Finding
from tcpsleuth.model.records import AUDIT_SYSCTLS, HostSnapshot
from tcpsleuth.reports import table, verdictview


@dataclass(frozen=True)
class AuditResult:
    snapshot: HostSnapshot
    verdict: KernelVerdict
    findings: list[Finding]
    listeners: list[ListenerFacts]

    def data(self) -> dict[str, Any]:
        snap = self.snapshot
        kafka = snap.kafka_config
        return {
            "origin": snap.origin,
            "host": {"hostname": snap.hostname, "kernel_release": snap.kernel_release},
            "kernel": self.verdict.to_dict(),
            "sysctls": {name: snap.sysctls[name] for name in AUDIT_SYSCTLS if name in snap.sysctls},
            "counters": {
                name: snap.counters[name] for name in AUDIT_COUNTERS if name in snap.counters
            },
            "listeners": None
            if snap.listeners is None
            else [facts.to_dict() for facts in self.listeners],
            "kafka": None
            if kafka is None
            else {
                "path": kafka.path,
                "listeners": [f"{k.name}://{k.host}:{k.port}" for k in kafka.listeners],
                "version": kafka.version,
                "version_source": kafka.version_source,
                "honours_listen_backlog_size": kafka.honours_listen_backlog,
                "socket_listen_backlog_size": kafka.listen_backlog_size,
                "effective_listen_backlog": kafka.effective_listen_backlog,
                "socket_receive_buffer_bytes": kafka.receive_buffer_bytes,
                "socket_send_buffer_bytes": kafka.send_buffer_bytes,
            },
            "server_configs": [
                {
                    "program": config.program,
                    "path": config.path,
                    "listeners": [
                        {
                            "address": f"{x.host or '*'}:{x.port}",
                            "backlog": x.backlog,
                            "rcvbuf": x.rcvbuf,
                            "where": x.where,
                        }
                        for x in config.listeners
                    ],
                    "settings": dict(config.settings),
                    "notes": list(config.notes),
                }
                for config in snap.server_configs
            ],
            "notes": list(snap.notes),
        }


def _rcvbuf_cell(listener: dict[str, Any]) -> Any:
    if listener["rcvbuf"] is not None:
        return listener["rcvbuf"]
    config = listener.get("config") or {}
    if config.get("rcvbuf") is not None:
        # the kernel's buffer is not in the source; the program's file says what it sets
        return f"SO_RCVBUF={config['rcvbuf']} (config)"
    return None


def listeners_table(listeners: list[dict[str, Any]], shown: int = 20) -> Any:
    """The listeners, busiest first: backlog against established connections, and
    whether the receive buffer is locked."""
    busiest = sorted(listeners, key=lambda x: -(x["established"] or 0))[:shown]
    return table.records_table(
        "Listeners (busiest first)",
        ["listener", "program", "backlog", "accept queue", "established", "rcvbuf", "locked"],
        [
            (
                x["listener"],
                x["program"] or ", ".join(sorted({p["comm"] for p in x["processes"]})) or "?",
                x["backlog"],
                x["accept_queue"],
                x["established"],
                _rcvbuf_cell(x),
                x["rcvbuf_locked"],
            )
            for x in busiest
        ],
    )


def host_verdict(result: AuditResult, findings: list[Finding] | None = None) -> Verdict:
    """The verdict on the audited host, from its facts and ``findings`` (the audit's,
    or every check's in ``doctor``)."""
    return verdict_host.host_verdict(
        result.snapshot,
        result.verdict,
        result.listeners,
        result.findings if findings is None else findings,
    )


def render(result: AuditResult) -> Group:
    data = result.data()
    parts: list[Any] = [
        verdictview.render(host_verdict(result).to_dict()),
        table.key_values(
            "Host",
            [
                ("source", data["origin"]),
                ("host", data["host"]["hostname"]),
                (
                    "kernel",
                    f"{result.verdict.release}: {result.verdict.status} ({result.verdict.reason})",
                ),
            ],
        ),
        table.key_values("TCP settings", sorted(data["sysctls"].items())),
    ]
    if data["counters"]:
        parts.append(table.key_values("Counters since boot", data["counters"].items()))
    if data["listeners"]:
        parts.append(listeners_table(data["listeners"]))
    for note in data["notes"]:
        parts.append(f"[dim]note: {table.plain(note)}[/dim]")
    parts.append(table.findings_table(result.findings))
    return Group(*parts)

"""``tcpsleuth doctor``: every read-only check available, findings ranked.

Each check is a function from a ``DoctorContext`` to a ``CheckResult``; a check
that cannot run here (no privilege, a bundle without the data it needs) returns
``skipped`` with the reason instead of failing the whole command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from tcpsleuth.cli import examples
from tcpsleuth.cli.audit import snapshot_from
from tcpsleuth.cli.options import format_option, kafka_config_option, netns_option
from tcpsleuth.model.findings import Finding, exit_status, ranked
from tcpsleuth.model.records import HostSnapshot
from tcpsleuth.reports import auditview, doctorview, jsonout, table
from tcpsleuth.reports.auditview import AuditResult
from tcpsleuth.usecases.audit import run_audit


@dataclass(frozen=True)
class DoctorContext:
    snapshot: HostSnapshot
    live: bool  # True when looking at this host (or one of its namespaces), not a bundle
    netns: str | None


@dataclass(frozen=True)
class CheckResult:
    name: str
    findings: list[Finding] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    audit: AuditResult | None = field(default=None, repr=False)  # the audit check's

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ran": self.skipped is None,
            "skipped": self.skipped,
            "findings": len(self.findings),
            "data": self.data,
        }


def audit_check(context: DoctorContext) -> CheckResult:
    """The audit; on this host, as root, with the kernel tested by experiment (the
    probe) rather than looked up in the version table."""
    import os

    from tcpsleuth.errors import EnvironmentProblem
    from tcpsleuth.lab.probe import run_probe

    probed = None
    if context.live and os.geteuid() == 0:
        kafka = context.snapshot.kafka_config
        try:
            probed = run_probe(
                kafka.receive_buffer_bytes if kafka and kafka.sets_so_rcvbuf else 102400
            )
        except EnvironmentProblem:
            probed = None  # the audit then says it relied on the version table
    result = run_audit(context.snapshot, probed)
    return CheckResult("audit", result.findings, result.data(), audit=result)


TRACE_SECONDS = 2.0


def trace_check(context: DoctorContext) -> CheckResult:
    """A short kernel trace of every TCP connection (of the namespace, with --netns)."""
    from tcpsleuth.detectors.tracing import fold, trace_findings
    from tcpsleuth.errors import EnvironmentProblem
    from tcpsleuth.sources.bpf import tracer

    if not context.live:
        return CheckResult("trace", skipped="a bundle cannot be traced")
    try:
        inodes = frozenset({tracer.netns_inode(context.netns)}) if context.netns else frozenset()
        program = tracer.build_program(frozenset(), inodes, sample_ms=50)
        sockets = fold(tracer.trace(program, TRACE_SECONDS))
    except EnvironmentProblem as problem:
        return CheckResult("trace", skipped=str(problem))
    listeners = {lst.local_port for lst in context.snapshot.listeners or ()}
    return CheckResult(
        "trace",
        trace_findings(sockets, frozenset(listeners)),
        {"seconds": TRACE_SECONDS, "connections": len(sockets)},
    )


def sockets_check(context: DoctorContext) -> CheckResult:
    """The `tcpsleuth sockets` detectors: live over sock_diag, or on a bundle's ss-tni.txt."""
    from tcpsleuth.detectors.compare import socket_findings
    from tcpsleuth.errors import EnvironmentProblem
    from tcpsleuth.sources import sockdiag

    if context.live:
        try:
            table_ = sockdiag.snapshot(context.netns)
        except EnvironmentProblem as problem:
            return CheckResult("sockets", skipped=str(problem))
        connections, listeners = table_.connections, table_.listeners
    elif context.snapshot.connections is None:
        return CheckResult("sockets", skipped="the bundle has no ss-tni.txt (`ss -tni` output)")
    else:
        connections = context.snapshot.connections
        listeners = context.snapshot.listeners or []
    return CheckResult(
        "sockets",
        socket_findings(connections, listeners),
        {"connections": len(connections), "listeners": len(listeners)},
    )


COUNTER_SAMPLE_SECONDS = 3.0


def counters_check(context: DoctorContext) -> CheckResult:
    """Counter rates over a few seconds (what `tcpsleuth watch` shows): is a cookie
    storm or an accept-queue overflow happening now, not only since boot."""
    import socket
    import time

    from tcpsleuth.detectors import rates
    from tcpsleuth.errors import EnvironmentProblem
    from tcpsleuth.sources import sampling

    if not context.live:
        return CheckResult("counter-rates", skipped="a bundle holds one moment: no rates")
    try:
        before = sampling.take(context.netns)
        time.sleep(COUNTER_SAMPLE_SECONDS)
        after = sampling.take(context.netns)
    except EnvironmentProblem as problem:
        return CheckResult("counter-rates", skipped=str(problem))
    seconds = after.at - before.at
    host = socket.gethostname() + (f" netns {context.netns}" if context.netns else "")
    per_second = rates.rates(before.counters, after.counters, seconds)
    return CheckResult(
        "counter-rates",
        rates.sample_events(
            before.counters,
            after.counters,
            seconds,
            before.listeners,
            after.listeners,
            host,
        ),
        {
            "seconds": round(seconds, 3),
            "per_second": {
                name: round(per_second[name], 3)
                for name in rates.RATE_COUNTERS
                if name in per_second
            },
        },
    )


Check = Callable[[DoctorContext], CheckResult]
CHECKS: list[Check] = [audit_check, trace_check, sockets_check, counters_check]
CHECK_WORDS = {
    audit_check: "auditing the kernel, settings and listeners",
    trace_check: f"tracing TCP connections for {TRACE_SECONDS:g} s",
    sockets_check: "reading every connection's window scale",
    counters_check: f"sampling counters for {COUNTER_SAMPLE_SECONDS:g} s",
}


def _run_checks(context: DoctorContext) -> list[CheckResult]:
    """Every check, saying which one runs on standard error when that is a terminal
    (a live run takes seconds: the probe, the trace, the counter samples)."""
    stderr = table.console(stderr=True)
    if not (context.live and stderr.is_terminal):
        return [check(context) for check in CHECKS]
    results = []
    with stderr.status("doctor") as status:
        for number, check in enumerate(CHECKS, 1):
            status.update(f"doctor {number}/{len(CHECKS)}: {CHECK_WORDS.get(check, '')}")
            results.append(check(context))
    return results


@click.command("doctor")
@click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Examine a bundle collected on another host instead of this one.",
)
@click.option(
    "--example",
    is_flag=False,
    flag_value=examples.DEFAULT,
    default=None,
    metavar="[NAME]",
    help=f"Examine a built-in example bundle (default {examples.DEFAULT}).",
)
@netns_option
@kafka_config_option
@format_option
def doctor_command(
    bundle: Path | None,
    example: str | None,
    netns: str | None,
    kafka_config: Path | None,
    output_format: str,
) -> int:
    """Run every read-only check available and rank what they find, worst first.
    This is the command to start with when requests to a server are slow and its
    own metrics look healthy.

    \b
    Examples:
      tcpsleuth doctor
      tcpsleuth doctor --kafka-config /etc/kafka/server.properties
      tcpsleuth doctor --bundle broker-17/
      tcpsleuth doctor --example          # a broker with the SYN-cookie bug
    """
    snapshot = snapshot_from(bundle, netns, kafka_config, example)
    context = DoctorContext(snapshot, live=bundle is None and example is None, netns=netns)
    results = _run_checks(context)
    findings = ranked(f for result in results for f in result.findings)
    audited = next(r.audit for r in results if r.audit is not None)
    verdict = auditview.host_verdict(audited, findings).to_dict()
    if output_format == "json":
        jsonout.emit(
            jsonout.document(
                "doctor",
                findings,
                verdict=verdict,
                origin=snapshot.origin,
                host={"hostname": snapshot.hostname, "kernel_release": snapshot.kernel_release},
                checks=[result.summary() for result in results],
            )
        )
    else:
        table.console().print(doctorview.tables(audited, verdict, results, findings))
    return exit_status(findings)

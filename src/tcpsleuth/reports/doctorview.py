"""``tcpsleuth doctor`` rendered: the verdict first, then where the evidence came from,
the listeners (backlog against established connections, the receive-buffer lock),
which checks ran, and the findings of all of them, worst first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group

from tcpsleuth.model.findings import Finding
from tcpsleuth.reports import auditview, table, verdictview
from tcpsleuth.reports.auditview import AuditResult


def tables(
    audited: AuditResult,
    verdict: Mapping[str, Any],
    results: Sequence[Any],
    findings: list[Finding],
) -> Group:
    """``results`` are the checks' results (name, ``skipped`` reason or None, findings)."""
    snapshot, kernel = audited.snapshot, audited.verdict
    parts: list[Any] = [
        verdictview.render(verdict),
        table.key_values(
            "Doctor",
            [
                ("source", snapshot.origin),
                ("host", snapshot.hostname),
                ("kernel", f"{snapshot.kernel_release}: {kernel.status} ({kernel.source})"),
            ],
        ),
    ]
    listeners = audited.data()["listeners"]
    if listeners:
        parts.append(auditview.listeners_table(listeners))
    parts += [
        table.records_table(
            "Checks",
            ["check", "status", "findings"],
            [
                (r.name, "ran" if r.skipped is None else f"skipped: {r.skipped}", len(r.findings))
                for r in results
            ],
        ),
        table.findings_table(findings),
    ]
    return Group(*parts)

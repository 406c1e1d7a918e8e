"""``tcpsleuth doctor`` rendered: where the evidence came from, which checks ran, and
the findings of all of them, worst first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Group

from tcpsleuth.model.findings import Finding
from tcpsleuth.model.records import HostSnapshot
from tcpsleuth.reports import table


def tables(snapshot: HostSnapshot, results: Sequence[Any], findings: list[Finding]) -> Group:
    """``results`` are the checks' results (name, ``skipped`` reason or None, findings)."""
    return Group(
        table.key_values(
            "Doctor",
            [
                ("source", snapshot.origin),
                ("host", snapshot.hostname),
                ("kernel", snapshot.kernel_release),
            ],
        ),
        table.records_table(
            "Checks",
            ["check", "status", "findings"],
            [
                (r.name, "ran" if r.skipped is None else f"skipped: {r.skipped}", len(r.findings))
                for r in results
            ],
        ),
        table.findings_table(findings),
    )

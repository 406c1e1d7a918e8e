"""``tcpsleuth doctor``: every read-only check this host allows, findings ranked."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Group

from tcpsleuth.cli import examples
from tcpsleuth.cli.audit import render as render_audit
from tcpsleuth.cli.audit import run_audit, snapshot_from
from tcpsleuth.cli.options import format_option, kafka_config_option, netns_option
from tcpsleuth.model.findings import exit_status, ranked
from tcpsleuth.reports import jsonout, table


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
    audit = run_audit(snapshot)
    checks = [
        {"name": "audit", "ran": True, "origin": snapshot.origin, "findings": len(audit.findings)}
    ]
    findings = ranked(audit.findings)
    if output_format == "json":
        jsonout.emit(jsonout.document("doctor", findings, checks=checks, audit=audit.data()))
    else:
        out = table.console()
        out.print(Group(render_audit(audit)))
        out.print(
            table.records_table(
                "Checks",
                ["check", "source", "findings"],
                [(c["name"], c["origin"], c["findings"]) for c in checks],
            )
        )
    return exit_status(findings)

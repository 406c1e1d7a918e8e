"""``tcpsleuth report``: reopen an incident the recorder kept, here or elsewhere."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import click

from tcpsleuth import safefile
from tcpsleuth.cli.options import format_option
from tcpsleuth.detectors.verdict import capture_verdict
from tcpsleuth.errors import InputError
from tcpsleuth.model.findings import Finding, exit_status
from tcpsleuth.model.incident import IncidentReport
from tcpsleuth.recorder import disk, freeze, schema
from tcpsleuth.reports import incident, jsonout, table


def _load(directory: Path, again: bool) -> IncidentReport:
    """The incident's report: its report.json, or its analysis now (saved into it when
    the directory is this user's own and nobody else can write it)."""
    safefile.check_tree(directory)
    report = directory / freeze.REPORT_JSON
    if os.path.lexists(report) and not again:
        data = safefile.read_file(report, schema.MAX_FILE_BYTES)
        try:
            return schema.report(data, schema.name_of(report))
        except InputError as problem:
            raise InputError(f"{problem}; `--again` analyses the evidence anew") from None
    if not os.path.lexists(directory / freeze.META):
        raise InputError(
            f"{directory}: not an incident of `tcpsleuth record` (no {freeze.META}); give "
            "an incident-<time> directory or the recorder's directory"
        )
    from tcpsleuth.recorder.finish import write_report

    why = safefile.unusable_dir(directory)
    report = write_report(directory, save=why is None)
    if why is not None:
        click.echo(
            f"tcpsleuth report: the analysis is not saved in {directory} ({why}); "
            "it is shown here only (--html FILE keeps the page elsewhere)",
            err=True,
        )
    return report


def _summary(path: Path) -> IncidentReport | None:
    """An incident's report.json for the listing; None when it has none or it cannot
    be read."""
    report = path / freeze.REPORT_JSON
    if not os.path.lexists(report):
        return None
    try:
        return schema.report(safefile.read_file(report, schema.MAX_FILE_BYTES), report.name)
    except InputError:
        return None


def _listing(directory: Path, output_format: str) -> int:
    rows = []
    for path in disk.incidents(directory):
        report = _summary(path)
        rows.append(
            {
                "incident": path.name,
                "events": len(report.events) if report else None,
                "syn_cookies_sent": report.syn_cookies.sent if report else None,
                "wscale_mismatches": report.wscale_mismatch.count if report else None,
                "rwnd_limited": report.rwnd_limited.count if report else None,
                "findings": len(report.findings) if report else None,
                "analysed": report is not None,
            }
        )
    if output_format == "json":
        jsonout.emit(jsonout.document("report", [], directory=str(directory), incidents=rows))
    else:
        table.console().print(
            table.records_table(
                f"Incidents in {directory}",
                [
                    "incident",
                    "events",
                    "SYN cookies",
                    "wscale mismatches",
                    "window-limited",
                    "findings",
                ],
                [
                    (
                        r["incident"],
                        r["events"],
                        r["syn_cookies_sent"],
                        r["wscale_mismatches"],
                        r["rwnd_limited"],
                        r["findings"] if r["analysed"] else "not analysed",
                    )
                    for r in rows
                ],
            )
        )
    return 0


def _verdict(report: IncidentReport, findings: list[Finding]) -> dict[str, Any]:
    """What the incident's capture and sockets proved (detectors/verdict.py)."""
    mismatch = report.wscale_mismatch
    checked = mismatch.handshakes_joined_to_sockets
    agreeing = None if checked is None else max(0, int(checked) - mismatch.count)
    judged = capture_verdict(findings, int(report.capture.connections or 0), agreeing)
    return judged.to_dict()


@click.command("report")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--html",
    "html_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the incident's self-contained HTML page here too.",
)
@click.option(
    "--again",
    is_flag=True,
    help="Analyse the incident's evidence again (with this version of tcpsleuth) "
    "instead of reading its report.json; the report files are rewritten.",
)
@format_option
def report_command(directory: Path, html_file: Path | None, again: bool, output_format: str) -> int:
    """Show an incident that `tcpsleuth record` kept: what triggered it, the SYN cookies
    the kernel counted and the capture shows, the connections whose two ends disagree
    on the window scale, the senders held back by a window, and every finding of
    tcpsleuth's detectors on its evidence. An incident not yet analysed (its recorder
    was stopped first) is analysed now. Given the recorder's directory, lists its
    incidents. Works on a copy of the incident on another machine.

    \b
    Examples:
      tcpsleuth report /var/lib/tcpsleuth
      tcpsleuth report /var/lib/tcpsleuth/incident-20261130T085300Z
      tcpsleuth report incident-20261130T085300Z --format json | jq .wscale_mismatch.count
      tcpsleuth report incident-20261130T085300Z --html /tmp/incident.html
    """
    if not os.path.lexists(directory / freeze.META) and disk.incidents(directory):
        return _listing(directory, output_format)
    report = _load(directory, again)
    findings = [Finding.from_dict(f) for f in report.findings]
    # an incident analysed by an older tcpsleuth: its findings in their kinds' shapes now
    report = dataclasses.replace(report, findings=[f.to_dict() for f in findings])
    verdict = _verdict(report, findings)
    if html_file is not None:
        safefile.write_file(html_file, incident.html_page(report, verdict), streams=True)
    if output_format == "json":
        # the verdict first after the tool's own keys
        doc = report.to_dict()
        head = {k: doc[k] for k in ("tool", "version", "command")}
        jsonout.emit({**head, "verdict": verdict, **doc})
    else:
        table.console().print(incident.render(report, verdict))
    return exit_status(findings)

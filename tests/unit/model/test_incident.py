"""The incident report as types (src/tcpsleuth/model/incident.py, issue 28): report ->
JSON -> report is identity, a report.json written before the schema had a version
reads and renders as before, and a renamed key is one line (exit 2) instead of a dash."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA
from support.cli import tcpsleuth as run

from tcpsleuth.model.incident import SCHEMA_VERSION, IncidentReport, ReportError
from tcpsleuth.recorder import schema
from tcpsleuth.recorder.analysis import analyse

INCIDENT = DATA / "incident-small"


def round_trip(report: IncidentReport) -> IncidentReport:
    return IncidentReport.read(json.loads(json.dumps(report.to_dict())), "report.json")


def test_the_committed_report_round_trips() -> None:
    """Written before the version: read as version 1, written back key for key (in the
    same order) with the version added, and read again the same."""
    data = (INCIDENT / "report.json").read_bytes()
    stored = json.loads(data)
    assert "schema_version" not in stored
    report = schema.report(data, "report.json")
    assert report.schema_version == SCHEMA_VERSION == 1
    assert report.wscale_mismatch.handshakes_joined_to_sockets == 150
    assert report.syn_cookies.sent == 117 and report.capture.connections == 150
    written = report.to_dict()
    assert written.pop("schema_version") == 1
    assert json.dumps(written) == json.dumps(stored)
    again = round_trip(report)
    assert again == report
    assert again.to_dict() == report.to_dict()


def test_an_analysed_incident_round_trips(tmp_path: Path) -> None:
    """The committed incident analysed now: every section typed, and its JSON read back
    is the same report."""
    incident = tmp_path / INCIDENT.name
    shutil.copytree(INCIDENT, incident)
    (incident / "report.json").unlink()
    report = analyse(incident)
    assert report.capture.handshakes == 150 and report.sockets.later.connections == 300
    assert report.trace is not None and report.trace.skipped == "turned off (--trace 0)"
    assert report.bundle is not None and report.bundle["kernel_release"].startswith("6.18")
    assert round_trip(report) == report
    data = json.dumps(report.to_dict()).encode()
    assert schema.report(data, "report.json") == report


def test_the_old_report_renders_as_one_with_its_version(tmp_path: Path) -> None:
    """The same report.json with and without ``schema_version: 1``: the same table."""
    incident = tmp_path / INCIDENT.name
    shutil.copytree(INCIDENT, incident)
    old = run("report", str(incident))
    doc = json.loads((incident / "report.json").read_text())
    (incident / "report.json").write_text(json.dumps({"schema_version": 1, **doc}))
    new = run("report", str(incident))
    assert old.returncode == new.returncode == 1, new.stderr
    assert re.search(r"window-limited connections +0 ", new.stdout), new.stdout
    assert "161 during, 300 later" in new.stdout
    assert old.stdout == new.stdout


def _rename(doc: dict[str, Any], path: str, new: str) -> None:
    *parents, key = path.split(".")
    for name in parents:
        doc = doc[name]
    doc[new] = doc.pop(key)


RENAMED = {
    "wscale_mismatch": ("wscale_mismatches", "report.json: no 'wscale_mismatch'"),
    "rwnd_limited.count": ("n", "report.json.rwnd_limited: no 'count'"),
    "syn_cookies.sent": ("sent_by_kernel", "report.json.syn_cookies: no 'sent'"),
    "sockets.later.connections": ("sockets", "report.json.sockets.later: no 'connections'"),
    "capture": ("pcap", "report.json: no 'capture'"),
}


def test_a_section_that_is_null_is_refused_by_name() -> None:
    """The recorder's shapes let a section be null; the report's types need it."""
    doc = json.loads((INCIDENT / "report.json").read_text())
    for name in ("capture", "sockets", "syn_cookies", "wscale_mismatch", "rwnd_limited"):
        with pytest.raises(schema.SchemaError, match=rf"^report.json.{name}: expected an obj"):
            schema.report(json.dumps({**doc, name: None}).encode(), "report.json")
    # the window and the trace may be null
    read = schema.report(json.dumps({**doc, "window": None, "trace": None}).encode(), "x")
    assert read.window is None and read.trace is None


@pytest.mark.parametrize("path", sorted(RENAMED))
def test_a_renamed_key_is_one_line_not_a_dash(tmp_path: Path, path: str) -> None:
    """A report.json whose key was renamed (by another writer, or a mistake on one
    side): exit 2, one line naming the place, nothing on stdout; `--format json` too."""
    new, said = RENAMED[path]
    incident = tmp_path / INCIDENT.name
    shutil.copytree(INCIDENT, incident)
    doc = json.loads((incident / "report.json").read_text())
    _rename(doc, path, new)
    (incident / "report.json").write_text(json.dumps(doc))
    for fmt in ("table", "json"):
        result = run("report", str(incident), "--format", fmt)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert said in line and "Traceback" not in line, line
        assert result.stdout == ""


def test_a_newer_version_is_refused_by_name() -> None:
    doc = json.loads((INCIDENT / "report.json").read_text())
    with pytest.raises(ReportError, match=r"report.json.schema_version: 2, this tcpsleuth"):
        IncidentReport.read({**doc, "schema_version": 2}, "report.json")
    assert IncidentReport.read({**doc, "schema_version": 1}, "report.json").incident == (
        "incident-20261206T085553Z"
    )

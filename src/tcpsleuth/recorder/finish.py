"""An incident made whole and analysed, run as a child of the recorder (niced, its CPU
limited, killed with the recorder) so that the capture analysis never holds up the
sampling, and a killed recorder's incidents are finished by the next start:

  python -m tcpsleuth.recorder.finish DIR [--budget BYTES]

DIR is a staging directory (``.incident-<time>.partial``: its capture is copied out of
the ring links, the links removed and the directory renamed to ``incident-<time>``)
or an incident without its report. Either way ``report.json`` and ``report.html`` are
written last: an incident with a report is complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from tcpsleuth import safefile
from tcpsleuth.model.incident import IncidentReport
from tcpsleuth.recorder import freeze
from tcpsleuth.recorder.capture import copy_window
from tcpsleuth.recorder.ring import parse_name


def make_whole(staging: Path, budget: int) -> Path:
    safefile.check_tree(staging)
    meta = freeze.read_meta(staging, to_finish=True)
    links = staging / freeze.LINKS
    capture = meta.setdefault("capture", {})
    if links.is_dir():
        pieces = sorted(
            (parsed for p in links.iterdir() if (parsed := parse_name(p)) is not None),
            key=lambda f: f.key,
        )
        if pieces:
            window = meta["window"]
            partial = staging / (freeze.CAPTURE + ".partial")
            counts = copy_window(
                [p.path for p in pieces],
                partial,
                window["start"],
                window["end"],
                frozenset(meta["ports"]),
                meta.get("cut_payload", True),
                budget,
            )
            if partial.exists():
                partial.replace(staging / freeze.CAPTURE)
            capture.update(
                {
                    "file": freeze.CAPTURE,
                    "ring_files": [p.path.name for p in pieces],
                    "packets_kept": counts.packets,
                    "bytes": counts.bytes_written,
                    "payload_cut": meta.get("cut_payload", True),
                    "payload_bytes_cut": counts.payload_bytes_cut,
                    "cut_short_by_max_disk": counts.cut_short,
                    "unreadable_ring_files": counts.skipped_files,
                }
            )
            if counts.cut_short:
                meta.setdefault("notes", []).append(
                    f"the capture was cut at {budget} bytes to stay within --max-disk"
                )
        shutil.rmtree(links, ignore_errors=True)
    freeze.write_json(staging / freeze.META, meta)
    final = freeze.final_dir(staging)
    os.rename(staging, final)
    return final


def write_report(directory: Path, save: bool = True) -> IncidentReport:
    """The incident's analysis; with ``save``, written into it as report.html and
    report.json (each whole or not at all: :mod:`tcpsleuth.safefile`)."""
    from tcpsleuth.recorder.analysis import analyse
    from tcpsleuth.reports import incident

    report = analyse(directory)
    if save:
        safefile.write_file(directory / freeze.REPORT_HTML, incident.html_page(report), 0o600)
        # last: an incident with its report is complete
        freeze.write_json(directory / freeze.REPORT_JSON, report.to_dict(), indent=None, sync=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--budget", type=int, default=1 << 40)
    args = parser.parse_args(argv)
    os.umask(0o077)
    directory: Path = args.directory
    if directory.name.endswith(".partial"):
        directory = make_whole(directory, args.budget)
    report = write_report(directory)
    print(json.dumps({"incident": str(directory), "findings": len(report.findings)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

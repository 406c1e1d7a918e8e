"""The capture's terminal view (reports/pcapview.py): what its tables keep to one screen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_tcpsleuth

from tcpsleuth.reports.pcapview import slowest_rows

sys.path.insert(0, str(REPO / "bench"))
from bench_pcap import build


def _row(client: str, p99: float | None, requests: int = 5) -> dict[str, object]:
    return {"client": client, "send_ms_p99": p99, "requests": requests}


def test_the_kafka_table_keeps_the_slowest_sends_in_their_order() -> None:
    summary = [_row("a", 1.0), _row("b", None), _row("c", 9.0), _row("d", 3.0, 9),
               _row("e", 3.0, 2)]  # fmt: skip
    rows, cut = slowest_rows(summary, 3)
    # the three slowest, in the summary's own order (by client); the title says what
    # was left out
    assert [r["client"] for r in rows] == ["c", "d", "e"]
    assert cut == " (3 of 5, the slowest sends; --format json has all)"
    rows, cut = slowest_rows(summary, 2)
    assert [r["client"] for r in rows] == ["c", "d"]  # more requests first on a tie
    # a summary that fits is shown whole, unmarked; an unknown p99 comes last
    assert slowest_rows(summary, 5) == (summary, "")
    assert [r["client"] for r in slowest_rows(summary, 4)[0]] == ["a", "c", "d", "e"]


def test_a_capture_of_many_clients_shows_twenty_and_the_json_all(tmp_path: Path) -> None:
    capture = tmp_path / "many.pcap"
    build(capture, 6000, 5000)  # short Kafka connections from a few hundred clients
    wide = {**os.environ, "COLUMNS": "250"}  # one table row a line
    shown = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "pcap", str(capture)],
        capture_output=True, text=True, env=wide, check=False, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 1, shown.stderr  # SYN cookies: a finding
    doc = json.loads(run_tcpsleuth("pcap", "--format", "json", str(capture)).stdout)
    summary = doc["files"][0]["kafka"]["summary"]
    assert len(summary) > 20
    title = f"(20 of {len(summary)}, the slowest sends; --format json has all)"
    kafka = shown.stdout.split("Kafka requests: send time")[1].split(title)[1]
    rows = [line for line in kafka.split("└")[0].splitlines() if line.startswith("│")]
    slowest = sorted(summary, key=lambda s: (-(s["send_ms_p99"] or -1), -s["requests"]))[:20]
    assert len(rows) == 20
    assert sorted(r.split("│")[1].strip() for r in rows) == sorted(s["client"] for s in slowest)

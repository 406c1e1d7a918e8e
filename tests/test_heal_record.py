"""``tcpsleuth record --heal``: once the incident of a reconnect storm closes, the
recorder runs heal on its ports and keeps what heal did in the incident.

The two-shift listener of tests/test_heal.py stands in for the bug on this fixed
kernel (TCPSLEUTH_TEST_KERNEL_STATUS=affected, test-only, inherited by heal's child);
the storm is conn_farm's on another port of the same namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import Farm
from test_heal import EARLY, LATE, PORT, Clients, own_and_bug, server_shifts


def _lines(process: subprocess.Popen[str], into: list[dict]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip():
            into.append(json.loads(line))


def _wait(lines: list[dict], kind: str, process: subprocess.Popen[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        for line in lines:
            if line["type"] == kind:
                return line
        time.sleep(0.2)
    raise AssertionError(f"no {kind!r} line: {lines}")


@pytest.mark.parametrize("heal", [True, False])
def test_the_recorder_heals_once_the_storm_is_over(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, heal: bool
) -> None:
    monkeypatch.setenv("TCPSLEUTH_TEST_KERNEL_STATUS", "affected")
    clients = Clients(netns, "--port", str(PORT), "--early", str(EARLY), "--late", str(LATE))
    directory = tmp_path / "rec"
    lines: list[dict] = []
    recorder = subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", "record", "--dir", str(directory), "--format",
         "json", "--port", str(PORT), "--netns", netns, "--before", "2", "--after", "3",
         "--merge", "3", "--later", "1", "--trace", "0", *(["--heal"] if heal else [])],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    reader = threading.Thread(target=_lines, args=(recorder, lines), daemon=True)
    reader.start()
    try:
        _own, bug = own_and_bug(netns)
        _wait(lines, "ready", recorder, 60)
        farm = Farm(netns, "--port", "9093", "--backlog", "50", "--clients", "2000", "--storm")
        farm.stop()
        incident = _wait(lines, "incident", recorder, 180)
        _wait(lines, "report", recorder, 300)
    finally:
        recorder.terminate()
        recorder.wait(timeout=60)
        clients_after = server_shifts(netns)
        clients.stop()
    where = Path(incident["directory"])
    notes = json.loads((where / "report.json").read_text())["notes"]
    if not heal:
        assert not (where / f"heal-{PORT}.json").exists()
        assert not any(n.startswith("heal port") for n in notes)
        assert clients_after[bug] == EARLY
        return
    doc = json.loads((where / f"heal-{PORT}.json").read_text())
    assert doc["refused"] is None, doc["refused"]
    assert doc["counts"] == {"hit": EARLY, "ended": EARLY, "came_back": EARLY, "not_back": 0}
    assert doc["cookies_during"] == 0
    [note] = [n for n in notes if n.startswith(f"heal port {PORT}")]
    assert f"{EARLY} connection(s) hit by the bug, {EARLY} ended" in note, note
    assert clients_after[bug] == 0 and sum(clients_after.values()) == EARLY + LATE

"""``tcpsleuth record --heal``: once the incident of a reconnect storm closes, the
recorder runs heal on its ports and keeps what heal did in the incident.

The two-shift listener of tests/system/commands/test_heal.py stands in for the bug on this fixed
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
from test_heal import EARLY, LATE, PORT, Clients, all_came_back, own_and_bug, server_shifts


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


def _recorder(netns: str, directory: Path, *extra: str) -> tuple[subprocess.Popen[str], list[dict]]:
    """The recorder on PORT, and the list its JSON lines are read into as they come."""
    recorder = subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", "record", "--dir", str(directory), "--format",
         "json", "--port", str(PORT), "--netns", netns, "--before", "2", "--after", "3",
         "--merge", "3", "--later", "1", "--trace", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[dict] = []
    threading.Thread(target=_lines, args=(recorder, lines), daemon=True).start()
    return recorder, lines


def _storm(netns: str) -> None:
    farm = Farm(netns, "--port", "9093", "--backlog", "50", "--clients", "2000", "--storm")
    farm.stop()


def test_the_recorder_heals_once_the_storm_is_over(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TCPSLEUTH_TEST_KERNEL_STATUS", "affected")
    clients = Clients(netns, "--port", str(PORT), "--early", str(EARLY), "--late", str(LATE))
    recorder, lines = _recorder(netns, tmp_path / "rec", "--heal")
    try:
        _own, bug = own_and_bug(netns)
        _wait(lines, "ready", recorder, 60)
        _storm(netns)
        incident = _wait(lines, "incident", recorder, 180)
        _wait(lines, "report", recorder, 300)
    finally:
        recorder.terminate()
        recorder.wait(timeout=60)
        clients_after = server_shifts(netns)
        clients.stop()
    where = Path(incident["directory"])
    notes = json.loads((where / "report.json").read_text())["notes"]
    doc = json.loads((where / f"heal-{PORT}.json").read_text())
    assert doc["refused"] is None, doc["refused"]
    assert doc["counts"] == all_came_back(EARLY)
    assert doc["cookies_during"] == 0
    [note] = [n for n in notes if n.startswith(f"heal port {PORT}")]
    assert f"{EARLY} connection(s) hit by the bug, {EARLY} ended" in note, note
    assert clients_after[bug] == 0 and sum(clients_after.values()) == EARLY + LATE
    # heal ended them at the close: nothing held the incident open
    assert not [x for x in lines if x["type"] == "incident-held"]


def test_without_heal_the_bugs_connections_hold_the_incident_open(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --heal the incident is not over while connections carry the bug's shift:
    it stays open past --merge and --after with no event, says why, and closes once
    they have ended (here by `ss -K`; the listener stays, so no other hold applies);
    nothing is ended by the recorder."""
    monkeypatch.setenv("TCPSLEUTH_TEST_KERNEL_STATUS", "affected")
    clients = Clients(netns, "--port", str(PORT), "--early", str(EARLY), "--late", str(LATE))
    recorder, lines = _recorder(netns, tmp_path / "rec", "--max-incident", "120")
    try:
        own, bug = own_and_bug(netns)
        _wait(lines, "ready", recorder, 60)
        _storm(netns)
        held = _wait(lines, "incident-held", recorder, 60)
        [(listener, hit)] = held["hit"].items()
        assert listener.endswith(f":{PORT}") and hit == EARLY, held
        # --merge 3 and --after 3 pass with no event: still open, the clients still hit
        time.sleep(12)
        assert not [x for x in lines if x["type"] == "incident"], lines
        assert server_shifts(netns)[bug] == EARLY  # the recorder ended nothing
        # they end (ss -K, SOCK_DESTROY, as an operator might) and their clients come
        # back through ordinary handshakes, with the listener's own shift
        left = time.time()
        subprocess.run(
            ["ip", "netns", "exec", netns, "ss", "-K", "state", "established",
             f"( sport = :{PORT} )"],
            check=True, capture_output=True,
        )  # fmt: skip
        incident = _wait(lines, "incident", recorder, 60)
        back = server_shifts(netns)
        _wait(lines, "report", recorder, 300)
    finally:
        recorder.terminate()
        recorder.wait(timeout=60)
        clients.stop()
    closed = next(x for x in lines if x["type"] == "incident")
    where = Path(incident["directory"])
    report = json.loads((where / "report.json").read_text())
    [note] = [n for n in report["notes"] if n.startswith("held open while connections hit")]
    assert f"at most {EARLY} at once" in note and f"heal --port {PORT}" in note, note
    assert not (where / f"heal-{PORT}.json").exists()
    # its capture window reaches past their end (the hold's end plus --after)
    assert report["window"]["end"] >= left, (report["window"], left)
    assert back[bug] == 0 and back[own] == EARLY + LATE, back  # all came back right
    assert closed["incident"] == held["incident"]
    assert own != bug

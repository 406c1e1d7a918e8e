"""The hostile-input table (scripts/hostile_replay.py, issue 14): at least 300 careless
and hostile inputs across every command, each run checked against the contract (exit
0/1 with a valid document, 2 with one line, no traceback, nothing left behind, inputs
unchanged, directory modes unchanged, no control character in table output or on
stderr). 584 cases, about three and a half minutes on two cores (202 s on 2026-12-06)."""

from __future__ import annotations

import importlib.util
import sys

from conftest import REPO

EVERY_COMMAND = {
    "doctor",
    "audit",
    "collect",
    "trace",
    "sockets",
    "compare",
    "watch",
    "exporter",
    "probe",
    "lab",
    "pcap",
}


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "hostile_replay", REPO / "scripts" / "hostile_replay.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["hostile_replay"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_hostile_input_keeps_the_contract() -> None:
    replay = _script().replay()
    commands = {outcome.case.argv[0] for outcome in replay.outcomes}
    assert len(replay.outcomes) >= 300
    assert commands >= EVERY_COMMAND, EVERY_COMMAND - commands
    breaks = [
        f"{o.case.name} (exit {o.status}): {'; '.join(o.breaks)}" for o in replay.broken
    ] + replay.global_breaks
    assert not breaks, "\n".join(breaks)
    statuses = {outcome.status for outcome in replay.outcomes}
    assert statuses <= {0, 1, 2}, statuses
    assert {0, 2} <= statuses  # the table holds inputs that are read as well as refused

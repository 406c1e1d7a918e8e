"""The lab's "after" window sized by what happened (issue 31): it stays open until each
timed producer has had the stated number of requests answered, or closes at its cap
naming the producers still short. The producers here are real processes printing the
clients' JSON lines (``tcpsleuth.lab.clients`` prints the same), at rates chosen so
that one finishes and one does not."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from tcpsleuth.lab import phases
from tcpsleuth.lab.processes import Child
from tcpsleuth.lab.runner import LabSize, RunArtifacts
from tcpsleuth.lab.scenarios import SCENARIOS

# A producer: "ready" with its timed producers, then one answered request every EVERY
# seconds for each, the first LATE seconds late (a broker still coming back).
PRODUCER = """
import json, sys, time
library, measured, every, late, errors = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \\
    float(sys.argv[4]), sys.argv[5] == "errors"
print(json.dumps({"type": "ready", "library": library, "measured": measured}), flush=True)
time.sleep(late)
while True:
    for i in range(measured):
        sent = time.time() - 0.05
        print(json.dumps({"type": "latency", "library": library, "producer": i, "sent": sent,
                          "latency_ms": 50, "error": "timeout" if errors else None}), flush=True)
    time.sleep(every)
"""


def _producer(
    library: str, measured: int, every: float, late: float, errors: bool = False
) -> Child:
    argv = [sys.executable, "-c", PRODUCER, library, str(measured), str(every), str(late)]
    worker = Child([*argv, "errors" if errors else "ok"])
    worker.wait_for(lambda line: '"ready"' in line)
    return worker


def _artifacts(tmp_path: Path, size: LabSize) -> RunArtifacts:
    return RunArtifacts(SCENARIOS["wscale-bug"], size, tmp_path, tmp_path / "x.pcap")


def _clock(steps: list[str]) -> phases.Clock:
    return phases.Clock(time.time(), 1.0, lambda what, _fraction: steps.append(what))


def test_the_after_window_lasts_until_every_timed_producer_is_answered(tmp_path: Path) -> None:
    size = replace(LabSize.small(), after_s=1, after_answered=5, after_cap_s=60)
    fast = _producer("fast", 2, 0.1, 0.0)
    slow = _producer("slow", 1, 0.2, 2.0)  # its first answer 2 s into the window
    try:
        artifacts, steps = _artifacts(tmp_path, size), []
        since = time.time()
        phases.await_answers(artifacts, [fast, slow], since, size, _clock(steps))
        closed = artifacts.window["after_end"] - since
    finally:
        fast.stop()
        slow.stop()
    counts = phases.answered_since([fast, slow], since)
    # it waited for the slow one: 2 s late, then 5 answers 0.2 s apart
    assert 2.8 <= closed < 30, closed
    assert min(counts.values()) >= 5 and set(counts) == {("fast", 0), ("fast", 1), ("slow", 0)}
    assert artifacts.short == {}
    assert any("1 timed producers waiting" in s for s in steps), steps


def test_at_its_cap_the_window_names_the_producers_still_short(tmp_path: Path) -> None:
    size = replace(LabSize.small(), after_s=1, after_answered=3, after_cap_s=2)
    answered = _producer("answered", 1, 0.1, 0.0)
    failing = _producer("failing", 1, 0.1, 0.0, errors=True)  # answered with errors only
    try:
        artifacts = _artifacts(tmp_path, size)
        since = time.time()
        phases.await_answers(artifacts, [answered, failing], since, size, _clock([]))
    finally:
        answered.stop()
        failing.stop()
    said = artifacts.short["after"]
    assert "cap of 2 s" in said and "1 of 2 timed producers" in said, said
    assert "failing #0: 0" in said and "answered #" not in said, said
    assert 2 <= artifacts.window["after_end"] - since < 10

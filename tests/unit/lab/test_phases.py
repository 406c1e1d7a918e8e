"""The lab's "after" window sized by what happened (issue 31): it stays open until each
timed producer has had the stated number of requests answered, or closes at its cap
naming the producers still short; after heal, the wait for the producers to work off
their backlog (a request answered within the stated time) works the same way. The
producers here are real processes printing the clients' JSON lines
(``tcpsleuth.lab.clients`` prints the same), at rates chosen so that one finishes and
one does not."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from tcpsleuth.lab import answers, phases
from tcpsleuth.lab.processes import Child
from tcpsleuth.lab.runner import LabSize, RunArtifacts
from tcpsleuth.lab.scenarios import SCENARIOS

# A producer: "ready" with its timed producers, then one answered request every EVERY
# seconds for each, the first LATE seconds late (a broker still coming back); for the
# first BACKLOG seconds each answer comes 8 s after its request was sent (a queue being
# worked off), then 50 ms.
PRODUCER = """
import json, sys, time
library, measured, every, late, errors, backlog = sys.argv[1], int(sys.argv[2]), \\
    float(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "errors", float(sys.argv[6])
print(json.dumps({"type": "ready", "library": library, "measured": measured}), flush=True)
time.sleep(late)
began = time.time()
while True:
    for i in range(measured):
        latency = 8.0 if time.time() - began < backlog else 0.05
        print(json.dumps({"type": "latency", "library": library, "producer": i,
                          "sent": time.time() - latency, "latency_ms": latency * 1000,
                          "error": "timeout" if errors else None}), flush=True)
    time.sleep(every)
"""


def _producer(
    library: str,
    measured: int,
    every: float,
    late: float,
    errors: bool = False,
    backlog: float = 0.0,
) -> Child:
    argv = [sys.executable, "-c", PRODUCER, library, str(measured), str(every), str(late)]
    worker = Child([*argv, "errors" if errors else "ok", str(backlog)])
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
        phases.await_after_window(artifacts, [fast, slow], since, _clock(steps).step)
        closed = artifacts.window["after_end"] - since
    finally:
        fast.stop()
        slow.stop()
    counts = answers.answered_since([fast, slow], since)
    # it waited for the slow one: 2 s late, then 5 answers 0.2 s apart
    assert 2.8 <= closed < 30, closed
    assert min(counts.values()) >= 5 and set(counts) == {("fast", 0), ("fast", 1), ("slow", 0)}
    assert artifacts.short == {}
    assert any("after-restart window: 1 timed producers waiting" in s for s in steps), steps


def test_at_its_cap_the_window_names_the_producers_still_short(tmp_path: Path) -> None:
    size = replace(LabSize.small(), after_s=1, after_answered=3, after_cap_s=2)
    answered = _producer("answered", 1, 0.1, 0.0)
    failing = _producer("failing", 1, 0.1, 0.0, errors=True)  # answered with errors only
    try:
        artifacts = _artifacts(tmp_path, size)
        since = time.time()
        phases.await_after_window(artifacts, [answered, failing], since, _clock([]).step)
    finally:
        answered.stop()
        failing.stop()
    said = artifacts.short["after"]
    assert said.startswith("the after-restart window reached its cap of 2 s"), said
    assert "1 of 2 timed producers short of 3 requests answered (" in said, said
    assert "failing #0: 0" in said and "answered #" not in said, said
    assert 2 <= artifacts.window["after_end"] - since < 10


def test_after_heal_the_wait_ends_when_each_backlog_is_worked_off(tmp_path: Path) -> None:
    """The producers answer 8 s late while they work off their backlog (2 s for one, 4 s
    for the other): the wait for answers within 5 s ends when the second is through, not
    at its first answer nor at its cap; one still working off at the cap is named."""
    drained = answers.Wanted(1, cap_s=60, within_s=5)
    quick = _producer("quick", 1, 0.1, 0.0, backlog=2.0)
    slow = _producer("slow", 1, 0.1, 0.0, backlog=4.0)
    try:
        artifacts = _artifacts(tmp_path, LabSize.small())
        since = time.time()
        ended = answers.await_answers(
            artifacts, [quick, slow], since, drained, "heal_settle", print
        )
    finally:
        quick.stop()
        slow.stop()
    assert 4.0 <= ended - since < 30, ended - since
    assert artifacts.short == {}

    stuck = _producer("stuck", 1, 0.1, 0.0, backlog=60.0)
    try:
        artifacts = _artifacts(tmp_path, LabSize.small())
        since = time.time()
        capped = answers.Wanted(1, cap_s=2, within_s=5)
        answers.await_answers(artifacts, [stuck], since, capped, "heal_settle", print)
    finally:
        stuck.stop()
    said = artifacts.short["heal_settle"]
    assert said.startswith("the wait for the producers to work off their backlog after heal"), said
    assert "short of 1 requests answered within 5 s (stuck #0: 0)" in said, said


def test_after_a_restart_the_window_waits_for_the_outages_queue(tmp_path: Path) -> None:
    """The producers answer 8 s late while they work off what they queued in the outage
    (3 s of it): the wait ends when they are through, not at the settle. One that stays
    8 s behind is not through: the wait ends at three times the outage. When most have
    had nothing answered since the broker accepted (the bug), it ends sooner. None is
    named short (an outcome the run measures, not a shortfall)."""
    size = replace(LabSize.small(), drained_s=5, drain_outages=3)

    def drain(
        worker: Child, outage: float, others: tuple[Child, ...] = ()
    ) -> tuple[RunArtifacts, float]:
        artifacts = _artifacts(tmp_path, size)
        accepting = time.time()
        artifacts.window.update(
            start=accepting - 20, restart=accepting - outage, accepting=accepting
        )
        try:
            ended = answers.await_drained(artifacts, [worker, *others], 1.0, print)
            return artifacts, ended - accepting
        finally:
            worker.stop()

    artifacts, took = drain(_producer("through", 2, 0.1, 0.0, backlog=3.0), 10)
    assert 3.0 <= took < 25, took
    assert artifacts.drained is True and artifacts.phases_s["drain"] == took
    assert artifacts.window["drained"] - artifacts.window["accepting"] == took
    assert artifacts.short == {}

    artifacts, took = drain(_producer("behind", 1, 0.1, 0.0, backlog=60.0), 1)
    assert 3.0 <= took < 6, took
    assert artifacts.drained is False and "drained" not in artifacts.window
    assert "drain" not in artifacts.phases_s and artifacts.short == {}

    # two of three with nothing answered since the broker accepted (the bug): the wait
    # ends STALLED_S after the storm; one of three does not end it
    stalled, answers.STALLED_S = answers.STALLED_S, 2.0
    try:
        silent = [_producer(f"silent{n}", 1, 0.1, 60.0) for n in range(2)]
        artifacts, took = drain(_producer("behind", 1, 0.1, 0.0, backlog=60.0), 10, (*silent,))
        assert 2.0 <= took < 6, took  # the cap was 30 s
        artifacts, took = drain(_producer("behind", 2, 0.1, 0.0, backlog=60.0), 2, (silent[0],))
        assert 6.0 <= took < 9, took  # the cap, 6 s
    finally:
        answers.STALLED_S = stalled
        for worker in silent:
            worker.stop()
    assert artifacts.drained is False and artifacts.short == {}


# A broker in miniature: five clients connected, three accepted, two of them answered;
# the other two wait in the accept queue.
HOLDER = """
import socket, sys, time
port = int(sys.argv[1])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(8)
clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
accepted = [listener.accept()[0] for _ in range(3)]
for conn in accepted[:2]:
    conn.sendall(b"answer")
for c in clients[:2]:
    c.recv(16)
print("ready", flush=True)
time.sleep(120)
"""


def test_the_storm_passes_when_the_broker_has_answered(netns: str, tmp_path: Path) -> None:
    """The amplified storm's cookies end when the broker has answered again on its
    clients' connections: an accepted connection it answered counts; one accepted and
    not answered, or still in the accept queue, does not (the lab's guest run where a
    settle of seconds switched the cookies off before the clients were back)."""
    holder = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", HOLDER, str(answers.PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # the clients' ACKs of the answers
        assert answers.answered_connections(netns) == 2
        artifacts = _artifacts(tmp_path, LabSize())
        artifacts.window["accepting"] = time.time()
        artifacts.reconnecting = 2  # both answered: no wait
        began = time.monotonic()
        answers.await_storm_passed(netns, artifacts, _clock([]).sleep_until)
        assert artifacts.storm_answered == 2 and time.monotonic() - began < 5
        # three of the five were held before the restart: the wait holds until its cap
        artifacts.reconnecting = 5
        steps: list[str] = []
        cap, answers.STORM_PASSED_CAP_S = answers.STORM_PASSED_CAP_S, 1.5
        try:
            began = time.monotonic()
            answers.await_storm_passed(netns, artifacts, _clock(steps).sleep_until)
        finally:
            answers.STORM_PASSED_CAP_S = cap
        assert artifacts.storm_answered == 2 and time.monotonic() - began >= 1.5
        assert artifacts.window["storm_passed"] - artifacts.window["accepting"] >= 1.5
        assert steps and all("waiting for the broker's answers" in s for s in steps)
    finally:
        holder.kill()
        holder.wait()

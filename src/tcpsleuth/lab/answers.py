"""The lab's windows sized by what happened (issue 31): how many of each timed
producer's requests have been answered since a moment, read from the clients' JSON
lines as they come, and the wait until every timed producer has what a window asks
(or its cap, the producers still short named in the run's result); the wait for a
restart's storm to pass, by the broker's own answers on its clients' connections; and
the wait for the timed producers to work off what they queued in the outage."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from tcpsleuth.lab.processes import Child
from tcpsleuth.lab.runs import PORT, RunArtifacts
from tcpsleuth.sources import sockdiag

Step = Callable[[str, float], None]


def timed_producers(clients: list[Child]) -> set[tuple[str, int]]:
    """(library, index) of every timed producer, from the clients' "ready" lines."""
    return {
        (line["library"], i)
        for worker in clients
        for line in worker.json_lines()
        if line.get("type") == "ready"
        for i in range(int(line.get("measured", 0)))
    }


class Answers:
    """Per timed producer (library, index), its requests sent at or after ``since`` and
    answered without an error so far (within ``within_s`` of being sent, when given);
    :meth:`update` reads only the clients' lines that came since the last call (a
    window can last minutes, under an emulated CPU). ``last`` holds, per producer, when
    its latest answer came, whenever its request was sent."""

    def __init__(self, clients: list[Child], since: float, within_s: float | None = None) -> None:
        self.clients, self.since, self.within_ms = clients, since, None
        if within_s is not None:
            self.within_ms = within_s * 1000
        self.read = [0] * len(clients)
        self.counts: Counter[tuple[str, int]] = Counter()
        self.last: dict[tuple[str, int], float] = {}

    def update(self) -> Counter[tuple[str, int]]:
        for n, worker in enumerate(self.clients):
            lines = worker.all_lines[self.read[n] :]
            self.read[n] += len(lines)
            for text in lines:
                if not text.lstrip().startswith("{"):
                    continue
                line = json.loads(text)
                if line.get("type") != "latency" or line.get("error"):
                    continue
                key = (line["library"], int(line["producer"]))
                came = line["sent"] + line["latency_ms"] / 1000
                self.last[key] = max(self.last.get(key, 0.0), came)
                if line["sent"] < self.since:
                    continue
                if self.within_ms is None or line["latency_ms"] <= self.within_ms:
                    self.counts[key] += 1
        return self.counts


def answered_since(clients: list[Child], since: float) -> Counter[tuple[str, int]]:
    """:class:`Answers` read once."""
    return Answers(clients, since).update()


# What each wait is called where it tells the progress and where it reached its cap
WAITS = {
    "after": "the after-restart window",
    "heal_settle": "the wait for the producers to work off their backlog after heal",
    "drain": "the wait for the producers to work off what they queued in the outage",
    "after_heal": "the after-heal window",
}


@dataclass(frozen=True)
class Wanted:
    """What a wait asks of every timed producer: ``count`` requests sent at or after its
    start answered (each within ``within_s`` of being sent, when given), for at most
    ``cap_s`` seconds."""

    count: int
    cap_s: float
    within_s: float | None = None


def await_answers(
    artifacts: RunArtifacts,
    clients: list[Child],
    since: float,
    wanted: Wanted,
    phase: str,
    step: Step,
) -> float:
    """Wait until each timed producer has what ``wanted`` asks, or until its cap; returns
    the moment it ended. At the cap, the producers still short, with their counts, go to
    ``artifacts.short[phase]``."""
    producers = timed_producers(clients)
    answers = Answers(clients, since, wanted.within_s)
    within = "" if wanted.within_s is None else f" within {wanted.within_s:g} s"
    while True:
        counts = answers.update()
        short = sorted(p for p in producers if counts[p] < wanted.count)
        if not short:
            return time.time()
        if time.time() >= since + wanted.cap_s:
            listed = ", ".join(f"{lib} #{i}: {counts[(lib, i)]}" for lib, i in short)
            artifacts.short[phase] = (
                f"{WAITS[phase]} reached its cap of {wanted.cap_s:.0f} s with {len(short)} "
                f"of {len(producers)} timed producers short of {wanted.count} requests "
                f"answered{within} ({listed})"
            )
            return time.time()
        step(f"{WAITS[phase]}: {len(short)} timed producers waiting for answers", 0.9)
        time.sleep(0.5)


def await_window(
    artifacts: RunArtifacts, clients: list[Child], since: float, phase: str, step: Step
) -> float:
    """The end of a window sized by answers (the "after" windows): each timed producer
    has had ``size.after_answered`` requests sent in it answered, or ``size.after_cap_s``
    has passed, and at least ``size.after_s`` since ``since``."""
    size = artifacts.size
    wanted = Wanted(size.after_answered, size.after_cap_s)
    ended = await_answers(artifacts, clients, since, wanted, phase, step)
    return max(ended, since + size.after_s)


def established_clients(server: str) -> int:
    """The broker's established connections on the lab's port: its clients'."""
    return sum(
        1
        for c in sockdiag.snapshot(server, with_info=False).connections
        if c.local_port == PORT and c.state == "ESTAB"
    )


# The storm has passed when the broker has answered again on this share of the
# connections its clients held before the restart (one or two may not come back: an
# admin client's, a scrape's), or at the latest this long after the settle.
STORM_PASSED_SHARE = 0.95
STORM_PASSED_CAP_S = 120.0


def answered_connections(server: str) -> int:
    """The broker's established connections on which it has sent bytes and had them
    acknowledged (more than its SYN): connections it has answered on. A connection
    still in the accept queue, or one whose handshake's last ACK the full queue dropped
    (the client thinks it is connected, the broker holds nothing), is not one."""
    return sum(
        1
        for c in sockdiag.snapshot(server, frozenset({PORT})).connections
        if c.local_port == PORT and c.state == "ESTAB" and (c.bytes_acked or 0) > 1
    )


def await_storm_passed(
    server: str, artifacts: RunArtifacts, sleep_until: Callable[[float, str], None]
) -> None:
    """Wait until the broker has answered again on STORM_PASSED_SHARE of the
    connections its clients held before the restart (at most STORM_PASSED_CAP_S): the
    storm has passed, the "after" window may open and an amplified storm's cookies end
    (``window["storm_passed"]``). A fixed settle was not enough: under an emulated CPU a
    broker that listened 25 s before it accepted left clients whose handshakes the full
    queue had dropped waiting for their connection-setup timeout (librdkafka's 30 s), and
    their new connections, made after the cookies were switched off, were ordinary (56 of
    59 in one guest run); on a slower host, clients whose SYNs tcp_syncookies=0 dropped
    were still reconnecting when the window opened, and their first requests' waits
    were taken for the scenario's latency. ``sleep_until(moment, phase)`` waits, telling
    the progress."""
    wanted = int(STORM_PASSED_SHARE * artifacts.reconnecting)
    deadline = time.time() + STORM_PASSED_CAP_S
    answered = answered_connections(server)
    while answered < wanted and time.time() < deadline:
        sleep_until(time.time() + 0.5, "reconnect storm: waiting for the broker's answers")
        answered = answered_connections(server)
    artifacts.storm_answered = answered
    artifacts.window["storm_passed"] = passed = time.time()
    artifacts.phases_s["storm"] = passed - artifacts.window["accepting"]


# When most timed producers have had nothing answered since the broker accepted, this
# long after the storm passed, their queues are not being worked off (the bug's small
# windows). A cold JVM working an 18 s outage's queue off answered every producer
# within 15 s of the storm; under the bug none had an answer 55 s after it (2026-12-08)
STALLED_S = 20.0


def await_drained(
    artifacts: RunArtifacts, clients: list[Child], settle_s: float, step: Step
) -> float:
    """After a restart, wait until each timed producer has worked off what it queued
    while the broker was away: a request it sent after the broker accepted again
    answered within ``size.drained_s``. The wait ends sooner when, STALLED_S after the
    storm passed, more than half of them have had nothing answered since the broker
    accepted: under the bug the queues are not worked off. At most
    ``size.drain_outages`` times the outage after the broker accepted (at least
    ``settle_s``, at most STORM_PASSED_CAP_S). Returns the
    moment it ended; ``artifacts.drained`` says whether each producer was through
    (then also ``window["drained"]`` and ``phases_s["drain"]``)."""
    w, size = artifacts.window, artifacts.size
    since = w["accepting"]
    cap = min(STORM_PASSED_CAP_S, max(settle_s, size.drain_outages * (since - w["restart"])))
    producers = timed_producers(clients)
    answers = Answers(clients, since, size.drained_s)
    while True:
        counts, now = answers.update(), time.time()
        if all(counts[p] >= 1 for p in producers):
            artifacts.drained = True
            w["drained"] = now
            artifacts.phases_s["drain"] = now - since
            return now
        if now >= since + cap:
            break
        if now >= w.get("storm_passed", since) + STALLED_S:
            stalled = sum(answers.last.get(p, 0.0) < since for p in producers)
            if stalled > len(producers) / 2:
                break
        step(f"{WAITS['drain']}: {sum(counts[p] < 1 for p in producers)} timed producers", 0.9)
        time.sleep(0.5)
    artifacts.drained = False
    return time.time()

"""Checks of a lab run's document that say what is missing (issue 31): a phase whose
timed producers had no request answered fails naming the phase and its counts, not
with a TypeError from comparing None."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def answered(latency: Mapping[str, Any], *phases: str, at_least: int = 1) -> None:
    """Each of ``phases`` had at least ``at_least`` timed requests sent, a p50 and
    fewer unanswered than sent."""
    for phase in phases:
        counts = latency.get(phase) or {}
        shown = {k: counts.get(k) for k in ("count", "unanswered", "errors", "p50")}
        assert counts.get("count", 0) >= at_least and counts.get("p50") is not None, (
            f"the {phase!r} phase had no answered timed request to measure "
            f"(asked at least {at_least}): {shown}; by library: {counts.get('by_library')}"
        )
        assert counts.get("unanswered", 0) < counts["count"], (
            f"the {phase!r} phase: every timed request was still unanswered at its end: {shown}"
        )


def one_incident(names: list[str], window: Mapping[str, float]) -> None:
    """One restart, one incident (the recorder keeps one outage and its storm together)."""
    assert len(names) == 1, (
        f"one restart should make exactly one incident, the recorder wrote {len(names)}: "
        f"{names}; the run's window: {dict(window)}"
    )


def broker_looks_healthy(run: Mapping[str, Any]) -> None:
    """The incident's puzzle, as the broker's request log gives it: its own Produce
    times after the restart look like before (the median within a few times its own),
    and even its slowest (p99) are a small part of what its clients wait (their p50 at
    least ten times it). The median, not the p99, against the baseline: the after
    window holds few requests of a JVM just restarted, whose p99 is its slowest one
    (21 ms against 3.3 ms before in one CI run, while the clients waited seconds)."""
    own, clients = run["broker_latency_ms"], run["latency_ms"]
    before, after = own["before"]["produce_total"], own["after"]["produce_total"]
    assert after["count"] > 0, f"the broker logged no Produce after the restart: {own}"
    assert after["p50"] <= 5 * max(before["p50"], 1), (
        f"the broker's own Produce p50 grew past 5x its baseline: {before} -> {after}"
    )
    assert clients["after"]["p50"] >= 10 * after["p99"], (
        f"the clients' p50 after the restart ({clients['after']['p50']} ms) is not ten "
        f"times the broker's own p99 ({after['p99']} ms)"
    )

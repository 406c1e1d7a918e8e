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

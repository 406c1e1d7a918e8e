"""``tcpsleuth heal``'s result: one JSON document, and tables for people; the verdict
first in both (detectors/verdict_heal.py's ``heal_verdict``), the tables fitted to the
screen (reports/table.py's :class:`Fitted`: a list where they would not fit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from tcpsleuth.detectors.heal import ListenerPlan
from tcpsleuth.detectors.kernel import KernelVerdict
from tcpsleuth.detectors.verdict import Verdict
from tcpsleuth.detectors.verdict_heal import heal_verdict
from tcpsleuth.model.heal import DiagSocket, Ended
from tcpsleuth.model.text import printable
from tcpsleuth.reports import verdictview
from tcpsleuth.reports.table import Fitted


@dataclass
class HealResult:
    origin: str
    port: int
    verdict: KernelVerdict
    plans: list[ListenerPlan]
    hit: list[tuple[ListenerPlan, DiagSocket]]
    applied: bool
    method: str | None = None
    per_second: int | None = None
    ended: list[Ended] = field(default_factory=list)
    came_back: list[dict[str, Any]] = field(default_factory=list)
    not_back: list[Ended] = field(default_factory=list)
    cookies_during: int | None = None
    stopped: str | None = None  # why heal stopped before the end (a cookie was sent)
    refused: str | None = None
    would_refuse: str | None = None  # dry run: what --apply would refuse now
    firewall: dict[str, Any] | None = None
    seconds: float | None = None
    netns: str | None = None

    def judged(self) -> Verdict:
        return heal_verdict(self.data())

    def data(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "netns": self.netns,
            "port": self.port,
            "mode": "apply" if self.applied else "dry-run",
            "kernel": self.verdict.to_dict(),
            "method": self.method,
            "per_second": self.per_second,
            "listeners": [p.to_dict() for p in self.plans],
            "hit": [
                {
                    "client": s.remote,
                    "server": s.local,
                    "listener": p.local,
                    "rcv_wscale": s.rcv_wscale,
                    "snd_wscale": s.snd_wscale,
                    "own_wscale": p.own_wscale,
                    "cookie": s.cookie,
                }
                for p, s in self.hit
            ],
            "ended": [e.to_dict() for e in self.ended],
            "came_back": self.came_back,
            "not_back": [e.to_dict() for e in self.not_back],
            "cookies_during": self.cookies_during,
            "stopped": self.stopped,
            "refused": self.refused,
            "would_refuse": self.would_refuse,
            "firewall": self.firewall,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "counts": {
                "hit": len(self.hit),
                "ended": sum(1 for e in self.ended if e.outcome == "ended"),
                "came_back": len(self.came_back),
                "not_back": len(self.not_back),
                # closed by their clients before heal came to them: no longer hit
                "gone": sum(1 for e in self.ended if e.outcome == "gone"),
            },
        }


def _cells(*values: Any) -> list[Text]:
    return [Text(printable(str(value))) for value in values]


def _listeners(plans: Sequence[ListenerPlan]) -> Fitted:
    rows = []
    for p in plans:
        seen = ", ".join(f"{k}:{v}" for k, v in sorted(p.shifts_seen.items())) or "-"
        own = "-" if p.own_wscale is None else f"{p.own_wscale} ({p.own_evidence})"
        bug = "-" if p.bug_wscale is None else f"{p.bug_wscale} ({p.bug_evidence})"
        rows.append(
            _cells(
                p.local, p.backlog, p.rcvbuf_locked, own, bug, seen, "yes" if p.healable else "no"
            )
        )
    columns = ["listener", "backlog", "locked", "own shift", "bug's shift", "seen", "heal"]
    return Fitted("Listeners", columns, rows)


def _reasons(plans: Sequence[ListenerPlan]) -> Text:
    return Text(printable("\n".join(f"{p.local}: {p.why}" for p in plans), keep_newlines=True))


def _hits(result: HealResult) -> Fitted:
    ended = {e.socket.cookie: e for e in result.ended}
    rows = []
    for p, s in result.hit:
        item = ended.get(s.cookie)
        done = f"{item.outcome} ({item.how}, {item.at:.2f} s)" if item else "-"
        rows.append(_cells(s.remote, p.local, s.rcv_wscale, p.own_wscale, s.cookie, done))
    columns = ["client", "listener", "rcv_wscale", "own", "cookie", "done"]
    return Fitted(f"Hit connections ({len(result.hit)})", columns, rows)


def render(result: HealResult) -> RenderableType:
    parts: list[RenderableType] = [
        verdictview.render(result.judged().to_dict()),
        Text(
            printable(
                f"heal port {result.port} on {result.origin}; kernel {result.verdict.release}: "
                f"{result.verdict.status} ({result.verdict.source})"
            )
        ),
        _listeners(result.plans),
        _reasons(result.plans),
    ]
    if result.hit:
        parts.append(_hits(result))
    counts = result.data()["counts"]
    if not result.applied:
        line = (
            f"dry run: {counts['hit']} connection(s) would be ended; run with --apply to end them"
            if result.hit
            else "nothing to heal"
        )
        if result.would_refuse:
            line += f"; --apply would refuse now: {result.would_refuse}"
        parts.append(Text(printable(line)))
        return Group(*parts)
    parts.append(
        Text(
            f"ended {counts['ended']} of {counts['hit']} by {result.method} "
            f"(at most {result.per_second}/s); came back with the listener's own shift: "
            f"{counts['came_back']}; not back: {counts['not_back']}; SYN cookies sent "
            f"meanwhile: {result.cookies_during}"
        )
    )
    if result.stopped:
        parts.append(Text(printable(f"stopped early: {result.stopped}")))
    for item in result.not_back:
        parts.append(Text(printable(f"not back: {item.socket.remote} (listener {item.listener})")))
    return Group(*parts)

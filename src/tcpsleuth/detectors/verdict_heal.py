"""The verdict on one run of ``tcpsleuth heal``, from its JSON document
(reports/healview.py): what is hit and how many connections, what ``--apply`` would
do (a dry run) or did, and the lasting fixes. Pure, like :mod:`.verdict`, whose
:class:`~.verdict.Verdict` it returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tcpsleuth.detectors import servers
from tcpsleuth.detectors.kernel import FIX_COMMIT, Status
from tcpsleuth.detectors.verdict import STABLE_FIXES, Verdict, once, sentence


def _listener_name(plan: Mapping[str, Any]) -> str:
    program = servers.program(plan.get("program"))
    local = plan.get("listener")
    return f"{program.title} {local}" if program else f"listener {local}"


def _skew(own: int, bug: int) -> str:
    factor = 2 ** abs(bug - own)
    return f"windows {factor}x too {'small' if bug > own else 'large'}"


@dataclass
class _Run:
    """What the verdict reads of heal's document."""

    doc: Mapping[str, Any]
    port: Any
    kernel: Mapping[str, Any]
    plans: list[Mapping[str, Any]]
    hit: int
    ended: int
    came_back: int
    not_back: int
    gone: int  # closed by their clients before heal came to them
    applied: bool
    refused: Any
    would_refuse: Any
    stopped: Any
    per_second: Any
    command: str
    on_listener: dict[str, int]  # connections hit, per listener
    connections: int
    healable: list[Mapping[str, Any]]
    first: Mapping[str, Any] | None  # the first healable listener with a connection hit
    skew: str

    @classmethod
    def read(cls, doc: Mapping[str, Any]) -> _Run:
        port = doc.get("port")
        plans = list(doc.get("listeners") or ())
        counts = doc.get("counts") or {}
        command = f"sudo tcpsleuth heal --port {port}"
        if doc.get("netns"):
            command += f" --netns {doc['netns']}"
        command += " --apply"
        on_listener: dict[str, int] = {}
        for item in doc.get("hit") or ():
            on_listener[item.get("listener")] = on_listener.get(item.get("listener"), 0) + 1
        connections = sum(
            int(n) for plan in plans for n in (plan.get("shifts_seen") or {}).values()
        )
        healable = [plan for plan in plans if plan.get("healable")]
        struck = [plan for plan in healable if on_listener.get(plan.get("listener"))]
        first = struck[0] if struck else None
        skew = _skew(int(first["own_wscale"]), int(first["bug_wscale"])) if first else ""
        return cls(
            doc,
            port,
            doc.get("kernel") or {},
            plans,
            int(counts.get("hit") or 0),
            int(counts.get("ended") or 0),
            int(counts.get("came_back") or 0),
            int(counts.get("not_back") or 0),
            int(counts.get("gone") or 0),
            doc.get("mode") == "apply",
            doc.get("refused"),
            doc.get("would_refuse"),
            doc.get("stopped"),
            doc.get("per_second"),
            command,
            on_listener,
            connections,
            healable,
            first,
            skew,
        )

    @property
    def healed(self) -> bool:
        return (
            self.applied
            and self.refused is None
            and self.stopped is None
            and self.ended + self.gone == self.hit
            and not self.not_back
        )


def heal_verdict(doc: Mapping[str, Any]) -> Verdict:
    """``at_risk``: connections hit by the bug are left on the port (none were found,
    or heal ended them all and every client came back with the listener's own shift:
    not at risk)."""
    run = _Run.read(doc)
    at_risk, head = _head(run)
    summary = f"{head}\n{sentence('; '.join(_numbers(run)))}"
    evidence = {
        "port": run.port,
        "kernel_status": run.kernel.get("status"),
        "connections": run.connections,
        "hit": run.hit,
        "ended": run.ended if run.applied else None,
        "came_back": run.came_back if run.applied else None,
        "not_back": run.not_back if run.applied else None,
        "gone": run.gone if run.applied else None,
        "per_second": run.per_second,
        "listeners": [
            {
                "listener": plan.get("listener"),
                "own_wscale": plan.get("own_wscale"),
                "bug_wscale": plan.get("bug_wscale"),
                "hit": run.on_listener.get(plan.get("listener"), 0),
            }
            for plan in run.plans
        ],
    }
    return Verdict(at_risk, summary, once(_actions(run)), evidence)


def _numbers(run: _Run) -> list[str]:
    """The kernel, each listener with its connections hit, what heal did."""
    state = {Status.FIXED: "has the fix", Status.AFFECTED: "lacks the fix"}.get(
        str(run.kernel.get("status")), "may lack the fix"
    )
    numbers = [f"kernel {run.kernel.get('release')} {state} ({run.kernel.get('source')})"]
    for plan in run.plans:
        name = _listener_name(plan)
        if plan.get("healable"):
            struck_here = run.on_listener.get(plan.get("listener"), 0)
            numbers.append(
                f"{name}: backlog {plan.get('backlog')}, receive buffer locked, SYN-ACKs "
                f"announce shift {plan.get('own_wscale')}; {struck_here} connections "
                f"{'used' if run.applied else 'use'} the bug's shift {plan.get('bug_wscale')}"
            )
        else:
            numbers.append(f"{name}: {plan.get('why')}")
    if run.applied and run.hit and run.refused is None:
        numbers.append(
            f"ended {run.ended} of {run.hit} by {run.doc.get('method')} (at most "
            f"{run.per_second} a second), {run.came_back} came back with the listener's own "
            f"shift, {run.not_back} not; SYN cookies sent meanwhile: "
            f"{run.doc.get('cookies_during')}"
        )
        if run.gone:
            numbers.append(f"{run.gone} closed by their clients before heal came to them")
    if run.stopped:
        numbers.append(f"stopped early: {run.stopped}")
    if run.refused:
        numbers.append(f"refused: {run.refused}")
    elif run.would_refuse and run.hit:
        numbers.append(f"--apply would refuse now: {run.would_refuse}")
    return numbers


def _head(run: _Run) -> tuple[bool, str]:
    """At risk or not, and the sentence that says so."""
    where, hit, ended = f"on port {run.port}", run.hit, run.ended
    if hit and run.refused:
        return True, f"AT RISK: heal refused; the {hit} connections hit {where} keep {run.skew}."
    if hit and not run.applied:
        total = f" of {run.connections}" if run.connections else ""
        return True, (
            f"AT RISK: {hit}{total} connections {where} are hit by the kernel's cookie "
            f"window-scale bug: {run.skew}; heal --apply would end them."
        )
    if hit and run.healed:
        first = f"; {run.gone} closed by their clients first" if run.gone else ""
        return False, (
            f"Healed: {ended} of {hit} connections hit {where} were ended and came back "
            f"with the listener's own shift{first}."
        )
    if hit:
        left = hit - run.came_back - run.gone
        return True, (
            f"AT RISK: heal ended {ended} of {hit} connections hit {where}; {left} are not "
            "back with the listener's own shift."
        )
    if run.healable:
        return False, (
            f"Nothing to heal now: no connection {where} uses the bug's shift, but the next "
            "SYN-cookie storm's connections will (kernel without the fix, receive buffer "
            "locked)."
        )
    return False, f"Not at risk: nothing to heal {where}."


def _actions(run: _Run) -> list[str]:
    """What to run next (heal again, --apply), then the lasting fixes."""
    actions: list[str] = []
    command, hit = run.command, run.hit
    if hit and run.refused:
        actions.append(
            f"Take away the reason heal refused ({run.refused}), then run {command} again."
        )
    elif hit and not run.applied:
        if run.would_refuse:
            actions.append(f"Before --apply, take away what it would refuse: {run.would_refuse}.")
        own = run.first.get("own_wscale") if run.first else None
        actions.append(
            f"End them, once no SYN cookie is sent any more: {command} (it ends the {hit} "
            f"at most {run.per_second} a second, half the backlog at most; stops at once if a "
            f"SYN cookie is sent; checks that each client comes back with shift {own})."
        )
    elif hit and not run.healed:
        if run.stopped:
            actions.append(
                f"Once no SYN cookie is sent any more, run {command} again: it ends only "
                "what is still hit."
            )
        if run.not_back:
            actions.append(
                f"Look at the {run.not_back} clients listed as not back: they reconnect later, "
                "or need a restart of their own."
            )
    if run.healable:
        for plan in run.healable:
            program = servers.program(plan.get("program"))
            step = (
                program.rcvbuf_advice("")
                if program
                else "find what sets SO_RCVBUF on this listening socket and leave the buffer "
                "to the kernel"
            )
            actions.append(sentence(f"{_listener_name(plan)}: {step}"))
        actions.append(f"The lasting fix: a kernel with commit {FIX_COMMIT[:12]} ({STABLE_FIXES}).")
    return actions

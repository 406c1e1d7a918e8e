"""The verdict: one answer before the detail. At risk or not, of what, on which numbers,
and what to do, each action once, in the terms of the program that owns the listener.

Two families of risk meet on a broker host (docs/findings.md): a listen backlog smaller
than the clients that come back at once after a restart (the queue overflows: SYN
cookies or dropped SYNs), and the kernel's cookie window-scale bug, which needs a
kernel without commit 909172a14974, a listener whose receive buffer is locked
(SO_RCVBUF) and cookies with timestamps on. The host verdict weighs them from the
audit's facts; the capture verdict from what a capture proved. Pure: findings and
facts in, a :class:`Verdict` out. The host verdict is in :mod:`.verdict_host` (it
needs the audit's listener facts; a capture's start-up does not), the heal verdict in
:mod:`.verdict_heal`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tcpsleuth.detectors.kernel import FIX_COMMIT
from tcpsleuth.model import kinds
from tcpsleuth.model.findings import Finding, Severity, misread

_BACKLOG_KINDS = frozenset({"listen-backlog-small", "kafka-listen-backlog-small"})
_CAPTURE_COVERED = frozenset({"wscale-mismatch", "syn-cookies-seen", "wscale-stripped"})
STABLE_FIXES = "mainline 5.10; stable 4.9.244, 4.14.207, 4.19.158, 5.4.78, 5.9.9"


@dataclass(frozen=True)
class Verdict:
    at_risk: bool
    summary: str  # one or two sentences: at risk or not, of what, the numbers
    actions: tuple[str, ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at_risk": self.at_risk,
            "summary": self.summary,
            "actions": list(self.actions),
            "evidence": dict(self.evidence),
        }


def sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", ")")) else text + "."


def once(actions: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for action in actions:
        if action and action not in seen:
            seen[action] = None
    return tuple(seen)


def others(findings: Sequence[Finding], covered: frozenset[str]) -> list[str]:
    """The advice of the findings of warning or worse that no action above carries."""
    return [
        sentence(f.advice)
        for f in findings
        if f.kind not in covered and f.severity.rank >= Severity.WARNING.rank and f.advice
    ]


def meanings(findings: Sequence[Finding]) -> list[str]:
    """What the findings of warning or worse mean, once per kind (model/kinds.py)."""
    seen = {
        f.kind: kinds.lookup(f.kind).meaning
        for f in findings
        if f.severity.rank >= Severity.WARNING.rank
    }
    return list(seen.values())


def _top(counts: Mapping[str, int], shown: int = 10) -> list[tuple[str, int]]:
    """The most hit first; past ``shown``, one entry says how many more."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    if len(ranked) <= shown:
        return ranked
    rest = ranked[shown:]
    return [*ranked[:shown], (f"{len(rest)} more", sum(v for _, v in rest))]


def _used(evidence: Mapping[str, Any]) -> Any:
    """The shift a connection really uses, as its finding's source decided it."""
    used = evidence.get("actual_wscale")
    return evidence.get("inferred_wscale") if used is None else used


def capture_verdict(
    findings: Sequence[Finding], connections: int, agreeing: int | None = None
) -> Verdict:
    """The verdict on a capture (or an incident's): did SYN cookies or anything else
    harm the connections it holds, and what to do. ``agreeing``: the connections whose
    server windows show the shift their SYN-ACK announced (None: not counted)."""
    cookies = [f for f in findings if f.kind == "syn-cookies-seen"]
    mismatch = [f for f in findings if f.kind == "wscale-mismatch"]
    stripped = [f for f in findings if f.kind == "wscale-stripped"]
    harm = [
        f
        for f in findings
        if f.kind not in _CAPTURE_COVERED and f.severity.rank >= Severity.WARNING.rank
    ]
    cookie_connections = sum(int(f.evidence.get("cookie_connections") or 0) for f in cookies)
    handshakes = sum(int(f.evidence.get("handshakes") or 0) for f in cookies)
    undecided = sum(int(f.evidence.get("undecided_connections") or 0) for f in cookies)
    hit = sum(int(f.evidence.get("connections") or 0) for f in mismatch)
    at_risk = bool(mismatch or stripped or harm)
    numbers = [f"{connections} connections"]
    if cookies:
        shown = f"SYN cookies on {cookie_connections} of {handshakes} handshakes"
        # a handshake the capture cannot decide is not an ordinary one (issue 30)
        numbers.append(f"{shown} ({undecided} undecided)" if undecided else shown)
    clients, client_ids = _clients_hit(mismatch)
    numbers.extend(_mismatch_numbers(mismatch, hit, clients, client_ids))
    for finding in stripped:
        numbers.append(finding.summary)
    harmless = bool(cookies) and not mismatch and bool(agreeing)
    if harmless:
        numbers.append(
            f"{agreeing} connections use the window scale their SYN-ACK announced, none another"
        )
    head = _capture_head(at_risk, harmless, cookies, mismatch, stripped, harm)
    summary = f"{head}\n{sentence('; '.join(numbers))}"
    actions = _capture_actions(findings, cookies, mismatch, stripped)
    evidence = {
        "connections": connections,
        "cookie_connections": cookie_connections if cookies else 0,
        "handshakes": handshakes if cookies else None,
        "undecided_connections": undecided if cookies else None,
        "wscale_mismatch_connections": hit,
        "wscale_agreeing_connections": agreeing,
        "wscale_stripped": len(stripped),
        "clients_hit": clients,
        "client_ids_hit": client_ids,
    }
    return Verdict(at_risk, summary, once(actions), evidence)


def _clients_hit(mismatch: Sequence[Finding]) -> tuple[dict[str, int], dict[str, int]]:
    """The connections hit per client address and per Kafka client.id, summed over
    the ``wscale-mismatch`` findings."""
    clients: dict[str, int] = {}
    client_ids: dict[str, int] = {}
    for finding in mismatch:
        for name, count in (finding.evidence.get("clients") or {}).items():
            clients[name] = clients.get(name, 0) + int(count)
        for name, count in (finding.evidence.get("client_ids") or {}).items():
            client_ids[name] = client_ids.get(name, 0) + int(count)
    return clients, client_ids


def _mismatch_numbers(
    mismatch: Sequence[Finding],
    hit: int,
    clients: Mapping[str, int],
    client_ids: Mapping[str, int],
) -> list[str]:
    """The numbers of the window-scale mismatch: the connections hit, the shift they
    announced and the one they use, and the clients hit."""
    numbers: list[str] = []
    if mismatch:
        first = mismatch[0].evidence
        announced, used = first.get("announced_wscale"), _used(first)
        read = (
            f": windows {misread(announced, used)}"
            if isinstance(announced, int) and isinstance(used, int)
            else ""
        )
        numbers.append(
            f"{hit} connections announced window scale {announced} but were scaled by {used}{read}"
        )
    if clients:
        numbers.append("clients hit: " + ", ".join(f"{k} ({v})" for k, v in _top(clients)))
    if client_ids:
        numbers.append("client.ids hit: " + ", ".join(f"{k} ({v})" for k, v in _top(client_ids)))
    return numbers


def _capture_head(
    at_risk: bool,
    harmless: bool,
    cookies: Sequence[Finding],
    mismatch: Sequence[Finding],
    stripped: Sequence[Finding],
    harm: Sequence[Finding],
) -> str:
    """The capture verdict's first line: at risk of what, or why not."""
    if at_risk:
        what = []
        if mismatch:
            what.append("the kernel's cookie window-scale bug hit connections")
        if stripped:
            what.append("window scaling was stripped")
        what.extend(meanings(harm))
        head = f"AT RISK: {'; '.join(what)}."
        if harmless:
            head += " The SYN cookies did no harm to window scaling."
        return head
    if harmless:
        return (
            "Not harmed: the SYN cookies did no harm to window scaling, but the listen "
            "queue overflowed."
        )
    if cookies:
        return (
            "Cookies, no mismatch seen: no connection could be checked for its window "
            "scale, and the listen queue overflowed."
        )
    return "Not at risk: no SYN cookies, no window-scale mismatch."


def _capture_actions(
    findings: Sequence[Finding],
    cookies: Sequence[Finding],
    mismatch: Sequence[Finding],
    stripped: Sequence[Finding],
) -> list[str]:
    """What to do after a capture, in order (repeats left to :func:`once`)."""
    actions: list[str] = []
    if mismatch:
        actions.append(
            f"Update the server's kernel to one with commit {FIX_COMMIT[:12]} ({STABLE_FIXES})."
        )
        actions.append(
            "Until then: set net.ipv4.tcp_syncookies=0, or stop the server locking its "
            "listener's receive buffer (Kafka: socket.receive.buffer.bytes=-1)."
        )
    backlog_found = any(f.kind in _BACKLOG_KINDS for f in findings)
    if (cookies or mismatch) and not backlog_found:
        actions.append(
            "Raise the listen backlog so reconnect storms fit (Kafka 3.2.0 and later: "
            "socket.listen.backlog.size, with net.core.somaxconn at least as high)."
        )
    if mismatch:
        actions.append(
            "Reconnect the connections hit (tcpsleuth heal on the server, or restart the "
            "clients listed): they keep the wrong window until they close."
        )
    actions.extend(sentence(f.advice) for f in stripped if f.advice)
    actions.extend(others(findings, _CAPTURE_COVERED))
    return actions

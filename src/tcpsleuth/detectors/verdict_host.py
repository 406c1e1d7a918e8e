"""The host verdict (see :mod:`.verdict`): at risk or not from the audit's facts, the
listeners' numbers in the terms of the program that owns each, and what to do. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tcpsleuth.detectors import servers
from tcpsleuth.detectors.kernel import FIX_COMMIT, KernelVerdict, Status
from tcpsleuth.detectors.listeners import YES, ListenerFacts, _suggested_backlog
from tcpsleuth.detectors.verdict import STABLE_FIXES, Verdict, meanings, once, others, sentence
from tcpsleuth.model.findings import Finding, Severity
from tcpsleuth.model.records import HostSnapshot

# findings whose advice the host verdict's own actions already carry
_HOST_COVERED = frozenset(
    {
        "kernel-cookie-wscale-bug",
        "kernel-cookie-wscale-unknown",
        "listen-backlog-small",
        "kafka-listen-backlog-small",
        "listener-rcvbuf-locked",
        "kafka-so-rcvbuf-set",
        "syn-cookies-sent",
        "listen-overflows",
        "somaxconn-caps-backlog",
        "somaxconn-low",
    }
)


def _who(fact: ListenerFacts) -> str:
    program = servers.program(fact.program)
    return f"{program.title} {fact.local}" if program else f"listener {fact.local}"


def _so_rcvbuf(fact: ListenerFacts) -> int | None:
    if fact.rcvbuf is not None:
        return fact.rcvbuf // 2
    return fact.config.rcvbuf if fact.config is not None else None


def _kernel_text(kernel: KernelVerdict) -> str:
    state = {
        "fixed": "has the fix",
        "affected": "lacks the fix",
        "unknown": "may lack the fix",
    }[kernel.status]
    return f"kernel {kernel.release} {state} ({kernel.source})"


def _listener_numbers(
    shown: Sequence[ListenerFacts], small: Mapping[Any, Finding], locked: Sequence[ListenerFacts]
) -> list[str]:
    """A listener's backlog against its established connections, its locked buffer."""
    numbers = []
    for fact in shown:
        parts = []
        finding = small.get(fact.local)
        if finding is not None:
            parts.append(
                f"backlog {finding.evidence.get('queue_limit', fact.backlog)} against "
                f"{finding.evidence.get('established')} established"
            )
        elif fact.established is not None:
            parts.append(f"backlog {fact.backlog}, {fact.established} established")
        if fact in locked:
            size = _so_rcvbuf(fact)
            parts.append(
                "receive buffer locked" + (f" at SO_RCVBUF={size}" if size is not None else "")
            )
        numbers.append(f"{_who(fact)}: {', '.join(parts)}")
    return numbers


def _backlog_actions(
    shown: Sequence[ListenerFacts], small: Mapping[Any, Finding], somaxconn: int | None
) -> list[str]:
    """Each small backlog raised in its program's terms, and somaxconn if it caps them."""
    actions: list[str] = []
    targets = []
    for fact in shown:
        finding = small.get(fact.local)
        if finding is None:
            continue
        target = _suggested_backlog(int(finding.evidence.get("established") or 0))
        targets.append(target)
        program = servers.program(fact.program)
        where = fact.config.where if fact.config is not None else ""
        step = (
            program.backlog_advice(target, where)
            if program
            else f"have the program listening on {fact.local} listen() with a backlog of at "
            f"least {target}"
        )
        actions.append(sentence(f"{_who(fact)}: {step}"))
    if targets and (somaxconn is None or somaxconn < max(targets)):
        actions.append(
            sentence(f"raise net.core.somaxconn to {max(targets)} (it caps every backlog)")
        )
    return actions


def _rcvbuf_actions(locked: Sequence[ListenerFacts]) -> list[str]:
    """Each locked receive buffer left to the kernel, in its program's terms."""
    actions: list[str] = []
    for fact in locked:
        program = servers.program(fact.program)
        where = fact.config.where if fact.config is not None else ""
        step = (
            program.rcvbuf_advice(where)
            if program
            else "find what sets SO_RCVBUF on this listening socket and leave the buffer "
            "to the kernel"
        )
        actions.append(sentence(f"{_who(fact)}: {step}"))
    return actions


def _bug_actions(kernel: KernelVerdict) -> list[str]:
    """Against the kernel's cookie window-scale bug: the stopgap, a test of a kernel
    the version table cannot judge, and the lasting fix."""
    actions = [
        "Until the backlog is raised and the buffer unlocked: set "
        "net.ipv4.tcp_syncookies=0 (a full queue then drops SYNs and clients retry, "
        "with their window intact)."
    ]
    if kernel.status == Status.UNKNOWN:
        actions.append(
            "Test the kernel by experiment: sudo tcpsleuth probe (the version table "
            "cannot tell for this release)."
        )
    actions.append(f"The lasting fix: a kernel with commit {FIX_COMMIT[:12]} ({STABLE_FIXES}).")
    return actions


def host_verdict(
    snapshot: HostSnapshot,
    kernel: KernelVerdict,
    facts: Sequence[ListenerFacts],
    findings: Sequence[Finding],
) -> Verdict:
    """The verdict on a host (live or a bundle) from the audit's facts and every
    finding of the commands that examined it."""
    syncookies = snapshot.sysctl_int("net.ipv4.tcp_syncookies")
    timestamps = snapshot.sysctl_int("net.ipv4.tcp_timestamps")
    somaxconn = snapshot.sysctl_int("net.core.somaxconn")
    cookies_sent = snapshot.counters.get("TcpExtSyncookiesSent")
    small = {f.subject.get("listener"): f for f in findings if f.kind == "listen-backlog-small"}
    locked = [x for x in facts if x.rcvbuf_locked == YES]
    bug = next((f for f in findings if f.kind == "kernel-cookie-wscale-bug"), None)
    unfixed = kernel.status != Status.FIXED and (bug is None or bug.severity != Severity.INFO)
    cookies_on = syncookies != 0
    bug_risk = unfixed and bool(locked) and cookies_on and timestamps != 0
    worst = max((f.severity.rank for f in findings), default=0)
    at_risk = bool(small) or bug_risk or worst >= Severity.WARNING.rank

    # the listeners that matter, the most established first
    shown = sorted(
        {x.local: x for x in facts if x.local in small or x in locked}.values(),
        key=lambda x: -(x.established or 0),
    )
    numbers = [_kernel_text(kernel), *_listener_numbers(shown, small, locked)]
    if not locked and facts:
        numbers.append("no listener's receive buffer is shown locked")
    if cookies_sent is not None:
        numbers.append(f"{cookies_sent} SYN cookies sent since boot")
    if syncookies is not None:
        numbers.append(f"tcp_syncookies={syncookies}")

    shrink = (bug.evidence.get("window_shrink_factor") if bug else None) or 64
    risks = []
    if small:
        risks.append("a restart overflows the listen queue")
    if bug_risk:
        risks.append(f"SYN-cookie connections get windows {shrink}x too small (kernel bug)")
    if at_risk and not risks:
        risks.extend(meanings(findings))
    head = f"AT RISK: {'; '.join(risks)}." if at_risk else "Not at risk: nothing of warning."
    summary = f"{head}\n{sentence('; '.join(numbers))}"

    actions = _backlog_actions(shown, small, somaxconn)
    if unfixed and cookies_on and timestamps != 0:
        actions.extend(_rcvbuf_actions(locked))
    if bug_risk:
        actions.extend(_bug_actions(kernel))
    actions.extend(others(findings, _HOST_COVERED))
    evidence = {
        "kernel_release": kernel.release,
        "kernel_status": kernel.status,
        "kernel_source": kernel.source,
        "tcp_syncookies": syncookies,
        "tcp_timestamps": timestamps,
        "syncookies_sent": cookies_sent,
        "listeners": [
            {
                "listener": fact.local,
                "program": fact.program,
                "backlog": fact.backlog,
                "established": fact.established,
                "rcvbuf_locked": fact.rcvbuf_locked,
                "so_rcvbuf": _so_rcvbuf(fact) if fact in locked else None,
            }
            for fact in shown
        ],
    }
    return Verdict(at_risk, summary, once(actions), evidence)

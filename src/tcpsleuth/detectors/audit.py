"""The pre-restart risk check: every host-state detector over one snapshot."""

from __future__ import annotations

from tcpsleuth.detectors.counters import counter_findings
from tcpsleuth.detectors.kafka import kafka_findings
from tcpsleuth.detectors.kernel import KernelVerdict, cookie_wscale_bug
from tcpsleuth.detectors.listeners import (
    UNDETERMINED,
    YES,
    ListenerFacts,
    listener_facts,
    listener_findings,
)
from tcpsleuth.detectors.sysctls import sysctl_findings
from tcpsleuth.model.findings import Finding, ranked
from tcpsleuth.model.records import HostSnapshot


def audit(
    snapshot: HostSnapshot, verdict: KernelVerdict, facts: list[ListenerFacts] | None = None
) -> list[Finding]:
    if facts is None:
        facts = listener_facts(snapshot)
    known = [f for f in facts if f.rcvbuf is not None and f.rcvbuf_unlocked is not None]
    locked = [(f.local, f.rcvbuf) for f in known if f.rcvbuf_locked == YES]
    undetermined = sum(1 for f in known if f.rcvbuf_locked == UNDETERMINED)
    findings = [
        *cookie_wscale_bug(
            snapshot,
            verdict,
            locked if known else None,  # type: ignore[arg-type]
            undetermined,
        ),
        *sysctl_findings(snapshot),
        *listener_findings(snapshot, verdict, facts),
        *kafka_findings(snapshot),
        *counter_findings(snapshot),
    ]
    return ranked(findings)

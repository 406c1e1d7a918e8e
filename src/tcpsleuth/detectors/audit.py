"""The pre-restart risk check: every host-state detector over one snapshot."""

from __future__ import annotations

from tcpsleuth.detectors.counters import counter_findings
from tcpsleuth.detectors.kafka import kafka_findings
from tcpsleuth.detectors.kernel import KernelVerdict, cookie_wscale_bug
from tcpsleuth.detectors.listeners import listener_findings
from tcpsleuth.detectors.sysctls import sysctl_findings
from tcpsleuth.model.findings import Finding, ranked
from tcpsleuth.model.records import HostSnapshot


def audit(snapshot: HostSnapshot, verdict: KernelVerdict) -> list[Finding]:
    findings = [
        *cookie_wscale_bug(snapshot, verdict),
        *sysctl_findings(snapshot),
        *listener_findings(snapshot),
        *kafka_findings(snapshot),
        *counter_findings(snapshot),
    ]
    return ranked(findings)

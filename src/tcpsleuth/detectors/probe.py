"""What the kernel self-test shows: the bug itself, measured rather than looked up.

On a kernel with the bug, a SYN-cookie connection to a listener with SO_RCVBUF set
announces one shift in its SYN-ACK and uses another; on a fixed kernel the two agree.
With timestamps off, a cookie cannot carry the client's options at all, so both ends
run without window scaling: that is kernel behaviour, reported for information.
"""

from __future__ import annotations

from collections import Counter

from tcpsleuth.detectors.kernel import FIX_COMMIT, KernelVerdict, Status
from tcpsleuth.model.findings import Finding, Severity, host_subject
from tcpsleuth.model.records import ProbedConnection, ProbeResult


def verdict(result: ProbeResult) -> KernelVerdict:
    """The kernel's status from the experiment (used by audit instead of the table)."""
    scaled = [c for c in result.connections if c.timestamps]
    wrong = [c for c in scaled if c.server_rcv_wscale != c.announced_wscale]
    if not scaled:
        return KernelVerdict(
            result.kernel_release,
            Status.UNKNOWN,
            "the self-test made no cookie connection",
            "experiment",
        )
    if wrong:
        c = wrong[0]
        return KernelVerdict(
            result.kernel_release,
            Status.AFFECTED,
            f"self-test: {len(wrong)} of {len(scaled)} cookie connections announced shift "
            f"{c.announced_wscale} but used {c.server_rcv_wscale}",
            "experiment",
        )
    return KernelVerdict(
        result.kernel_release,
        Status.FIXED,
        f"self-test: all {len(scaled)} cookie connections used the shift they announced",
        "experiment",
    )


def probe_findings(result: ProbeResult, host: str) -> list[Finding]:
    """What the self-test shows: the bug measured or its absence, and what a cookie
    without timestamps does to window scaling."""
    findings: list[Finding] = []
    scaled = [c for c in result.connections if c.timestamps]
    wrong = [c for c in scaled if c.server_rcv_wscale != c.announced_wscale]
    if wrong:
        findings.append(_bug_finding(result, host, scaled, wrong))
    elif scaled:
        findings.append(_no_bug_finding(result, host, scaled))
    plain = [c for c in result.connections if not c.timestamps]
    if plain:
        findings.append(_without_timestamps_finding(result, host, plain))
    return findings


def _bug_finding(
    result: ProbeResult,
    host: str,
    scaled: list[ProbedConnection],
    wrong: list[ProbedConnection],
) -> Finding:
    """``kernel-cookie-wscale-bug``: ``wrong`` of the cookie connections ``scaled``
    used another shift than they announced."""
    shifts = Counter((c.announced_wscale, c.server_rcv_wscale) for c in wrong)
    (announced, used), _ = shifts.most_common(1)[0]
    factor = 2 ** ((used or 0) - (announced or 0))
    return Finding(
        "kernel-cookie-wscale-bug",
        Severity.CRITICAL,
        host_subject(host),
        f"kernel {result.kernel_release} has the SYN-cookie window-scale bug, measured: "
        f"a listener with SO_RCVBUF={result.rcvbuf} announced shift {announced} in its "
        f"cookie SYN-ACKs but the connections use {used}; clients read every window "
        f"{factor:g}x too small",
        {
            "announced_wscale": announced,
            "actual_wscale": used,
            "window_shrink_factor": factor,
            "affected_connections": len(wrong),
            "cookie_connections": len(scaled),
            "families": sorted({c.family for c in wrong}),
            "so_rcvbuf": result.rcvbuf,
            "client_snd_wnd": [c.client_snd_wnd for c in wrong],
            "verdict_source": "experiment",
        },
        "Until the kernel has commit "
        f"{FIX_COMMIT[:12]}: set net.ipv4.tcp_syncookies=0 and raise listen backlogs so "
        "storms fit, or stop locking SO_RCVBUF on listeners "
        "(Kafka: socket.receive.buffer.bytes=-1).",
    )


def _no_bug_finding(result: ProbeResult, host: str, scaled: list[ProbedConnection]) -> Finding:
    """``kernel-cookie-wscale-ok``: every cookie connection used the shift it announced."""
    families = sorted({c.family for c in scaled})
    c = scaled[0]
    return Finding(
        "kernel-cookie-wscale-ok",
        Severity.INFO,
        host_subject(host),
        f"kernel {result.kernel_release} does not have the SYN-cookie window-scale bug: "
        f"{len(scaled)} cookie connections ({', '.join(families)}) used the shift their "
        f"SYN-ACK announced ({c.announced_wscale})",
        {
            "announced_wscale": c.announced_wscale,
            "actual_wscale": c.server_rcv_wscale,
            "cookie_connections": len(scaled),
            "families": families,
            "so_rcvbuf": result.rcvbuf,
            "verdict_source": "experiment",
        },
        "Nothing to change for this bug.",
    )


def _without_timestamps_finding(
    result: ProbeResult, host: str, plain: list[ProbedConnection]
) -> Finding:
    """``kernel-cookie-without-timestamps``: what the cookie connections made with
    timestamps off (``plain``) show."""
    c = plain[0]
    return Finding(
        "kernel-cookie-without-timestamps",
        Severity.INFO,
        host_subject(host),
        "the probe's own experiment, with tcp_timestamps=0 in its throwaway namespace "
        "(not this host's setting): a SYN-cookie connection then has no window "
        "scaling: the "
        f"SYN-ACK carried {'no' if c.announced_wscale is None else 'a'} window-scale "
        f"option and both ends use shift {c.client_snd_wscale}/{c.server_rcv_wscale} "
        f"(window at most 65,535 bytes; the client saw {c.client_snd_wnd})",
        {
            "announced_wscale": c.announced_wscale,
            "client_snd_wscale": c.client_snd_wscale,
            "server_rcv_wscale": c.server_rcv_wscale,
            "client_snd_wnd": c.client_snd_wnd,
            "connections": len(plain),
        },
        "Keep net.ipv4.tcp_timestamps=1 wherever SYN cookies may be sent.",
    )

"""The SYN-cookie window-scale bug: which kernels have it, and whether it can bite here.

The bug: a listener with SO_RCVBUF set announces in its SYN-ACK a window-scale
shift computed from the locked receive buffer, but when the connection is
completed from a SYN cookie, cookie_v4_check()/cookie_v6_check() recompute the
shift from the system maximum. The client then reads every window the server
advertises with the smaller shift. Fixed by mainline commit 909172a14974
("net: Update window_clamp if SOCK_RCVBUF is set"), first released in 5.10 and
backported to the stable series below.

A version string can say "fixed", "affected" or "unknown"; only an experiment on
the host settles "unknown" (distribution kernels carry their own patches).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tcpsleuth.model.findings import Finding, Severity, host_subject
from tcpsleuth.model.text import to_int

if TYPE_CHECKING:  # annotations only: the records cost `pcap`'s start-up 10 ms
    from tcpsleuth.model.records import HostSnapshot, KafkaConfig

FIX_COMMIT = "909172a149749242990a6e64cb55d55460d4e417"
MAINLINE_FIXED = (5, 10)
# Stable series that received the backport, and the first point release with it.
# Established from the stable review and release mails of November 2020.
STABLE_FIXED_SUBLEVEL = {
    (4, 4): 244,
    (4, 9): 244,
    (4, 14): 207,
    (4, 19): 158,
    (5, 4): 78,
    (5, 9): 9,
}
# Distribution GA kernels whose source trees were checked and lack the fix:
# RHEL 7.9 (3.10.0-1160.el7) and RHEL 8.3 (4.18.0-240.el8). Earlier GA builds predate it.
RHEL_GA_WITHOUT_FIX = {"el7": 1160, "el8": 240}

# The release comes from a bundle as often as from uname: ASCII digits only (re.ASCII:
# `\d` would take `٣`) and at most 9 of them, so that int() never sees 5,000
_RELEASE = re.compile(r"^(\d{1,9})\.(\d{1,9})(?:\.(\d{1,9}))?(?!\d)(.*)$", re.ASCII)
_RHEL = re.compile(r"^-(\d{1,9})((?:\.\d+)*)\.(el\d+)", re.ASCII)
_DEBIAN_ABI = re.compile(r"^-\d+(?:\.\d+)*-[a-z]", re.ASCII)
# /proc/version of a Debian kernel ends "#1 SMP Debian 4.19.181-1 (2021-03-19)"
_DEBIAN_UPSTREAM = re.compile(
    r"#\d+ SMP\b[^#]*?Debian (\d{1,9})\.(\d{1,9})\.(\d{1,9})(?!\d)", re.ASCII
)


class Status(enum.StrEnum):
    """What is known of a kernel and the fix (a str: the JSON says "fixed" as before)."""

    FIXED = "fixed"
    AFFECTED = "affected"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class KernelVerdict:
    release: str
    status: Status
    reason: str
    source: str = "version table"

    def __post_init__(self) -> None:
        # one spelling for every maker (the table, the self-test, heal's test override)
        object.__setattr__(self, "status", Status(self.status))

    def to_dict(self) -> dict[str, str]:
        return {
            "release": self.release,
            "status": self.status,
            "reason": self.reason,
            "source": self.source,
        }


def _upstream(major: int, minor: int, sublevel: int, release: str, what: str) -> KernelVerdict:
    series = (major, minor)
    name = f"{major}.{minor}.{sublevel}"
    if series >= MAINLINE_FIXED:
        return KernelVerdict(
            release, Status.FIXED, f"{what} {name}: mainline 5.10 and later have the fix"
        )
    if series in STABLE_FIXED_SUBLEVEL:
        first = STABLE_FIXED_SUBLEVEL[series]
        if sublevel >= first:
            return KernelVerdict(
                release, Status.FIXED, f"{what} {name}: the fix reached {major}.{minor}.{first}"
            )
        return KernelVerdict(
            release,
            Status.AFFECTED,
            f"{what} {name}: the fix reached this series only at {major}.{minor}.{first}",
        )
    return KernelVerdict(
        release,
        Status.AFFECTED,
        f"{what} {name}: this series ended before the fix (Nov 2020) and never received it",
    )


def assess_kernel(release: str, proc_version: str | None = None) -> KernelVerdict:
    """Judge a kernel release string (``uname -r``) against the fix.

    ``proc_version`` (the text of /proc/version) helps where ``uname -r`` hides
    the upstream sublevel, as Debian's ABI names do ("4.19.0-16-amd64").
    """
    match = _RELEASE.match(release.strip())
    if match is None:
        return KernelVerdict(release, Status.UNKNOWN, "kernel release not in MAJOR.MINOR form")
    major, minor = int(match.group(1)), int(match.group(2))
    sublevel = int(match.group(3) or 0)
    rest = match.group(4)
    if (major, minor) >= MAINLINE_FIXED:
        return _upstream(major, minor, sublevel, release, "based on")
    rhel = _RHEL.match(rest)
    if rhel:
        build, zstream, dist = int(rhel.group(1)), rhel.group(2), rhel.group(3)
        ga_limit = RHEL_GA_WITHOUT_FIX.get(dist)
        if ga_limit is not None and not zstream and build <= ga_limit:
            return KernelVerdict(
                release,
                Status.AFFECTED,
                f"RHEL {dist} GA kernel build {build}: the GA kernel "
                f"{major}.{minor}.{sublevel}-{ga_limit}.{dist} lacks the fix",
            )
        return KernelVerdict(
            release,
            Status.UNKNOWN,
            f"RHEL {dist} kernel {release}: later RHEL builds were not checked for the backport",
        )
    if sublevel == 0 and _DEBIAN_ABI.match(rest):
        upstream = _DEBIAN_UPSTREAM.search(proc_version or "")
        if upstream:
            return _upstream(
                *(int(g) for g in upstream.groups()), release, "Debian package of upstream"
            )
        return KernelVerdict(
            release,
            Status.UNKNOWN,
            f"distribution kernel {release}: its name hides the upstream "
            "point release and the distribution may have backported the fix",
        )
    if rest and not rest.startswith(("-", "+")):
        return KernelVerdict(release, Status.UNKNOWN, f"unrecognised kernel release {release!r}")
    return _upstream(major, minor, sublevel, release, "upstream")


def _space_to_wscale(space: int) -> int:
    """The shift tcp_select_initial_window() picks to fit ``space`` in 16 bits."""
    shift = 0
    while space > 0xFFFF and shift < 14:
        space >>= 1
        shift += 1
    return shift


def unlocked_wscale(sysctls: HostSnapshot) -> int | None:
    """The shift a socket whose buffer is not locked scales its window by: from
    max(tcp_rmem[2], rmem_max), as tcp_select_initial_window() sizes it. A cookie
    socket on a kernel without the fix uses it whatever the listener locked."""
    rmem_max = sysctls.sysctl_int("net.core.rmem_max")
    tcp_rmem = sysctls.sysctls.get("net.ipv4.tcp_rmem")
    if rmem_max is None or tcp_rmem is None or len(tcp_rmem.split()) != 3:
        return None
    largest = to_int(tcp_rmem.split()[2])
    if largest is None:
        return None
    return _space_to_wscale(max(largest, rmem_max))


def locked_wscale(rcvbuf: int, sysctls: HostSnapshot) -> int:
    """The shift a SYN-ACK announces for a listener whose buffer is locked at ``rcvbuf``
    bytes (sk_rcvbuf, ``ss -m``'s rb): the window space is that buffer less
    1/2**tcp_adv_win_scale of it for overhead (tcp_full_space)."""
    adv_win_scale = sysctls.sysctl_int("net.ipv4.tcp_adv_win_scale") or 1
    space = rcvbuf >> -adv_win_scale if adv_win_scale <= 0 else rcvbuf - (rcvbuf >> adv_win_scale)
    return _space_to_wscale(space)


def shifts_for_rcvbuf(rcvbuf: int, sysctls: HostSnapshot) -> tuple[int, int] | None:
    """(announced, used) shifts on a pre-fix kernel for a cookie connection to a listener
    whose receive buffer is locked at ``rcvbuf`` bytes (sk_rcvbuf)."""
    used = unlocked_wscale(sysctls)
    if used is None:
        return None
    return locked_wscale(rcvbuf, sysctls), used


def predicted_shifts(so_rcvbuf: int, sysctls: HostSnapshot) -> tuple[int, int] | None:
    """(announced, used) shifts on a pre-fix kernel for a listener with SO_RCVBUF.

    Announced: from the locked buffer (the kernel doubles SO_RCVBUF, capped by
    rmem_max, and keeps 1/2**tcp_adv_win_scale of it for overhead). Used by a
    cookie socket: from max(tcp_rmem[2], rmem_max), as if nothing were locked.
    """
    rmem_max = sysctls.sysctl_int("net.core.rmem_max")
    if rmem_max is None:
        return None
    return shifts_for_rcvbuf(2 * min(so_rcvbuf, rmem_max), sysctls)


def _bug_evidence(
    snapshot: HostSnapshot,
    verdict: KernelVerdict,
    locked: Sequence[tuple[str, int]] | None,
    undetermined: int,
) -> tuple[dict[str, object], int | None, str]:
    """The bug finding's evidence, the SO_RCVBUF it reasons from (the broker's setting,
    else a locked listener's), and the shrink it predicts as a sentence's end."""
    syncookies = snapshot.sysctl_int("net.ipv4.tcp_syncookies")
    timestamps = snapshot.sysctl_int("net.ipv4.tcp_timestamps")
    kafka = snapshot.kafka_config
    rcvbuf = kafka.receive_buffer_bytes if kafka else None
    evidence: dict[str, object] = {}
    if rcvbuf and rcvbuf > 0:
        shifts = predicted_shifts(rcvbuf, snapshot)
    elif locked:
        shifts = shifts_for_rcvbuf(locked[0][1], snapshot)
        rcvbuf = locked[0][1] // 2
    else:
        shifts = predicted_shifts(102400, snapshot)
    shrink = ""
    if shifts is not None and shifts[0] != shifts[1]:
        announced, used = shifts
        evidence.update(
            announced_wscale=announced,
            actual_wscale=used,
            window_shrink_factor=2 ** (used - announced),
        )
        shrink = (
            f" (SYN-ACK announces shift {announced}, the socket uses {used}: windows read "
            f"{2 ** (used - announced)}x too small)"
        )
    evidence.update(
        {
            "kernel_release": verdict.release,
            "kernel_status": verdict.status,
            "kernel_reason": verdict.reason,
            "verdict_source": verdict.source,
            "tcp_syncookies": syncookies,
            "tcp_timestamps": timestamps,
            "so_rcvbuf": rcvbuf,
        }
    )
    if locked is not None:
        evidence["locked_listeners"] = [where for where, _ in locked]
        evidence["undetermined_listeners"] = undetermined
    return evidence, rcvbuf, shrink


def _why_blocked(
    syncookies: object, timestamps: object, rcvbuf: int | None, locked: object
) -> str | None:
    """What keeps the bug from triggering on this host, if anything."""
    if syncookies == 0:
        return "SYN cookies are off (net.ipv4.tcp_syncookies=0), so the bug cannot trigger"
    if timestamps == 0:
        return (
            "timestamps are off, so cookie connections lose window scaling altogether "
            "instead (see syncookies-without-timestamps)"
        )
    if rcvbuf == -1 and not locked:
        return (
            "the broker leaves SO_RCVBUF to the OS (socket.receive.buffer.bytes=-1), "
            "so its listeners do not meet the bug's precondition"
        )
    return None


# what to do about the bug, the end of each finding's advice
_FIX = (
    "Set net.ipv4.tcp_syncookies=0 (an overflowing listener then drops SYNs and clients "
    "retry), raise the listen backlog so reconnect storms fit, or stop the program "
    "locking SO_RCVBUF on its listener (Kafka: socket.receive.buffer.bytes=-1; see "
    "listener-rcvbuf-locked for each listener's own setting); the lasting "
    f"fix is a kernel with commit {FIX_COMMIT[:12]} (mainline 5.10)."
)


def cookie_wscale_bug(
    snapshot: HostSnapshot,
    verdict: KernelVerdict,
    locked: Sequence[tuple[str, int]] | None = None,
    undetermined: int = 0,
) -> list[Finding]:
    """The host's finding about the bug. ``locked``: (listener, rcvbuf bytes) of every
    listener whose receive buffer the kernel shows locked, None when the source had no
    buffers (``ss`` without -m); ``undetermined``: listeners whose buffer equals
    tcp_rmem[1], which the numbers cannot tell from an unlocked one."""
    if verdict.status == Status.FIXED:
        return []
    kafka = snapshot.kafka_config
    evidence, rcvbuf, shrink = _bug_evidence(snapshot, verdict, locked, undetermined)
    subject = host_subject(snapshot.hostname)
    blocked = _why_blocked(evidence["tcp_syncookies"], evidence["tcp_timestamps"], rcvbuf, locked)
    if verdict.status == Status.UNKNOWN:
        if blocked:
            return []
        return [
            Finding(
                "kernel-cookie-wscale-unknown",
                Severity.WARNING,
                subject,
                f"cannot tell from the version whether kernel {verdict.release} has the SYN-cookie "
                "window-scale fix",
                evidence,
                "Confirm by experiment: in a throwaway network namespace force SYN cookies "
                "(tcp_syncookies=2), listen with SO_RCVBUF=102400, connect once and compare the "
                "wscale `ss -ti` shows at both ends; or look for commit "
                f"{FIX_COMMIT[:12]} in the kernel package's changelog. " + _FIX,
            )
        ]
    severity, summary, advice = _bug_exposure(
        verdict.release, kafka, rcvbuf, locked, undetermined, shrink, blocked
    )
    return [Finding("kernel-cookie-wscale-bug", severity, subject, summary, evidence, advice)]


def _bug_exposure(
    release: str,
    kafka: KafkaConfig | None,
    rcvbuf: int | None,
    locked: Sequence[tuple[str, int]] | None,
    undetermined: int,
    shrink: str,
    blocked: str | None,
) -> tuple[Severity, str, str]:
    """The severity, summary and advice of the finding on a kernel with the bug: what
    keeps it from triggering, else who is exposed (the broker, the locked listeners)."""
    if blocked:
        return (
            Severity.INFO,
            f"kernel {release} has the SYN-cookie window-scale bug, but {blocked}",
            "Keep it that way until the kernel is upgraded: " + _FIX,
        )
    if kafka is not None and kafka.receive_buffer_bytes > 0:
        return (
            Severity.CRITICAL,
            f"kernel {release} has the SYN-cookie window-scale bug and the broker sets "
            f"SO_RCVBUF={rcvbuf}: connections made by cookie during a reconnect storm will see "
            f"a window many times too small{shrink}",
            _FIX,
        )
    if locked:
        names = ", ".join(where for where, _ in locked[:5]) + (" ..." if len(locked) > 5 else "")
        return (
            Severity.CRITICAL,
            f"kernel {release} has the SYN-cookie window-scale bug and "
            f"{len(locked)} listener{'s' if len(locked) > 1 else ''} lock their receive "
            f"buffer ({names}): connections made by cookie during a reconnect storm will "
            f"see a window many times too small{shrink}",
            _FIX,
        )
    if locked is not None:
        more = (
            f"; {undetermined} listener{'s' if undetermined != 1 else ''} have a buffer equal "
            "to tcp_rmem[1], which the kernel's numbers cannot tell from an unlocked one"
            if undetermined
            else ""
        )
        return (
            Severity.WARNING,
            f"kernel {release} has the SYN-cookie window-scale bug; no listener "
            f"shows a locked receive buffer now{more}, but any program that sets SO_RCVBUF "
            "on its listener (Kafka does by default) is exposed during SYN-cookie storms",
            _FIX,
        )
    return (
        Severity.WARNING,
        f"kernel {release} has the SYN-cookie window-scale bug: any listener that sets "
        "SO_RCVBUF before listen() (Kafka does by default) is exposed during SYN-cookie storms",
        "Give --kafka-config to check the broker's setting. " + _FIX,
    )

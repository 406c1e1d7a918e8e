"""The connections the SYN-cookie window-scale bug has hit, as the long-running parts
see them: counted per listener (the exporter's gauge, the recorder's hold of an
incident while they last) and, with ``tcpsleuth record --heal``, ended once an
incident's storm is over (it closes only after no event for a while), with what was
done kept in the incident.

Counting reads one sock_diag dump the caller already has, the listeners and the
namespace's sysctls; which connections are hit is detectors/heal.py's decision, the
same one ``tcpsleuth heal`` makes.

Heal runs as ``tcpsleuth heal --apply`` in a child process, one per port, so that the
recorder and the command share one implementation and a failure of one cannot stop
the other; its JSON document is kept as ``heal-<port>.json`` beside the incident's
evidence and one line per port goes into the incident's notes (report.json and
report.html show them). Heal refuses on its own while the queues still overflow, and
stops at once if a SYN cookie is sent while it works. The sampling waits meanwhile
(at most ``HEAL_SECONDS`` a port).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tcpsleuth import safefile
from tcpsleuth.detectors import heal as detect
from tcpsleuth.detectors.kernel import KernelVerdict, Status, assess_kernel
from tcpsleuth.detectors.listeners import ListenerFacts, listener_facts
from tcpsleuth.model.records import HostSnapshot
from tcpsleuth.sources import procfs, sampling, sockdestroy, sockdiag
from tcpsleuth.sources.host import proc_version
from tcpsleuth.subprocesses import die_with_parent

HEAL_SECONDS = 180
QUIET_SECONDS = 2.0  # the incident closed after a longer quiet spell: a short re-check
WAIT_SECONDS = 30.0

# Test-only: the test suite runs on a kernel with the fix and sets this to "affected" so
# that heal's mechanics can be exercised there. Never set it on a production host: it
# makes heal trust the shifts alone. Whatever it says is shown as the verdict's source.
TEST_KERNEL_ENV = "TCPSLEUTH_TEST_KERNEL_STATUS"


def test_override(verdict: KernelVerdict) -> KernelVerdict:
    """``verdict``, unless the test-only TEST_KERNEL_ENV asks for another status."""
    forced = os.environ.get(TEST_KERNEL_ENV)
    if forced in (Status.AFFECTED, Status.UNKNOWN) and forced != verdict.status:
        return KernelVerdict(
            verdict.release,
            Status(forced),
            f"forced by {TEST_KERNEL_ENV} (tests only); the version table says {verdict.status}",
            f"{TEST_KERNEL_ENV} (tests only)",
        )
    return verdict


def kernel_verdict() -> KernelVerdict:
    """This kernel's status for the bug (what heal and the recorder go by)."""
    return test_override(assess_kernel(procfs.kernel_release(), proc_version()))


def hit_per_listener(
    dump: sockdiag.DiagDump, facts: list[ListenerFacts], verdict: KernelVerdict
) -> list[tuple[detect.ListenerPlan, int]]:
    """Every listener with the connections hit on it (0 where the listener is not
    locked or ``verdict`` says the kernel has the fix). Records are made only of the
    dump's rows that may be hit (detect.candidates), so a dump of 100,000 sockets stays
    cheap."""
    plans = detect.plan_listeners(facts, verdict)
    found = sockdestroy.from_dump(dump.select(detect.candidates(dump, plans)))
    counts = Counter(plan.local for plan, _ in detect.hit(found, plans))
    return [(plan, counts[plan.local]) for plan in plans]


def hits_on_ports(
    netns_name: str | None,
    ports: frozenset[int],
    dump: sockdiag.DiagDump,
    verdict: KernelVerdict,
) -> list[tuple[detect.ListenerPlan, int]]:
    """The watched ports' listeners with their hit connections in ``dump``: the
    listeners and sysctls are read now (a few files and one small dump)."""
    listening = [x for x in sockdiag.listeners(netns_name) if x.local_port in ports]
    snapshot = HostSnapshot(
        origin="record",
        hostname="",
        kernel_release=verdict.release,
        sysctls=sampling.read_sysctls(netns_name),
        counters={},
        listeners=listening,
        connections=None,
    )
    return hit_per_listener(dump, listener_facts(snapshot), verdict)


def _summary(port: int, status: int, doc: dict | None, stderr: str) -> str:
    if doc is None:
        line = (stderr.strip().splitlines() or ["no output"])[-1]
        return f"heal port {port}: not run ({line})"
    if doc.get("refused"):
        return f"heal port {port}: refused ({doc['refused']})"
    counts = doc.get("counts", {})
    text = (
        f"heal port {port}: {counts.get('hit', 0)} connection(s) hit by the bug, "
        f"{counts.get('ended', 0)} ended by {doc.get('method') or '-'}, "
        f"{counts.get('came_back', 0)} came back with the listener's own shift, "
        f"{counts.get('not_back', 0)} not back; SYN cookies meanwhile: "
        f"{doc.get('cookies_during')}; exit status {status}"
    )
    if doc.get("stopped"):
        text += f"; stopped early: {doc['stopped']}"
    return text


def heal_ports(netns_name: str | None, ports: tuple[int, ...], incident: Path) -> list[str]:
    """Run heal on each port; write each document into ``incident``; one note a port."""
    notes = []
    for port in ports:
        argv = [
            sys.executable, "-m", "tcpsleuth", "heal", "--port", str(port), "--apply",
            "--quiet-seconds", str(QUIET_SECONDS), "--wait", str(WAIT_SECONDS),
            "--format", "json",
        ]  # fmt: skip
        if netns_name:
            argv += ["--netns", netns_name]
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=HEAL_SECONDS,
                check=False,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        except subprocess.TimeoutExpired:
            notes.append(f"heal port {port}: stopped after {HEAL_SECONDS} s")
            continue
        doc = None
        if result.stdout.strip():
            try:
                doc = json.loads(result.stdout)
            except ValueError:
                doc = None
        if doc is not None:
            safefile.write_file(incident / f"heal-{port}.json", result.stdout)
        notes.append(_summary(port, result.returncode, doc, result.stderr))
    return notes

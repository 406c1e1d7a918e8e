"""The lab's heal phase (``lab run --heal``): once the restart storm is over and the
"after restart" window has been measured, ``tcpsleuth heal --apply`` runs on the broker's
namespace as an operator would run it on a broker host (a child process: the same
command, its JSON document kept), then the run measures a third window, "after heal".

On the ``prefix`` guest kernel (Debian's 6.1 with the fix reverted) the release says
6.1, which the version table counts as fixed, and heal would touch nothing: the lab
built that kernel without the fix, so it tells heal so through heal's test-only
``TCPSLEUTH_TEST_KERNEL_STATUS=affected`` and the report says it did. Everywhere else
heal judges the kernel by itself (this host's kernel has the fix: nothing is hit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcpsleuth.recorder.healing import TEST_KERNEL_ENV
from tcpsleuth.sources.sockdiag import SocketTable
from tcpsleuth.subprocesses import die_with_parent

QUIET_S = 2.0  # heal's --quiet-seconds: the storm has been over for a whole window
WAIT_S = 60.0  # heal's --wait for the clients to come back (a slow guest)
# heal's whole run: Python's start alone takes tens of seconds under an emulated CPU
TIMEOUT_S = float(os.environ.get("TCPSLEUTH_HEAL_S", "600"))
METHODS = ("auto", "destroy", "reset")
# The timed producers' request timeout in a run with heal (librdkafka's default message
# timeout): with the lab's 60 s, requests queued behind the small windows since the
# restart would expire before heal has even started in an emulated guest (Python's start
# alone takes tens of seconds there), and librdkafka would drop a slow connection itself
# (socket.timeout.ms follows it); ``lost`` would then count the guest's slowness
PRODUCER_TIMEOUT_S = 300.0


@dataclass
class HealRun:
    """What the heal phase did: heal's exit status and document, how long it took, and
    the broker's connections with the bug's shift counted after the "after heal" window."""

    method: str
    kernel_status: str | None  # what heal was told about the kernel, or None
    status: int | None = None
    document: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    hit_after: int | None = None
    shifts_after: dict[str, int] = field(default_factory=dict)


def argv(server_ns: str, port: int, method: str) -> list[str]:
    return [
        sys.executable, "-m", "tcpsleuth", "heal", "--port", str(port), "--netns", server_ns,
        "--apply", "--method", method, "--quiet-seconds", str(QUIET_S), "--wait", str(WAIT_S),
        "--format", "json",
    ]  # fmt: skip


def run(
    server_ns: str, port: int, method: str, kernel_status: str | None, workdir: Path
) -> HealRun:
    """Run ``tcpsleuth heal --apply`` on the broker's namespace; its document goes to
    ``workdir/heal.json``, what it said on stderr to ``heal-stderr.txt``."""
    heal = HealRun(method, kernel_status)
    env = dict(os.environ)
    if kernel_status is not None:
        env[TEST_KERNEL_ENV] = kernel_status
    began = time.monotonic()
    try:
        done = subprocess.run(
            argv(server_ns, port, method),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=die_with_parent,
        )
    except subprocess.TimeoutExpired:
        heal.error = f"heal did not end within {TIMEOUT_S:.0f} s (TCPSLEUTH_HEAL_S)"
        heal.seconds = time.monotonic() - began
        return heal
    heal.seconds = time.monotonic() - began
    heal.status = done.returncode
    (workdir / "heal.json").write_text(done.stdout)
    (workdir / "heal-stderr.txt").write_text(done.stderr)
    try:
        heal.document = json.loads(done.stdout)
    except ValueError:
        heal.error = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return heal


def bug_shifts(document: dict[str, Any] | None) -> set[int]:
    """The bug's shift of each listener where heal could tell it from its own (healable
    or not: a listener heal would not touch still counts its hit connections)."""
    listeners = (document or {}).get("listeners") or []
    return {
        x["bug_wscale"]
        for x in listeners
        if x.get("bug_wscale") is not None and x["bug_wscale"] != x.get("own_wscale")
    }


def count_after(heal: HealRun, table: SocketTable, port: int) -> None:
    """The broker's established connections on ``port`` after heal, by receive shift,
    and how many use the bug's shift (heal's own rule: rcv_wscale, the shift in use)."""
    shifts: dict[str, int] = {}
    for c in table.connections:
        if c.state == "ESTAB" and c.local_port == port:
            shifts[str(c.rcv_wscale)] = shifts.get(str(c.rcv_wscale), 0) + 1
    heal.shifts_after = dict(sorted(shifts.items()))
    if heal.document is None:
        return
    wrong = bug_shifts(heal.document)
    heal.hit_after = sum(
        n for shift, n in shifts.items() if shift.isdigit() and int(shift) in wrong
    )

"""``tcpsleuth record --heal``: once an incident's storm is over (it closes only after
no event for a while), end the connections the SYN-cookie window-scale bug has hit on
the watched ports, and keep what was done in the incident.

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
import subprocess
import sys
from pathlib import Path

from tcpsleuth import safefile
from tcpsleuth.subprocesses import die_with_parent

HEAL_SECONDS = 180
QUIET_SECONDS = 2.0  # the incident closed after a longer quiet spell: a short re-check
WAIT_SECONDS = 30.0


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

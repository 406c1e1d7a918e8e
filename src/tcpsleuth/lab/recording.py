"""``tcpsleuth record`` beside a lab run (``lab run --record DIR``), as an operator would
run it on a broker host: attached to the broker's namespace and port once the clients
are connected, told nothing about the restart, and asked afterwards what it recorded.

The recorder is started before the restart and the run waits until it says it is
ready (under an emulated guest CPU that takes tens of seconds: the clients are given
that much more time to send, so that every phase of the run keeps its length). After
the traffic the run waits for the recorder's analysis of the incidents it opened, then
stops it (SIGTERM: an open incident is closed with what it has).

In a guest (``TCPSLEUTH_RECORD_LOCAL=1``) the recorder keeps its directory in the
guest's own ``/tmp``, where hard links and locks work as on a host's disk, and its
incidents are copied to DIR, a folder the host shares, when it has stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tcpsleuth.lab.processes import Child
from tcpsleuth.recorder.healing import TEST_KERNEL_ENV

# how long the recorder may take to start: a few seconds here, tens in a guest
READY_S = float(os.environ.get("TCPSLEUTH_RECORDER_READY_S", "30"))
# how long its analysis of an incident may take after the traffic
REPORT_S = float(os.environ.get("TCPSLEUTH_RECORDER_REPORT_S", "300"))
# the recorder's incident window, sized for a lab run's phases
WINDOW_ARGS = ("--before", "10", "--after", "8", "--merge", "10", "--later", "3")
# In a guest the phases stretch with the emulated CPU: the clients stuck behind the
# bug's small windows time out and reconnect in bursts that overflow the queue again
# 40 to 90 s apart, for as long as the "after" window lasts (up to 900 s there). A
# heavy run (2026-12-06) with --merge 10 wrote six incidents for its one restart;
# there an incident joins events up to 150 s apart and may last 1,800 s.
GUEST_WINDOW_ARGS = ("--merge", "150", "--max-incident", "1800")


class AttachedRecorder:
    def __init__(self, directory: Path, port: int, kernel_told: str | None = None) -> None:
        self.directory = directory
        self.port = port
        # what the lab tells it about the kernel, as it tells heal (lab/healing.py): the
        # recorder holds an incident open while connections the bug hit remain, which
        # it counts only on a kernel it does not take for fixed
        self.env = {**os.environ, TEST_KERNEL_ENV: kernel_told} if kernel_told else None
        self.local = (
            Path(tempfile.mkdtemp(prefix="tcpsleuth-record-")) / "rec"
            if os.environ.get("TCPSLEUTH_RECORD_LOCAL") == "1"
            else None
        )
        self.child: Child | None = None
        self.ready_s = 0.0
        self.ready_at = 0.0

    def start(self, server_ns: str) -> None:
        """Start it on the broker's namespace and wait until it is ready."""
        began = time.monotonic()
        self.child = Child(
            [
                sys.executable,
                "-m",
                "tcpsleuth",
                "record",
                "--port",
                str(self.port),
                "--netns",
                server_ns,
                "--dir",
                str(self.local or self.directory),
                "--format",
                "json",
                *WINDOW_ARGS,
                *(GUEST_WINDOW_ARGS if self.local is not None else ()),
            ],
            env=self.env,
        )
        self.child.wait_for(lambda line: '"type": "ready"' in line, timeout=READY_S)
        self.ready_s = time.monotonic() - began
        self.ready_at = time.time()

    def finish(self) -> dict[str, Any]:
        """Wait for the analysis of every incident it opened, stop it, and say what it
        recorded."""
        assert self.child is not None
        deadline = time.monotonic() + REPORT_S
        while time.monotonic() < deadline and self.child.process.poll() is None:
            lines = self.child.json_lines()
            opened = {x["incident"] for x in lines if x.get("type") == "incident-opened"}
            done = {x["incident"] for x in lines if x.get("type") in ("report", "analysis-failed")}
            # an incident closes --after seconds after its last event, then is analysed
            if opened <= done and (opened or time.time() > self.ready_at + 30):
                break
            time.sleep(0.5)
        self.child.stop(timeout=60)
        if self.local is not None:
            self._hand_back(self.local)
        lines = self.child.json_lines()
        # what it said, beside its incidents (its lines, and its errors if any)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.directory / "recorder-output.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in lines)
        )
        errors = self.child.errors()
        if errors.strip():
            (self.directory / "recorder-stderr.txt").write_text(errors)
        return {
            "directory": str(self.directory),
            "ready_s": round(self.ready_s, 1),
            "ready_at": self.ready_at,
            "incidents": sorted(x["incident"] for x in lines if x.get("type") == "incident"),
            "reports": sorted(x["incident"] for x in lines if x.get("type") == "report"),
            "status": self.child.process.returncode,
        }

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=60)
        if self.local is not None:
            shutil.rmtree(self.local.parent, ignore_errors=True)

    def _hand_back(self, local: Path) -> None:
        """The incidents, from the guest's /tmp to the shared DIR (not the ring)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entry in local.iterdir():
            if entry.is_dir() and entry.name.startswith("incident-"):
                shutil.copytree(entry, self.directory / entry.name, dirs_exist_ok=True)

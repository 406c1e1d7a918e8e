"""The analysis queue: incidents waiting to be made whole and analysed, and the one
child process (``python -m tcpsleuth.recorder.finish``) working on one of them at a
time, in the background (low priority, a CPU limit).

An incident is queued when it closes, or when the recorder starts and finds one the
last recorder left unfinished. The child's copy of the ring is reserved from the disk
budget while it runs; the incident it works on is never deleted by the disk guard
(:meth:`AnalysisQueue.analysing`). On stopping, a running child is given a moment and
then ended; ``tcpsleuth report`` finishes what is left.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tcpsleuth.errors import InputError
from tcpsleuth.recorder import children, freeze, schema
from tcpsleuth.recorder.disk import Budget

FINISH_CPU_S = 600
STOP_WAIT_S = 20


class AnalysisQueue:
    def __init__(
        self,
        directory: Path,
        cap: int,
        budget: Budget,
        room: Callable[[], int],
        say: Callable[[str, dict[str, Any]], None],
        reported: Callable[[str], None],
    ) -> None:
        self.dir = directory
        self.cap = cap
        self.budget = budget  # the child's copy is reserved from it while it runs
        self.room = room  # bytes that may still be written under the cap
        self.say = say
        self.reported = reported  # an incident's report was written
        self.pending: deque[Path] = deque()
        self.child: subprocess.Popen[str] | None = None
        self.name = ""

    def analysing(self) -> str | None:
        """The incident the child works on, if one runs."""
        return self.name if self.child is not None else None

    def add(self, path: Path) -> None:
        self.pending.append(path)

    def next(self) -> None:
        """Reap a child that ended; start the next incident's if none runs."""
        self.reap()
        if self.child is not None or not self.pending:
            return
        path = self.pending.popleft()
        if not path.exists():
            return
        # the copy must fit beside the ring links it is made from (freed only after)
        budget = max(0, min(self.cap // 2, self.room()))
        self.name = freeze.final_dir(path).name if path.name.endswith(".partial") else path.name
        self.budget.reserve(f"finish {self.name}", budget)
        self.child = subprocess.Popen(
            [sys.executable, "-m", "tcpsleuth.recorder.finish", str(path), "--budget", str(budget)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=children.marked_environment(self.dir),
            preexec_fn=lambda: children.background_child(FINISH_CPU_S),
        )

    def reap(self) -> None:
        child = self.child
        if child is None or child.poll() is None:
            return
        self.child = None
        _out, err = child.communicate()
        name = self.name
        self.budget.release(f"finish {name}")
        if child.returncode == 0:
            self.reported(name)
            report = self.dir / name / freeze.REPORT_JSON
            kinds: list[str] = []
            with contextlib.suppress(OSError, InputError):
                done = schema.report(report.read_bytes(), schema.name_of(report))
                kinds = sorted({f["kind"] for f in done.findings})
            self.say(
                f"incident {name}: report {self.dir / name / freeze.REPORT_HTML}; findings: "
                + (", ".join(kinds) or "none"),
                {"type": "report", "incident": name, "kinds": kinds},
            )
        else:
            last = (err.strip().splitlines() or ["no output"])[-1]
            self.say(
                f"incident {name}: analysis failed ({last}); `tcpsleuth report "
                f"{self.dir / name}` tries again",
                {"type": "analysis-failed", "incident": name, "error": last},
            )

    def stop(self) -> None:
        """A running child is given ``STOP_WAIT_S`` and then ended; a staging directory
        still queued is made whole without analysis."""
        if self.child is not None and self.child.poll() is None:
            try:
                self.child.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
                self.say(
                    f"{self.name}: analysis ended unfinished; "
                    f"`tcpsleuth report {self.dir / self.name}` finishes it",
                    {"type": "unfinished", "incident": self.name},
                )
        self.reap()
        if self.pending and self.child is None:
            # a staging directory still needs its capture: make it whole without analysis
            from tcpsleuth.recorder.finish import make_whole

            for path in list(self.pending):
                if path.name.endswith(".partial") and path.exists():
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        make_whole(path, self.cap // 2)

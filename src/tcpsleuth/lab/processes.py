"""Child processes of a lab run: started inside namespaces, never outliving the run.

Each child gets PR_SET_PDEATHSIG=SIGKILL (kept across exec), so if the run itself
is killed, even with SIGKILL, its children die with it; what they leave inside
the namespaces is removed by the next run (``namespaces.remove_stale``).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Self

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.sources import netns
from tcpsleuth.subprocesses import die_with_parent

# How long a child may take to say it is ready. Generous: a child that fails exits and
# is noticed at once, and under an emulated guest CPU (lab kernels without KVM) Python
# alone can take tens of seconds to import what a child needs; a JVM (a real Kafka broker,
# Java clients) there takes minutes, so a guest running one raises it (TCPSLEUTH_READY_S).
READY_S = float(os.environ.get("TCPSLEUTH_READY_S", "120"))


class Child:
    """A process whose standard output is read line by line in the background."""

    def __init__(
        self,
        argv: list[str],
        ns: str | None = None,
        stdin: bool = False,
        merge_stderr: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        prefix = netns.exec_prefix(ns)
        self.argv = argv
        self.process = subprocess.Popen(
            [*prefix, *argv],
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.all_lines: list[str] = []
        self.error_lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        # Standard error is drained as it comes: a child that logs a lot (librdkafka
        # failing to reconnect to a broker that is down, say) would otherwise block in
        # write() once the pipe holds 64 KB, and stop doing anything else.
        self._errors = threading.Thread(target=self._pump_errors, daemon=True)
        if self.process.stderr is not None:
            self._errors.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.all_lines.append(line)
            self.lines.put(line)

    def _pump_errors(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.error_lines.append(line)

    def errors(self) -> str:
        """What the child wrote on standard error (all of it once it has exited)."""
        if self.process.poll() is not None and self._errors.is_alive():
            self._errors.join(timeout=5)
        return "".join(self.error_lines)

    def wait_for(self, predicate: Any, timeout: float = READY_S) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            if predicate(line):
                return line
        name = " ".join(self.argv[:3])
        status = self.process.poll()
        if status is None:
            # not a bug: a machine too slow or too busy for the allowance
            raise EnvironmentProblem(
                f"{name} did not get ready within {timeout:.0f} s (a slow or busy machine; "
                "TCPSLEUTH_READY_S gives children more seconds)"
            )
        error = self.errors()
        said = error.strip()[-300:] or "".join(self.all_lines).strip()[-300:] or "no output"
        raise RuntimeError(f"{name} exited (status {status}) before it was ready: {said}")

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def json_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.all_lines:
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class ServerChild:
    """A lab server run as one :class:`Child` in a work directory: its pid, how it is
    stopped (``STOP_SIGNAL``, ``STOP_TIMEOUT_S``) and the work directory removed on
    close when the server made it. Subclasses set ``child``, ``workdir`` and
    ``_own_workdir`` and define ``start``."""

    STOP_SIGNAL = signal.SIGTERM
    STOP_TIMEOUT_S = 15.0
    child: Child | None
    workdir: Path
    _own_workdir: bool

    def start(self, timeout: float = 60) -> float:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.child.process.pid if self.child else None

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(self.STOP_SIGNAL, timeout=self.STOP_TIMEOUT_S)
            self.child = None

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

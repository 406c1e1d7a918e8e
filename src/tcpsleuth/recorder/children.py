"""Child processes that never outlive the recorder, the lock of its directory, and
what a killed recorder left running.

Each child gets PR_SET_PDEATHSIG=SIGKILL (kept across exec, and across ``ip netns
exec``, which execs its command): if the recorder dies, even by SIGKILL, its children
die with it. The signal is tied to the thread that started the child, so long-lived
children are started from the recorder's main thread. As a second line, the next
start looks for processes whose command line or environment names the recorder's
directory (a tcpdump capturing for its ring, say) and ends them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import signal
import time
from pathlib import Path

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.sources import procfs
from tcpsleuth.subprocesses import die_with_parent

LOCK = ".recorder.lock"


def background_child(cpu_seconds: int) -> None:
    """For the analysis child: dies with the recorder, runs niced, and is stopped by
    the kernel after ``cpu_seconds`` of CPU (RLIMIT_CPU), whatever its input."""
    die_with_parent()
    os.nice(10)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))


def processes_naming(marker: str) -> list[int]:
    """Processes (other than this one) whose command line or environment contains
    ``marker``."""
    wanted = marker.encode()
    return sorted(
        {
            pid
            for part in ("cmdline", "environ")
            for pid, text in procfs.processes(part)
            if wanted in text.replace(b"\0", b" ")
        }
    )


def end_stale(marker: str) -> list[int]:
    """SIGKILL processes left by a recorder that was killed; their pids."""
    stale = processes_naming(marker)
    for pid in stale:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(procfs.running(pid) for pid in stale):
        time.sleep(0.05)
    return stale


class DirectoryLock:
    """One recorder per directory: an flock held for the recorder's life (the kernel
    drops it when the process dies, however it dies; the descriptor is not inherited
    by children, so a stray child cannot keep it)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder()
            os.close(self.fd)
            raise EnvironmentProblem(
                f"{directory} is in use by another recorder"
                + (f" (pid {holder})" if holder else "")
                + "; stop it or give another --dir"
            ) from None
        previous = self.holder()
        self.previous_pid = previous if previous and previous != os.getpid() else None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps({"pid": os.getpid(), "started": time.time()}).encode(), 0)

    def holder(self) -> int | None:
        try:
            return int(json.loads(os.pread(self.fd, 4096, 0) or b"{}").get("pid") or 0) or None
        except (ValueError, OSError):
            return None

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
            os.close(self.fd)

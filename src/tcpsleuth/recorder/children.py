"""Child processes that never outlive the recorder, the lock of its directory, and
what a killed recorder left running.

Each child gets PR_SET_PDEATHSIG=SIGKILL (kept across exec, and across ``ip netns
exec``, which execs its command): if the recorder dies, even by SIGKILL, its children
die with it. The signal is tied to the thread that started the child, so long-lived
children are started from the recorder's main thread. As a second line, the next
start looks for the processes a recorder of the same directory marked as its own and
ends them: an environment entry equal to its mark, entry for entry, never a substring (a
recorder of ``/data/rec`` must not end the tcpdump of ``/srv/data/rec``). The ring's
tcpdump carries ``TCPSLEUTH_RING=<directory>/ring/``, the analysis child
``TCPSLEUTH_RECORDER=<directory>``; an analysis child of an older recorder is known by
its exact arguments (``-m tcpsleuth.recorder.finish`` and an incident of the directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import signal
import stat
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


MARKER = "TCPSLEUTH_RECORDER"
RING_MARKER = "TCPSLEUTH_RING"  # the ring's tcpdump: see ring.py
FINISH_MODULE = "tcpsleuth.recorder.finish"


def marked_environment(directory: Path) -> dict[str, str]:
    """The environment of a child of the recorder of ``directory``: its mark."""
    return {**os.environ, MARKER: str(directory)}


def processes_naming(marker: str) -> list[int]:
    """Processes (other than this one) whose command line or environment contains
    ``marker`` anywhere (for tests and people: the recorder itself never ends a process
    found this way, see :func:`processes_of`)."""
    wanted = marker.encode()
    return sorted(
        {
            pid
            for part in ("cmdline", "environ")
            for pid, text in procfs.processes(part)
            if wanted in text.replace(b"\0", b" ")
        }
    )


def _is_finish_of(arguments: list[bytes], directory: Path) -> bool:
    for index, argument in enumerate(arguments[:-1]):
        if argument == FINISH_MODULE.encode() and index > 0 and arguments[index - 1] == b"-m":
            incident = Path(os.fsdecode(arguments[index + 1]))
            return incident.is_absolute() and incident.parent == directory
    return False


def processes_of(directory: Path, ring: Path) -> list[int]:
    """Processes (other than this one) a recorder of ``directory`` started: marked
    with exactly this directory, or its analysis child by its exact arguments."""
    marks = {
        f"{MARKER}={directory}".encode(),
        f"{RING_MARKER}={ring}/".encode(),
    }
    found = {pid for pid, text in procfs.processes("environ") if marks & set(text.split(b"\0"))}
    found |= {
        pid
        for pid, text in procfs.processes("cmdline")
        if _is_finish_of(text.split(b"\0"), directory)
    }
    found.discard(os.getpid())
    return sorted(found)


def end_stale(directory: Path, ring: Path) -> list[int]:
    """SIGKILL processes left by a recorder of ``directory`` that was killed; their
    pids."""
    stale = processes_of(directory, ring)
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
        try:
            # never through a symbolic link, never a file of someone else's
            self.fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                0o600,
            )  # fmt: skip
        except OSError as problem:
            raise EnvironmentProblem(
                f"{self.path}: cannot take the recorder's lock ({problem.strerror})"
            ) from None
        info = os.fstat(self.fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            os.close(self.fd)
            raise EnvironmentProblem(
                f"{self.path}: not the recorder's lock (not a regular file of uid "
                f"{os.geteuid()}); remove it or give another --dir"
            )
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
        # who holds it, for the next start's message: on a full disk it goes unsaid
        with contextlib.suppress(OSError):
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

"""What the recorder holds on disk, and the cap it keeps (``--max-disk``).

Usage is counted as ``du`` counts it: allocated blocks, each file once however many
names it has (an incident protects the ring files it needs with hard links while it
lasts). When usage plus the headroom gets near the cap, the recorder frees space in
this order: ring files older than any incident can use (or the oldest ring files,
except the one tcpdump writes), then whole incidents, oldest first (never the newest
one, nor one being made); and if that is not enough, the capture pauses until there
is room again. The headroom is three times what was written since the last check
(every quarter second), and at least a fifth of the cap: a storm makes the ring grow
fast, and an incident writes its bundle and socket snapshots at once.

That check runs every quarter second; between two checks the ring grows only by what
the :class:`Budget` the check left allows: the recorder writes the ring's files itself
(:mod:`.ring_writer`) and makes no write the budget refuses. Files an incident is about
to write (its host bundle, its capture copied out of the ring) are reserved from the
budget first, until they are written and measured.

The file system's own free space counts too: the recorder keeps at least
``MIN_FREE_FRACTION`` of it free, for everyone else.

The :class:`Guard` carries this out, on a thread of its own, with the budget it sets;
the recorder's other parts ask it for room (:meth:`Guard.keep` with ``extra``,
:meth:`Guard.room`) and tell it which incident is being analysed (never deleted).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from tcpsleuth.recorder.health import Health

MIN_FREE_FRACTION = 0.05
GUARD_S = 0.25
# of the cap, kept free of the ring for an incident's small files (events, samples,
# socket snapshots, report)
SLACK_PART = 10
INCIDENT_PREFIX = "incident-"
STAGING_PREFIX = ".incident-"


def blocks(paths: Iterable[Path]) -> int:
    """Bytes allocated to these files and directories and to everything under the
    directories (their own blocks too, as ``du`` counts them), each inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def count(path: str) -> None:
        nonlocal total
        try:
            info = os.lstat(path)
        except OSError:
            return
        key = (info.st_dev, info.st_ino)
        if key not in seen:
            seen.add(key)
            total += info.st_blocks * 512

    for path in paths:
        count(str(path))
        if not path.is_dir():
            continue
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                count(os.path.join(root, name))
    return total


def usage(directory: Path) -> int:
    return blocks([directory])


def _directories(directory: Path, prefix: str) -> list[Path]:
    """Real directories (a symbolic link is never one: the recorder makes none, and
    following one would read, write or delete outside) named ``prefix...``."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.name.startswith(prefix) and not p.is_symlink() and p.is_dir()
    )


def incidents(directory: Path) -> list[Path]:
    """Complete incidents, oldest first (their names sort by time)."""
    return _directories(directory, INCIDENT_PREFIX)


def staging(directory: Path) -> list[Path]:
    return _directories(directory, STAGING_PREFIX)


def fs_room(directory: Path) -> int:
    """Bytes the recorder may still take from its file system."""
    total, _used, free = shutil.disk_usage(directory)
    return free - int(total * MIN_FREE_FRACTION)


class Budget:
    """Bytes the ring may still allocate until the next check measures the directory.

    ``set`` is given the room the check measured (the cap less what is on disk); what
    the ring took while the check was measuring, and what incidents reserved, come off
    it. ``take`` is all or nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._left = 0
        self._taken = 0
        self._reserved: dict[str, int] = {}

    def mark(self) -> int:
        """Call before measuring; give the result to ``set``."""
        with self._lock:
            return self._taken

    def set(self, room: int, mark: int) -> None:
        with self._lock:
            taken_since = self._taken - mark
            self._left = max(0, room - sum(self._reserved.values()) - taken_since)

    def take(self, size: int) -> bool:
        with self._lock:
            if size > self._left:
                return False
            self._left -= size
            self._taken += size
            return True

    def reserve(self, name: str, size: int) -> None:
        """Hold ``size`` bytes back for files about to be written (until ``release``);
        the room the ring has left shrinks at once."""
        with self._lock:
            self._reserved[name] = self._reserved.get(name, 0) + size
            self._left = max(0, self._left - size)

    def release(self, name: str) -> None:
        with self._lock:
            self._reserved.pop(name, None)

    @property
    def reserved(self) -> int:
        with self._lock:
            return sum(self._reserved.values())


class _RingFile(Protocol):
    @property
    def path(self) -> Path: ...

    @property
    def start(self) -> float: ...


class GuardedRing(Protocol):
    """What the guard uses of the ring (:class:`.ring.Ring`)."""

    directory: Path
    budget: Budget

    def files(self) -> Sequence[_RingFile]: ...

    def current(self) -> _RingFile | None: ...

    def running(self) -> bool: ...

    def stop(self, why: str | None = None) -> None: ...


class Guard:
    """Keeps the recorder's directory under the cap, in the order the module describes:
    every ``GUARD_S`` on its own thread (sooner when the ring wakes it), and when asked
    for room. It sets the ring's budget, pauses the ring when nothing else frees
    enough (``ring_may_run`` turns false until there is twice the headroom again), and
    writes what it measured into ``health``."""

    def __init__(
        self,
        directory: Path,
        cap: int,
        keep_s: float,
        ring: GuardedRing,
        ring_lock: threading.Lock,
        wake: threading.Event,
        health: Health,
        say: Callable[[str, dict[str, Any]], None],
        analysing: Callable[[], str | None],
        analysed: Callable[[Path], bool],
        rotate_s: int,
    ) -> None:
        self.dir = directory
        self.cap = cap
        self.keep_s = keep_s  # how far back an incident reaches into the ring
        self.rotate_s = rotate_s
        self.ring = ring
        self.ring_lock = ring_lock  # held to start or stop the ring
        self.wake = wake
        self.health = health
        self.say = say
        self.analysing = analysing  # the incident being analysed: never deleted
        self.analysed = analysed  # an incident whose analysis is done no longer grows
        self.ring_may_run = True
        self._sizes: dict[str, int] = {}  # analysed incidents no longer change
        self._lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        """The guard thread: a check every ``GUARD_S`` or when woken, until ``stop``."""
        previous = None
        while not stop.is_set():
            self.wake.wait(GUARD_S)
            self.wake.clear()
            if stop.is_set():
                return
            with contextlib.suppress(OSError):
                previous = self.keep(previous)

    def room(self) -> int:
        """Bytes that may still be written beside what the last check measured, the
        headroom's floor (a fifth of the cap) kept."""
        return self.health.disk_limit_bytes - self.health.disk_bytes - self.cap // 5

    def forget(self, name: str) -> None:
        """``name`` changed (its analysis wrote its report): measure it again."""
        self._sizes.pop(name, None)

    def usage(self) -> int:
        total = 0
        for incident in incidents(self.dir):
            if self.analysed(incident):
                if incident.name not in self._sizes:
                    self._sizes[incident.name] = usage(incident)
                total += self._sizes[incident.name]
            else:
                total += usage(incident)
        others = [p for p in self.dir.iterdir() if not p.name.startswith(INCIDENT_PREFIX)]
        return total + blocks(others)

    def keep(self, previous: int | None, extra: int = 0) -> int:
        """Free space down to the cap less the headroom (and ``extra``: what is about
        to be written); the ring's size now, for the next call's ``previous``."""
        with self._lock:
            return self._keep(previous, extra)

    def _delete(self, incident: Path, line: str) -> None:
        shutil.rmtree(incident, ignore_errors=True)
        self._sizes.pop(incident.name, None)
        self.say(line, {"type": "deleted", "incident": incident.name})

    def _keep(self, previous: int | None, extra: int) -> int:
        mark = self.ring.budget.mark()
        current = self.ring.current()
        self._drop_unreachable_ring_files(current)
        used = self.usage()
        # what the ring wrote since the last check (an incident's own files come in
        # one burst, once; the ring keeps growing as long as the storm lasts)
        ring_now = blocks([self.ring.directory])
        grown = ring_now - previous if previous is not None else 0
        headroom = max(self.cap // 5, 3 * max(grown, 0)) + extra
        limit = min(self.cap, used + fs_room(self.dir))
        if used + headroom > limit:
            for ring_file in self.ring.files():
                if used + headroom <= limit:
                    break
                if current is not None and ring_file.path == current.path:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    ring_file.path.unlink()
                used = self.usage()
        complete = incidents(self.dir)
        if used + headroom > limit:
            for incident in complete[:-1]:
                if used + headroom <= limit:
                    break
                if incident.name == self.analysing():
                    continue
                self._delete(incident, f"deleted {incident.name} to stay within --max-disk")
                used = self.usage()
        # the ring's hard limit until the next check: what is left below the cap, less
        # what incidents reserved and a slack for their small files
        self.ring.budget.set(limit - used - self.cap // SLACK_PART, mark)
        if extra:
            # room for an incident's files: old ring files and old incidents only
            self.health.disk_bytes, self.health.disk_limit_bytes = used, limit
            return ring_now
        if used + headroom > limit and not self.ring.running() and complete:
            # the newest incident alone is larger than the cap: a cap is a cap
            newest = complete[-1]
            if newest.name != self.analysing():
                self._delete(
                    newest,
                    f"deleted {newest.name}, the newest incident, to stay within "
                    "--max-disk: raise --max-disk",
                )
                used = self.usage()
        if used + headroom > limit:
            self.ring_may_run = False
            self._pause(used, limit)
        elif used + 2 * headroom < limit:
            self.ring_may_run = True
        self.health.disk_bytes = used
        self.health.disk_limit_bytes = limit
        self.health.incidents_on_disk = len(incidents(self.dir))
        return ring_now

    def _drop_unreachable_ring_files(self, current: _RingFile | None) -> None:
        """Ring files no incident can reach back to any more."""
        now = time.time()
        files = self.ring.files()
        for index, ring_file in enumerate(files[:-1]):
            too_old = files[index + 1].start < now - self.keep_s - 2 * self.rotate_s
            if too_old and (current is None or ring_file.path != current.path):
                with contextlib.suppress(FileNotFoundError):
                    ring_file.path.unlink()

    def _pause(self, used: int, limit: int) -> None:
        with self.ring_lock:
            if self.ring.running():
                self.ring.stop(
                    why=f"no room left on the file system of {self.dir} (the recorder "
                    f"leaves {MIN_FREE_FRACTION:.0%} of it free)"
                    if limit <= used
                    else f"{used} bytes in {self.dir}, near the cap of {limit} bytes "
                    "(--max-disk, or the file system's free space)"
                )

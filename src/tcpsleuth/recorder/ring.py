"""The ring: header-only capture of the service ports, in files rotated by time.

tcpdump captures and writes pcap to a pipe (``-w -``); the recorder writes the files
(:mod:`.ring_writer`), ``ring-%Y%m%dT%H%M%SZ-gN.pcap``, a new one at the first packet
``rotate_s`` seconds after the last opened, as ``tcpdump -G`` would. ``N`` is the
tcpdump start (milliseconds since the epoch), so a restarted tcpdump never reuses a
name. Nothing is ever truncated in place (``tcpdump -C`` with ``-W`` would reuse ring
files, and a frozen incident could be overwritten); old files are deleted by the
recorder (:mod:`.disk`), and no write goes past the disk budget.

tcpdump runs as root (``-Z root``: the ring directory is root's only, mode 0700),
packet-buffered (``-U``) so that what a file holds is on disk when an incident is
frozen, and prints its counts of packets captured, received by the filter and dropped
by the kernel when asked (SIGUSR1) and at exit. Its environment names the ring
(``TCPSLEUTH_RING``), so that the next start can find one a killed recorder left.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tcpsleuth import safefile
from tcpsleuth.recorder.disk import Budget
from tcpsleuth.recorder.ring_writer import RingWriter
from tcpsleuth.sources.netns import exec_prefix
from tcpsleuth.subprocesses import die_with_parent

RING_DIR = "ring"
MARKER = "TCPSLEUTH_RING"
NAME = re.compile(r"^ring-(\d{8}T\d{6})Z-g(\d+)\.pcap$")
STATS = re.compile(
    r"(\d+) packets? captured[,\n]\s*(\d+) packets? received by filter[,\n]\s*"
    r"(\d+) packets? dropped by kernel"
)
# Ethernet or Linux cooked v2 (20), IPv6 (40), TCP with 40 bytes of options (60),
# and a Kafka request header (size, api key and version, correlation id, client.id
# length: 14 bytes) with a client.id of up to 66 bytes.
DEFAULT_SNAPLEN = 200


@dataclass(frozen=True)
class RingFile:
    path: Path
    start: float  # epoch seconds, from the name
    generation: int

    @property
    def key(self) -> tuple[float, int]:
        return (self.start, self.generation)


def parse_name(path: Path) -> RingFile | None:
    match = NAME.match(path.name)
    if not match:
        return None
    start = calendar.timegm(time.strptime(match.group(1), "%Y%m%dT%H%M%S"))
    return RingFile(path, float(start), int(match.group(2)))


def ring_files(directory: Path) -> list[RingFile]:
    found = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        parsed = parse_name(entry)
        if parsed is not None:
            found.append(parsed)
    return sorted(found, key=lambda f: f.key)


def covering(files: list[RingFile], start: float, end: float) -> list[RingFile]:
    """Files that may hold packets between ``start`` and ``end``: a file holds
    packets from its name's second until the next file opens (a second of slack on
    both sides: names have whole seconds)."""
    chosen = []
    for index, ring_file in enumerate(files):
        until = files[index + 1].start + 1 if index + 1 < len(files) else float("inf")
        if ring_file.start - 1 <= end and until >= start:
            chosen.append(ring_file)
    return chosen


def capture_filter(ports: tuple[int, ...]) -> str:
    return "tcp and (" + " or ".join(f"port {port}" for port in sorted(ports)) + ")"


@dataclass
class CaptureCounts:
    """What tcpdump reported, summed over every tcpdump the recorder started."""

    captured: int = 0
    received: int = 0
    dropped: int = 0
    # of the tcpdump running now (its counts are cumulative; added on exit)
    current: tuple[int, int, int] = field(default=(0, 0, 0))

    @property
    def totals(self) -> tuple[int, int, int]:
        return (
            self.captured + self.current[0],
            self.received + self.current[1],
            self.dropped + self.current[2],
        )


class Ring:
    def __init__(
        self,
        directory: Path,
        ports: tuple[int, ...],
        netns: str | None,
        interface: str,
        snaplen: int,
        rotate_s: int,
        say: Callable[[str], None],
        budget: Budget,
        wake: Callable[[], None],
    ) -> None:
        self.directory = directory / RING_DIR
        self.ports = ports
        self.netns = netns
        self.interface = interface
        self.snaplen = snaplen
        self.rotate_s = rotate_s
        self.say = say
        self.process: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.counts = CaptureCounts()
        self.problem: str | None = None  # why there is no capture now
        self.paused = False
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self.budget = budget  # what the writer may still allocate (the guard sets it)
        self.wake = wake
        self.writer: RingWriter | None = None
        self._writer_thread: threading.Thread | None = None
        self.capped_packets = 0  # kept out by the cap, by the writers that ended

    def argv(self) -> list[str]:
        return [
            *exec_prefix(self.netns),
            self.tcpdump or "tcpdump",
            "-i",
            self.interface,
            "-n",
            "-s",
            str(self.snaplen),
            "-U",
            "-B",
            "4096",
            "-Z",
            "root",
            "-w",
            "-",
            capture_filter(self.ports),
        ]

    @property
    def tcpdump(self) -> str | None:
        return shutil.which("tcpdump")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> bool:
        """Start tcpdump; False (and ``problem`` set, said once) when it cannot run."""
        if self.running():
            return True
        if self.tcpdump is None:
            return self._cannot("tcpdump is not installed (Debian: apt-get install tcpdump)")
        if os.geteuid() != 0:
            return self._cannot("capturing needs root (CAP_NET_RAW); run the recorder as root")
        try:
            made = safefile.make_dir(self.directory)
        except OSError as problem:
            return self._cannot(f"cannot make {self.directory} ({problem.strerror})")
        if not made and (why := safefile.unusable_dir(self.directory)):
            return self._cannot(f"{self.directory} is not the recorder's own directory ({why})")
        self.generation = int(time.time() * 1000)
        self._errors = []
        self.process = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            env={**os.environ, "TZ": "UTC", MARKER: f"{self.directory}/"},
            preexec_fn=die_with_parent,
        )
        assert self.process.stdout is not None
        self.writer = RingWriter(
            self.process.stdout,
            self.directory,
            self.generation,
            self.rotate_s,
            self.budget,
            self.wake,
            self.say,
        )
        self._writer_thread = threading.Thread(
            target=self.writer.run, name="ring-writer", daemon=True
        )
        self._writer_thread.start()
        ready = threading.Event()
        self._reader = threading.Thread(
            target=self._read_stderr, args=(self.process, ready), daemon=True
        )
        self._reader.start()
        ready.wait(10)
        if self.process.poll() is not None:
            self.process.wait()
            said = " ".join(line.strip() for line in self._errors[-2:]) or "no output"
            self.process = None
            return self._cannot(f"tcpdump could not start: {said}")
        if self.problem is not None:
            self.say(f"capture running again (tcpdump pid {self.process.pid})")
        self.problem = None
        self.paused = False
        return True

    def _cannot(self, why: str) -> bool:
        if self.problem != why:
            self.say(f"no capture: {why}; going on with counters, sockets and bundles")
        self.problem = why
        return False

    def _read_stderr(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert process.stderr is not None
        pending = ""
        last = (0, 0, 0)
        for raw in process.stderr:
            line = raw.decode(errors="replace")
            if "listening on" in line:
                ready.set()
            self._errors.append(line)
            del self._errors[:-20]
            pending = (pending + line)[-400:]
            found = STATS.search(pending)
            if found:
                last = (int(found.group(1)), int(found.group(2)), int(found.group(3)))
                with self._lock:
                    if process is self.process:
                        self.counts.current = last
                pending = ""
        # tcpdump has exited: its last counts (printed at exit) join the totals
        with self._lock:
            self.counts.captured += last[0]
            self.counts.received += last[1]
            self.counts.dropped += last[2]
            if process is self.process or self.process is None:
                self.counts.current = (0, 0, 0)
        ready.set()

    def request_counts(self) -> None:
        """Ask tcpdump for its counts (it prints them on SIGUSR1); they arrive on its
        standard error a moment later."""
        if self.running():
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGUSR1)

    def stop(self, why: str | None = None) -> None:
        """Stop tcpdump (its last counts are kept). ``why``: a pause, said once."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if self._reader is not None:
                self._reader.join(timeout=5)  # its final counts, printed at exit
            if self._writer_thread is not None:
                self._writer_thread.join(timeout=10)  # what is left in the pipe
        if self.writer is not None:
            self.capped_packets += self.writer.counts.capped_packets
            self.writer = None
        if why is not None:
            self.paused = True
            if self.problem != why:
                self.say(f"capture paused: {why}")
            self.problem = why

    def files(self) -> list[RingFile]:
        return ring_files(self.directory)

    def current(self) -> RingFile | None:
        """The file being written now."""
        writer = self.writer
        path = writer.current if writer is not None else None
        return parse_name(path) if path is not None else None

    @property
    def capped_total(self) -> int:
        """Packets kept out of the ring by the disk cap."""
        writer = self.writer
        return self.capped_packets + (writer.counts.capped_packets if writer else 0)

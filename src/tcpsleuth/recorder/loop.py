"""The recorder's sampling loop, and the wiring of its parts: it samples a namespace as
``watch`` does (every ``interval``, on a fixed schedule), finds the events, hands them
to the incident writer, keeps the ring running, and writes the metrics, until it is
stopped.

The parts, each with one job: the ring (:mod:`.ring`), the disk guard keeping the cap
with the ring's budget (:class:`.disk.Guard`, on a thread of its own every quarter
second), the incident writer (:mod:`.incident_writer`, a worker thread per incident for
the host bundle and the short trace), the analysis queue (:mod:`.analysis_queue`, one
child process at a time). The main thread samples, decides, and starts every child
process (a child's death signal is tied to the thread that started it).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tcpsleuth import safefile
from tcpsleuth.detectors import rates
from tcpsleuth.detectors.heal import ListenerPlan
from tcpsleuth.detectors.port_summary import TimesSeen, summarize
from tcpsleuth.errors import EnvironmentProblem, InputError
from tcpsleuth.model.findings import Finding
from tcpsleuth.recorder import children, disk, freeze, healing
from tcpsleuth.recorder.analysis_queue import AnalysisQueue
from tcpsleuth.recorder.health import Health
from tcpsleuth.recorder.incident_writer import IncidentWriter
from tcpsleuth.recorder.ring import RING_DIR, Ring
from tcpsleuth.recorder.settings import Settings
from tcpsleuth.sources import sampling, sockdiag
from tcpsleuth.sources.sampling import CounterSample

__all__ = ["Health", "Recorder", "Settings"]

# the share of one core the read of the watched ports' sockets (window-limited
# connections, and those the bug has hit while an incident is open) may take: it is
# read less often than every sample where the ports hold tens of thousands of sockets
RWND_SHARE = 0.02
COUNTS_EVERY_S = 5.0
RESTART_AFTER_S = 30.0


class Recorder:
    def __init__(self, settings: Settings, say: Callable[[str, dict[str, Any]], None]) -> None:
        self.s = settings
        self.say = say
        self.dir = settings.directory
        self.ports = frozenset(settings.ports)
        self.host = sampling.host_label(settings.netns)
        self.health = Health(disk_limit_bytes=settings.max_disk)
        self.stop = threading.Event()
        self.lock: children.DirectoryLock | None = None
        budget = disk.Budget()
        wake_guard = threading.Event()
        self.ring = Ring(
            self.dir,
            settings.ports,
            settings.netns,
            settings.interface,
            settings.snaplen,
            settings.rotate_s,
            lambda line: self._problem("capture", line),
            budget,
            wake_guard.set,
        )
        self._ring_lock = threading.Lock()  # the sampling and the guard start and stop it
        self._restart_at = 0.0
        self.guard = disk.Guard(
            self.dir,
            settings.max_disk,
            settings.policy.before_s,
            self.ring,
            self._ring_lock,
            wake_guard,
            self.health,
            say,
            analysing=lambda: self.queue.analysing(),
            analysed=lambda incident: (incident / freeze.REPORT_JSON).exists(),
            rotate_s=settings.rotate_s,
        )
        self.queue = AnalysisQueue(
            self.dir, settings.max_disk, budget, self.guard.room, say, self.guard.forget
        )
        self.history: deque[dict[str, Any]] = deque(
            maxlen=int(settings.policy.before_s / settings.interval) + 3
        )
        self.writer = IncidentWriter(
            settings,
            self.host,
            self.ring,
            self.history,
            self.guard,
            self.queue,
            self.health,
            say,
            self.stop,
        )
        self.times = TimesSeen()
        self.kernel = healing.kernel_verdict()
        # while an incident is open (and --heal is not given): the listeners of the
        # watched ports with connections the bug has hit, as last read
        self.hits: list[tuple[ListenerPlan, int]] = []
        self.limited_before = 0
        self._rwnd_at: float | None = None  # when the window-limited count was last read
        self._rwnd_next = 0.0  # and when it may be read again

    # --- start and stop -------------------------------------------------------------

    def prepare(self) -> None:
        os.umask(0o077)
        try:
            made = safefile.make_dir(self.dir, 0o700)  # an existing one keeps its mode
        except OSError as problem:
            raise EnvironmentProblem(
                f"{self.dir}: cannot make the recorder's directory ({problem.strerror})"
            ) from None
        why = None if made else safefile.unusable_dir(self.dir, follow=True)
        if why is not None:
            raise EnvironmentProblem(
                f"{self.dir}: not a directory the recorder can keep captures in ({why}); "
                "give a new path (made with mode 0700) or a directory of root's, mode 0700"
            )
        self.lock = children.DirectoryLock(self.dir)
        stale = children.end_stale(self.dir, self.dir / RING_DIR)
        if stale or self.lock.previous_pid:
            self.say(
                f"a recorder (pid {self.lock.previous_pid or '?'}) stopped without cleaning "
                f"up: ended {len(stale)} of its processes, reusing {self.dir}",
                {"type": "recovered", "ended": stale},
            )
        for staging in disk.staging(self.dir):
            self.queue.add(staging)
        for done in disk.incidents(self.dir):
            if not (done / freeze.REPORT_JSON).exists():
                self.queue.add(done)
        if self.queue.pending:
            self.say(
                f"{len(self.queue.pending)} incident(s) left unfinished by the last recorder: "
                "finishing them",
                {"type": "recovered", "incidents": [p.name for p in self.queue.pending]},
            )
        self.writer.check_trace()

    def run(self) -> None:
        self.prepare()
        guard = threading.Thread(
            target=self.guard.run, args=(self.stop,), name="disk-guard", daemon=True
        )
        try:
            with contextlib.suppress(OSError):
                self.guard.keep(None)  # the ring's first budget
            self.ring.start()
            trace_problem = self.writer.trace_problem
            if trace_problem and self.s.trace_s > 0:
                self._problem("trace", f"no trace in incidents: {trace_problem}")
            guard.start()
            self._loop()
        finally:
            self.stop.set()
            self.shutdown()

    def _loop(self) -> None:
        deadline = time.monotonic() + self.s.duration if self.s.duration else None
        said_ready = False
        while not self.stop.is_set():
            try:
                stream = sampling.every(self.s.netns, self.s.interval)
                before = next(stream)
                self.health.problems.pop("sampling", None)
                if not said_ready:
                    self._ready()
                    said_ready = True
                for after in stream:
                    self._step(before, after)
                    before = after
                    if deadline is not None and time.monotonic() >= deadline:
                        return
            except InputError as problem:
                self.health.sampling_errors_total += 1
                self._problem("sampling", f"cannot sample: {problem}; trying again")
                # an incident still closes, and is analysed, without samples
                with contextlib.suppress(OSError):
                    self.writer.close_if_due(time.time())
                self.queue.next()
                self.stop.wait(max(self.s.interval, 2.0))
                if deadline is not None and time.monotonic() >= deadline:
                    return

    def _ready(self) -> None:
        t = self.s.thresholds
        capture = (
            f"ring {self.dir / RING_DIR} (tcpdump -s {self.s.snaplen}, a file every "
            f"{self.s.rotate_s} s)"
            if self.ring.running()
            else f"no capture ({self.ring.problem})"
        )
        self.say(
            f"ready: port {', '.join(map(str, self.s.ports))}"
            + (f" in netns {self.s.netns}" if self.s.netns else "")
            + f"; {capture}; at most {self.s.max_disk / (1 << 20):.0f} MiB in {self.dir}; "
            "events: "
            f"SYN cookies >= {t.cookies_per_second:g}/s, overflows >= "
            f"{t.overflows_per_second:g}/s"
            + (", a full accept queue" if self.s.queue_full else "")
            + (
                f", +{t.rwnd_limited_jump} window-limited connections"
                if t.rwnd_limited_jump
                else ""
            ),
            {"type": "ready", "pid": os.getpid(), "capture": self.ring.running()},
        )

    def shutdown(self) -> None:
        """Nothing keeps running: the open incident is frozen with what it has, the
        capture stopped, a running analysis given a moment and then ended (``tcpsleuth
        report`` finishes it later)."""
        with contextlib.suppress(Exception):
            self.writer.cut()
        with self._ring_lock:
            self.ring.stop()
        self.queue.stop()
        captured, _received, dropped = self.ring.counts.totals
        capped = self.ring.capped_total
        self.say(
            f"stopped: {self.health.incidents_total} incident(s) recorded; tcpdump captured "
            f"{captured} packets, the kernel dropped {dropped}"
            + (f", {capped} kept out by --max-disk" if capped else ""),
            {"type": "stopped", "captured": captured, "dropped": dropped, "capped": capped},
        )
        if self.lock is not None:
            self.lock.release()

    # --- one sample -----------------------------------------------------------------

    def _step(self, before: CounterSample, after: CounterSample) -> None:
        started = time.monotonic()
        now = after.wall_time
        # a full accept queue counts on the watched ports' listeners only
        watched = {x.local for x in after.listeners if x.local_port in self.ports}
        events = [
            e
            for e in rates.between(before, after, self.host, self.s.thresholds)
            if e.kind != "accept-queue-full"
            or (self.s.queue_full and e.subject["listener"] in watched)
        ]
        events += self._watched_sockets(after.at - before.at)
        record = {
            "time": now,
            "seconds": round(after.at - before.at, 3),
            "counters": dict(after.counters),
            "grown": {k: v for k, v in rates.deltas(before.counters, after.counters).items() if v},
            "listeners": [
                {
                    "listener": x.local,
                    "port": x.local_port,
                    "backlog": x.backlog,
                    "accept_queue": x.accept_queue,
                }
                for x in after.listeners
                if x.local_port in self.ports
            ],
        }
        self.history.append(record)
        for event in events:
            self.health.events_total[event.kind] = self.health.events_total.get(event.kind, 0) + 1
            self.say(f"event: {event.kind}: {event.summary}", {"type": "event", **event.to_dict()})
        try:
            self.writer.on_sample(now, events, record, self.hits)
        except OSError as problem:
            # a full disk, say: the sampling, the ring and the metrics go on
            self._problem("incident", f"cannot write the incident: {problem.strerror or problem}")
        self._health(now)
        self.health.samples_total += 1
        self.health.sample_seconds = time.monotonic() - started
        if self.s.metrics_file is not None:
            self._write_metrics(self.s.metrics_file)

    def _write_metrics(self, path: Path) -> None:
        from tcpsleuth.reports import prometheus

        text = prometheus.exposition(prometheus.recorder_families(self.health, str(self.dir)))
        try:
            # 0644 for node_exporter's textfile collector; no secrets in it
            safefile.write_file(path, text, 0o644, sync=False)
        except OSError as problem:
            self._problem("metrics", str(problem))

    def _watched_sockets(self, seconds: float) -> list[Finding]:
        """The watched ports' sockets, read at most every sample and no more often than
        keeps the cost under RWND_SHARE of a core (with 50,000 sockets on the ports one
        read costs ~0.1 s, so it runs every ~5 s there): the window-limited count, whose
        jump is an event, and while an incident is open the connections the bug has
        hit (``self.hits``), which hold it open. Not read at all when neither is asked."""
        rwnd = self.s.thresholds.rwnd_limited_jump > 0
        hits = self.writer.incidents.current is not None and not self.s.heal
        if not hits:
            self.hits = []
        if not (rwnd or hits):
            return []
        now = time.monotonic()
        if now < self._rwnd_next:
            return []
        cpu = time.thread_time()
        # only the watched ports' sockets, chosen by the kernel: no owners or other
        # ports' sockets (the exporter's scrape reads those)
        sockets = sampling.port_sockets(self.s.netns, self.ports)
        events = self._window_limited(sockets, now, seconds) if rwnd else []
        if hits:
            self.hits = self._hits(sockets)
        self._rwnd_next = now + (time.thread_time() - cpu) / RWND_SHARE
        return events

    def _hits(self, sockets: sockdiag.DiagDump) -> list[tuple[ListenerPlan, int]]:
        try:
            found = healing.hits_on_ports(self.s.netns, self.ports, sockets, self.kernel)
        except (EnvironmentProblem, OSError) as problem:
            self._problem("hits", f"cannot count the connections the bug has hit: {problem}")
            return []
        self.health.problems.pop("hits", None)
        return [(plan, n) for plan, n in found if n]

    def _window_limited(
        self, sockets: sockdiag.DiagDump, now: float, seconds: float
    ) -> list[Finding]:
        summary = summarize(sockets, self.times, max_ports=1000)
        self.times = summary.times
        if self._rwnd_at is not None:
            seconds = now - self._rwnd_at
        self._rwnd_at = now
        limited = sum(
            p.rwnd_limited_connections
            for p in summary.ports
            if p.port.isdigit() and int(p.port) in self.ports
        )
        connections = sum(
            p.connections for p in summary.ports if p.port.isdigit() and int(p.port) in self.ports
        )
        events = rates.rwnd_limited_events(
            self.limited_before,
            limited,
            connections,
            seconds,
            self.ports,
            self.host,
            self.s.thresholds,
        )
        self.limited_before = limited
        return events

    # --- health ---------------------------------------------------------------------

    def _health(self, now: float) -> None:
        self.queue.next()
        with self._ring_lock:
            if not self.ring.running():
                if self.ring.paused:
                    if self.guard.ring_may_run:
                        self.ring.start()
                elif time.monotonic() >= self._restart_at:
                    self._restart_at = time.monotonic() + RESTART_AFTER_S
                    if self.ring.process is not None:
                        self.ring.stop()  # it exited: keep its counts
                        self._problem("capture", "tcpdump exited; starting it again")
                    self.ring.start()
        if self.health.samples_total % max(1, int(COUNTS_EVERY_S / self.s.interval)) == 0:
            self.ring.request_counts()
        captured, _received, dropped = self.ring.counts.totals
        self.health.capture_up = self.ring.running()
        self.health.capture_packets_total = captured
        self.health.capture_dropped_total = dropped
        self.health.capture_capped_total = self.ring.capped_total
        if self.ring.running():
            self.health.problems.pop("capture", None)
        files = self.ring.files()
        self.health.ring_seconds = round(now - files[0].start, 1) if files else 0.0

    def _problem(self, what: str, line: str) -> None:
        if self.health.problems.get(what) != line:
            self.say(line, {"type": "problem", "what": what, "line": line})
        self.health.problems[what] = line

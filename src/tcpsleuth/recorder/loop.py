"""The recorder: samples a namespace as ``watch`` does, keeps the ring, turns events into
incidents and keeps its directory under its cap, until it is stopped.

Threads: the main thread samples (every ``interval``, on a fixed schedule), decides,
and starts every child process (a child's death signal is tied to the thread that
started it); a guard thread keeps the disk cap every quarter second; a worker thread
per incident writes the host bundle and runs the short trace while the incident lasts.
The analysis runs in a child process, one at a time.

About 710 lines, most of them the ``Recorder`` class: the ring, the sampling loop,
the incidents and the disk guard share its state and its locks; the files an
incident holds and their analysis are in ``incidents.py`` and ``analysis.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcpsleuth import safefile
from tcpsleuth.detectors import rates
from tcpsleuth.detectors.port_summary import TimesSeen, summarize
from tcpsleuth.errors import EnvironmentProblem, InputError
from tcpsleuth.model.findings import Finding
from tcpsleuth.recorder import children, disk, freeze, healing
from tcpsleuth.recorder.incidents import Incidents, Open, Policy
from tcpsleuth.recorder.ring import RING_DIR, Ring, covering
from tcpsleuth.sources import sampling
from tcpsleuth.sources.bpf import tracer
from tcpsleuth.sources.sampling import CounterSample
from tcpsleuth.subprocesses import die_with_parent

GUARD_S = 0.25
# the share of one core the window-limited read may take: it is read less often than
# every sample where the watched ports hold tens of thousands of sockets
RWND_SHARE = 0.02
COUNTS_EVERY_S = 5.0
RESTART_AFTER_S = 30.0
FINISH_CPU_S = 600
# what a host bundle takes: `ss -tni` writes about 500 bytes a socket; sysctls, counters
BUNDLE_BYTES_PER_SOCKET = 600
BUNDLE_BASE_BYTES = 256 << 10
# of the cap, kept free of the ring for an incident's small files (events, samples,
# socket snapshots, report)
SLACK_PART = 10


@dataclass(frozen=True)
class Settings:
    directory: Path
    ports: tuple[int, ...]
    netns: str | None = None
    interface: str = "any"
    snaplen: int = 200
    rotate_s: int = 10
    max_disk: int = 1 << 30
    policy: Policy = field(default_factory=Policy)
    thresholds: rates.Thresholds = field(
        default_factory=lambda: rates.Thresholds(
            cookies_per_second=10, overflows_per_second=10, rwnd_limited_jump=10
        )
    )
    queue_full: bool = True
    interval: float = 1.0
    later_s: float = 5.0
    trace_s: float = 5.0
    cut_payload: bool = True
    kafka_config: Path | None = None
    duration: float | None = None
    metrics_file: Path | None = None
    heal: bool = False  # end the bug's connections once an incident's storm is over


@dataclass
class Health:
    """What the metrics say about the recorder."""

    started: float = field(default_factory=time.time)
    incidents_total: int = 0
    incidents_on_disk: int = 0
    last_incident: float = 0.0
    last_incident_name: str = ""
    events_total: dict[str, int] = field(default_factory=dict)
    events_suppressed_total: int = 0
    capture_up: bool = False
    capture_packets_total: int = 0
    capture_dropped_total: int = 0
    capture_capped_total: int = 0  # kept out of the ring by the disk cap
    disk_bytes: int = 0
    disk_limit_bytes: int = 0
    ring_seconds: float = 0.0
    sample_seconds: float = 0.0
    samples_total: int = 0
    sampling_errors_total: int = 0
    problems: dict[str, str] = field(default_factory=dict)  # what -> why (one line)


@dataclass
class Active:
    """The incident being recorded."""

    open: Open
    staging: Path
    later_taken: bool = False
    skip_bundle: bool = False
    workers: list[threading.Thread] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Recorder:
    def __init__(self, settings: Settings, say: Callable[[str, dict[str, Any]], None]) -> None:
        self.s = settings
        self.say = say
        self.dir = settings.directory
        self.ports = frozenset(settings.ports)
        self.host = sampling.host_label(settings.netns)
        self.incidents = Incidents(settings.policy)
        self.health = Health(disk_limit_bytes=settings.max_disk)
        self.budget = disk.Budget()
        self._wake_guard = threading.Event()
        self.ring = Ring(
            self.dir,
            settings.ports,
            settings.netns,
            settings.interface,
            settings.snaplen,
            settings.rotate_s,
            lambda line: self._problem("capture", line),
            self.budget,
            self._wake_guard.set,
        )
        self.history: deque[dict[str, Any]] = deque(
            maxlen=int(settings.policy.before_s / settings.interval) + 3
        )
        self.active: Active | None = None
        self.finishing: subprocess.Popen[str] | None = None
        self.finishing_name = ""
        self.pending_finish: deque[Path] = deque()
        self.times = TimesSeen()
        self.limited_before = 0
        self._rwnd_at: float | None = None  # when the window-limited count was last read
        self._rwnd_next = 0.0  # and when it may be read again
        self.trace_problem: str | None = None
        self.stop = threading.Event()
        self.lock: children.DirectoryLock | None = None
        self._ring_lock = threading.Lock()
        self._room = True
        self._restart_at = 0.0
        self._sizes: dict[str, int] = {}
        self._cap_lock = threading.Lock()
        self.listened: set[str] = set()  # watched ports seen with a listener

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
            self.pending_finish.append(staging)
        for done in disk.incidents(self.dir):
            if not (done / freeze.REPORT_JSON).exists():
                self.pending_finish.append(done)
        if self.pending_finish:
            self.say(
                f"{len(self.pending_finish)} incident(s) left unfinished by the last recorder: "
                "finishing them",
                {"type": "recovered", "incidents": [p.name for p in self.pending_finish]},
            )
        try:
            tracer.check_environment()
        except EnvironmentProblem as problem:
            self.trace_problem = str(problem)
        if self.s.trace_s <= 0:
            self.trace_problem = "turned off (--trace 0)"

    def run(self) -> None:
        self.prepare()
        guard = threading.Thread(target=self._guard, name="disk-guard", daemon=True)
        try:
            with contextlib.suppress(OSError):
                self._keep_cap(None)  # the ring's first budget
            self.ring.start()
            if self.trace_problem and self.s.trace_s > 0:
                self._problem("trace", f"no trace in incidents: {self.trace_problem}")
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
                now = time.time()
                done = self.incidents.due(now)
                if done is not None and self.active is not None:
                    with contextlib.suppress(OSError):
                        self._close(done)
                self._next_finish()
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
            if self.active is not None:
                done, self.incidents.current = self.active.open, None
                self.active.notes.append("the recorder was stopped before the incident's end")
                self._close(done, stopping=True)
        with self._ring_lock:
            self.ring.stop()
        if self.finishing is not None and self.finishing.poll() is None:
            try:
                self.finishing.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.finishing.kill()
                self.finishing.wait()
                self.say(
                    f"{self.finishing_name}: analysis ended unfinished; "
                    f"`tcpsleuth report {self.dir / self.finishing_name}` finishes it",
                    {"type": "unfinished", "incident": self.finishing_name},
                )
        self._reap_finish()
        if self.pending_finish and self.finishing is None:
            # a staging directory still needs its capture: make it whole without analysis
            from tcpsleuth.recorder.finish import make_whole

            for path in list(self.pending_finish):
                if path.name.endswith(".partial") and path.exists():
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        make_whole(path, self.s.max_disk // 2)
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
        events = [
            e
            for e in rates.between(before, after, self.host, self.s.thresholds)
            if e.kind != "accept-queue-full"
            or (self.s.queue_full and int(e.subject["listener"].rsplit(":", 1)[1]) in self.ports)
        ]
        events += self._window_limited(after.at - before.at)
        record = {
            "time": now,
            "seconds": round(after.at - before.at, 3),
            "counters": dict(after.counters),
            "grown": {k: v for k, v in rates.deltas(before.counters, after.counters).items() if v},
            "listeners": [
                {"listener": x.local, "backlog": x.backlog, "accept_queue": x.accept_queue}
                for x in after.listeners
                if x.local_port in self.ports
            ],
        }
        self.history.append(record)
        for event in events:
            self.health.events_total[event.kind] = self.health.events_total.get(event.kind, 0) + 1
            self.say(f"event: {event.kind}: {event.summary}", {"type": "event", **event.to_dict()})
        try:
            self._incidents(now, events, record)
        except OSError as problem:
            # a full disk, say: the sampling, the ring and the metrics go on
            self._problem("incident", f"cannot write the incident: {problem.strerror or problem}")
        self._health(now)
        self.health.samples_total += 1
        self.health.sample_seconds = time.monotonic() - started
        if self.s.metrics_file is not None:
            self._write_metrics(self.s.metrics_file)

    def _incidents(self, now: float, events: list[Finding], record: dict[str, Any]) -> None:
        # a watched port that had a listener and has none: the broker is down or
        # restarting, and its clients' storm is still to come; keep the incident open
        listening = {x["listener"].rsplit(":", 1)[1] for x in record["listeners"]}
        self.listened |= listening
        if self.listened - listening and self.incidents.hold(now) and self.active is not None:
            absent = ", ".join(sorted(self.listened - listening, key=int))
            note = f"held open while port {absent} had no listener"
            if note not in self.active.notes:
                self.active.notes.append(note)
        done = self.incidents.due(now)
        if done is not None and self.active is not None:
            self._close(done)
        decision = self.incidents.on_events(now, [e.kind for e in events])
        if decision == "opened":
            assert self.incidents.current is not None
            self._open(self.incidents.current, events)
        elif decision == "joined" and self.active is not None:
            freeze.append_lines(
                self.active.staging / freeze.EVENTS, [_event(now, e) for e in events]
            )
        elif decision == "suppressed":
            self.health.events_suppressed_total = self.incidents.suppressed
            self.say(
                f"not recorded: {self.s.policy.per_hour} incidents already in the last hour "
                "(--per-hour)",
                {"type": "suppressed", "events": len(events)},
            )
        if self.active is not None:
            self._while_open(now, record)

    def _write_metrics(self, path: Path) -> None:
        from tcpsleuth.reports import prometheus

        text = prometheus.exposition(prometheus.recorder_families(self.health, str(self.dir)))
        try:
            # 0644 for node_exporter's textfile collector; no secrets in it
            safefile.write_file(path, text, 0o644, sync=False)
        except OSError as problem:
            self._problem("metrics", str(problem))

    def _window_limited(self, seconds: float) -> list[Finding]:
        """The window-limited count of the watched ports, at most every sample and no
        more often than keeps its cost under RWND_SHARE of a core: with 50,000 sockets
        on the ports one read and summary costs ~0.1 s, so it runs every ~5 s there."""
        if self.s.thresholds.rwnd_limited_jump <= 0:
            return []
        now = time.monotonic()
        if now < self._rwnd_next:
            return []
        cpu = time.thread_time()
        # only the watched ports' sockets, chosen by the kernel: no owners, sysctls or
        # other ports' sockets (the exporter's scrape reads those)
        sockets = sampling.port_sockets(self.s.netns, self.ports)
        summary = summarize(sockets, self.times, max_ports=1000)
        self.times = summary.times
        self._rwnd_next = now + (time.thread_time() - cpu) / RWND_SHARE
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

    # --- incidents ------------------------------------------------------------------

    def _meta(self, active: Active) -> dict[str, Any]:
        policy = self.s.policy
        start, end = active.open.window(policy)
        captured, received, dropped = self.ring.counts.totals
        return {
            "incident": active.open.name,
            "host": self.host,
            "hostname": socket.gethostname(),
            "netns": self.s.netns,
            "ports": list(self.s.ports),
            "window": {
                "start": start,
                "end": end,
                "first_event": active.open.first_event,
                "last_event": active.open.last_event,
            },
            "kinds": active.open.kinds,
            "cut_payload": self.s.cut_payload,
            "capture": {
                "snaplen": self.s.snaplen,
                "interface": self.s.interface,
                "running": self.ring.running(),
                "why": self.ring.problem,
                "tcpdump_captured": captured,
                "tcpdump_received": received,
                "kernel_drops": dropped,
            },
            "settings": {
                **{k: v for k, v in dataclasses.asdict(policy).items()},
                "interval": self.s.interval,
                "thresholds": dataclasses.asdict(self.s.thresholds),
                "max_disk": self.s.max_disk,
            },
            "notes": active.notes,
        }

    def _open(self, incident: Open, events: list[Finding]) -> None:
        staging = freeze.make_staging(self.dir, incident.name)
        active = Active(incident, staging)
        self.active = active
        self.say(
            f"incident {incident.name} opened ({', '.join(incident.kinds)})",
            {"type": "incident-opened", "incident": incident.name},
        )
        freeze.append_lines(
            staging / freeze.EVENTS, [_event(incident.first_event, e) for e in events]
        )
        start = incident.first_event - self.s.policy.before_s
        freeze.append_lines(
            staging / freeze.SAMPLES,
            [r for r in self.history if r["time"] >= start - self.s.interval],
        )
        self._link(active)
        try:
            freeze.socket_snapshot(self.s.netns, self.ports, staging / freeze.DURING, time.time())
        except InputError as problem:
            active.notes.append(f"no sockets during the storm: {problem}")
        if self.ring.problem:
            active.notes.append(f"no capture: {self.ring.problem}")
        freeze.write_json(staging / freeze.META, self._meta(active))
        # the bundle's `ss -tni` lists every socket of the namespace at once: room first
        in_use = sampling.sockets_in_use(self.s.netns) or 0
        need = BUNDLE_BYTES_PER_SOCKET * in_use + BUNDLE_BASE_BYTES
        self.budget.reserve(f"bundle {incident.name}", need)
        with contextlib.suppress(OSError):
            self._keep_cap(None, extra=need)
        if self.health.disk_bytes + need + self.s.max_disk // 5 > self.health.disk_limit_bytes:
            active.skip_bundle = True
            active.notes.append("no bundle: no room for it within --max-disk")
            self.budget.release(f"bundle {incident.name}")
        worker = threading.Thread(target=self._gather, args=(active,), daemon=True)
        worker.start()
        active.workers.append(worker)

    def _gather(self, active: Active) -> None:
        """The host bundle and the short trace, beside the sampling."""
        if not active.skip_bundle:
            try:
                problem = freeze.bundle(active.staging, self.s.netns, self.s.kafka_config)
            finally:
                self.budget.release(f"bundle {active.open.name}")
            if problem:
                active.notes.append(problem)
        if self.trace_problem:
            with contextlib.suppress(OSError):
                skipped = self.trace_problem + "\n"
                safefile.write_file(active.staging / freeze.TRACE_SKIPPED, skipped, sync=False)
            return
        try:
            inodes = frozenset({tracer.netns_inode(self.s.netns)}) if self.s.netns else frozenset()
            program = tracer.build_program(self.ports, inodes, 10.0)
            with safefile.replacing(active.staging / freeze.TRACE, 0o600, sync=False) as out:
                for sample in tracer.trace(program, self.s.trace_s, preexec_fn=die_with_parent):
                    out.write((json.dumps(dataclasses.asdict(sample)) + "\n").encode())
                    if self.stop.is_set():
                        break
        except (InputError, OSError) as problem:
            with contextlib.suppress(OSError):
                skipped = f"{problem}\n"
                safefile.write_file(active.staging / freeze.TRACE_SKIPPED, skipped, sync=False)

    def _link(self, active: Active) -> None:
        start, end = active.open.window(self.s.policy)
        freeze.link_ring(covering(self.ring.files(), start, end), active.staging)

    def _while_open(self, now: float, record: dict[str, Any]) -> None:
        active = self.active
        assert active is not None
        freeze.append_lines(active.staging / freeze.SAMPLES, [record])
        self._link(active)
        if not active.later_taken and now >= active.open.last_event + self.s.later_s:
            active.later_taken = True
            try:
                freeze.socket_snapshot(self.s.netns, self.ports, active.staging / freeze.LATER, now)
            except InputError as problem:
                active.notes.append(f"no sockets after the storm: {problem}")

    def _close(self, incident: Open, stopping: bool = False) -> None:
        active = self.active
        assert active is not None and active.open is incident
        self.active = None
        for worker in active.workers:
            worker.join(timeout=2 if stopping else 30)
        if not active.later_taken and not stopping:
            with contextlib.suppress(InputError):
                freeze.socket_snapshot(
                    self.s.netns, self.ports, active.staging / freeze.LATER, time.time()
                )
        if self.s.heal and not stopping:
            # the incident closes once no event came for a while: the storm is over
            active.notes += healing.heal_ports(self.s.netns, self.s.ports, active.staging)
        if stopping:
            incident.cut_at = time.time()
        self.ring.request_counts()
        time.sleep(0.05)
        self._link(active)
        freeze.write_json(active.staging / freeze.META, self._meta(active))
        self.health.incidents_total += 1
        self.health.last_incident = incident.first_event
        self.health.last_incident_name = incident.name
        self.say(
            f"incident {incident.name} recorded: {incident.events} event(s) "
            f"({', '.join(incident.kinds)}); analysing",
            {
                "type": "incident",
                "incident": incident.name,
                "directory": str(self.dir / incident.name),
            },
        )
        self.pending_finish.append(active.staging)
        if not stopping:
            self._next_finish()

    def _next_finish(self) -> None:
        self._reap_finish()
        if self.finishing is not None or not self.pending_finish:
            return
        path = self.pending_finish.popleft()
        if not path.exists():
            return
        # the copy must fit beside the ring links it is made from (freed only after)
        room = self.health.disk_limit_bytes - self.health.disk_bytes - self.s.max_disk // 5
        budget = max(0, min(self.s.max_disk // 2, room))
        self.finishing_name = (
            freeze.final_dir(path).name if path.name.endswith(".partial") else path.name
        )
        self.budget.reserve(f"finish {self.finishing_name}", budget)
        self.finishing = subprocess.Popen(
            [sys.executable, "-m", "tcpsleuth.recorder.finish", str(path), "--budget", str(budget)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=children.marked_environment(self.dir),
            preexec_fn=lambda: children.background_child(FINISH_CPU_S),
        )

    def _reap_finish(self) -> None:
        child = self.finishing
        if child is None or child.poll() is None:
            return
        self.finishing = None
        _out, err = child.communicate()
        name = self.finishing_name
        self.budget.release(f"finish {name}")
        if child.returncode == 0:
            self._sizes.pop(name, None)
            report = self.dir / name / freeze.REPORT_JSON
            kinds: list[str] = []
            with contextlib.suppress(OSError, ValueError):
                kinds = sorted({f["kind"] for f in json.loads(report.read_text())["findings"]})
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

    # --- health and disk ------------------------------------------------------------

    def _health(self, now: float) -> None:
        self._next_finish()
        with self._ring_lock:
            if not self.ring.running():
                if self.ring.paused:
                    if self._room:
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

    def _guard(self) -> None:
        previous = None
        while not self.stop.is_set():
            self._wake_guard.wait(GUARD_S)
            self._wake_guard.clear()
            if self.stop.is_set():
                return
            with contextlib.suppress(OSError):
                previous = self._keep_cap(previous)

    def _usage(self) -> int:
        total = 0
        for incident in disk.incidents(self.dir):
            if (incident / freeze.REPORT_JSON).exists():
                if incident.name not in self._sizes:
                    self._sizes[incident.name] = disk.usage(incident)
                total += self._sizes[incident.name]
            else:
                total += disk.usage(incident)
        others = [p for p in self.dir.iterdir() if not p.name.startswith(disk.INCIDENT_PREFIX)]
        return total + disk.blocks(others)

    def _keep_cap(self, previous: int | None, extra: int = 0) -> int:
        """Free space down to the cap less the headroom (and ``extra``: what is about
        to be written); the ring's size now."""
        with self._cap_lock:
            return self._keep_cap_locked(previous, extra)

    def _keep_cap_locked(self, previous: int | None, extra: int) -> int:
        policy = self.s.policy
        now = time.time()
        mark = self.budget.mark()
        current = self.ring.current()
        files = self.ring.files()
        # ring files no incident can reach back to any more
        for index, ring_file in enumerate(files[:-1]):
            too_old = files[index + 1].start < now - policy.before_s - 2 * self.s.rotate_s
            if too_old and (current is None or ring_file.path != current.path):
                with contextlib.suppress(FileNotFoundError):
                    ring_file.path.unlink()
        used = self._usage()
        # what the ring wrote since the last check (an incident's own files come in
        # one burst, once; the ring keeps growing as long as the storm lasts)
        ring_now = disk.blocks([self.dir / RING_DIR])
        grown = ring_now - previous if previous is not None else 0
        headroom = max(self.s.max_disk // 5, 3 * max(grown, 0)) + extra
        limit = min(self.s.max_disk, used + disk.fs_room(self.dir))
        if used + headroom > limit:
            for ring_file in self.ring.files():
                if used + headroom <= limit:
                    break
                if current is not None and ring_file.path == current.path:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    ring_file.path.unlink()
                used = self._usage()
        complete = disk.incidents(self.dir)
        if used + headroom > limit:
            for incident in complete[:-1]:
                if used + headroom <= limit:
                    break
                if incident.name == self.finishing_name and self.finishing is not None:
                    continue
                shutil.rmtree(incident, ignore_errors=True)
                self._sizes.pop(incident.name, None)
                self.say(
                    f"deleted {incident.name} to stay within --max-disk",
                    {"type": "deleted", "incident": incident.name},
                )
                used = self._usage()
        # the ring's hard limit until the next check: what is left below the cap, less
        # what incidents reserved and a slack for their small files
        self.budget.set(limit - used - self.s.max_disk // SLACK_PART, mark)
        if extra:
            # room for an incident's files: old ring files and old incidents only
            self.health.disk_bytes, self.health.disk_limit_bytes = used, limit
            return ring_now
        if used + headroom > limit and not self.ring.running() and complete:
            # the newest incident alone is larger than the cap: a cap is a cap
            newest = complete[-1]
            if newest.name != self.finishing_name or self.finishing is None:
                shutil.rmtree(newest, ignore_errors=True)
                self._sizes.pop(newest.name, None)
                self.say(
                    f"deleted {newest.name}, the newest incident, to stay within "
                    "--max-disk: raise --max-disk",
                    {"type": "deleted", "incident": newest.name},
                )
                used = self._usage()
        if used + headroom > limit:
            self._room = False
            with self._ring_lock:
                if self.ring.running():
                    self.ring.stop(
                        why=f"no room left on the file system of {self.dir} (the recorder "
                        f"leaves {disk.MIN_FREE_FRACTION:.0%} of it free)"
                        if limit <= used
                        else f"{used} bytes in {self.dir}, near the cap of {limit} bytes "
                        "(--max-disk, or the file system's free space)"
                    )
        elif used + 2 * headroom < limit:
            self._room = True
        self.health.disk_bytes = used
        self.health.disk_limit_bytes = limit
        self.health.incidents_on_disk = len(disk.incidents(self.dir))
        return ring_now


def _event(now: float, event: Finding) -> dict[str, Any]:
    return {"time": now, **event.to_dict()}

"""The incident writer: the events of each sample turned into incidents
(:mod:`.incidents` decides) and each incident's evidence written into its staging
directory while it lasts.

When an incident opens: its events, the samples from before it, links to the ring
files its window covers, a sock_diag snapshot of the watched ports, its ``meta.json``;
then a worker thread writes the host bundle (if the disk guard finds room for it) and
the short trace. While it is open: each sample, new ring links, the snapshot a few
seconds after the last event. When it closes: the workers joined, the ports healed
(``--heal``), the final links and meta, and the staging directory handed to the
analysis queue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcpsleuth import safefile
from tcpsleuth.detectors.heal import ListenerPlan
from tcpsleuth.errors import EnvironmentProblem, InputError
from tcpsleuth.model.findings import Finding
from tcpsleuth.recorder import disk, freeze, healing
from tcpsleuth.recorder.analysis_queue import AnalysisQueue
from tcpsleuth.recorder.health import Health
from tcpsleuth.recorder.incidents import Decision, Incidents, Open
from tcpsleuth.recorder.ring import Ring, covering
from tcpsleuth.recorder.settings import Settings
from tcpsleuth.sources import sampling
from tcpsleuth.sources.bpf import tracer
from tcpsleuth.subprocesses import die_with_parent

# what a host bundle takes: `ss -tni` writes about 500 bytes a socket; sysctls, counters
BUNDLE_BYTES_PER_SOCKET = 600
BUNDLE_BASE_BYTES = 256 << 10


@dataclass
class Active:
    """The incident being recorded."""

    open: Open
    staging: Path
    later_taken: bool = False
    skip_bundle: bool = False
    workers: list[threading.Thread] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    most_hit: int = 0  # the most connections hit by the bug at one read, while held


class IncidentWriter:
    def __init__(
        self,
        settings: Settings,
        host: str,
        ring: Ring,
        history: deque[dict[str, Any]],
        guard: disk.Guard,
        queue: AnalysisQueue,
        health: Health,
        say: Callable[[str, dict[str, Any]], None],
        stop: threading.Event,
    ) -> None:
        self.s = settings
        self.dir = settings.directory
        self.ports = frozenset(settings.ports)
        self.host = host
        self.ring = ring
        self.history = history  # the last samples, for an incident's "before"
        self.guard = guard
        self.queue = queue
        self.health = health
        self.say = say
        self.stop = stop
        self.incidents = Incidents(settings.policy)
        self.active: Active | None = None
        self.trace_problem: str | None = None
        self.listened: set[int] = set()  # watched ports seen with a listener

    def check_trace(self) -> None:
        """Whether incidents can hold a short trace (``trace_problem`` says why not)."""
        try:
            tracer.check_environment()
        except EnvironmentProblem as problem:
            self.trace_problem = str(problem)
        if self.s.trace_s <= 0:
            self.trace_problem = "turned off (--trace 0)"

    def on_sample(
        self,
        now: float,
        events: list[Finding],
        record: dict[str, Any],
        hits: Sequence[tuple[ListenerPlan, int]] = (),
    ) -> None:
        """One sample: its events, what was read (``record``), and the listeners with
        connections the bug has hit (each with its count; read while an incident is
        open)."""
        # a watched port that had a listener and has none: the broker is down or
        # restarting, and its clients' storm is still to come; keep the incident open
        listening = {x["port"] for x in record["listeners"]}
        self.listened |= listening
        if self.listened - listening and self.incidents.hold(now) and self.active is not None:
            absent = ", ".join(map(str, sorted(self.listened - listening)))
            self._note(f"held open while port {absent} had no listener")
        # the incident is not over for the clients whose connections carry the bug's
        # shift: keep it open while they last (--heal ends them at its close instead)
        if hits and self.incidents.hold(now) and self.active is not None:
            self._held_for_hits(hits)
        self.close_if_due(now)
        decision = self.incidents.on_events(now, [e.kind for e in events])
        if decision == Decision.OPENED:
            assert self.incidents.current is not None
            self._open(self.incidents.current, events)
        elif decision == Decision.JOINED and self.active is not None:
            freeze.append_lines(
                self.active.staging / freeze.EVENTS, [_event(now, e) for e in events]
            )
        elif decision == Decision.SUPPRESSED:
            self.health.events_suppressed_total = self.incidents.suppressed
            self.say(
                f"not recorded: {self.s.policy.per_hour} incidents already in the last hour "
                "(--per-hour)",
                {"type": "suppressed", "events": len(events)},
            )
        if self.active is not None:
            self._while_open(now, record)

    def _note(self, note: str) -> None:
        assert self.active is not None
        if note not in self.active.notes:
            self.active.notes.append(note)

    def _held_for_hits(self, hits: Sequence[tuple[ListenerPlan, int]]) -> None:
        """Say once an incident that the bug's connections hold it open, with their
        most at any read."""
        assert self.active is not None
        total = sum(n for _, n in hits)
        first = self.active.most_hit == 0
        self.active.most_hit = max(self.active.most_hit, total)
        if first:
            shifts = "; ".join(
                f"{plan.local}: {n} using shift {plan.bug_wscale}, its own is {plan.own_wscale}"
                for plan, n in hits
            )
            self.say(
                f"incident {self.active.open.name} held open while connections hit by the "
                f"SYN-cookie window-scale bug remain ({shifts})",
                {
                    "type": "incident-held",
                    "incident": self.active.open.name,
                    "hit": {plan.local: n for plan, n in hits},
                },
            )

    def close_if_due(self, now: float) -> None:
        done = self.incidents.due(now)
        if done is not None and self.active is not None:
            self._close(done)

    def cut(self) -> None:
        """The recorder stops: the open incident is frozen with what it has."""
        if self.active is not None:
            done, self.incidents.current = self.active.open, None
            self.active.notes.append("the recorder was stopped before the incident's end")
            self._close(done, stopping=True)

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
        self.ring.budget.reserve(f"bundle {incident.name}", need)
        with contextlib.suppress(OSError):
            self.guard.keep(None, extra=need)
        if need > self.guard.room():
            active.skip_bundle = True
            active.notes.append("no bundle: no room for it within --max-disk")
            self.ring.budget.release(f"bundle {incident.name}")
        worker = threading.Thread(target=self._gather, args=(active,), daemon=True)
        worker.start()
        active.workers.append(worker)

    def _gather(self, active: Active) -> None:
        """The host bundle and the short trace, beside the sampling."""
        if not active.skip_bundle:
            try:
                problem = freeze.bundle(active.staging, self.s.netns, self.s.kafka_config)
            finally:
                self.ring.budget.release(f"bundle {active.open.name}")
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
        if active.most_hit:
            ports = ", ".join(map(str, self.s.ports))
            active.notes.append(
                "held open while connections hit by the SYN-cookie window-scale bug remained "
                f"(at most {active.most_hit} at once); `tcpsleuth heal --port {ports}` ends "
                "them without a restart"
            )
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
        self.queue.add(active.staging)
        if not stopping:
            self.queue.next()


def _event(now: float, event: Finding) -> dict[str, Any]:
    return {"time": now, **event.to_dict()}

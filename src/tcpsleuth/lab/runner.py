"""Run one lab scenario end to end and collect what it produced.

The run owns two namespaces (broker and clients) joined by the relay's delay link,
the broker, the client processes, a capture of the broker's side of the link, and
socket snapshots of both sides. It orchestrates and measures; it detects nothing:
``analysis`` hands what it collected to the same sources and detectors a user runs.

``_run`` calls the phases (:mod:`.phases`) in order; each registers the clean-up of
what it starts on one :class:`contextlib.ExitStack`, which undoes them, last first,
before the namespaces go. What a run is given and yields is in :mod:`.runs`.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tcpsleuth.lab import answers, healing, namespaces, phases
from tcpsleuth.lab.phases import probe_rtt, start_relay
from tcpsleuth.lab.runs import LIBRARIES, PORT, TCP_RMEM, LabSize, RunArtifacts
from tcpsleuth.lab.scenarios import Scenario

__all__ = [
    "LIBRARIES",
    "PORT",
    "TCP_RMEM",
    "LabSize",
    "RunArtifacts",
    "discard",
    "library_versions",
    "percentiles",
    "probe_rtt",
    "run_scenario",
    "start_relay",
    "temporary_workdir",
]


def library_versions() -> dict[str, str]:
    import confluent_kafka
    import kafka
    import kio

    version = confluent_kafka.version()
    return {
        # a string in recent releases, (string, int) in older ones
        "confluent-kafka": version if isinstance(version, str) else version[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "kafka-python": kafka.__version__,
        "kio": getattr(kio, "__version__", "unknown"),
    }


@contextlib.contextmanager
def _lab_namespaces() -> Iterator[tuple[str, str]]:
    with namespaces.namespace("lab-srv") as server, namespaces.namespace("lab-cli") as client:
        yield server, client


def run_scenario(
    scenario: Scenario,
    size: LabSize,
    workdir: Path,
    progress: Callable[[str, float], None] | None = None,
    broker_cmd: str | None = None,
    broker_kind: str = "lab",
    record_dir: Path | None = None,
    heal: healing.HealRun | None = None,
    kernel_told: str | None = None,
) -> RunArtifacts:
    """Run ``scenario``; ``progress(phase, fraction)`` is called as phases pass.
    ``broker_cmd`` runs the user's broker instead of the lab broker (see brokers);
    ``broker_kind`` ``kafka[:VERSION]`` runs a real Apache Kafka (see kafka_broker);
    ``record_dir``: a ``tcpsleuth record`` is attached to the broker (see recording);
    ``heal``: heal runs after the "after restart" window, which a third one follows
    (see healing; ``heal`` says the method, and is filled in); ``kernel_told``: what
    heal and the recorder are told about the kernel (RunArtifacts.kernel_told)."""

    def step(phase: str, fraction: float) -> None:
        if progress is not None:
            progress(phase, fraction)

    namespaces.require_root("tcpsleuth lab")
    workdir.mkdir(parents=True, exist_ok=True)
    artifacts = RunArtifacts(
        scenario,
        size,
        workdir,
        workdir / "broker-side.pcap",
        library_versions=library_versions(),
        heal=heal,
        kernel_told=kernel_told,
    )
    step("setting up namespaces", 0.0)
    with _lab_namespaces() as (server, client), contextlib.ExitStack() as stack:
        _run(
            scenario,
            size,
            server,
            client,
            artifacts,
            stack,
            step,
            broker_cmd,
            broker_kind,
            record_dir,
        )
    step("done", 1.0)
    return artifacts


def _run(
    scenario: Scenario,
    size: LabSize,
    server: str,
    client: str,
    artifacts: RunArtifacts,
    stack: contextlib.ExitStack,
    step: Callable[[str, float], None],
    broker_cmd: str | None,
    broker_kind: str = "lab",
    record_dir: Path | None = None,
) -> None:
    phases.tune_namespaces(scenario, server, client, artifacts)
    link_dev = phases.make_link(stack, scenario, size, server, client, artifacts)
    tcpdump = phases.start_capture(stack, server, link_dev, artifacts.capture)
    broker = phases.start_broker(
        stack, scenario, size, server, artifacts, step, broker_cmd, broker_kind
    )
    artifacts.rtt_probe_ms = probe_rtt(client)

    step("connecting clients", 0.05)
    allow = phases.allowances(scenario, size, broker, artifacts, record_dir)
    duration = size.duration_s + allow.restart + allow.record + size.after_extra_s
    if scenario.restart:
        # the storm, and the producers' queues of the outage, may hold the "after" window
        # back (answers.await_storm_passed, answers.await_drained): the clients are given
        # that time too, and told to end when the run is done
        duration += answers.STORM_PASSED_CAP_S * (2 if size.drain_outages else 1)
    clients = phases.start_clients(stack, size, client, broker, artifacts, duration)
    recorder = phases.attach_recorder(stack, record_dir, server, artifacts, step)
    if recorder is not None:
        allow.record -= recorder.ready_s  # what the clients still have in hand
    started = time.time()
    artifacts.window["start"] = started
    clock = phases.Clock(started, size.duration_s, step)
    phases.traffic(
        scenario, size, server, client, broker, artifacts, clock, allow.settle_s, clients
    )
    phases.snapshot_sockets(artifacts, server, client)
    # without heal they send until their planned end (the restart allowance may not all
    # be used), later by as long as the storm held the "after" window back
    planned_end = started + size.duration_s + allow.restart + max(0.0, allow.record)
    planned_end += artifacts.storm_extra_s
    phases.end_clients(artifacts, server, clients, step, planned_end)
    artifacts.phases_s["traffic"] = artifacts.window["end"] - started
    phases.collect(scenario, artifacts, broker, tcpdump, clients, recorder, step)


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "count": len(ordered),
        "p50": round(statistics.median(ordered), 3),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "max": round(ordered[-1], 3),
    }


def temporary_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="tcpsleuth-lab-"))


def discard(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)

"""The phases of one lab run, in the order ``runner`` calls them: the namespaces tuned,
the delay link, the capture, the broker, the clients, an attached recorder, the
traffic around the broker's restart, the socket snapshots, heal, and the collection.

Each phase that starts something registers its clean-up on the run's
:class:`contextlib.ExitStack` as it starts it, so whatever has started is undone, last
first, however the run ends.

About 560 lines: one function a phase, each short, kept together because they share
the run's artifacts and broker and read in the order they run. The windows sized by the
timed producers' answers wait through :mod:`tcpsleuth.lab.answers`.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcpsleuth.lab import (
    answers,
    faults,
    healing,
    kafka_broker,
    kafka_java,
    namespaces,
    recording,
    topology,
)
from tcpsleuth.lab.answers import Step, Wanted, await_answers, await_window
from tcpsleuth.lab.brokers import Broker, CommandBroker, LabBrokerProcess
from tcpsleuth.lab.kafka_broker import KafkaBroker
from tcpsleuth.lab.processes import Child, python_module
from tcpsleuth.lab.runs import LIBRARIES, PORT, TCP_RMEM, LabSize, RunArtifacts
from tcpsleuth.lab.scenarios import Scenario
from tcpsleuth.lab.topology import SERVER_IP4
from tcpsleuth.sources import netns, procfs, sockdiag


def _broker_metrics(broker: KafkaBroker) -> dict[str, Any]:
    """The broker's JMX request metrics, or what kept them from being read (a JVM under an
    emulated CPU can be slow to answer): the request log still has every request."""
    try:
        return broker.request_metrics()
    except OSError as exc:
        return {"error": f"the JMX exporter did not answer: {exc}"}


def _counters(ns: str) -> dict[str, int]:
    with netns.entered(ns):
        return procfs.read_live_counters()


def start_relay(client: str, server: str, rtt_ms: float, rate_mbit: float = 1000) -> Child:
    """The delay link between the two namespaces (see relay); returns once it is up."""
    relay = Child(
        python_module(
            "tcpsleuth.lab.relay",
            "--client",
            client,
            "--server",
            server,
            "--rtt-ms",
            str(rtt_ms),
            "--rate-mbit",
            str(rate_mbit),
        )
    )
    try:
        relay.wait_for(lambda line: line.strip() == "ready")
    except BaseException:
        relay.stop()
        raise
    return relay


def probe_rtt(ns: str) -> float:
    """Median TCP handshake time to the broker, from the client namespace (ms)."""
    code = (
        "import socket,time,statistics\n"
        "r=[]\n"
        "for _ in range(20):\n"
        f"    t=time.perf_counter(); s=socket.create_connection(('{SERVER_IP4}',{PORT}))\n"
        "    r.append(time.perf_counter()-t); s.close(); time.sleep(0.01)\n"
        "print(statistics.median(r)*1000)\n"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out)


def _storm_overflows(established: int, backlog: int) -> bool:
    """Storm amplification. A broker with thousands of clients gets their reconnects
    faster than one round trip can drain its SYN queue, so nearly every reconnect is
    answered with a SYN cookie (1,339 of 1,500 in the field guide's measurement). This
    machine's hundreds of clients, spread by their libraries' reconnect jitter, overflow
    a 50-entry queue only now and then. So when the clients about to reconnect outnumber
    the listen backlog, the lab answers the storm the way the large broker's kernel
    would: with cookies (tcp_syncookies=2 in the broker's namespace until the storm has
    passed). A storm that fits the backlog, or cookies switched off, is left alone.
    ``established``: the clients about to reconnect."""
    return established > backlog


def tune_namespaces(scenario: Scenario, server: str, client: str, artifacts: RunArtifacts) -> None:
    for ns in (server, client):
        namespaces.sysctl(ns, "net.ipv4.tcp_rmem", TCP_RMEM)
    namespaces.sysctl(server, "net.ipv4.tcp_syncookies", scenario.tcp_syncookies)
    namespaces.sysctl(server, "net.ipv4.tcp_timestamps", scenario.tcp_timestamps)
    namespaces.sysctl(server, "net.core.somaxconn", max(4096, scenario.listen_backlog))
    namespaces.sysctl(server, "net.ipv4.tcp_max_syn_backlog", max(2048, scenario.listen_backlog))
    with netns.entered(server):
        artifacts.server_sysctls = procfs.read_live_sysctls()


def make_link(
    stack: contextlib.ExitStack,
    scenario: Scenario,
    size: LabSize,
    server: str,
    client: str,
    artifacts: RunArtifacts,
) -> str:
    """The delay link, and the scenario's fault on it; the device the capture reads.
    netem where the kernel has it (a lab guest kernel); the user-space relay otherwise."""
    if topology.netem_link(server, client, size.rtt_ms, size.rate_mbit):
        artifacts.link, link_dev = "netem", topology.IFNAME
    else:
        relay = start_relay(client, server, size.rtt_ms, size.rate_mbit)
        stack.callback(relay.stop)
        artifacts.link, link_dev = "relay", "tun0"
    if scenario.fault == "cookie-wscale":
        faults.announce_wscale(server, PORT, 1, cookies_only=True)
    elif scenario.fault == "strip-wscale":
        faults.strip_wscale(server, PORT)
    return link_dev


def start_capture(stack: contextlib.ExitStack, server: str, link_dev: str, path: Path) -> Child:
    tcpdump = Child(
        ["tcpdump", "-i", link_dev, "-n", "-s", "128", "-U", "-w", str(path), f"tcp port {PORT}"],
        ns=server,
        merge_stderr=True,
    )
    stack.callback(tcpdump.stop)
    tcpdump.wait_for(lambda line: "listening on" in line)
    return tcpdump


def start_broker(
    stack: contextlib.ExitStack,
    scenario: Scenario,
    size: LabSize,
    server: str,
    artifacts: RunArtifacts,
    step: Step,
    broker_cmd: str | None,
    broker_kind: str,
) -> Broker:
    """The lab broker, the user's (``broker_cmd``) or a real Apache Kafka."""
    broker: Broker
    if broker_kind != "lab" and not broker_cmd:
        step("starting Apache Kafka", 0.02)
        began = time.monotonic()
        broker = kafka_broker.for_scenario(
            server, broker_kind, scenario, SERVER_IP4, PORT, artifacts.workdir / "kafka"
        )
        stack.callback(broker.close)
        artifacts.phases_s["broker_format"] = broker.timings.get("format_s", 0.0)
        artifacts.phases_s["broker_first_start"] = broker.timings.get("start_s", 0.0)
        artifacts.phases_s["broker_ready"] = time.monotonic() - began
    elif broker_cmd:
        config = {
            "host": SERVER_IP4,
            "backlog": scenario.listen_backlog,
            "rcvbuf": scenario.broker_rcvbuf,
        }
        broker = CommandBroker(server, broker_cmd, PORT, config)
    else:
        broker = LabBrokerProcess(
            server,
            [
                "--host",
                SERVER_IP4,
                "--port",
                str(PORT),
                "--backlog",
                str(scenario.listen_backlog),
                "--rcvbuf",
                str(scenario.broker_rcvbuf),
                "--accept-rate",
                str(size.accept_rate),
                "--storm-seconds",
                str(size.storm_s),
                *(["--rcvbuf-after-accept"] if scenario.rcvbuf_after_accept else []),
            ],
        )
    artifacts.broker = broker.description
    stack.callback(broker.stop)
    return broker


@dataclass
class Allowances:
    """Seconds the clients send beyond the size's phases."""

    settle_s: float  # after the broker accepts again, before the "after" window
    restart: float  # a real broker's restart and its clients' backoff
    record: float  # an attached recorder's start, heal and the windows after it


def allowances(
    scenario: Scenario,
    size: LabSize,
    broker: Broker,
    artifacts: RunArtifacts,
    record_dir: Path | None,
) -> Allowances:
    # A real broker's restart takes what it takes (its shutdown, its start), and clients
    # that backed off while it was down come back up to their longest backoff later: the
    # "after" window opens only then, and the clients keep sending long enough to fill it.
    settle_s, restart_allowance = size.settle_s, 0.0
    if isinstance(broker, KafkaBroker) and scenario.restart:
        settle_s = max(size.settle_s, broker.settle_s)
        restart_allowance = broker.restart_allowance_s + settle_s - size.settle_s
    # a recorder attached once the clients are connected may take this long to start
    record_allowance = recording.READY_S if record_dir is not None else 0.0
    # heal and the window after it: the clients are told to end when it is over
    if artifacts.heal is not None:
        record_allowance += healing.TIMEOUT_S + size.heal_settle_s + size.after_s
        record_allowance += size.after_extra_s
    return Allowances(settle_s, restart_allowance, record_allowance)


def start_clients(
    stack: contextlib.ExitStack,
    size: LabSize,
    client: str,
    broker: Broker,
    artifacts: RunArtifacts,
    duration: float,
) -> list[Child]:
    """Each library's crowd and timed producers (Kafka's Java ones with a real Kafka),
    sending for ``duration`` seconds; returns once all are ready."""
    clients = []
    for library in LIBRARIES:
        worker = Child(
            python_module(
                "tcpsleuth.lab.clients",
                "--library",
                library,
                "--bootstrap",
                f"{SERVER_IP4}:{PORT}",
                "--crowd",
                str(size.crowd if library == "confluent-kafka" else size.crowd_kafka_python),
                "--measured",
                str(size.measured),
                "--message-bytes",
                str(size.message_bytes),
                "--interval-ms",
                str(size.interval_ms),
                "--crowd-interval-s",
                str(size.crowd_interval_s),
                "--duration",
                str(duration),
                "--timeout-s",
                str(size.timeout_s),
                *(
                    ("--reconnect-backoff-max-ms", str(size.backoff_max_ms))
                    if size.backoff_max_ms is not None
                    else ()
                ),
            ),
            ns=client,
        )
        stack.callback(worker.stop)
        clients.append(worker)
    if isinstance(broker, KafkaBroker):
        artifacts.library_versions["kafka-clients"] = broker.version
        # Kafka's own Java client, with its reconnect backoff (50 ms doubling to 1 s)
        worker = Child(
            kafka_java.java_clients(
                broker.lib,
                f"{SERVER_IP4}:{PORT}",
                crowd=size.crowd_java,
                measured=size.measured,
                message_bytes=size.message_bytes,
                interval_ms=size.interval_ms,
                duration=duration,
                reconnect_backoff_ms=50,
                reconnect_backoff_max_ms=size.backoff_max_ms or 1000,
                timeout_ms=int(size.timeout_s * 1000),
                stop_file=str(stop_file(artifacts)),
            ),
            ns=client,
        )
        stack.callback(worker.stop)
        clients.append(worker)
    began = time.monotonic()
    for worker in clients:
        worker.wait_for(lambda line: '"ready"' in line)
    artifacts.phases_s["clients_ready"] = time.monotonic() - began
    return clients


def attach_recorder(
    stack: contextlib.ExitStack,
    record_dir: Path | None,
    server: str,
    artifacts: RunArtifacts,
    step: Step,
) -> recording.AttachedRecorder | None:
    if record_dir is None:
        return None
    step("starting tcpsleuth record", 0.05)
    recorder = recording.AttachedRecorder(record_dir, PORT, artifacts.kernel_told)
    stack.callback(recorder.stop)
    recorder.start(server)
    artifacts.phases_s["recorder_ready"] = recorder.ready_s
    return recorder


@dataclass
class Clock:
    """The traffic's schedule: sleeps to a moment, telling the progress meanwhile."""

    started: float
    total: float
    step: Step

    def sleep_until(self, moment: float, phase: str) -> None:
        while (now := time.time()) < moment:
            self.step(phase, 0.05 + 0.85 * (now - self.started) / self.total)
            time.sleep(min(0.25, moment - now))


def traffic(
    scenario: Scenario,
    size: LabSize,
    server: str,
    client: str,
    broker: Broker,
    artifacts: RunArtifacts,
    clock: Clock,
    settle_s: float,
    clients: list[Child],
) -> None:
    """Warm-up, the "before" window, the restart (the storm amplified where it would
    overflow), the storm and the "after" window, to 2 s before its end (sized by the
    timed producers' answers where the size asks: :func:`await_after_window`)."""
    started = clock.started
    clock.sleep_until(started + size.warmup_s, "warming up")
    artifacts.window["before_start"] = time.time()
    clock.sleep_until(started + size.warmup_s + size.before_s, "steady traffic before the restart")
    artifacts.counters_before = _counters(server)
    if scenario.restart:
        _restart(scenario, size, server, broker, artifacts)
    else:
        artifacts.window["restart"] = artifacts.window["accepting"] = time.time()
    after_start = artifacts.window["accepting"] + settle_s
    clock.sleep_until(after_start, "reconnect storm")
    if scenario.restart:
        answers.await_storm_passed(server, artifacts, clock.sleep_until)
    if "amplified" in artifacts.window:
        namespaces.sysctl(server, "net.ipv4.tcp_syncookies", scenario.tcp_syncookies)
        artifacts.window["amplified_end"] = time.time()
    if scenario.restart:
        opens = max(after_start, artifacts.window["storm_passed"])
        if size.drain_outages:
            opens = max(opens, answers.await_drained(artifacts, clients, settle_s, clock.step))
        artifacts.storm_extra_s = opens - after_start
        after_start = opens
    artifacts.window["after_start"] = after_start
    clock.sleep_until(after_start + size.after_s - 2, "steady traffic after the restart")
    if size.after_answered:
        # both ends' `ss` soon after the storm as well: the window that follows may
        # outlast the timed producers' timeouts, and a producer that gave up has
        # replaced its cookie connection by the end
        write_ss(artifacts, server, client, "-early")
        await_after_window(artifacts, clients, after_start, clock.step)


def stop_file(artifacts: RunArtifacts) -> Path:
    """The file whose creation tells the Java producers to end (see end_clients)."""
    return artifacts.workdir / "clients.stop"


def await_after_window(
    artifacts: RunArtifacts, clients: list[Child], since: float, step: Step
) -> None:
    """Hold the "after" window open until each timed producer has had
    ``size.after_answered`` requests sent in it answered, or until ``size.after_cap_s``
    after it opened (it lasts at least ``size.after_s``); then close it
    (``window["after_end"]``)."""
    artifacts.window["after_end"] = await_window(artifacts, clients, since, "after", step)
    artifacts.phases_s["after_window"] = artifacts.window["after_end"] - since


def _restart(
    scenario: Scenario, size: LabSize, server: str, broker: Broker, artifacts: RunArtifacts
) -> None:
    artifacts.window["restart"] = time.time()
    artifacts.reconnecting = answers.established_clients(server)
    if (
        size.amplify
        and scenario.tcp_syncookies == 1
        and _storm_overflows(artifacts.reconnecting, scenario.listen_backlog)
    ):
        namespaces.sysctl(server, "net.ipv4.tcp_syncookies", 2)
        artifacts.window["amplified"] = time.time()
    if isinstance(broker, KafkaBroker):
        artifacts.broker_metrics["before"] = _broker_metrics(broker)
    began = time.monotonic()
    broker.restart(size.down_s, size.startup_s)
    artifacts.window["accepting"] = time.time()
    artifacts.phases_s["restart"] = time.monotonic() - began
    if isinstance(broker, KafkaBroker):
        artifacts.phases_s["broker_stop"] = broker.timings.get("stop_s", 0.0)
        artifacts.phases_s["broker_restart_start"] = broker.timings.get("start_s", 0.0)


def write_ss(artifacts: RunArtifacts, server: str, client: str, suffix: str = "") -> None:
    """Both sides' ``ss -tni``, as ``ss-server{suffix}.txt`` and ``ss-client{suffix}.txt``
    (a trusted tool's view, for the tests to hold tcpsleuth's against)."""
    for side, ns in (("server", server), ("client", client)):
        text = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-tni"], capture_output=True, text=True, check=False
        ).stdout
        (artifacts.workdir / f"ss-{side}{suffix}.txt").write_text(text)


def snapshot_sockets(artifacts: RunArtifacts, server: str, client: str) -> None:
    """Both sides' sockets (sock_diag and ``ss -tni``) and the server's counters, near
    the end of the "after" window."""
    artifacts.server_sockets = sockdiag.snapshot(server)
    artifacts.client_sockets = sockdiag.snapshot(client)
    write_ss(artifacts, server, client)
    for name, table in (
        ("sockets-server.json", artifacts.server_sockets),
        ("sockets-client.json", artifacts.client_sockets),
    ):
        rows = [
            {
                "local": c.local,
                "remote": c.remote,
                "state": c.state,
                "snd_wscale": c.snd_wscale,
                "rcv_wscale": c.rcv_wscale,
                "snd_wnd": c.snd_wnd,
            }
            for c in table.connections
        ]
        (artifacts.workdir / name).write_text(json.dumps(rows))
    artifacts.counters_after = _counters(server)


def end_clients(
    artifacts: RunArtifacts, server: str, clients: list[Child], step: Step, planned_end: float
) -> None:
    """Heal (with ``--heal``) and the window after it, then the clients' end: they are
    told to end after heal or a window sized by answers, else at ``planned_end`` (they
    were given time for the longest storm, see ``runner``)."""
    if artifacts.heal is not None:
        _heal_phase(artifacts, server, clients, step)
    if artifacts.heal is not None or artifacts.size.after_answered:
        # their phases lasted what they lasted: the clients end now
        planned_end = time.time()
    while (now := time.time()) < planned_end:
        step("steady traffic after the restart", 0.9)
        time.sleep(min(0.25, planned_end - now))
    stop_file(artifacts).touch()  # the Java producers
    for worker in clients:
        if "tcpsleuth.lab.clients" in worker.argv:
            worker.process.send_signal(signal.SIGUSR1)
    step("waiting for the clients", 0.92)
    for worker in clients:
        # they end when their measured producers' queues are answered (or their
        # request timeout, timeout_s, has passed)
        wait = max(0.0, planned_end - time.time()) + artifacts.size.timeout_s + 60
        worker.process.wait(timeout=wait)
    artifacts.window["end"] = time.time()


def collect(
    scenario: Scenario,
    artifacts: RunArtifacts,
    broker: Broker,
    tcpdump: Child,
    clients: list[Child],
    recorder: recording.AttachedRecorder | None,
    step: Step,
) -> None:
    """The recorder's analysis, the broker's metrics, the broker and capture stopped,
    the broker's events and clients' lines written into the work directory."""
    if recorder is not None:
        step("waiting for tcpsleuth record's analysis", 0.95)
        artifacts.recorder = recorder.finish()
    if isinstance(broker, KafkaBroker):
        artifacts.broker_metrics["after" if scenario.restart else "before"] = _broker_metrics(
            broker
        )
    broker.stop()
    tcpdump.stop(signal.SIGINT)
    artifacts.broker_events = broker.events()
    artifacts.client_lines = [line for worker in clients for line in worker.json_lines()]
    for name, lines in (
        ("broker.jsonl", artifacts.broker_events),
        ("clients.jsonl", artifacts.client_lines),
    ):
        (artifacts.workdir / name).write_text("".join(json.dumps(x) + "\n" for x in lines))
    for worker in clients:
        errors = worker.errors()
        if errors.strip():
            (artifacts.workdir / "clients-stderr.txt").open("a").write(errors)


def _heal_phase(artifacts: RunArtifacts, server: str, clients: list[Child], step: Step) -> None:
    """Heal once the "after restart" window has been measured (it ends here), then the
    "after heal" window; the broker's connections with the bug's shift are counted near
    its end.

    Sized by what happened where the size asks (``after_answered``): the window opens
    once each timed producer has worked off what it queued behind the small windows (a
    request sent after heal answered within ``drained_s``; at most ``heal_settle_s``)
    and lasts until each has had ``after_answered`` requests sent in it answered (at
    least ``after_s``, at most ``after_cap_s``). Otherwise it opens ``heal_settle_s``
    after heal and lasts ``after_s``."""
    assert artifacts.heal is not None
    w, size = artifacts.window, artifacts.size
    w["after_end"] = w["heal_start"] = time.time()
    step(f"tcpsleuth heal --apply --method {artifacts.heal.method}", 0.9)
    with_kernel = artifacts.heal.kernel_status
    artifacts.heal = healing.run(
        server, PORT, artifacts.heal.method, with_kernel, artifacts.workdir
    )
    w["heal_end"] = time.time()
    if size.after_answered:
        drained = Wanted(1, size.heal_settle_s, size.drained_s)
        w["after_heal_start"] = await_answers(
            artifacts, clients, w["heal_end"], drained, "heal_settle", step
        )
        end = await_window(artifacts, clients, w["after_heal_start"], "after_heal", step)
    else:
        w["after_heal_start"] = w["heal_end"] + size.heal_settle_s
        end = w["after_heal_start"] + size.after_s
    step("traffic after heal", 0.91)
    time.sleep(max(0.0, end - 2 - time.time()))
    healing.count_after(artifacts.heal, sockdiag.snapshot(server), PORT)
    time.sleep(max(0.0, end - time.time()))
    w["after_heal_end"] = time.time()
    artifacts.phases_s["heal_settle"] = w["after_heal_start"] - w["heal_end"]
    artifacts.phases_s["after_heal_window"] = w["after_heal_end"] - w["after_heal_start"]

"""Run one lab scenario end to end and collect what it produced.

The run owns two namespaces (broker and clients) joined by the relay's delay link,
the broker, the client processes, a capture of the broker's side of the link, and
socket snapshots of both sides. It orchestrates and measures; it detects nothing:
``analysis`` hands what it collected to the same sources and detectors a user runs.

About 520 lines, most of them ``_run``: one scenario's steps in order (namespaces,
relay, capture, broker, clients, phases, collection), each undone on the way out;
cutting it into phase functions is planned, and needs the steps' clean-up kept
together.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tcpsleuth.lab import (
    faults,
    healing,
    kafka_broker,
    kafka_java,
    namespaces,
    recording,
    topology,
)
from tcpsleuth.lab.brokers import CommandBroker, LabBrokerProcess
from tcpsleuth.lab.kafka_broker import KafkaBroker
from tcpsleuth.lab.processes import Child, python_module
from tcpsleuth.lab.scenarios import Scenario
from tcpsleuth.lab.topology import SERVER_IP4
from tcpsleuth.sources import netns, procfs, sockdiag
from tcpsleuth.sources.sockdiag import SocketTable

PORT = 9092
LIBRARIES = ("confluent-kafka", "kafka-python")
# The incident's buffers: tcp_rmem[2] = 6291456 gives a window-scale shift of 7.
TCP_RMEM = "4096 131072 6291456"


@dataclass(frozen=True)
class LabSize:
    # Producers that send a small message a second. Most are librdkafka ones: C threads
    # cost this 2-core machine little, while each kafka-python producer is a Python thread
    # that would slow the measured producers down.
    crowd: int = 500  # confluent-kafka
    crowd_kafka_python: int = 50
    # Kafka's Java producers (our harness on kafka-clients), with a real Kafka broker only:
    # a JVM with one I/O thread per producer
    crowd_java: int = 20
    measured: int = 4  # producers per library whose requests are timed
    message_bytes: int = 262144  # produce requests of hundreds of KB, as in the incident
    interval_ms: float = 200
    crowd_interval_s: float = 1.0  # how often each crowd producer sends its small message
    warmup_s: float = 4
    before_s: float = 10
    down_s: float = 0  # listener closed (see LabSize)
    startup_s: float = 2  # listening but not yet accepting (logs loading)
    settle_s: float = 3  # after accepting again, before the "after" window opens
    after_s: float = 12
    rtt_ms: float = 1.0
    rate_mbit: float = 1000
    # The broker's acceptor while the reconnect storm lasts (see broker.accept_loop).
    accept_rate: float = 100
    storm_s: float = 8
    amplify: bool = True  # see _storm_overflows
    # The timed producers' request timeout (their delivery timeout twice it) and longest
    # reconnect backoff (None: each library's own; Java's is 1000 ms)
    timeout_s: float = 60
    backoff_max_ms: int | None = None
    # With --heal: after heal has ended, before the "after heal" window opens (the
    # producers work off what they queued behind the small windows); that window lasts
    # after_s
    heal_settle_s: float = 10

    @classmethod
    def small(cls) -> LabSize:
        """A reduced run for tests and CI: fewer clients, shorter phases."""
        return cls(
            crowd=300,
            crowd_kafka_python=20,
            crowd_java=10,
            measured=3,
            warmup_s=3,
            before_s=6,
            after_s=8,
        )

    @classmethod
    def guest(cls) -> LabSize:
        """For a guest kernel whose CPU QEMU emulates (some 20 times slower here):
        enough librdkafka producers that the reconnect storm overflows a backlog of 50,
        and one timed producer per library offering 1 MB/s (256 KB every 250 ms): what a
        healthy link carries easily and a 1.5 KB window at a 2 ms round trip cannot.
        Longer phases for the slower start."""
        return cls(
            crowd=56,
            crowd_kafka_python=0,
            crowd_java=0,
            measured=1,
            interval_ms=250,
            warmup_s=8,
            before_s=10,
            after_s=12,
            # measured (destroy, 2026-12-06): heal came some 60 s after the restart and
            # the producers then worked off what they had queued at about 0.7 s of
            # backlog a second: a 10 s settle measured that, not the healed connections
            heal_settle_s=120,
        )

    @classmethod
    def guest_kafka(cls) -> LabSize:
        """The guest size with a real Apache Kafka: a JVM under the emulated CPU serves
        a few tens of produce requests a second, and 56 producers sending every second
        kept it saturated (its own Produce p50 625 ms, the clients' p50 a minute before
        any restart). The crowd sends every 5 s instead (its connections still overflow
        the backlog when they all come back), the timed producers 64 KB every 250 ms
        (a window of 1 KB still makes that take seconds), and the warm-up gives the
        broker's JIT time.

        The broker is down for over a minute there (its restart under the emulated CPU),
        longer than the timed producers' 60 s timeouts and their libraries' longest
        reconnect backoff (librdkafka 10 s, kafka-python 30 s). A heavy run showed both
        escaping the storm: librdkafka's first requests after it, of messages queued
        across the restart, ran out of message time while half sent, so it dropped its
        cookie connection six times in 8 s; kafka-python's next attempt came 11 s after
        the port opened, when the storm was over. Both then sent on ordinary connections
        and the clients' p50 measured the healthy path. So the timed producers here get
        10 minute timeouts and at most 1 s between reconnect attempts (Java's default):
        the producers whose times are measured come back with the storm, as the crowd
        does, and keep the connection it gave them."""
        return replace(
            cls.guest(),
            crowd_interval_s=5.0,
            message_bytes=65536,
            warmup_s=40,
            timeout_s=600,
            backoff_max_ms=1000,
        )

    @property
    def duration_s(self) -> float:
        return (
            self.warmup_s
            + self.before_s
            + self.down_s
            + self.startup_s
            + self.settle_s
            + self.after_s
        )


@dataclass
class RunArtifacts:
    scenario: Scenario
    size: LabSize
    workdir: Path
    capture: Path
    broker_events: list[dict[str, Any]] = field(default_factory=list)
    client_lines: list[dict[str, Any]] = field(default_factory=list)
    counters_before: dict[str, int] = field(default_factory=dict)
    counters_after: dict[str, int] = field(default_factory=dict)
    server_sockets: SocketTable | None = None
    client_sockets: SocketTable | None = None
    window: dict[str, float] = field(default_factory=dict)  # phase boundaries (epoch s)
    rtt_probe_ms: float | None = None
    library_versions: dict[str, str] = field(default_factory=dict)
    server_sysctls: dict[str, str] = field(default_factory=dict)
    broker: str = ""
    amplified_for: int | None = None  # clients reconnecting when the storm was amplified
    link: str = ""  # "netem" or "relay": what delays the link
    # A real Kafka broker's own request metrics (kafka_broker.request_metrics), per phase:
    # "before" just before the restart, "after" at the end (its histograms restart with it)
    broker_metrics: dict[str, Any] = field(default_factory=dict)
    # How long each step of the run took (s): a real broker's format and starts, the
    # clients' start, the restart; what a slow (emulated) CPU makes long
    phases_s: dict[str, float] = field(default_factory=dict)
    # what `tcpsleuth record`, attached with --record, recorded (recording.finish)
    recorder: dict[str, Any] | None = None
    # with --heal: what `tcpsleuth heal --apply` did after the storm (healing.run)
    heal: healing.HealRun | None = None


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


def _storm_overflows(server: str, backlog: int) -> int | None:
    """Storm amplification. A broker with thousands of clients gets their reconnects
    faster than one round trip can drain its SYN queue, so nearly every reconnect is
    answered with a SYN cookie (1,339 of 1,500 in the field guide's measurement). This
    machine's hundreds of clients, spread by their libraries' reconnect jitter, overflow
    a 50-entry queue only now and then. So when the clients about to reconnect outnumber
    the listen backlog, the lab answers the storm the way the large broker's kernel
    would: with cookies (tcp_syncookies=2 in the broker's namespace until the storm has
    passed). A storm that fits the backlog, or cookies switched off, is left alone.
    Returns the number of clients that will reconnect when the storm overflows."""
    established = sum(
        1
        for c in sockdiag.snapshot(server, with_info=False).connections
        if c.local_port == PORT and c.state == "ESTAB"
    )
    return established if established > backlog else None


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
) -> RunArtifacts:
    """Run ``scenario``; ``progress(phase, fraction)`` is called as phases pass.
    ``broker_cmd`` runs the user's broker instead of the lab broker (see brokers);
    ``broker_kind`` ``kafka[:VERSION]`` runs a real Apache Kafka (see kafka_broker);
    ``record_dir``: a ``tcpsleuth record`` is attached to the broker (see recording);
    ``heal``: heal runs after the "after restart" window, which a third one follows
    (see healing; ``heal`` says the method, and is filled in)."""

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
    )
    stoppers: list[Callable[[], None]] = []
    step("setting up namespaces", 0.0)
    with _lab_namespaces() as (server, client):
        try:
            _run(
                scenario,
                size,
                server,
                client,
                artifacts,
                stoppers,
                step,
                broker_cmd,
                broker_kind,
                record_dir,
            )
        finally:
            for stop in reversed(stoppers):
                stop()
    step("done", 1.0)
    return artifacts


def _run(
    scenario: Scenario,
    size: LabSize,
    server: str,
    client: str,
    artifacts: RunArtifacts,
    stoppers: list[Callable[[], None]],
    step: Callable[[str, float], None],
    broker_cmd: str | None,
    broker_kind: str = "lab",
    record_dir: Path | None = None,
) -> None:
    for ns in (server, client):
        namespaces.sysctl(ns, "net.ipv4.tcp_rmem", TCP_RMEM)
    namespaces.sysctl(server, "net.ipv4.tcp_syncookies", scenario.tcp_syncookies)
    namespaces.sysctl(server, "net.ipv4.tcp_timestamps", scenario.tcp_timestamps)
    namespaces.sysctl(server, "net.core.somaxconn", max(4096, scenario.listen_backlog))
    namespaces.sysctl(server, "net.ipv4.tcp_max_syn_backlog", max(2048, scenario.listen_backlog))
    with netns.entered(server):
        artifacts.server_sysctls = procfs.read_live_sysctls()

    # netem where the kernel has it (a lab guest kernel); the user-space relay otherwise
    if topology.netem_link(server, client, size.rtt_ms, size.rate_mbit):
        artifacts.link, link_dev = "netem", topology.IFNAME
    else:
        relay = start_relay(client, server, size.rtt_ms, size.rate_mbit)
        stoppers.append(relay.stop)
        artifacts.link, link_dev = "relay", "tun0"
    if scenario.fault == "cookie-wscale":
        faults.announce_wscale(server, PORT, 1, cookies_only=True)
    elif scenario.fault == "strip-wscale":
        faults.strip_wscale(server, PORT)

    tcpdump = Child(
        [
            "tcpdump",
            "-i",
            link_dev,
            "-n",
            "-s",
            "128",
            "-U",
            "-w",
            str(artifacts.capture),
            f"tcp port {PORT}",
        ],
        ns=server,
        merge_stderr=True,
    )
    stoppers.append(tcpdump.stop)
    tcpdump.wait_for(lambda line: "listening on" in line)

    broker: LabBrokerProcess | CommandBroker | KafkaBroker
    if broker_kind != "lab" and not broker_cmd:
        step("starting Apache Kafka", 0.02)
        began = time.monotonic()
        broker = kafka_broker.for_scenario(
            server, broker_kind, scenario, SERVER_IP4, PORT, artifacts.workdir / "kafka"
        )
        stoppers.append(broker.close)
        artifacts.phases_s["broker_format"] = broker.timings.get("format_s", 0.0)
        artifacts.phases_s["broker_first_start"] = broker.timings.get("start_s", 0.0)
        artifacts.phases_s["broker_ready"] = time.monotonic() - began
    elif broker_cmd:
        broker = CommandBroker(
            server,
            broker_cmd,
            PORT,
            {
                "host": SERVER_IP4,
                "backlog": scenario.listen_backlog,
                "rcvbuf": scenario.broker_rcvbuf,
            },
        )
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
    stoppers.append(broker.stop)
    artifacts.rtt_probe_ms = probe_rtt(client)

    step("connecting clients", 0.05)
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
                str(size.duration_s + restart_allowance + record_allowance),
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
        stoppers.append(worker.stop)
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
                duration=size.duration_s + restart_allowance + record_allowance,
                reconnect_backoff_ms=50,
                reconnect_backoff_max_ms=size.backoff_max_ms or 1000,
                timeout_ms=int(size.timeout_s * 1000),
            ),
            ns=client,
        )
        stoppers.append(worker.stop)
        clients.append(worker)
    began = time.monotonic()
    for worker in clients:
        worker.wait_for(lambda line: '"ready"' in line)
    artifacts.phases_s["clients_ready"] = time.monotonic() - began
    recorder = None
    if record_dir is not None:
        step("starting tcpsleuth record", 0.05)
        recorder = recording.AttachedRecorder(record_dir, PORT)
        stoppers.append(recorder.stop)
        recorder.start(server)
        artifacts.phases_s["recorder_ready"] = recorder.ready_s
        record_allowance -= recorder.ready_s  # what the clients still have in hand
    started = time.time()
    artifacts.window["start"] = started
    total = size.duration_s

    def sleep_until(moment: float, phase: str) -> None:
        while (now := time.time()) < moment:
            step(phase, 0.05 + 0.85 * (now - started) / total)
            time.sleep(min(0.25, moment - now))

    sleep_until(started + size.warmup_s, "warming up")
    artifacts.window["before_start"] = time.time()
    sleep_until(started + size.warmup_s + size.before_s, "steady traffic before the restart")
    artifacts.counters_before = _counters(server)
    if scenario.restart:
        artifacts.window["restart"] = time.time()
        if size.amplify and scenario.tcp_syncookies == 1:
            reconnecting = _storm_overflows(server, scenario.listen_backlog)
            if reconnecting is not None:
                namespaces.sysctl(server, "net.ipv4.tcp_syncookies", 2)
                artifacts.window["amplified"] = time.time()
                artifacts.amplified_for = reconnecting
        if isinstance(broker, KafkaBroker):
            artifacts.broker_metrics["before"] = _broker_metrics(broker)
        began = time.monotonic()
        broker.restart(size.down_s, size.startup_s)
        artifacts.window["accepting"] = time.time()
        artifacts.phases_s["restart"] = time.monotonic() - began
        if isinstance(broker, KafkaBroker):
            artifacts.phases_s["broker_stop"] = broker.timings.get("stop_s", 0.0)
            artifacts.phases_s["broker_restart_start"] = broker.timings.get("start_s", 0.0)
    else:
        artifacts.window["restart"] = artifacts.window["accepting"] = time.time()
    after_start = artifacts.window["accepting"] + settle_s
    artifacts.window["after_start"] = after_start
    sleep_until(after_start, "reconnect storm")
    if "amplified" in artifacts.window:
        namespaces.sysctl(server, "net.ipv4.tcp_syncookies", scenario.tcp_syncookies)
    sleep_until(after_start + size.after_s - 2, "steady traffic after the restart")
    artifacts.server_sockets = sockdiag.snapshot(server)
    artifacts.client_sockets = sockdiag.snapshot(client)
    for name, ns in (("ss-server.txt", server), ("ss-client.txt", client)):
        text = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-tni"], capture_output=True, text=True, check=False
        ).stdout
        (artifacts.workdir / name).write_text(text)
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
    if artifacts.heal is not None:
        _heal_phase(artifacts, server, step)
        planned_end = time.time()
        for worker in clients:
            if "tcpsleuth.lab.clients" in worker.argv:  # their end (the Java ones run out)
                worker.process.send_signal(signal.SIGUSR1)
    else:
        # they send until their planned end (the restart allowance may not all be used)
        planned_end = started + size.duration_s + restart_allowance + max(0.0, record_allowance)
    step("waiting for the clients", 0.92)
    for worker in clients:
        worker.process.wait(timeout=max(0.0, planned_end - time.time()) + 120)
    artifacts.window["end"] = time.time()
    artifacts.phases_s["traffic"] = artifacts.window["end"] - started
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


def _heal_phase(artifacts: RunArtifacts, server: str, step: Callable[[str, float], None]) -> None:
    """Heal once the "after restart" window has been measured (it ends here), then the
    "after heal" window: it opens ``heal_settle_s`` after heal ended and lasts after_s;
    the broker's connections with the bug's shift are counted near its end."""
    assert artifacts.heal is not None
    w, size = artifacts.window, artifacts.size
    w["after_end"] = w["heal_start"] = time.time()
    step(f"tcpsleuth heal --apply --method {artifacts.heal.method}", 0.9)
    with_kernel = artifacts.heal.kernel_status
    artifacts.heal = healing.run(
        server, PORT, artifacts.heal.method, with_kernel, artifacts.workdir
    )
    w["heal_end"] = time.time()
    w["after_heal_start"] = w["heal_end"] + size.heal_settle_s
    step("traffic after heal", 0.91)
    time.sleep(max(0.0, w["after_heal_start"] + size.after_s - 2 - time.time()))
    healing.count_after(artifacts.heal, sockdiag.snapshot(server), PORT)
    time.sleep(max(0.0, w["after_heal_start"] + size.after_s - time.time()))
    w["after_heal_end"] = time.time()


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

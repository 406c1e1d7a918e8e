"""A real Apache Kafka broker for the lab: resolved from Maven Central, run in a namespace.

The jars come from a pinned dependency list kept in the repository
(``deploy/kafka/<version>/pom.xml``), resolved by Maven into
``~/.cache/tcpsleuth/kafka/<version>/lib`` and checked against the SHA-256 lock file
beside the pom at their first use in each process (lab/jars.py).

A broker here is a single KRaft node in combined mode (``node.id=1``, broker and
controller): its client listener on the lab's address and port, its controller
listener on the namespace's loopback. Each ``KafkaBroker`` formats its own storage in
its work directory, starts ``java -cp <jars> kafka.Kafka server.properties`` inside the
namespace (``ip netns exec``) with a small heap and the Prometheus JMX exporter agent
exposing Kafka's request metrics, and knows when the broker really accepts: 3.1.2
binds its port before it has loaded its logs, so readiness is a Kafka Metadata
request answered with this broker in it, not an open port. It is stopped as an
operator stops it (SIGTERM, a controlled shutdown) or unclean (SIGKILL, the next start
recovers its logs); the JVM dies with the process that started it, and the work
directory it made goes with it. What the broker says of its requests (its request log,
its metrics page) is read by lab/kafka_metrics.py; the Java clients that talk to it are
lab/kafka_java.py; the readiness request is lab/kafka_ready.py.

About 590 lines: a version's jars, the broker's settings as ``server.properties``, the
JVMs' class-data archives (made on the host before a guest, which cannot write them),
and ``KafkaBroker``, whose format, start, stop and restart share one process and one
work directory.

  python3 -m tcpsleuth.lab.kafka_broker resolve [VERSION]   # fetch and check the jars
  python3 -m tcpsleuth.lab.kafka_broker lock VERSION        # rewrite jars.sha256
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcpsleuth.errors import EnvironmentProblem, InputError
from tcpsleuth.lab import jars, kafka_java, kafka_metrics, namespaces
from tcpsleuth.lab.kafka_ready import metadata_brokers
from tcpsleuth.lab.processes import READY_S, Child
from tcpsleuth.sources import netns, sockdiag

VERSIONS = ("3.1.2", "4.4.0")
DEFAULT_VERSION = "4.4.0"
# The first version with socket.listen.backlog.size (KIP-764); before it the backlog is
# the JDK's default, 50, whatever server.properties says.
KIP_764 = (3, 2, 0)
DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "kafka"
# TCPSLEUTH_KAFKA_CACHE: a guest (whose HOME is its own /tmp) reads the host's cache there
CACHE = Path(os.environ.get("TCPSLEUTH_KAFKA_CACHE") or jars.CACHE_ROOT / "kafka")
CONTROLLER_PORT = 9093
METRICS_PORT = 7071
NODE_ID = 1
HEAP = "512m"
SETTLE_S = 10.0  # see KafkaBroker.settle_s

# What the JMX exporter exposes (Kafka's request metrics, network threads, acceptors).
JMX_EXPORTER_CONFIG = DEPLOY / "jmx-exporter.yaml"

LOG4J1 = """log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger={request_level}, requests
log4j.additivity.kafka.request.logger=false
log4j.appender.requests=org.apache.log4j.FileAppender
log4j.appender.requests.File={request_log}
log4j.appender.requests.layout=org.apache.log4j.PatternLayout
log4j.appender.requests.layout.ConversionPattern=[%d] %m%n
"""

LOG4J2 = """status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
appender.requests.type = File
appender.requests.name = REQUESTS
appender.requests.fileName = {request_log}
appender.requests.layout.type = PatternLayout
appender.requests.layout.pattern = [%d] %m%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.requests.name = kafka.request.logger
logger.requests.level = {request_level}
logger.requests.additivity = false
logger.requests.appenderRef.requests.ref = REQUESTS
"""


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def parse_broker(spec: str) -> str:
    """``kafka`` or ``kafka:VERSION`` (as ``--broker`` takes it) to a known version."""
    name, _, version = spec.partition(":")
    if name != "kafka":
        raise InputError(f"--broker {spec!r}: expected kafka or kafka:VERSION")
    version = version or DEFAULT_VERSION
    if version not in VERSIONS:
        raise InputError(
            f"--broker {spec!r}: no pinned dependency list for Kafka {version} "
            f"(have {', '.join(VERSIONS)}; see deploy/kafka/)"
        )
    return version


# -- the jars ----------------------------------------------------------------------------

# Libraries checked by this process already (a guest's emulated CPU hashes slowly).
_VERIFIED: set[Path] = set()


def resolve(version: str, cache: Path = CACHE) -> Path:
    """The directory of Kafka ``version``'s jars, resolved by Maven into the cache on
    first use and checked against the lock file once per process."""
    pom, lock = DEPLOY / version / "pom.xml", DEPLOY / version / jars.LOCK_NAME
    if not pom.is_file() or not lock.is_file():
        raise EnvironmentProblem(
            f"no pinned dependency list for Kafka {version} at {pom.parent} "
            "(it is in the source tree: run tcpsleuth from a checkout)"
        )
    lib = cache / version / "lib"
    if lib in _VERIFIED:
        return lib
    jars.locked(f"Kafka {version}", pom, lock, lib)
    _VERIFIED.add(lib)
    return lib


def write_lock(version: str, cache: Path = CACHE) -> Path:
    """Resolve ``version`` afresh and write its lock file (for a maintainer adding or
    changing a version; review the diff)."""
    lock = jars.write_lock(
        f"Kafka {version}",
        DEPLOY / version / "pom.xml",
        DEPLOY / version / jars.LOCK_NAME,
        f"python3 -m tcpsleuth.lab.kafka_broker lock {version}",
    )
    shutil.rmtree(cache / version / "lib", ignore_errors=True)
    return lock


# -- one broker ----------------------------------------------------------------------------


@dataclass
class KafkaSettings:
    """What the lab may change in server.properties; None leaves Kafka's default."""

    version: str = DEFAULT_VERSION
    host: str = "127.0.0.1"
    port: int = 9092
    receive_buffer: int | None = None  # socket.receive.buffer.bytes (default 102400)
    send_buffer: int | None = None  # socket.send.buffer.bytes (default 102400)
    listen_backlog: int | None = None  # socket.listen.backlog.size (4.x; 3.1.2 ignores it)
    partitions: int = 1
    request_log: bool = False  # kafka.request.logger at DEBUG: one line per request
    extra: dict[str, str] = field(default_factory=dict)
    heap: str = HEAP
    metrics_port: int = METRICS_PORT
    # Kafka's classes in a class-data archive (AppCDS), dumped by the first clean exit
    # and mapped by every later JVM: a third less start-up time here, more in a guest.
    class_archive: bool = True


def server_properties(settings: KafkaSettings, data_dir: Path) -> str:
    """A single-node KRaft broker in combined mode, as the lab runs it."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    lines = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{CONTROLLER_PORT}",
        "listeners": f"PLAINTEXT://{host}:{settings.port},CONTROLLER://127.0.0.1:{CONTROLLER_PORT}",
        "advertised.listeners": f"PLAINTEXT://{host}:{settings.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(settings.partitions),
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
    }
    if settings.receive_buffer is not None:
        lines["socket.receive.buffer.bytes"] = str(settings.receive_buffer)
    if settings.send_buffer is not None:
        lines["socket.send.buffer.bytes"] = str(settings.send_buffer)
    if settings.listen_backlog is not None:
        # Written for every version, as an operator would: 3.1.2 logs it as unknown and
        # keeps the JDK's backlog of 50.
        lines["socket.listen.backlog.size"] = str(settings.listen_backlog)
    lines.update(settings.extra)
    head = f"# tcpsleuth lab: Apache Kafka {settings.version}, KRaft, one node (combined)\n"
    return head + "".join(f"{key}={value}\n" for key, value in lines.items())


def cluster_id() -> str:
    """A random cluster id as Kafka makes it (Uuid: URL-safe base64, no padding)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):  # as Kafka's Uuid.randomUuid: not taken for an option
            return text


# the JVMs the lab starts: the storage tool (format) and the broker
ARCHIVED_MAINS = ("kafka.tools.StorageTool", "kafka.Kafka")


def class_archive_path(java: str, lib: Path, main: str) -> Path:
    """Where ``main``'s class-data archive of the jars in ``lib`` is kept: keyed by the
    JVM (a JDK update makes a new archive) and the class path."""
    jvm = Path(java).resolve()
    identity = f"{jvm}\0{jvm.stat().st_mtime_ns}\0{jars.classpath(lib)}\0{main}"
    key = hashlib.sha256(identity.encode()).hexdigest()
    return lib.parent / f"classes-{main.rsplit('.', 1)[-1]}-{key[:12]}.jsa"


def prepare_archives(version: str) -> bool:
    """Make Kafka ``version``'s class-data archives on this host if they are missing:
    one broker formatted, started and stopped in a namespace of its own. A guest maps
    the host's cache read-only and cannot dump them, and a JVM without them starts a
    third slower, much more under emulation. True if they were made now."""
    lib, java = resolve(version), jars.java()
    if all(class_archive_path(java, lib, main).is_file() for main in ARCHIVED_MAINS):
        return False
    with namespaces.namespace("archive") as ns, KafkaBroker(ns, KafkaSettings(version)) as broker:
        broker.start()
        broker.stop()
    return True


class KafkaBroker:
    """One Apache Kafka broker in namespace ``ns``; ``start`` returns once it answers.

    Its work directory (``workdir``, or a temporary one removed by ``close``) holds
    server.properties, the logging and exporter configurations, the data directory
    (formatted once, kept across restarts, so a SIGKILL makes the next start recover
    its logs), the request log if asked, and broker.log, the JVM's output of each start.
    """

    def __init__(self, ns: str, settings: KafkaSettings, workdir: Path | None = None) -> None:
        self.ns, self.settings = ns, settings
        self.version = settings.version
        self.lib = resolve(settings.version)
        self.java = jars.java()
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"tcpsleuth-kafka-{self.version}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        # TCPSLEUTH_KAFKA_DATA: a local folder for the data directory where the work
        # directory cannot hold it (a guest's shared folder, which refuses the writable
        # memory maps of Kafka's index files)
        local = os.environ.get("TCPSLEUTH_KAFKA_DATA")
        self._own_data_dir = local is not None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="kafka-data-", dir=local))
            if local is not None
            else self.workdir / "data"
        )
        self.properties = self.workdir / "server.properties"
        self.request_log = self.workdir / "request.log"
        self.child: Child | None = None
        self._archives: dict[Path, Path] = {}  # archives being dumped -> their final name
        self.log: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self.description = (
            f"Apache Kafka {self.version} (KRaft, one node), jars from deploy/kafka/{self.version}"
        )
        try:
            self._write_configs()
            self._format()
        except BaseException:
            self.close()
            raise

    @property
    def classpath(self) -> str:
        return jars.classpath(self.lib)

    @property
    def agent(self) -> Path:
        [agent] = self.lib.glob(f"{jars.AGENT_PREFIX}*.jar")
        return agent

    @property
    def has_listen_backlog_setting(self) -> bool:
        return version_tuple(self.version) >= KIP_764

    def _write_configs(self) -> None:
        self.properties.write_text(server_properties(self.settings, self.data_dir))
        level = "DEBUG" if self.settings.request_log else "WARN"
        template = LOG4J2 if version_tuple(self.version) >= (4,) else LOG4J1
        (self.workdir / "log4j.properties").write_text(
            template.format(request_level=level, request_log=self.request_log)
        )
        shutil.copyfile(JMX_EXPORTER_CONFIG, self.workdir / "jmx-exporter.yaml")

    def _jvm(self, main: str, *args: str, agent: bool = False) -> list[str]:
        logging = self.workdir / "log4j.properties"
        argv = [
            self.java,
            f"-Xmx{self.settings.heap}",
            f"-Xms{self.settings.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Xshare:auto",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{logging}",
            f"-Dlog4j2.configurationFile={logging}",
            f"-Dkafka.logs.dir={self.workdir}",
        ]
        if agent:
            config = self.workdir / "jmx-exporter.yaml"
            argv.append(
                f"-javaagent:{self.agent}={self.settings.host}:{self.settings.metrics_port}:{config}"
            )
        return [*argv, *self._class_archive(main), "-cp", self.classpath, main, *args]

    def _class_archive(self, main: str) -> list[str]:
        """The JVM options that map ``main``'s class-data archive, or that dump it at exit
        when there is none yet (kept by ``_archived`` only after a clean exit); none
        where there is no archive and its folder cannot be written (a guest reads the
        host's cache read-only: :func:`prepare_archives` makes them on the host first)."""
        if not self.settings.class_archive:
            return []
        archive = class_archive_path(self.java, self.lib, main)
        # The JMX exporter is a Java agent: the JVM dumps an archive with one only when
        # told that is fine, and maps it only when told the same.
        common = ["-XX:+UnlockDiagnosticVMOptions", "-XX:+AllowArchivingWithJavaAgent"]
        common.append("-Xlog:cds*=off")
        if archive.is_file():
            return [*common, f"-XX:SharedArchiveFile={archive}"]
        if not os.access(archive.parent, os.W_OK):
            return []
        partial = archive.with_name(f"{archive.name}.{os.getpid()}-{len(self._archives)}")
        self._archives[partial] = archive
        return [*common, f"-XX:ArchiveClassesAtExit={partial}"]

    def _archived(self, clean: bool) -> None:
        """Keep the archives a JVM that exited cleanly dumped; drop any other."""
        for partial, archive in list(self._archives.items()):
            if clean and partial.is_file() and partial.stat().st_size > 0:
                partial.replace(archive)
                # an archive of an older JDK or class path is of no use any more
                stem = archive.name.rsplit("-", 1)[0]
                for old in archive.parent.glob(f"{stem}-*.jsa"):
                    if old != archive:
                        old.unlink(missing_ok=True)
            else:
                partial.unlink(missing_ok=True)
            del self._archives[partial]

    def _format(self) -> None:
        """Format the data directory for a new cluster (kafka-storage.sh format)."""
        started = time.monotonic()
        argv = self._jvm(
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id(),
            "-c",
            str(self.properties),
        )
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
        self._archived(clean=result.returncode == 0)
        if result.returncode != 0:
            said = (result.stdout + result.stderr).strip()[-1000:]
            raise EnvironmentProblem(f"formatting Kafka {self.version}'s storage failed: {said}")
        self.timings["format_s"] = time.monotonic() - started

    # -- running ---------------------------------------------------------------------------
    def _listening(self) -> bool:
        table = sockdiag.snapshot(self.ns, ports=frozenset({self.settings.port}), with_info=False)
        return any(listener.local_port == self.settings.port for listener in table.listeners)

    def answers(self) -> bool:
        with netns.entered(self.ns):
            nodes = metadata_brokers(self.settings.host, self.settings.port)
        return nodes is not None and NODE_ID in nodes

    def start(self, timeout: float = READY_S) -> float:
        """Start the JVM and return once the broker answers Metadata with itself in it;
        the seconds that took. ``listening`` and ``accepting`` events mark the moment
        its port opened and the moment it answered."""
        if self.child is not None and self.child.process.poll() is None:
            raise RuntimeError("the broker is already running")
        started = time.monotonic()
        self.log.append({"event": "starting", "time": time.time()})
        self.child = Child(
            self._jvm("kafka.Kafka", str(self.properties), agent=True),
            ns=self.ns,
            merge_stderr=True,
        )
        deadline = started + timeout
        listening = False
        while True:
            if self.child.process.poll() is not None:
                said = "".join(self.child.all_lines).strip()[-1500:] or "no output"
                self._save_output()
                raise EnvironmentProblem(
                    f"Kafka {self.version} exited (status {self.child.process.returncode}) "
                    f"before it answered: {said}"
                )
            if not listening and self._listening():
                listening = True
                self.log.append({"event": "listening", "time": time.time()})
                self.timings["listening_s"] = time.monotonic() - started
            if listening and self.answers():
                break
            if time.monotonic() > deadline:
                self.kill()
                raise EnvironmentProblem(
                    f"Kafka {self.version} did not answer within {timeout:.0f} s "
                    f"(listening: {listening})"
                )
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        self.log.append({"event": "accepting", "time": time.time()})
        self.timings["start_s"] = elapsed
        return elapsed

    def _save_output(self) -> None:
        if self.child is not None:
            with (self.workdir / "broker.log").open("a") as out:
                out.writelines(self.child.all_lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = READY_S / 2) -> float:
        """SIGTERM: the controlled shutdown an operator's restart does; SIGKILL: an unclean
        one, after which the next start recovers the logs. Returns the seconds it took."""
        if self.child is None or self.child.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.child.stop(sig, timeout=timeout)
        elapsed = time.monotonic() - started
        self.log.append(
            {
                "event": "stopped",
                "time": time.time(),
                "signal": signal.Signals(sig).name,
                "status": self.child.process.returncode,
            }
        )
        self.timings["stop_s"] = elapsed
        # a JVM that ended on SIGTERM exits with 143 after its shutdown hooks
        self._archived(clean=sig == signal.SIGTERM and self.child.process.returncode in (0, 143))
        self._save_output()
        return elapsed

    def kill(self) -> None:
        self.stop(signal.SIGKILL, timeout=10)

    @property
    def restart_allowance_s(self) -> float:
        """A generous bound on a restart's time (SIGTERM to answering again) with hundreds
        of clients reconnecting, from how long the first start took: 3.1.2 takes some 6 s
        to shut down, 4.x about 1 s, and a start under the storm several times longer.
        Where the children's start-up allowance is raised (READY_S, in a guest under an
        emulated CPU) it is at least a third of that: there 3.1.2's controlled shutdown
        took 80 s, its start under the storm 63 s, and the clients got ready 45 s apart."""
        floor = READY_S / 3 if READY_S > 120 else 0.0
        return max(floor, 15.0 + 3 * self.timings.get("start_s", 10.0))

    @property
    def settle_s(self) -> float:
        """How long after the broker accepts again its clients may take to come back:
        librdkafka's longest reconnect backoff (reconnect.backoff.max.ms, 10 s), which
        clients reach while a real broker is down for seconds."""
        return SETTLE_S

    def restart(self, down_s: float = 0.0, startup_s: float = 0.0, unclean: bool = False) -> None:
        """Restart as an operator does: stop (SIGTERM, or SIGKILL when ``unclean``), wait
        ``down_s``, start and wait until it answers. ``startup_s`` is ignored: a real
        broker takes the time it takes to load its logs (see ``timings``)."""
        self.stop(signal.SIGKILL if unclean else signal.SIGTERM)
        time.sleep(down_s)
        self.start()

    def metrics(self, timeout: float = READY_S / 20) -> str:
        """The JMX exporter's page (Prometheus text), read from inside the namespace."""
        url = f"http://{self.settings.host}:{self.settings.metrics_port}/metrics"
        if ":" in self.settings.host:
            url = f"http://[{self.settings.host}]:{self.settings.metrics_port}/metrics"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with netns.entered(self.ns), opener.open(url, timeout=timeout) as response:
            return response.read().decode()

    def request_metrics(self, request: str = "Produce") -> dict[str, dict[str, float]]:
        """Kafka's own view of ``request``s since the JVM started (its histograms restart
        with it): count, mean, p50, p99 and max of each part of the request time (ms)."""
        return kafka_metrics.request_metrics(self.metrics(), request)

    def events(self) -> list[dict[str, Any]]:
        return self.log

    def close(self) -> None:
        """Kill the JVM if it still runs and remove a work directory this made."""
        self.kill()
        self._archived(clean=False)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> KafkaBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def for_scenario(
    ns: str, spec: str, scenario: Any, host: str, port: int, workdir: Path
) -> KafkaBroker:
    """The real broker ``--broker kafka[:VERSION]`` asks for, set up for a lab scenario
    and answering. Kafka sets SO_RCVBUF only on its listener, so a scenario that emulates
    the pre-fix kernel (``rcvbuf_after_accept``) gets an unlocked listener
    (socket.receive.buffer.bytes=-1): its sockets use shift 7 while the cookie SYN-ACKs
    are rewritten to announce 1. Settings the scenario leaves at Kafka's defaults are
    not written."""
    version = parse_broker(spec)
    if scenario.rcvbuf_after_accept:
        receive_buffer: int | None = -1
    else:
        receive_buffer = None if scenario.broker_rcvbuf == 102400 else scenario.broker_rcvbuf
    backlog = None if scenario.listen_backlog == 50 else scenario.listen_backlog
    settings = KafkaSettings(
        version=version,
        host=host,
        port=port,
        receive_buffer=receive_buffer,
        listen_backlog=backlog,
        request_log=True,
    )
    broker = KafkaBroker(ns, settings, workdir)
    notes = []
    if receive_buffer is not None:
        notes.append(f"socket.receive.buffer.bytes={receive_buffer}")
    if backlog is not None:
        notes.append(
            f"socket.listen.backlog.size={backlog}"
            + ("" if broker.has_listen_backlog_setting else " (ignored before KIP-764: 50)")
        )
    if notes:
        broker.description += "; " + ", ".join(notes)
    try:
        broker.start()
    except BaseException:
        broker.close()
        raise
    return broker


def main() -> None:
    parser = argparse.ArgumentParser(description="Apache Kafka for tcpsleuth's lab.")
    commands = parser.add_subparsers(dest="command", required=True)
    resolve_cmd = commands.add_parser("resolve", help="fetch (Maven) and check the jars")
    resolve_cmd.add_argument("versions", nargs="*", default=list(VERSIONS))
    lock_cmd = commands.add_parser("lock", help="rewrite a version's jars.sha256")
    lock_cmd.add_argument("version", choices=VERSIONS)
    args = parser.parse_args()
    try:
        if args.command == "resolve":
            for version in args.versions:
                lib = resolve(parse_broker(f"kafka:{version}"))
                print(f"Kafka {version}: {len(list(lib.glob('*.jar')))} jars checked in {lib}")
                built = kafka_java.harness(lib)
                print(f"Kafka {version}: Java produce harness compiled in {built}")
        else:
            print(f"wrote {write_lock(args.version)}")
    except InputError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()

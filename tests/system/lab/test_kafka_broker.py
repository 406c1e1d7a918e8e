"""A real Apache Kafka broker (jars resolved by Maven from deploy/kafka) in a namespace.

The kernel's view (``ss -ltm``) proves the preconditions of the incident on the real
broker: its listener's receive buffer locked at 2 x 102400 and its backlog, 50 on
3.1.2 whatever server.properties asks (before KIP-764), the asked size on 4.x (capped
by the namespace's somaxconn). Real producers (librdkafka and kafka-python) produce
to it, and the broker's own request metrics, read through the JMX exporter, count
their produce requests. Nothing is left behind: no JVM, no namespace.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from support.capabilities import needs_jdk

from tcpsleuth.lab import jars, kafka_broker, kafka_java, namespaces
from tcpsleuth.lab.kafka_broker import KafkaBroker, KafkaSettings
from tcpsleuth.lab.kafka_metrics import metric_values
from tcpsleuth.sources import procfs

pytestmark = needs_jdk

HOST, PORT = "127.0.0.1", 9092
SOMAXCONN = 4096

PRODUCE = textwrap.dedent(
    """
    import sys
    library, bootstrap, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if library == "confluent-kafka":
        from confluent_kafka import Producer
        acked = []
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        for i in range(count):
            producer.produce(topic, b"x" * 1000, on_delivery=lambda e, m: acked.append((e, m)))
        assert producer.flush(60) == 0
        assert [error for error, _ in acked] == [None] * count, acked
        offsets = [message.offset() for _, message in acked]
    else:
        from kafka import KafkaProducer
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        futures = [producer.send(topic, b"x" * 1000) for _ in range(count)]
        offsets = [future.get(timeout=60).offset for future in futures]
        producer.close()
    print(max(offsets))
    """
)


def _listener(ns: str, port: int) -> tuple[int, int]:
    """(backlog, skmem rb) of the listener on ``port``, as `ss -ltm` shows them."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-Hltmn", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields = out.split()
    backlog = int(fields[2])  # State Recv-Q Send-Q: for a listener, Send-Q is the backlog
    match = re.search(r"skmem:\(r\d+,rb(\d+),", out)
    assert match, out
    return backlog, int(match.group(1))


def _produce(ns: str, library: str, topic: str, count: int) -> int:
    """Produce ``count`` records with acks=all; the offset of the last one."""
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", PRODUCE]
    result = subprocess.run(
        [*argv, library, f"{HOST}:{PORT}", topic, str(count)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


def _java_produce(ns: str, version: str, records: int) -> dict[str, float]:
    argv = kafka_java.java_producer(
        kafka_broker.resolve(version),
        f"{HOST}:{PORT}",
        "lab",
        records,
        1000,
        reconnect_backoff_ms=50,
        reconnect_backoff_max_ms=1000,
    )
    result = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    return kafka_java.producer_performance_summary(result.stdout)


def _jvms_using(workdir: Path) -> list[int]:
    """Processes whose command line names the broker's work directory."""
    wanted = str(workdir).encode()
    return [pid for pid, cmdline in procfs.processes("cmdline") if wanted in cmdline]


def _produce_count(broker: KafkaBroker) -> float:
    values = metric_values(
        broker.metrics(), "kafka_network_request_total_time_ms_count", request="Produce"
    )
    assert len(values) == 1, values
    return values[0]


def _run_broker(
    tmp_path: Path, version: str, listen_backlog: int, expected_backlog: int
) -> dict[str, float]:
    began = time.monotonic()
    with namespaces.namespace("kafka") as ns:
        assert ns.startswith(namespaces.PREFIX)
        namespaces.sysctl(ns, "net.core.somaxconn", SOMAXCONN)
        settings = KafkaSettings(
            version=version, host=HOST, port=PORT, listen_backlog=listen_backlog
        )
        broker = KafkaBroker(ns, settings, workdir=tmp_path / "broker")
        try:
            startup = broker.start()
            assert "socket.listen.backlog.size=1024\n" in broker.properties.read_text()
            assert "socket.receive.buffer.bytes" not in broker.properties.read_text()
            # the kernel's view: Kafka's default SO_RCVBUF (102400) locked on the
            # listener before bind, doubled by the kernel; and its backlog
            assert _listener(ns, PORT) == (expected_backlog, 2 * 102400)
            # a real Kafka Metadata answer came before start returned; the broker's own
            # request metrics start empty and count the real producers' requests
            assert _produce_count(broker) == 0
            assert _produce(ns, "confluent-kafka", "lab", 5) == 4
            assert _produce(ns, "kafka-python", "lab", 5) == 9
            # and Kafka's own Java producer (kafka-clients), with its reconnect settings
            java = _java_produce(ns, version, 50)
            assert java["records"] == 50 and java["p50_ms"] >= 0
            assert _produce_count(broker) >= 3
            mean = metric_values(
                broker.metrics(), "kafka_network_request_total_time_ms_mean", request="Produce"
            )
            assert mean and mean[0] > 0
            pid = broker.child.process.pid if broker.child else -1
            stop = broker.stop(signal.SIGTERM)
            assert broker.events()[-1]["signal"] == "SIGTERM"
            assert not Path(f"/proc/{pid}").exists()
            assert "shut down completely" in (broker.workdir / "broker.log").read_text()
        finally:
            broker.close()
        assert _jvms_using(broker.workdir) == []
    assert ns not in namespaces.owned()
    return {"start_s": startup, "stop_s": stop, "total_s": time.monotonic() - began}


def test_kafka_3_1_2_keeps_backlog_50_and_locks_the_receive_buffer(tmp_path: Path) -> None:
    # asked for 1024, as an operator would: 3.1.2 accepts the setting and ignores it
    timings = _run_broker(tmp_path, "3.1.2", listen_backlog=1024, expected_backlog=50)
    print("kafka 3.1.2", timings)


def test_kafka_4_listen_backlog_setting_reaches_the_kernel(tmp_path: Path) -> None:
    timings = _run_broker(
        tmp_path, "4.4.0", listen_backlog=1024, expected_backlog=min(1024, SOMAXCONN)
    )
    print("kafka 4.4.0", timings)


def test_kafka_unclean_restart_recovers_its_logs(tmp_path: Path) -> None:
    """SIGKILL, as a crashed broker: the next start (same storage) finds no clean
    shutdown marker, recovers its logs and keeps the records it had acknowledged."""
    with namespaces.namespace("kafka") as ns:
        broker = KafkaBroker(ns, KafkaSettings(version="3.1.2", host=HOST, port=PORT))
        try:
            broker.start()
            assert _produce(ns, "confluent-kafka", "lab", 5) == 4
            broker.restart(unclean=True)
            restarted = "".join(broker.child.all_lines) if broker.child else ""
            assert "since no clean shutdown file was found" in restarted
            assert [e["event"] for e in broker.events()][-4:] == [
                "stopped",
                "starting",
                "listening",
                "accepting",
            ]
            assert broker.events()[-4]["signal"] == "SIGKILL"
            assert _produce(ns, "confluent-kafka", "lab", 5) == 9
            workdir = broker.workdir
        finally:
            broker.close()
        assert not workdir.exists()  # a work directory it made itself goes with it
        assert _jvms_using(workdir) == []
    assert ns not in namespaces.owned()


def test_resolve_checks_every_jar_against_the_lock_file(tmp_path: Path) -> None:
    """A cached jar that differs from the lock file is noticed and replaced by Maven's
    (from its local repository: no download); a jar nobody locked is refused."""
    lib = kafka_broker.resolve("3.1.2")
    cache = tmp_path / "cache"
    shutil.copytree(lib, cache / "3.1.2" / "lib")
    lock = kafka_broker.DEPLOY / "3.1.2" / jars.LOCK_NAME
    tampered = cache / "3.1.2" / "lib" / "kafka-clients-3.1.2.jar"
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    (cache / "3.1.2" / "lib" / "extra.jar").write_bytes(b"PK")
    problems = jars.verify(cache / "3.1.2" / "lib", lock)
    assert len(problems) == 2
    assert any(p.startswith("kafka-clients-3.1.2.jar: sha256") for p in problems)
    assert "not in the lock file: extra.jar" in problems
    fresh = kafka_broker.resolve("3.1.2", cache=cache)
    assert fresh == cache / "3.1.2" / "lib"
    assert jars.verify(fresh, lock) == []
    assert not (fresh / "extra.jar").exists()


def test_server_properties_leave_kafkas_defaults_unless_asked(tmp_path: Path) -> None:
    default = kafka_broker.server_properties(KafkaSettings(version="3.1.2"), tmp_path)
    assert "process.roles=broker,controller\n" in default
    assert "node.id=1\n" in default
    assert "socket.receive.buffer.bytes" not in default
    assert "socket.listen.backlog.size" not in default
    asked = kafka_broker.server_properties(
        KafkaSettings(version="4.4.0", receive_buffer=-1, listen_backlog=4096), tmp_path
    )
    assert "socket.receive.buffer.bytes=-1\n" in asked
    assert "socket.listen.backlog.size=4096\n" in asked


def _in_a_read_only_view(folder: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Python ``code`` run with ``folder`` mounted read-only (a mount namespace of its
    own, as a guest sees the host's cache)."""
    script = 'mount --bind -o ro "$0" "$0" && exec "$1" -c "$2"'
    argv = ["unshare", "--mount", "sh", "-c", script, str(folder), sys.executable, code]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def test_class_archives_are_made_on_the_host_for_a_guest_that_cannot_write_them(
    tmp_path: Path,
) -> None:
    """A guest reads the host's cache read-only: its JVMs dump no archive there (the
    first heavy run on a fresh machine failed on exactly that, EROFS), and the host
    makes the archives before the guest boots."""
    version = "3.1.2"
    lib, java = kafka_broker.resolve(version), jars.java()
    archives = [kafka_broker.class_archive_path(java, lib, m) for m in kafka_broker.ARCHIVED_MAINS]
    aside = tmp_path / "aside"
    aside.mkdir()
    for archive in archives:  # a fresh machine's cache: none yet
        if archive.exists():
            shutil.move(archive, aside / archive.name)
    probe = (
        "from pathlib import Path; from tcpsleuth.lab.kafka_broker import KafkaBroker, "
        "KafkaSettings; b = object.__new__(KafkaBroker); "
        f"b.settings = KafkaSettings({version!r}); b.java = {java!r}; "
        f"b.lib = Path({str(lib)!r}); b._archives = {{}}; "
        "print(b._class_archive('kafka.Kafka'))"
    )
    before = _in_a_read_only_view(lib.parent, probe)
    assert before.returncode == 0, before.stderr
    assert before.stdout.strip() == "[]"  # nothing to map, nowhere to dump
    assert kafka_broker.prepare_archives(version) is True
    assert all(archive.stat().st_size > 0 for archive in archives)
    assert kafka_broker.prepare_archives(version) is False  # made once
    after = _in_a_read_only_view(lib.parent, probe)
    assert f"-XX:SharedArchiveFile={archives[1]}" in after.stdout, after.stderr
    assert namespaces.owned() == []

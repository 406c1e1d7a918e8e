"""The audit knows which Kafka it audits: before 3.2.0 (KIP-764) a broker has no
``socket.listen.backlog.size`` and listens with backlog 50 whatever the file says.

The version comes from the running broker's class path (the broker jar,
``kafka_2.13-3.1.2.jar``) or from ``--kafka-version``; the live test starts the lab's
real Kafka 3.1.2 with ``socket.listen.backlog.size=500`` and checks the kernel's view
(``ss -ltm``: backlog 50) against the audit's finding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from support.capabilities import needs_jdk

from tcpsleuth.detectors.kafka import kafka_findings
from tcpsleuth.lab import namespaces
from tcpsleuth.lab.kafka_broker import KafkaBroker, KafkaSettings
from tcpsleuth.model.records import HostSnapshot, kafka_release
from tcpsleuth.sources.kafkaconfig import read_kafka_config
from tcpsleuth.sources.kafkaprocess import broker_from_cmdline, running_brokers

HOST, PORT = "127.0.0.1", 9092


def _audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "audit", *args],
        env={**os.environ, "COLUMNS": "400"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _properties(tmp_path: Path, backlog: int | None) -> Path:
    path = tmp_path / "server.properties"
    lines = ["listeners=PLAINTEXT://127.0.0.1:9092"]
    if backlog is not None:
        lines.append(f"socket.listen.backlog.size={backlog}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _kinds(findings: list[dict[str, object]]) -> list[object]:
    return [f["kind"] for f in findings]


def test_kafka_release_reads_apache_versions_only() -> None:
    assert kafka_release("3.1.2") == (3, 1, 2)
    assert kafka_release("3.2") == (3, 2, 0)
    assert kafka_release("4.4.0-rc1") == (4, 4, 0)
    assert kafka_release("7.1.0-ccs") is None  # Confluent numbers its builds apart
    assert kafka_release("kafka") is None
    assert kafka_release(None) is None


def test_version_from_the_class_path_of_a_broker_command_line(tmp_path: Path) -> None:
    libs = "/opt/kafka/libs"
    argv = [
        "/usr/lib/jvm/java-17/bin/java",
        "-Xmx1G",
        "-cp",
        f"{libs}/kafka-clients-3.1.2.jar:{libs}/kafka_2.13-3.1.2.jar:{libs}/zstd-jni-1.5.0-4.jar",
        "kafka.Kafka",
        "/etc/kafka/server.properties",
    ]
    broker = broker_from_cmdline(1, argv, proc=tmp_path)
    assert broker is not None
    assert broker.version == "3.1.2" and broker.config == "/etc/kafka/server.properties"
    # 4.x names its broker jar kafka-server-X too; a wildcard entry lists its directory
    (tmp_path / "libs").mkdir()
    for name in ("kafka-server-4.4.0.jar", "kafka-clients-4.4.0.jar"):
        (tmp_path / "libs" / name).write_bytes(b"PK")
    wildcard = ["java", "-cp", f"{tmp_path}/libs/*", "kafka.Kafka", "server.properties"]
    found = broker_from_cmdline(2, wildcard, proc=tmp_path)
    assert found is not None and found.version == "4.4.0"
    # not a broker: another Java program, or no main class of Kafka's
    tools = ["java", "-cp", argv[3], "org.apache.kafka.tools.ProducerPerformance"]
    assert broker_from_cmdline(3, tools, proc=tmp_path) is None
    assert broker_from_cmdline(4, ["python3", "kafka.Kafka"], proc=tmp_path) is None


@pytest.mark.parametrize(
    ("version", "backlog", "ignored", "effective"),
    [
        ("3.1.2", 500, True, 50),
        ("3.2.0", 500, False, 500),
        ("4.4.0", 500, False, 500),
        (None, 500, False, 500),  # unknown: the setting is taken at its word
        ("3.1.2", None, False, 50),  # nothing set, nothing ignored
    ],
)
def test_the_backlog_setting_is_ignored_before_kip_764(
    tmp_path: Path, version: str | None, backlog: int | None, ignored: bool, effective: int
) -> None:
    kafka = replace(read_kafka_config(_properties(tmp_path, backlog)), version=version)
    assert kafka.effective_listen_backlog == effective
    snapshot = HostSnapshot(
        origin="test",
        hostname="broker-1",
        kernel_release="6.1.0",
        sysctls={},
        counters={},
        listeners=None,
        connections=None,
    )
    findings = kafka_findings(replace(snapshot, kafka_config=kafka))
    found = [f for f in findings if f.kind == "kafka-listen-backlog-ignored"]
    assert bool(found) == ignored
    if found:
        assert found[0].evidence["effective_listen_backlog"] == 50
        assert found[0].evidence["kafka_version"] == "3.1.2"


def test_kafka_version_option(tmp_path: Path) -> None:
    config = _properties(tmp_path, 500)
    told = _audit("--kafka-config", str(config), "--kafka-version", "3.1.2", "--format", "json")
    document = json.loads(told.stdout)
    assert told.returncode == 1, told.stderr
    assert "kafka-listen-backlog-ignored" in _kinds(document["findings"])
    assert document["kafka"]["version"] == "3.1.2"
    assert document["kafka"]["version_source"] == "--kafka-version"
    assert document["kafka"]["effective_listen_backlog"] == 50
    newer = _audit("--kafka-config", str(config), "--kafka-version", "3.2.0", "--format", "json")
    assert "kafka-listen-backlog-ignored" not in _kinds(json.loads(newer.stdout)["findings"])
    for bad in (["--kafka-version", "three"], ["--kafka-version", "3.1.2"]):
        args = ["--kafka-config", str(config)] if bad[1] == "three" else []
        result = _audit(*args, *bad)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 3


@needs_jdk
def test_audit_of_the_real_kafka_3_1_2_says_the_backlog_setting_has_no_effect(
    tmp_path: Path,
) -> None:
    with namespaces.namespace("kaudit") as ns:
        namespaces.sysctl(ns, "net.core.somaxconn", 4096)
        settings = KafkaSettings(version="3.1.2", host=HOST, port=PORT, listen_backlog=500)
        with KafkaBroker(ns, settings, workdir=tmp_path / "broker") as broker:
            broker.start()
            assert "socket.listen.backlog.size=500\n" in broker.properties.read_text()
            # the kernel's view: ss -ltm shows the listener's backlog (Send-Q) and its
            # locked receive buffer
            ss = subprocess.run(
                ["ip", "netns", "exec", ns, "ss", "-Hltmn", f"( sport = :{PORT} )"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert int(ss.split()[2]) == 50, ss
            assert "rb204800," in ss
            pid = broker.child.process.pid if broker.child else -1
            [mine] = [b for b in running_brokers() if b.pid == pid]
            assert mine.version == "3.1.2"
            # the audit finds the broker by its server.properties, reads its version from
            # its class path, and says the setting does nothing on it
            result = _audit(
                "--netns", ns, "--kafka-config", str(broker.properties), "--format", "json"
            )
            assert result.returncode == 1, result.stderr
            document = json.loads(result.stdout)
            assert document["kafka"]["version"] == "3.1.2"
            assert document["kafka"]["version_source"] == f"class path of pid {pid}"
            assert document["kafka"]["honours_listen_backlog_size"] is False
            [finding] = [
                f for f in document["findings"] if f["kind"] == "kafka-listen-backlog-ignored"
            ]
            assert finding["evidence"]["socket_listen_backlog_size"] == 500
            assert "has no effect on Kafka 3.1.2" in finding["summary"]
            [listener] = [x for x in document["listeners"] if x["listener"].endswith(":9092")]
            assert listener["backlog"] == 50
            assert "somaxconn-caps-backlog" not in _kinds(document["findings"])
            table = _audit("--netns", ns, "--kafka-config", str(broker.properties))
            assert "has no effect on Kafka 3.1.2" in " ".join(table.stdout.split())
    assert ns not in namespaces.owned()

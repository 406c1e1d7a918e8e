"""Java Kafka clients for the lab: Kafka's own producer benchmark and our produce-latency
harness, both on the kafka-clients of a pinned Kafka version.

``java_producer`` is the command line of kafka-tools' ProducerPerformance (the
producer most Kafka users run, measured by Kafka's own tool); ``java_clients`` is that
of our harness (deploy/kafka/harness), which speaks ``tcpsleuth.lab.clients``' options
and JSON lines so the lab measures Java producers beside librdkafka and kafka-python.
The harness is compiled by javac against the version's kafka-clients on first use and
kept in the cache under the hash of its source.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.lab import jars

HARNESS_SOURCE = Path(__file__).resolve().parents[3] / "deploy" / "kafka" / "harness"
HARNESS_MAIN = "ProduceLatency"


def java_producer(
    lib: Path,
    bootstrap: str,
    topic: str,
    records: int,
    record_size: int,
    throughput: float = -1,
    **props: str | int,
) -> list[str]:
    """The command line of Kafka's own Java producer benchmark (kafka-tools'
    ProducerPerformance, kafka-clients underneath) from the Kafka jars in ``lib``
    (``kafka_broker.resolve``), to run in a namespace. ``props``
    are producer settings, as ``reconnect_backoff_max_ms=1000`` for
    ``reconnect.backoff.max.ms``."""
    settings = {"bootstrap.servers": bootstrap, "acks": "all"}
    settings.update({key.replace("_", "."): str(value) for key, value in props.items()})
    return [
        jars.java(),
        "-Xmx256m",
        "-Xshare:auto",
        "-Dlog4j.configuration=file:/dev/null",
        "-cp",
        jars.classpath(lib),
        "org.apache.kafka.tools.ProducerPerformance",
        *("--topic", topic, "--num-records", str(records)),
        *("--record-size", str(record_size), "--throughput", f"{throughput:g}"),
        "--producer-props",
        *(f"{key}={value}" for key, value in settings.items()),
    ]


def producer_performance_summary(output: str) -> dict[str, float]:
    """The last summary line ProducerPerformance prints ("N records sent, R records/sec
    (M MB/sec), A ms avg latency, X ms max latency, P ms 50th, ... 99.9th."), as
    records, records_per_s, avg_ms, max_ms, p50_ms, p95_ms, p99_ms and p999_ms."""
    for line in reversed(output.splitlines()):
        if " records sent, " not in line or "50th" not in line:
            continue
        numbers = [float(n) for n in re.findall(r"(\d+(?:\.\d+)?)\s", line.replace(",", " "))]
        keys = ("records", "records_per_s", "avg_ms", "max_ms", "p50_ms", "p95_ms", "p99_ms")
        values = dict(zip(keys, [numbers[0], numbers[1], *numbers[3:8]], strict=True))
        found = re.search(r"(\d+(?:\.\d+)?) ms 99\.9th", line)
        values["p999_ms"] = float(found.group(1)) if found else float("nan")
        return values
    raise ValueError("no ProducerPerformance summary line in its output")


def harness(lib: Path) -> Path:
    """The directory of our Java produce-latency harness, compiled by javac against the
    kafka-clients in ``lib`` (a version's resolved jars) on first use and kept beside
    them under the hash of its source (older builds are removed)."""
    sources = sorted(HARNESS_SOURCE.glob("*.java"))
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    out = lib.parent / f"harness-{digest.hexdigest()[:12]}"
    if (out / f"{HARNESS_MAIN}.class").is_file():
        return out
    javac = jars.javac()
    [clients] = lib.glob("kafka-clients-*.jar")
    fresh = Path(tempfile.mkdtemp(prefix="harness-", dir=out.parent))
    try:
        result = subprocess.run(
            [javac, "-nowarn", "-cp", str(clients), "-d", str(fresh), *map(str, sources)],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if result.returncode != 0:
            raise EnvironmentProblem(
                f"javac could not compile {HARNESS_SOURCE}: {result.stderr.strip()[-1500:]}"
            )
        for name in ("log4j.properties", "log4j2.properties"):
            shutil.copyfile(HARNESS_SOURCE / name, fresh / name)
        for old in out.parent.glob("harness-*"):
            if old != fresh:
                shutil.rmtree(old, ignore_errors=True)
        fresh.rename(out)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return out


def java_clients(lib: Path, bootstrap: str, heap: str = "256m", **options: str | int) -> list[str]:
    """The command line of our Java producers (on the Kafka jars in ``lib``): the
    options of ``tcpsleuth.lab.clients`` (crowd, measured, message_bytes, interval_ms,
    duration) and timeout_ms, reconnect_backoff_ms, reconnect_backoff_max_ms; the same
    JSON lines."""
    compiled = harness(lib)
    return [
        jars.java(),
        f"-Xmx{heap}",
        "-Xshare:auto",
        "-XX:TieredStopAtLevel=1",
        f"-Dlog4j.configuration=file:{compiled / 'log4j.properties'}",
        f"-Dlog4j2.configurationFile={compiled / 'log4j2.properties'}",
        "-cp",
        jars.classpath(lib, compiled),
        HARNESS_MAIN,
        "--bootstrap",
        bootstrap,
        *(
            item
            for key, value in options.items()
            for item in (f"--{key.replace('_', '-')}", str(value))
        ),
    ]

"""`tcpsleuth lab run --broker kafka:3.1.2`: the incident on a real Apache Kafka broker.

On this host's fixed kernel the window-scale mismatch is emulated (the real broker's
listener unlocked with socket.receive.buffer.bytes=-1, cookie SYN-ACKs rewritten),
and the report says so. What the real broker adds: its own request log and metrics,
which stay healthy while its clients' produce latency climbs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import run_tcpsleuth

from tcpsleuth.lab import namespaces
from tcpsleuth.lab.kafka_broker import logged_requests

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(
        shutil.which("java") is None or shutil.which("mvn") is None,
        reason="needs a JDK and Maven (scripts/install.sh installs them)",
    ),
]


def _jvms_using(path: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(path) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_wscale_bug_on_real_kafka_3_1_2(tmp_path: Path) -> None:
    keep = tmp_path / "keep"
    began = time.monotonic()
    result = run_tcpsleuth(
        "lab",
        "run",
        "wscale-bug",
        "--broker",
        "kafka:3.1.2",
        "--size",
        "small",
        "--keep",
        str(keep),
        "--format",
        "json",
    )
    elapsed = time.monotonic() - began
    assert result.returncode in (0, 1), result.stderr[-2000:]
    [run] = json.loads(result.stdout)["runs"]
    print(f"lab run wscale-bug --broker kafka:3.1.2: {elapsed:.0f} s")

    assert run["broker"].startswith("Apache Kafka 3.1.2")
    assert "socket.receive.buffer.bytes=-1" in run["broker"]
    assert "listener is left unlocked" in run["broker_note"]
    kept = keep / "wscale-bug"
    properties = (kept / "kafka" / "server.properties").read_text()
    assert "socket.receive.buffer.bytes=-1\n" in properties
    assert "socket.listen.backlog.size" not in properties  # the scenario keeps Kafka's 50
    # the broker was restarted as an operator does it, and came back
    events = [json.loads(line) for line in (kept / "broker.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == [
        *("starting", "listening", "accepting", "stopped"),
        *("starting", "listening", "accepting", "stopped"),
    ]
    assert {e["signal"] for e in events if e["event"] == "stopped"} == {"SIGTERM"}

    # the incident, as the clients and the kernel see it
    assert run["counters"]["during_restart"]["TcpExtSyncookiesSent"] > 0
    latency = run["latency_ms"]
    assert latency["after"]["p50"] >= 10 * latency["before"]["p50"], latency
    mismatches = [
        f
        for f in json.loads((kept / "report.json").read_text())["findings"]
        if f["kind"] == "wscale-mismatch" and "actual_wscale" in f["evidence"]
    ]
    assert {
        (f["evidence"]["announced_wscale"], f["evidence"]["actual_wscale"]) for f in mismatches
    } == {(1, 7)}

    # ... and as the broker sees it: its own Produce times, per phase from its request
    # log, stay within a few times the baseline while the clients' p50 grows tenfold
    own = run["broker_latency_ms"]
    assert own["before"]["produce_total"]["count"] > 100
    assert own["after"]["produce_total"]["count"] > 0
    assert own["after"]["produce_total"]["p99"] <= 5 * max(own["before"]["produce_total"]["p99"], 1)
    # both libraries came back to the restarted broker (librdkafka's client id: rdkafka)
    accepting = events[6]["time"]
    after = logged_requests(kept / "kafka" / "request.log")
    assert {r.client_id.split("-")[0] for r in after if r.received > accepting} >= {
        "rdkafka",
        "kafka",
        "java",  # our Java harness's producers (kafka-clients)
    }
    # Kafka's Java producer, timed per request by our harness, in each phase
    for phase in ("before", "after"):
        java = latency[phase]["by_library"]["kafka-clients"]
        assert java["count"] >= 5 and java["p50"] > 0 and java["p99"] >= java["p50"], java
    print(
        "kafka-clients",
        {p: latency[p]["by_library"]["kafka-clients"] for p in latency if p != "p50_ratio"},
    )
    # its JMX request metrics (the exporter), read before the restart and at the end
    metrics = run["broker_metrics"]
    assert metrics["before"]["TotalTimeMs"]["count"] > 100
    assert metrics["after"]["TotalTimeMs"]["count"] > 0  # counted afresh since the restart

    assert _jvms_using(kept / "kafka") == []
    assert not [n for n in namespaces.owned() if n.startswith("tcpsleuth-lab")]

"""The whole incident with nothing emulated, and its end: `lab run wscale-bug --kernel
prefix --broker kafka --heal`. A real Apache Kafka broker (its listener's SO_RCVBUF at
Kafka's default, socket.receive.buffer.bytes unset) in the pre-fix guest kernel, real
clients, the real bug; then `tcpsleuth heal --apply` ends the connections it hit, as an
operator would instead of restarting the broker again (issue 27), with the broker's own
Produce times beside its clients' in each phase. One guest boot for both: the guest's
CPU is emulated (TCG), so JVMs start in minutes and the run takes some 40 minutes: the
heavy tier (`pytest -m heavy`), not CI.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support.capabilities import needs_jdk
from support.lab_checks import answered, broker_looks_healthy, healed
from test_lab_kernel import _mismatch_shifts, _shift, _tcpsleuth, lab_kernels  # noqa: F401

from tcpsleuth.lab.runner import TCP_RMEM

pytestmark = [pytest.mark.heavy, needs_jdk]


def test_the_incident_on_real_kafka_in_the_prefix_kernel(
    lab_kernels: dict[str, object],  # noqa: F811
    tmp_path: Path,
) -> None:
    keep = tmp_path / "keep"
    began = time.monotonic()
    result = _tcpsleuth(
        "lab",
        "run",
        "wscale-bug",
        "--kernel",
        "prefix",
        "--broker",
        "kafka:3.1.2",
        "--heal",
        "--heal-method",
        "destroy",
        "--keep",
        str(keep),
        "--format",
        "json",
        timeout=5400,
    )
    elapsed = time.monotonic() - began
    assert result.returncode == 1, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    [run] = doc["runs"]
    print(
        f"guest run {elapsed:.0f} s ({doc['guest']['accel']}, {doc['guest']['memory']}); "
        f"phases {run['phases_s']}; clients {run['latency_ms']}; "
        f"broker {run['broker_latency_ms']}; shifts {run['shifts']}; "
        f"findings {run['findings_by_kind']}; heal {json.dumps(run['heal'])}"
    )
    # nothing emulated: the real kernel, Kafka's own SO_RCVBUF on its listener
    assert run["kernel"]["name"] == "prefix" and run["kernel"]["fault_emulated"] is False
    assert run["emulation"] is None and run["settings"]["fault"] == "none"
    assert run["broker"].startswith("Apache Kafka 3.1.2")
    properties = (keep / "wscale-bug" / "kafka" / "server.properties").read_text()
    assert "socket.receive.buffer.bytes" not in properties
    # SYN cookies after the restart; both ends' sockets and the capture show the
    # disagreement (announced 1 from the locked 102400, used 7 from tcp_rmem)
    assert run["counters"]["during_restart"]["TcpExtSyncookiesSent"] > 0
    announced, used = _shift(102400), _shift(int(TCP_RMEM.split()[2]))
    assert (announced, used) == (1, 7)
    assert _mismatch_shifts(doc) == {("sockets", announced, used), ("capture", announced, used)}
    assert "rwnd-limited" in run["findings_by_kind"]
    # the contradiction: the clients' p50 ten times the baseline or more, the broker's
    # own Produce times as before (support.lab_checks.broker_looks_healthy)
    latency = run["latency_ms"]
    assert not run["short_phases"], run["short_phases"]  # each said in one line
    answered(latency, "before", "after")
    assert latency["after"]["p50"] >= 10 * latency["before"]["p50"], latency
    own = run["broker_latency_ms"]
    assert own["before"]["produce_total"]["count"] > 10
    broker_looks_healthy(run)
    for phase in ("broker_format", "broker_first_start", "clients_ready", "restart", "traffic"):
        assert run["phases_s"][phase] > 0, phase
    # heal ended the incident on the real broker, its clients back to their baseline
    healed(run, "destroy", json.loads((keep / "wscale-bug" / "heal.json").read_text()))
    # kafka-clients counted what it sent, beside librdkafka and kafka-python
    assert set(run["heal"]["lost_by_library"]) == {
        "confluent-kafka",
        "kafka-python",
        "kafka-clients",
    }
    # the broker's own Produce times beside its clients', per phase: its request log's
    # figures, and after heal within a few times its baseline as they were all along
    figures = run["heal"]["broker_ms"]
    for phase, name in (
        ("before", "before"),
        ("after_restart", "after"),
        ("after_heal", "after_heal"),
    ):
        for key in ("p50", "p99"):
            assert figures[key][phase] == own[name]["produce_total"][key], (phase, key)
    assert own["after_heal"]["produce_total"]["count"] > 0
    assert figures["p50"]["after_heal"] <= 5 * max(figures["p50"]["before"], 1), figures

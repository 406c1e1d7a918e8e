"""`tcpsleuth lab run --broker kafka:3.1.2`: the incident on a real Apache Kafka broker.

On this host's fixed kernel the window-scale mismatch is emulated (the real broker's
listener unlocked with socket.receive.buffer.bytes=-1, cookie SYN-ACKs rewritten),
and the report says so. What the real broker adds: its own request log and metrics,
which stay healthy while its clients' produce latency climbs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import run_tcpsleuth
from support.capabilities import needs_jdk
from support.lab_checks import broker_looks_healthy

from tcpsleuth.lab import analysis, namespaces
from tcpsleuth.lab.kafka_metrics import logged_requests

pytestmark = needs_jdk


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
        if f["kind"] == "wscale-mismatch" and f["evidence"]["socket_wscale"] is not None
    ]
    assert {
        (f["evidence"]["announced_wscale"], f["evidence"]["actual_wscale"]) for f in mismatches
    } == {(1, 7)}

    # ... and as the broker sees it: its own Produce times, per phase from its request
    # log, stay near the baseline while the clients' p50 grows tenfold
    own = run["broker_latency_ms"]
    assert own["before"]["produce_total"]["count"] > 100
    broker_looks_healthy(run)
    # both libraries came back to the restarted broker (librdkafka's client id: rdkafka)
    accepting = events[6]["time"]
    after = logged_requests(kept / "kafka" / "request.log")
    assert {r.client_id.split("-")[0] for r in after if r.received > accepting} >= {
        "rdkafka",
        "kafka",
        "java",  # our Java harness's producers (kafka-clients)
    }
    # Kafka's Java producer, timed per request by our harness, in each phase; after the
    # restart it sends few when each request waits (the incident): 3 in the after
    # window with a p50 of 55.9 s in one CI run, none in another (each of the 3
    # producers waited from before the window to the end on a request sent during the
    # restart), so there few must mean slow, and none must mean stuck
    lines = [json.loads(x) for x in (kept / "clients.jsonl").read_text().splitlines()]
    java = [x for x in lines if x["library"] == "kafka-clients"]
    timed = [x for x in java if x["type"] in ("latency", "pending")]
    before = latency["before"]["by_library"]["kafka-clients"]
    assert before["count"] >= 5 and before["p50"] > 0 and before["p99"] >= before["p50"], before
    after = latency["after"]["by_library"].get("kafka-clients")
    if after is None:
        start = run["window"]["after_start"]
        waiting = {
            x["producer"]
            for x in timed
            if x["sent"] < start <= x["sent"] + x.get("latency_ms", x.get("waited_ms", 0)) / 1e3
        }
        assert waiting == {x["producer"] for x in timed}, (waiting, start)
    else:
        assert after["p50"] > 0 and after["p99"] >= after["p50"], after
        assert after["count"] >= 5 or after["p50"] >= 10 * before["p50"], (before, after)
    print(
        "kafka-clients",
        {p: latency[p]["by_library"].get("kafka-clients") for p in latency if p != "p50_ratio"},
    )
    # the harness counts what its timed producers sent and had acknowledged (what heal's
    # `lost` reads), and its counts agree with its own per-request lines
    counts = [x for x in java if x["type"] == "counts"]
    assert len(counts) == run["size"]["measured"], counts
    assert sum(c["sent"] for c in counts) == len(timed) > 0
    assert sum(c["acknowledged"] for c in counts) == sum(
        1 for x in timed if x["type"] == "latency" and x["error"] is None
    )
    assert sum(c["lost"] for c in counts) == sum(
        1 for x in timed if x["type"] == "pending" or x["error"] is not None
    )
    # its JMX request metrics (the exporter), read before the restart and at the end
    metrics = run["broker_metrics"]
    assert metrics["before"]["TotalTimeMs"]["count"] > 100
    assert metrics["after"]["TotalTimeMs"]["count"] > 0  # counted afresh since the restart

    assert _jvms_using(kept / "kafka") == []
    assert not [n for n in namespaces.owned() if n.startswith("tcpsleuth-lab")]


def _what_happened(run: dict) -> dict:
    """What a run's report says of its restart, for a failure's message: the kernel's
    counts, how long each step took, and the timed producers' latency by phase."""
    counters = run["counters"]["during_restart"]
    return {
        "counters": {k: v for k, v in counters.items() if "Syncookies" in k or "Listen" in k},
        "phases_s": run.get("phases_s"),
        "shifts": run.get("shifts"),
        "storm_amplification": run.get("storm_amplification"),
        "drained": run.get("drained"),
        "window": run.get("window"),
        "latency": {
            phase: {k: v for k, v in stats.items() if k != "by_library"}
            for phase, stats in run["latency_ms"].items()
            if isinstance(stats, dict)
        },
    }


# The mitigations that are Kafka's own settings: socket.listen.backlog.size (KIP-764) and
# socket.receive.buffer.bytes=-1. The kernel's (tcp_syncookies=0, a fixed kernel) do
# not depend on the broker: tests/system/lab/test_lab.py::test_mitigations has them.
MITIGATIONS = ("big-backlog", "rcvbuf-unlocked")
MITIGATED = 10  # a mitigation's p50 after the restart is at most the incident's / this


def test_mitigations_on_real_kafka_4(tmp_path: Path) -> None:
    """Each of Kafka's own mitigations on a real Kafka 4.4.0 (socket.listen.backlog.size
    exists there) leaves every connection's ends on one shift and keeps the clients'
    produce p50 after the restart a tenth of the incident's at most (the incident's is
    thousands of times the baseline's); in the incident the broker's own Produce times
    stay low."""
    began = time.monotonic()
    result = run_tcpsleuth(
        "lab",
        "run",
        "baseline",
        "wscale-bug",
        *MITIGATIONS,
        "--broker",
        "kafka:4.4.0",
        "--size",
        "small",
        "--format",
        "json",
        timeout=1800,  # four runs of a real broker: about 5 minutes here, more under load
    )
    assert result.returncode == 1, result.stderr[-2000:]
    doc = json.loads(result.stdout)
    matrix = doc["mitigations"]
    print(f"mitigations on kafka 4.4.0: {time.monotonic() - began:.0f} s")
    rows = {row["scenario"]: row for row in matrix["runs"]}
    assert list(rows) == ["baseline", "wscale-bug", *MITIGATIONS]
    assert matrix["baseline_p50_ms"] > 0 and rows["baseline"]["vs_baseline"] == 1.0
    bug = rows["wscale-bug"]
    print("wscale-bug", bug["p50_after_ms"], bug["vs_baseline"], bug["by_library"])
    assert bug["vs_baseline"] >= 10 and bug["near_baseline"] is False, bug
    runs = {run["scenario"]: run for run in doc["runs"]}
    for name in MITIGATIONS:
        row, run = rows[name], runs[name]
        print(name, row["p50_after_ms"], row["vs_baseline"], row["by_library"])
        print(name, json.dumps(_what_happened(run)))
        # the cause is gone: every connection's ends use one shift
        shifts = run["shifts"]
        assert shifts["client_snd_wscale"] == shifts["server_rcv_wscale"], shifts
        # the producers worked off what they queued in the outage before the "after"
        # window opened (under the bug they did not: below)
        assert run["drained"] is True, _what_happened(run)
        # and the effect: far from the incident's. Not "near the baseline" (printed,
        # not asserted): the baseline does not restart, while a mitigation's "after"
        # window follows a JVM just restarted; on this 2-core host, with the window
        # opening a fixed 10 s after the broker accepted, that ranged from 0.8x to 79x
        # the baseline (2026-12-07) and once 650x, the queue of an 18 s outage still
        # going out (2026-12-08)
        assert row["p50_after_ms"] * MITIGATED <= bug["p50_after_ms"], (row, bug)
        assert set(row["by_library"]) == {"confluent-kafka", "kafka-python", "kafka-clients"}
    # big-backlog reached Kafka 4.4.0's listener: no cookies in its storm
    assert runs["big-backlog"]["counters"]["during_restart"]["TcpExtSyncookiesSent"] == 0
    assert runs["wscale-bug"]["counters"]["during_restart"]["TcpExtSyncookiesSent"] > 0
    assert runs["wscale-bug"]["drained"] is False, _what_happened(runs["wscale-bug"])
    # in the incident the broker's own Produce times stay as before the restart, while
    # its clients' p50 is thousands of times the baseline's
    broker_looks_healthy(runs["wscale-bug"])
    # the table shows the same matrix
    from tcpsleuth.reports import table
    from tcpsleuth.reports.labview import render_runs

    console = table.console()
    with console.capture() as captured:
        console.print(render_runs(doc["runs"], analysis.mitigations(doc["runs"])))
    text = captured.get()
    assert "Mitigations: clients' produce p50 after the restart" in text
    assert "rcvbuf-unlocked" in text and "kafka-clients" in text
    assert not [n for n in namespaces.owned() if n.startswith("tcpsleuth-lab")]

"""`lab run --heal` on this host: the heal phase's plumbing (heal after the "after
restart" window, a third window after it, the producers' own counts of what they lost).
This host's kernel has the fix, so heal finds nothing to end here; the real bug is in
tests/system/lab/test_lab_heal_guest.py (heavy tier)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tcpsleuth.lab import analysis, healing
from tcpsleuth.lab.runner import LabSize, RunArtifacts
from tcpsleuth.lab.scenarios import SCENARIOS
from tcpsleuth.recorder.healing import TEST_KERNEL_ENV
from tcpsleuth.reports import table
from tcpsleuth.reports.labview import _heal_parts as render_runs_heal
from tcpsleuth.reports.labview import render_runs


def _artifacts() -> RunArtifacts:
    return RunArtifacts(SCENARIOS["wscale-bug"], LabSize.small(), Path("/nonexistent"), Path("x"))


def test_lost_is_what_the_producers_counted_as_not_acknowledged() -> None:
    artifacts = _artifacts()
    assert analysis.lost(artifacts) is None  # no producer reported: unknown, not 0
    artifacts.client_lines = [
        {"type": "counts", "library": "a", "producer": 0, "sent": 10, "acknowledged": 10,
         "failed": 0, "pending": 0, "lost": 0},
        {"type": "counts", "library": "b", "producer": 0, "sent": 9, "acknowledged": 6,
         "failed": 2, "pending": 1, "lost": 3},
    ]  # fmt: skip
    lost = analysis.lost(artifacts)
    assert lost is not None and lost["lost"] == 3
    assert lost["by_library"]["b"] == {
        "sent": 9, "acknowledged": 6, "failed": 2, "pending": 1, "lost": 3
    }  # fmt: skip


def test_hit_after_counts_the_bug_shift_of_healable_listeners_only() -> None:
    from tcpsleuth.model.records import TcpConnection
    from tcpsleuth.sources.sockdiag import SocketTable

    def conn(port: int, rcv: int, state: str = "ESTAB") -> TcpConnection:
        return TcpConnection("10.0.0.1", port, "10.0.0.2", 40000, state, rcv_wscale=rcv)

    table_ = SocketTable(
        [], [conn(9092, 7), conn(9092, 1), conn(9092, 7, "CLOSE-WAIT"), conn(9093, 7)]
    )
    heal = healing.HealRun("destroy", None)
    healing.count_after(heal, table_, 9092)
    assert heal.hit_after is None  # heal said nothing: not counted
    heal.document = {"listeners": [{"healable": True, "bug_wscale": 7}]}
    healing.count_after(heal, table_, 9092)
    assert heal.hit_after == 1 and heal.shifts_after == {"1": 1, "7": 1}
    heal.document = {"listeners": [{"healable": False, "bug_wscale": 7, "own_wscale": 1}]}
    healing.count_after(heal, table_, 9092)
    assert heal.hit_after == 1  # not healable, still hit
    heal.document = {"listeners": [{"healable": False, "bug_wscale": 7, "own_wscale": 7}]}
    healing.count_after(heal, table_, 9092)
    assert heal.hit_after == 0


def test_the_brokers_own_produce_times_stand_beside_heals(tmp_path: Path) -> None:
    """With a real Kafka the heal summary carries the broker's own Produce p50 and p99
    of each phase, the request log's figures (broker_latency), and the table says them."""
    artifacts = _artifacts()
    artifacts.heal = healing.HealRun("destroy", "affected", status=0, document={})

    def phase(p50: float, p99: float) -> dict[str, object]:
        return {"produce_total": {"count": 9, "p50": p50, "p99": p99}}

    own = {"before": phase(2.0, 9.0), "after": phase(3.0, 21.0), "after_heal": phase(2.5, 8.0)}
    lat = {"before": {"p50": 90.0}, "after": {"p50": 9000.0}, "after_heal": {"p50": 95.0}}
    summary = analysis.heal(artifacts, lat, own)
    assert summary is not None
    assert summary["broker_ms"] == {
        "p50": {"before": 2.0, "after_restart": 3.0, "after_heal": 2.5},
        "p99": {"before": 9.0, "after_restart": 21.0, "after_heal": 8.0},
    }
    assert analysis.heal(artifacts, lat) is not None  # the lab's broker: no figures
    console = table.console()
    run = {"scenario": "wscale-bug", "heal": summary}
    with console.capture() as shown:
        for part in render_runs_heal([run]):
            console.print(part)
    assert "2.0 / 9.0, 3.0 / 21.0, 2.5 / 8.0" in shown.get()


def test_heal_refuses_the_users_broker_command() -> None:
    """--heal with --broker-cmd: one line, exit 2 (its clients are not the lab's)."""
    result = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "lab", "run", "wscale-bug", "--heal",
         "--broker-cmd", "true"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--broker-cmd" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_heal_phase_on_the_fixed_kernel_ends_nothing(tmp_path: Path) -> None:
    """The lab's fixed-kernel storm (listener locked, cookies sent, every connection on
    the listener's own shift), with heal told the kernel is affected so that the
    listener is healable: heal runs after the "after restart" window, ends nothing
    (exit 0), and the third window is measured like the others."""
    keep = tmp_path / "keep"
    result = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "lab", "run", "fixed-kernel", "--heal",
         "--heal-method", "destroy", "--size", "small", "--keep", str(keep), "--format", "json"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, TEST_KERNEL_ENV: "affected"},
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-2000:]
    [run] = json.loads(result.stdout)["runs"]
    heal, latency, w = run["heal"], run["latency_ms"], run["window"]
    assert run["counters"]["during_restart"]["TcpExtSyncookiesSent"] > 0
    document = json.loads((keep / "fixed-kernel" / "heal.json").read_text())
    [listener] = document["listeners"]
    assert listener["healable"] and (listener["own_wscale"], listener["bug_wscale"]) == (1, 7)
    assert heal["exit_status"] == 0 and heal["error"] is None and heal["refused"] is None
    assert (heal["hit"], heal["ended"], heal["came_back"], heal["hit_after"]) == (0, 0, 0, 0)
    assert heal["broker_ms"] is None  # the lab's broker keeps no request log
    assert heal["shifts_after"] == {"1": sum(heal["shifts_after"].values())}
    # the producers' own counts: everything they sent was acknowledged
    for counts in heal["lost_by_library"].values():
        assert counts["sent"] > 20 and counts["acknowledged"] == counts["sent"]
    assert heal["lost"] == 0
    # the phases in order, the "after restart" window ending where heal starts
    assert w["after_start"] < w["after_end"] == w["heal_start"] < w["heal_end"]
    assert w["heal_end"] < w["after_heal_start"] < w["after_heal_end"] <= w["end"]
    # the same figures as the latency table, and a third window measured like the others
    assert heal["p50_ms"] == {
        "before": latency["before"]["p50"],
        "after_restart": latency["after"]["p50"],
        "after_heal": latency["after_heal"]["p50"],
    }
    assert latency["after_heal"]["count"] > 20
    assert set(latency["after_heal"]["by_library"]) == {"confluent-kafka", "kafka-python"}
    assert heal["p50_ms"]["after_heal"] <= 2 * heal["p50_ms"]["before"]
    console = table.console()
    with console.capture() as shown:
        console.print(render_runs([run]))
    assert "Heal after the restart storm" in shown.get()

"""What ``tcpsleuth record`` costs: CPU of the recorder and everything it started
(tcpdump, the trace, the analysis child), while idle beside many established
connections, and over the minute of a reconnect storm it records.

    sudo python3 bench/bench_record.py [--connections 5000] [--storm 3000] [--seconds 30]

Runs in a network namespace of its own (removed at the end). CPU is read from
/proc/PID/stat: the recorder's own time, its live children's, and what its reaped
children used (cutime, cstime).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from tcpsleuth.lab import namespaces  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
FARM = REPO / "tests" / "support" / "conn_farm.py"


def _stat(pid: int) -> tuple[int, int, int]:
    """(own ticks, reaped children's ticks, parent pid)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]), int(fields[1])


def cpu_seconds(root: int) -> float:
    """CPU of ``root`` and all its descendants, live and reaped."""
    total = 0
    parents: dict[int, int] = {}
    own: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                mine, reaped, parent = _stat(int(entry.name))
            except (OSError, IndexError):
                continue
            parents[int(entry.name)] = parent
            own[int(entry.name)] = (mine, reaped)
    for pid in own:
        p = pid
        while p in parents and p != root and p > 1:
            p = parents[p]
        if p == root:
            total += own[pid][0] + (own[pid][1])
    return total / TICK


def measure(pid: int, seconds: float) -> float:
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--storm", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    results: dict[str, object] = {"cores": os.cpu_count()}
    with namespaces.namespace("bench-rec") as ns, tempfile.TemporaryDirectory() as scratch:
        idle = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(FARM), "--port", "9093",
             "--backlog", "8192", "--clients", str(args.connections)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert idle.stdout is not None and idle.stdout.readline().startswith("ready")
        recorder = subprocess.Popen(
            [sys.executable, "-m", "tcpsleuth", "record", "--port", "9092", "--port", "9093",
             "--dir", f"{scratch}/rec", "--netns", ns, "--format", "json", "--after", "10",
             "--merge", "10"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert recorder.stdout is not None
        while '"ready"' not in recorder.stdout.readline():
            pass
        time.sleep(3)
        results["idle_cpu_percent"] = round(100 * measure(recorder.pid, args.seconds), 2)
        results["idle_connections"] = args.connections
        storm = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(FARM), "--port", "9092",
             "--backlog", "50", "--clients", str(args.storm), "--storm"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        start_cpu, start = cpu_seconds(recorder.pid), time.monotonic()
        assert storm.stdout is not None and storm.stdout.readline().startswith("ready")
        report = None
        while report is None and time.monotonic() - start < 180:
            line = recorder.stdout.readline()
            if '"report"' in line or '"analysis-failed"' in line:
                report = json.loads(line)
        spent = cpu_seconds(recorder.pid) - start_cpu
        results["storm_clients"] = args.storm
        results["storm_to_report_seconds"] = round(time.monotonic() - start, 1)
        results["storm_cpu_seconds"] = round(spent, 2)
        results["storm_cpu_percent_over_that_time"] = round(
            100 * spent / (time.monotonic() - start), 1
        )
        results["report"] = report
        assert storm.stdin is not None and idle.stdin is not None
        storm.stdin.close()
        idle.stdin.close()
        recorder.terminate()
        recorder.wait(timeout=60)
        storm.wait(timeout=30)
        idle.wait(timeout=30)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""tcpsleuth record and report: the incident policy and the payload cut on their own,
then the recorder live in namespaces: a storm it was told nothing about, its disk cap,
SIGKILL, and the lab's incident (``wscale-bug``) and a quiet run (``baseline``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, SUPPORT, default_signals, nstat_in
from support.lab_checks import check_incident_against_ss

from tcpsleuth.detectors.capture.run import analyse_stream
from tcpsleuth.lab import namespaces
from tcpsleuth.model.incident import IncidentReport
from tcpsleuth.recorder import schema
from tcpsleuth.recorder.capture import copy_window, kept_length
from tcpsleuth.recorder.children import processes_naming
from tcpsleuth.recorder.incidents import Incidents, Policy
from tcpsleuth.sources import sockdiag
from tcpsleuth.sources.pcap import open_capture

STORM = REPO / "tests" / "data" / "storm-prefix" / "server.pcap"


# --- the policy and the cut, without root ---------------------------------------------


def test_events_close_together_are_one_incident_and_the_hour_has_a_limit() -> None:
    incidents = Incidents(Policy(before_s=10, after_s=20, merge_s=60, max_s=300, per_hour=2))
    assert incidents.on_events(1000, ["syn-cookies-rate"]) == "opened"
    assert incidents.on_events(1050, ["listen-overflows-rate"]) == "joined"  # 50 s later
    assert incidents.due(1100) is None  # 50 s after the last event: still open
    assert incidents.current is not None
    assert incidents.current.window(incidents.policy) == (990, 1070)
    done = incidents.due(1110)  # 60 s without an event
    assert done is not None and done.events == 2
    assert done.kinds == ["syn-cookies-rate", "listen-overflows-rate"]
    assert incidents.on_events(1200, ["syn-cookies-rate"]) == "opened"
    # a storm that never stops: closed 300 s after its first event
    for t in range(1210, 1510, 10):
        assert incidents.on_events(t, ["syn-cookies-rate"]) in ("joined", "none")
        incidents.due(t)
    assert incidents.current is None
    # the third incident within the hour is not recorded
    assert incidents.on_events(1600, ["syn-cookies-rate"]) == "suppressed"
    assert incidents.suppressed == 1
    assert incidents.on_events(1000 + 3600 + 1, ["syn-cookies-rate"]) == "opened"


def test_an_outage_holds_its_incident_open_until_the_storm() -> None:
    """A broker that stops (an event), stays down longer than merge_s and comes back
    to a storm: one incident while its listener is absent, bounded by max_s."""
    policy = Policy(before_s=10, after_s=20, merge_s=60, max_s=300, per_hour=6)
    incidents = Incidents(policy)
    assert incidents.on_events(1000, ["listen-overflows-rate"]) == "opened"
    for t in range(1010, 1200, 10):  # 190 s without a listener, no event
        assert incidents.hold(t)
        assert incidents.due(t) is None
    assert incidents.on_events(1200, ["syn-cookies-rate"]) == "joined"
    current = incidents.current
    assert current is not None and current.kinds == ["listen-overflows-rate", "syn-cookies-rate"]
    # without the hold the same events are two incidents
    plain = Incidents(policy)
    plain.on_events(1000, ["listen-overflows-rate"])
    assert plain.due(1100) is not None
    assert plain.on_events(1200, ["syn-cookies-rate"]) == "opened"
    # held for ever, it still closes max_s after its first event
    assert not incidents.hold(1301)
    assert incidents.due(1300) is not None
    assert not incidents.hold(1310)  # nothing open: nothing to hold


def _sasl_packet() -> bytes:
    """An Ethernet/IPv4/TCP segment to port 9092 carrying a Kafka SaslAuthenticate
    request (api key 36) with PLAIN credentials right after its header."""
    client_id = b"producer-1"
    credentials = b"\x00alice\x00s3cret-pw"
    body = struct.pack("!i", len(credentials)) + credentials
    header = struct.pack("!hhih", 36, 2, 7, len(client_id)) + client_id
    kafka = struct.pack("!i", len(header) + len(body)) + header + body
    tcp = struct.pack("!HHIIBBHHH", 40000, 9092, 1, 1, 5 << 4, 0x18, 502, 0, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(kafka), 1, 0, 64, 6, 0,
        bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]),
    )  # fmt: skip
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp + kafka


def test_the_cut_drops_credentials_and_keeps_the_kafka_header(tmp_path: Path) -> None:
    packet = _sasl_packet()
    keep, removed = kept_length(packet, 1, frozenset({9092}))
    assert keep == 14 + 20 + 20 + 14 + len("producer-1")  # headers and the Kafka header
    assert removed == len(packet) - keep
    assert kept_length(packet, 1, frozenset({9093}))[0] == 14 + 20 + 20  # not our port
    source = tmp_path / "sasl.pcap"
    source.write_bytes(
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
        + struct.pack("<IIII", 1_700_000_000, 0, len(packet), len(packet))
        + packet
    )
    cut = tmp_path / "cut.pcap"
    counts = copy_window([source], cut, 0, 2e9, frozenset({9092}), True, 1 << 20)
    assert counts.packets == 1 and b"s3cret" not in cut.read_bytes()
    assert b"producer-1" in cut.read_bytes()
    kept = tmp_path / "kept.pcap"
    copy_window([source], kept, 0, 2e9, frozenset({9092}), False, 1 << 20)
    assert b"s3cret" in kept.read_bytes()  # the test can fail: the uncut copy has them


def test_the_cut_capture_gives_the_same_analysis(tmp_path: Path) -> None:
    """A real storm of the prefix kernel: cookies, mismatches and Kafka timing are the
    same from the cut copy, which is smaller; a window keeps only its packets."""
    cut = tmp_path / "cut.pcap"
    counts = copy_window([STORM], cut, 0, 2e9, frozenset({9092}), True, 1 << 30)
    assert counts.payload_bytes_cut > 0 and cut.stat().st_size < STORM.stat().st_size
    whole = analyse_stream(open_capture(STORM), frozenset({9092}))
    copy = analyse_stream(open_capture(cut), frozenset({9092}))
    assert [f.to_dict() for f in copy.findings] == [f.to_dict() for f in whole.findings]
    assert copy.requests.client_ids() == whole.requests.client_ids()
    assert len(copy.requests) == len(whole.requests) == 400
    first = copy_window(
        [STORM], tmp_path / "half.pcap", 0, 1796022445.3, frozenset({9092}), True, 1 << 30
    )
    assert 0 < first.packets < counts.packets
    small = copy_window([STORM], tmp_path / "small.pcap", 0, 2e9, frozenset({9092}), True, 50_000)
    assert small.cut_short and (tmp_path / "small.pcap").stat().st_size <= 50_000


# --- live, in namespaces ----------------------------------------------------------------


class Recorder:
    """``tcpsleuth record`` as a user runs it, with its JSON lines read as they come."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.lines: list[dict] = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tcpsleuth",
                "record",
                "--dir",
                str(directory),
                "--format",
                "json",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_signals,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                self.lines.append(json.loads(line))

    def wait_for(self, kind: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if line["type"] == kind:
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {kind!r} line: {self.lines} {self.stop()[1][-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)  # standard output is the reader's alone
        assert self.process.stderr is not None
        return self.process.returncode, self.process.stderr.read()


def _leftovers(directory: Path) -> list[int]:
    """Processes naming the directory in their command line or their environment (the
    ring's tcpdump is named there: it writes to a pipe)."""
    return processes_naming(str(directory))


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _knock(ns: str, port: int = 9092, times: int = 3) -> None:
    """A few connection attempts to the port (refused: a SYN and a RST each)."""
    code = (
        "import socket\n"
        f"for _ in range({times}):\n"
        f"    s = socket.socket(); s.connect_ex(('127.0.0.1', {port})); s.close()\n"
    )
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], check=True)


def _modes(directory: Path) -> set[str]:
    bad = set()
    for path in [directory, *directory.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if (path.is_dir() and mode != 0o700) or (path.is_file() and mode & 0o077):
            bad.add(f"{path}: {oct(mode)}")
    return bad


def _storm(ns: str, clients: int = 3000, port: int = 9092, hold: float = 8) -> int:
    """conn_farm's reconnect storm on a backlog-50 listener; connections held ``hold`` s."""
    farm = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, str(SUPPORT / "conn_farm.py"),
         "--port", str(port), "--backlog", "50", "--clients", str(clients), "--storm"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert farm.stdout is not None and farm.stdin is not None
    ready = farm.stdout.readline()
    assert ready.startswith("ready"), ready
    time.sleep(hold)
    farm.stdin.close()
    farm.wait(timeout=30)
    return int(ready.split()[1])


def test_recorder_keeps_one_storm_it_was_told_nothing_about(netns: str, tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    metrics = tmp_path / "recorder.prom"
    recorder = Recorder(
        directory, "--port", "9092", "--netns", netns, "--before", "5", "--after", "5",
        "--merge", "5", "--later", "2", "--trace", "3", "--metrics-file", str(metrics),
    )  # fmt: skip
    try:
        recorder.wait_for("ready")
        time.sleep(2)
        connected = _storm(netns)
        sent = nstat_in(netns)["TcpExtSyncookiesSent"]
        report_line = recorder.wait_for("report", timeout=120)
    finally:
        status, err = recorder.stop()
    assert status == 128 + signal.SIGTERM, err
    assert err.strip() == "tcpsleuth: stopped by SIGTERM"
    assert _leftovers(directory) == []
    [incident] = sorted(directory.glob("incident-*"))
    assert report_line["incident"] == incident.name
    doc = json.loads((incident / "report.json").read_text())
    # the report read back is the report written: report -> JSON -> report (issue 28)
    report = schema.report((incident / "report.json").read_bytes(), "report.json")
    assert report.schema_version == 1 and report.to_dict() == doc
    assert IncidentReport.read(json.loads(json.dumps(report.to_dict())), "x") == report
    # the kernel's count of the storm's cookies, all within the incident's window
    assert sent > 50 and doc["syn_cookies"]["sent"] == sent
    # every handshake of the storm is in the incident's capture, and its analysis
    # finds cookie connections among them
    assert doc["capture"]["handshakes"] >= connected == 3000
    assert doc["capture"]["kernel_drops"] == 0
    assert 0 < doc["syn_cookies"]["cookie_connections"] <= 3000
    kinds = {e["kind"] for e in doc["events"]}
    assert "syn-cookies-rate" in kinds
    assert doc["sockets"]["during"]["connections"] > 0
    assert (incident / "bundle" / "sysctl-a.txt").exists()
    assert (incident / "trace.jsonl").exists() or (incident / "trace-skipped.txt").exists()
    assert not list(incident.glob("ring-links"))
    html = (incident / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    assert _modes(directory) == set()
    text = metrics.read_text()
    assert re.search(r"^tcpsleuth_recorder_incidents_total\{[^}]*\} 1\.0$", text, re.M), text
    assert re.search(r"^tcpsleuth_recorder_capture_up\{[^}]*\} 1\.0$", text, re.M)
    # reopened later: the same report, as a table and as JSON
    table = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "report", str(incident)], capture_output=True, text=True
    )
    assert table.returncode == 1 and "syn-cookies-seen" in table.stdout
    again = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "report", str(incident), "--format", "json", "--again"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert json.loads(again.stdout)["syn_cookies"] == doc["syn_cookies"]
    listing = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "report", str(directory), "--format", "json"],
        capture_output=True, text=True,
    )  # fmt: skip
    [row] = json.loads(listing.stdout)["incidents"]
    assert row["incident"] == incident.name and row["syn_cookies_sent"] == sent


def test_a_broker_that_returns_later_than_merge_is_one_incident(netns: str, tmp_path: Path) -> None:
    """A storm whose listener then closes (the broker stops), 10 s without a listener
    (merge is 4 s), and a storm when it is back: one incident holding both."""
    directory = tmp_path / "rec"
    recorder = Recorder(
        directory, "--port", "9092", "--netns", netns, "--before", "3", "--after", "2",
        "--merge", "4", "--max-incident", "45", "--later", "1", "--trace", "0",
    )  # fmt: skip
    try:
        recorder.wait_for("ready")
        time.sleep(2)
        first = nstat_in(netns)["TcpExtSyncookiesSent"]
        _storm(netns, hold=1)  # its listener closes a second later: the broker is down
        time.sleep(10)
        assert not [x for x in recorder.lines if x["type"] == "report"]
        _storm(netns)  # the broker is back: the clients' storm
        sent = nstat_in(netns)["TcpExtSyncookiesSent"] - first
        recorder.wait_for("report", timeout=120)
    finally:
        status, err = recorder.stop()
    assert status == 128 + signal.SIGTERM, err
    [incident] = sorted(directory.glob("incident-*"))
    doc = json.loads((incident / "report.json").read_text())
    times = sorted(e["time"] for e in doc["events"] if e["kind"] == "syn-cookies-rate")
    assert times[-1] - times[0] > 10  # events of both storms
    assert sent > 100 and doc["syn_cookies"]["sent"] == sent
    assert "held open while port 9092 had no listener" in doc["notes"]


def test_disk_cap_holds_under_a_storm(netns: str, tmp_path: Path) -> None:
    """A 6 MiB cap against storms that write more: du never sees more than the cap."""
    directory = tmp_path / "rec"
    cap = 6 << 20
    recorder = Recorder(
        directory, *(f"--port={p}" for p in range(9092, 9097)), "--netns", netns,
        "--max-disk", "6M", "--before", "5",
        "--after", "3", "--merge", "3", "--later", "1", "--trace", "0", "--rotate", "1",
    )  # fmt: skip
    peak = [0]
    done = threading.Event()

    def watch_disk() -> None:
        while not done.is_set():
            out = subprocess.run(
                ["du", "-s", "-B1", str(directory)], capture_output=True, text=True
            )
            if out.stdout:
                peak[0] = max(peak[0], int(out.stdout.split()[0]))
            time.sleep(0.05)

    sampler = threading.Thread(target=watch_disk, daemon=True)
    try:
        recorder.wait_for("ready")
        sampler.start()
        for port in range(9092, 9097):  # a port each: the last one's TIME_WAITs
            _storm(netns, 3000, port)
        time.sleep(5)
    finally:
        done.set()
        status, err = recorder.stop()
    sampler.join()
    assert status == 128 + signal.SIGTERM, err
    [stopped] = [line for line in recorder.lines if line["type"] == "stopped"]
    # the storms offered more than the cap: what tcpdump wrote, and what the cap kept
    # out (an outage between storms holds the incident, and its room, open, so the
    # ring may pause before it has written the cap's worth)
    offered = stopped["captured"] + stopped["capped"]
    assert 0 < peak[0] <= cap, peak
    if offered * 80 <= cap:
        # a counted precondition, not a pass: the ring paused before the storms had
        # offered more than the cap (seen since 2026-12-06: 30,000 to 77,000 packets
        # where 78,700 are needed), so the cap was not tested under pressure
        pytest.xfail(f"the storms offered {offered} packets, under the 6 MiB cap")
    assert _leftovers(directory) == []


def _wait_for_ring_files(directory: Path, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(list((directory / "ring").glob("ring-*.pcap"))) < count:
        assert time.monotonic() < deadline, "no ring file"
        time.sleep(0.1)


def test_sigkill_leaves_nothing_and_the_next_start_reuses_the_directory(
    netns: str, tmp_path: Path
) -> None:
    directory = tmp_path / "rec"
    first = Recorder(directory, "--port", "9092", "--netns", netns, "--trace", "0")
    first.wait_for("ready")
    tcpdump = [pid for pid in _leftovers(directory) if _comm(pid) == "tcpdump"]
    assert tcpdump, "tcpdump is not running"
    _knock(netns)
    _wait_for_ring_files(directory, 1)
    first.stop(signal.SIGKILL)
    time.sleep(0.5)
    assert _leftovers(directory) == []  # tcpdump died with it
    second = Recorder(
        directory, "--port", "9092", "--netns", netns, "--trace", "0", "--duration", "3"
    )
    second.wait_for("ready")
    _knock(netns)
    assert second.process.wait(timeout=60) == 0, second.lines
    assert any(line["type"] == "recovered" for line in second.lines), second.lines
    assert [line for line in second.lines if line["type"] == "stopped"]
    assert _leftovers(directory) == []
    assert len(list((directory / "ring").glob("ring-*.pcap"))) >= 2  # both generations' files
    # the recorder makes no namespace (tcpsleuth's are named after their maker's pid)
    pids = {first.process.pid, second.process.pid}
    assert [n for n in namespaces.owned() if int(n.rsplit("-", 2)[-2]) in pids] == []


# --- the lab: the incident reproduced, with a recorder beside the broker ----------------


def _lab_with_recorder(
    scenario: str, tmp_path: Path, *record_args: str
) -> tuple[dict, Recorder, Path]:
    keep, directory = tmp_path / "keep", tmp_path / "rec"
    lab = subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", "lab", "run", scenario, "--size", "small",
         "--keep", str(keep), "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    recorder = None
    try:
        deadline = time.monotonic() + 60
        server = None
        while server is None and time.monotonic() < deadline:
            server = next(
                (n for n in namespaces.owned() if n.startswith(f"tcpsleuth-lab-srv-{lab.pid}-")),
                None,
            )
            time.sleep(0.05)
        assert server is not None, "the lab made no broker namespace"
        # attached to a broker already serving its clients, as on a production host (the
        # clients' first connections can overflow the backlog too: another story)
        while time.monotonic() < deadline + 60:
            table = sockdiag.snapshot(server, ports=frozenset({9092}), with_info=False)
            if sum(1 for c in table.connections if c.local_port == 9092) >= 300:
                break
            time.sleep(0.2)
        # told the namespace and the port, nothing about the restart
        recorder = Recorder(directory, "--port", "9092", "--netns", server, *record_args)
        recorder.wait_for("ready")
        out, err = lab.communicate(timeout=600)
        assert lab.returncode in (0, 1), err[-2000:]
        # the lab removed its namespaces (the recorder in one of them did not keep it)
        assert [n for n in namespaces.owned() if f"-{lab.pid}-" in n] == []
    except BaseException:
        lab.kill()
        lab.wait()
        if recorder is not None:
            recorder.stop()
        raise
    return json.loads(out), recorder, directory


def test_recorder_in_the_lab_keeps_the_wscale_bug(tmp_path: Path) -> None:
    doc, recorder, directory = _lab_with_recorder(
        "wscale-bug", tmp_path, "--before", "10", "--after", "8", "--merge", "10",
        "--later", "3", "--trace", "3",
    )  # fmt: skip
    try:
        report_line = recorder.wait_for("report", timeout=240)
    finally:
        status, err = recorder.stop()
    assert status == 128 + signal.SIGTERM, err
    assert _leftovers(directory) == []
    [run] = doc["runs"]
    ready = next(line for line in recorder.lines if line["type"] == "ready")
    assert ready["time"] < run["window"]["restart"]  # ready before the restart
    [incident] = sorted(directory.glob("incident-*"))  # exactly one incident
    assert report_line["incident"] == incident.name
    report = json.loads((incident / "report.json").read_text())
    assert (
        run["window"]["restart"] <= report["window"]["first_event"] <= run["window"]["after_start"]
    )
    # the SYN cookies: the kernel's count from just before the restart to the end (the
    # clients' first connections can make a few before the recorder starts)
    sent = run["counters"]["during_restart"]["TcpExtSyncookiesSent"]
    assert sent > 0 and report["syn_cookies"]["sent"] == sent
    assert report["syn_cookies"]["cookie_connections"] > 0
    check_incident_against_ss(report, tmp_path / "keep" / "wscale-bug", at_least=20)


def test_recorder_beside_a_quiet_lab_run_records_nothing(tmp_path: Path) -> None:
    doc, recorder, directory = _lab_with_recorder("baseline", tmp_path, "--trace", "0")
    status, err = recorder.stop()
    assert status == 128 + signal.SIGTERM, err
    assert doc["runs"][0]["latency_ms"]["before"]["count"] > 0  # the run did run
    assert [line for line in recorder.lines if line["type"].startswith("incident")] == []
    assert list(directory.glob("*incident-*")) == []
    assert _leftovers(directory) == []


def test_without_tcpdump_it_says_so_in_one_line_and_goes_on(tmp_path: Path) -> None:
    """No tcpdump on the PATH: one line saying so, then counters and metrics as usual
    (this host's own namespace: no root needed)."""
    from support.monitoring import free_port, get

    port = free_port()
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    recorder = subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", "record", "--port", "9", "--dir",
         str(tmp_path / "rec"), "--duration", "4", "--trace", "0", "--metrics-listen",
         f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    time.sleep(2.5)
    metrics = get(f"http://127.0.0.1:{port}/metrics")
    out, err = recorder.communicate(timeout=60)
    assert recorder.returncode == 0, err
    # said once (not at every attempt to start it again), and the recorder went on
    assert out.count("no capture: tcpdump is not installed") == 1, out
    assert "ready: port 9" in out and "no capture (tcpdump is not installed" in out
    assert re.search(r'^tcpsleuth_recorder_capture_up\{dir="[^"]+"\} 0\.0$', metrics, re.M)
    assert re.search(
        r'^tcpsleuth_recorder_problem\{dir="[^"]+",what="capture"\} 1\.0$', metrics, re.M
    )
    assert re.search(r"^tcpsleuth_recorder_samples_total\{[^}]+\} [1-9]", metrics, re.M)


def test_the_systemd_unit_is_valid(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (REPO / "deploy" / "systemd" / "tcpsleuth-recorder.service").read_text()
    tcpsleuth = shutil.which("tcpsleuth") or sys.executable
    (tmp_path / "tcpsleuth-recorder.service").write_text(
        unit.replace("/usr/local/bin/tcpsleuth", tcpsleuth)
    )
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "tcpsleuth-recorder.service")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0 and "tcpsleuth-recorder" not in result.stderr, result.stderr


def test_report_of_something_else_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "report", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "not an incident of `tcpsleuth record`" in result.stderr


def test_a_jump_in_window_limited_connections_is_an_event() -> None:
    from tcpsleuth.detectors import rates

    thresholds = rates.Thresholds(rwnd_limited_jump=10)
    assert rates.rwnd_limited_events(3, 12, 500, 1.0, [9092], "h", thresholds) == []  # +9
    [event] = rates.rwnd_limited_events(3, 13, 500, 1.0, [9092], "h", thresholds)
    assert event.kind == "rwnd-limited-rate"
    assert event.evidence["rwnd_limited_connections"] == 13 and event.evidence["previous"] == 3
    off = rates.Thresholds(rwnd_limited_jump=0)
    assert rates.rwnd_limited_events(0, 400, 500, 1.0, [9092], "h", off) == []


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT])
def test_sighup_and_sigint_stop_it_cleanly(netns: str, tmp_path: Path, sig: int) -> None:
    directory = tmp_path / "rec"
    recorder = Recorder(directory, "--port", "9092", "--netns", netns, "--trace", "0")
    recorder.wait_for("ready")
    assert _leftovers(directory)
    status, err = recorder.stop(sig)
    assert status == 128 + sig, err
    assert [line for line in recorder.lines if line["type"] == "stopped"]
    assert _leftovers(directory) == []


def test_stopped_during_an_incident_it_keeps_what_it_has(netns: str, tmp_path: Path) -> None:
    """SIGTERM while an incident is open: the incident is kept, its capture up to the
    stop, and `tcpsleuth report` analyses it afterwards."""
    directory = tmp_path / "rec"
    recorder = Recorder(
        directory, "--port", "9092", "--netns", netns, "--before", "5", "--after", "60",
        "--merge", "60", "--trace", "0",
    )  # fmt: skip
    recorder.wait_for("ready")
    connected = _storm(netns, 1500)
    recorder.wait_for("incident-opened")
    status, err = recorder.stop()
    assert status == 128 + signal.SIGTERM, err
    assert _leftovers(directory) == []
    [incident] = sorted(directory.glob("incident-*"))
    assert not list(directory.glob(".incident-*"))
    assert (incident / "capture.pcap").stat().st_size > 24
    meta = json.loads((incident / "recorder.json").read_text())
    assert "stopped before the incident's end" in " ".join(meta["notes"])
    report = subprocess.run(
        [sys.executable, "-m", "tcpsleuth", "report", str(incident), "--format", "json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert report.returncode == 1, report.stderr
    assert json.loads(report.stdout)["capture"]["handshakes"] >= connected
    assert (incident / "report.json").exists() and (incident / "report.html").exists()

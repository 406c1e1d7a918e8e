"""The lab, end to end at a reduced size: real kernels, real clients, tcpsleuth's detectors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_tcpsleuth
from support import ss_text

from tcpsleuth.lab import namespaces


def _lab(*args: str) -> tuple[int, dict]:
    result = run_tcpsleuth("lab", "run", *args, "--size", "small", "--format", "json")
    assert result.returncode in (0, 1), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout)


def _leftovers() -> list[str]:
    return [name for name in namespaces.owned() if name.startswith("tcpsleuth-lab")]


def _cookie_counts_shown(run: dict, findings: list[dict]) -> None:
    """The run's cookie counts (issue 30): the capture's three verdicts add up to its
    connections, its cookie connections are the syn-cookies-seen findings', the counter
    sits beside them, and the table shows them all."""
    from tcpsleuth.reports import table
    from tcpsleuth.reports.labview import render_runs

    cookies = run["syn_cookies"]
    sent = run["counters"]["during_restart"]["TcpExtSyncookiesSent"]
    assert cookies["sent"] == sent
    three = [cookies[f"{name}_connections"] for name in ("cookie", "ordinary", "undecided")]
    assert sum(three) == cookies["connections"]
    seen = [f["evidence"] for f in findings if f["kind"] == "syn-cookies-seen"]
    assert cookies["cookie_connections"] == sum(e["cookie_connections"] for e in seen) > 0
    assert sum(cookies["undecided_why"].values()) == cookies["undecided_connections"]
    assert cookies["sent_not_in_capture"] == max(sent - cookies["cookie_connections"], 0)
    console = table.console()
    with console.capture() as shown:
        console.print(render_runs([run]))
    text = " ".join(shown.get().split())
    assert "/".join(str(n) for n in three) in text
    assert (
        f"{three[0]} SYN cookie, {three[1]} ordinary, {three[2]} undecided "
        f"(of {cookies['connections']} connections)"
    ) in text
    assert f"TcpExtSyncookiesSent during the restart {sent}" in text
    for reason, count in cookies["undecided_why"].items():
        assert f"{count}: {' '.join(reason.split())}" in text


def test_wscale_bug_reproduces_the_incident(tmp_path: Path) -> None:
    status, doc = _lab("wscale-bug", "--keep", str(tmp_path / "keep"))
    [run] = doc["runs"]
    import confluent_kafka
    import kafka

    assert doc["libraries"]["kafka-python"] == kafka.__version__
    assert doc["libraries"]["librdkafka"] == confluent_kafka.libversion()[0]
    cookies = run["counters"]["during_restart"]["TcpExtSyncookiesSent"]
    assert cookies > 0
    latency = run["latency_ms"]
    assert latency["after"]["p50"] >= 10 * latency["before"]["p50"]
    assert set(latency["before"]["by_library"]) == {"confluent-kafka", "kafka-python"}
    mismatches = [f for f in doc["findings"] if f["kind"] == "wscale-mismatch"]
    from_sockets = [f for f in mismatches if f["evidence"]["socket_wscale"] is not None]
    from_capture = [f for f in mismatches if f["evidence"]["inferred_wscale"] is not None]
    assert {
        (f["evidence"]["announced_wscale"], f["evidence"]["actual_wscale"]) for f in from_sockets
    } == {(1, 7)}
    # the capture analyzer finds the same thing from the packets alone
    assert [
        (f["evidence"]["announced_wscale"], f["evidence"]["inferred_wscale"]) for f in from_capture
    ] == [(1, 7)]
    # the two-sided check names exactly the client ends, seen by sock_diag with a
    # partner at the broker, that believe shift 1 ...
    kept = tmp_path / "keep" / "wscale-bug"
    client = json.loads((kept / "sockets-client.json").read_text())
    server = {
        (c["remote"], c["local"]) for c in json.loads((kept / "sockets-server.json").read_text())
    }
    believed_one = {
        c["local"]
        for c in client
        if c["state"] == "ESTAB" and c["snd_wscale"] == 1 and (c["local"], c["remote"]) in server
    }
    assert {f["subject"]["client"] for f in from_sockets} == believed_one
    # ... and `ss -tni`, taken a moment later, shows the same shifts for them
    ss_shifts = ss_text.shifts((kept / "ss-client.txt").read_text())
    shared = [c for c in client if (c["local"], c["remote"]) in ss_shifts]
    assert len(shared) > 0.9 * len(client)
    for c in shared:
        assert ss_shifts[(c["local"], c["remote"])] == (c["snd_wscale"], c["rcv_wscale"])
    assert any(f["kind"] == "rwnd-limited" for f in doc["findings"])
    _cookie_counts_shown(run, doc["findings"])
    assert (tmp_path / "keep" / "latency.png").stat().st_size > 10_000
    assert status == 1
    assert _leftovers() == []


def test_no_timestamps_cookies_lose_window_scaling_end_to_end() -> None:
    """The no-timestamps scenario (issue 30, item 1): every cookie the kernel sent is a
    capture connection whose SYN-ACK kept the MSS alone, called a cookie by the options
    it lost; window scaling lost by cookies, never blamed on a middlebox."""
    status, doc = _lab("no-timestamps")
    [run] = doc["runs"]
    sent = run["counters"]["during_restart"]["TcpExtSyncookiesSent"]
    assert sent > 0
    kinds = [f["kind"] for f in doc["findings"]]
    assert "wscale-stripped" not in kinds, kinds
    [lost] = [f for f in doc["findings"] if f["kind"] == "wscale-lost-syn-cookies"]
    evidence = lost["evidence"]
    assert evidence["cookie_connections"] == sent == run["syn_cookies"]["cookie_connections"]
    assert evidence["returned"]["wscale"] == evidence["returned"]["sack"] == 0
    assert evidence["offered"]["wscale"] == sent
    assert evidence["listener_synacks_with_options"] == run["syn_cookies"]["ordinary_connections"]
    # undecided: only connections whose SYN was never answered in the capture
    assert set(run["syn_cookies"]["undecided_why"]) <= {"no SYN-ACK in the capture"}
    assert evidence["window_ceiling_bytes"] == 65535
    _cookie_counts_shown(run, doc["findings"])
    assert status == 1
    assert _leftovers() == []


def test_mitigations(tmp_path: Path) -> None:
    _, doc = _lab("no-syncookies", "big-backlog", "fixed-kernel")
    runs = {run["scenario"]: run for run in doc["runs"]}
    for name in ("no-syncookies", "big-backlog"):
        run = runs[name]
        assert run["counters"]["during_restart"]["TcpExtSyncookiesSent"] == 0, name
        assert run["latency_ms"]["after"]["p50"] <= 2 * run["latency_ms"]["before"]["p50"], name
        assert run["shifts"]["client_snd_wscale"].get("1", 0) == 0, name
    fixed = runs["fixed-kernel"]
    assert fixed["counters"]["during_restart"]["TcpExtSyncookiesSent"] > 0
    assert "wscale-mismatch" not in fixed["findings_by_kind"]
    # Kafka's SO_RCVBUF=102400 makes both ends use shift 1 on a kernel with the fix
    assert set(fixed["shifts"]["client_snd_wscale"]) == {"1"}
    assert set(fixed["shifts"]["server_rcv_wscale"]) == {"1"}
    assert _leftovers() == []


def test_killed_run_leaves_nothing_after_the_next_run() -> None:
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tcpsleuth",
            "lab",
            "run",
            "baseline",
            "--size",
            "small",
            "--format",
            "json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(_leftovers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # broker, relay, capture and clients running
    assert len(_leftovers()) == 2
    run.send_signal(signal.SIGKILL)
    run.wait()
    time.sleep(1)
    # the run's children died with it (PR_SET_PDEATHSIG)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "tcpsleuth.lab.relay" not in ps and "tcpsleuth.lab.broker" not in ps
    _, doc = _lab("baseline")
    assert doc["runs"][0]["latency_ms"]["before"]["count"] > 0
    assert _leftovers() == []
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert "tcpsleuth" not in tables


def test_lab_refuses_unknown_scenarios() -> None:
    result = run_tcpsleuth("lab", "run", "nope")
    assert result.returncode == 2 and "tcpsleuth lab list" in result.stderr


def _relay_round_trip(rtt_ms: float) -> float:
    """Median handshake time (ms) from a client namespace through a relay of ``rtt_ms``."""
    from tcpsleuth.lab import topology
    from tcpsleuth.lab.processes import Child
    from tcpsleuth.lab.runner import probe_rtt, start_relay

    with namespaces.namespace("relay-srv") as server, namespaces.namespace("relay-cli") as client:
        relay = start_relay(client, server, rtt_ms)
        try:
            sink = Child(
                [
                    sys.executable,
                    "-c",
                    (
                        "import socket\n"
                        f"s=socket.create_server(('{topology.SERVER_IP4}', 9092), backlog=128)\n"
                        "print('listening', flush=True)\n"
                        "while True: s.accept()[0].close()\n"
                    ),
                ],
                ns=server,
            )
            sink.wait_for(lambda line: "listening" in line, 20)
            measured = probe_rtt(client)  # what the lab reports as measured_rtt_ms
            sink.stop()
        finally:
            relay.stop()
    return measured


@pytest.mark.parametrize("rtt_ms", [1.0, 10.0])
def test_relay_link_has_the_configured_round_trip(rtt_ms: float) -> None:
    """No netem here: the tun relay makes the delay. TCP handshakes from the client
    namespace (one round trip each) see the configured RTT, and no more than it plus
    the cost of the path itself: the same relay with no delay, measured right after, so
    that a loaded machine (which once made 1 ms measure 1.30 ms) slows both alike. The
    relay holds each packet until its arrival plus the delay, so the time it takes to
    handle a packet once it has it is absorbed by the delay: the round trip lies between
    the delay and the delay plus the path (a clean-clone run measured 0.99 ms for 1 ms
    with a 0.30 ms path)."""
    measured = _relay_round_trip(rtt_ms)
    # load never makes the link faster: the configured delay is a floor
    assert measured >= 0.95 * rtt_ms, measured
    path = _relay_round_trip(0.0)
    assert measured <= rtt_ms + path + 0.2 * rtt_ms, (measured, path)


def test_lab_runs_a_broker_command() -> None:
    """--broker-cmd: the lab starts, restarts and stops the user's broker (here the lab
    broker itself, run as an outside command, since no Kafka distribution is installed)."""
    command = (
        f"{sys.executable} -m tcpsleuth.lab.broker --host {{host}} --port {{port}} "
        "--backlog {backlog} --rcvbuf {rcvbuf}"
    )
    _, doc = _lab("restart-storm", "--broker-cmd", command)
    [run] = doc["runs"]
    assert run["broker"].startswith("the user's broker command")
    assert "--backlog 50 --rcvbuf -1" in run["broker"]
    assert run["counters"]["during_restart"]["TcpExtSyncookiesSent"] > 0
    assert run["latency_ms"]["before"]["count"] > 0 and run["latency_ms"]["after"]["count"] > 0
    assert run["window"]["accepting"] > run["window"]["restart"]
    bad = run_tcpsleuth("lab", "run", "baseline", "--size", "small", "--broker-cmd", "false")
    assert bad.returncode == 2 and "--broker-cmd did not listen" in bad.stderr
    assert _leftovers() == []

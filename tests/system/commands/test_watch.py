"""tcpsleuth watch: the rate and event logic on its own, then live against a
reconnect storm and a listener that stops accepting, checked with nstat and ss."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from conftest import Farm, run_tcpsleuth

from tcpsleuth.detectors import rates
from tcpsleuth.model.records import Listener
from tcpsleuth.sources import netns as netns_source


def test_rates_per_second_and_after_a_reset() -> None:
    before = {"TcpExtSyncookiesSent": 100, "TcpPassiveOpens": 7, "Gone": 1}
    after = {"TcpExtSyncookiesSent": 400, "TcpPassiveOpens": 3, "New": 5}
    got = rates.rates(before, after, 2.0)
    assert got == {"TcpExtSyncookiesSent": 150.0, "TcpPassiveOpens": 1.5}  # 3 since a reset


def test_cookie_storm_threshold() -> None:
    before = {"TcpExtSyncookiesSent": 0, "TcpExtListenOverflows": 0, "TcpExtListenDrops": 0}
    slow = {**before, "TcpExtSyncookiesSent": 19}  # 9.5/s over 2 s
    fast = {**before, "TcpExtSyncookiesSent": 20}  # 10/s
    assert rates.counter_events(before, slow, 2.0, "h") == []
    [storm] = rates.counter_events(before, fast, 2.0, "h")
    assert storm.kind == "syn-cookies-rate"
    assert storm.evidence["cookies_per_second"] == 10.0
    assert storm.evidence["TcpExtSyncookiesSent"] == 20
    lower = rates.Thresholds(cookies_per_second=5)
    assert [e.kind for e in rates.counter_events(before, slow, 2.0, "h", lower)] == [
        "syn-cookies-rate"
    ]


def test_overflow_event_counts_the_interval_only() -> None:
    before = {"TcpExtListenOverflows": 900, "TcpExtListenDrops": 905, "TcpExtTCPReqQFullDrop": 0}
    after = {"TcpExtListenOverflows": 930, "TcpExtListenDrops": 935, "TcpExtTCPReqQFullDrop": 0}
    [event] = rates.counter_events(before, after, 1.0, "h")
    assert event.kind == "listen-overflows-rate"
    assert event.evidence["TcpExtListenOverflows"] == 30
    assert event.evidence["TcpExtListenDrops"] == 30
    assert rates.counter_events(after, after, 1.0, "h") == []


def test_accept_queue_full_reported_when_it_fills() -> None:
    half = Listener("0.0.0.0", 9092, backlog=50, accept_queue=49)
    full = Listener("0.0.0.0", 9092, backlog=50, accept_queue=50)
    over = Listener("0.0.0.0", 9092, backlog=50, accept_queue=51)
    [event] = rates.queue_events([full], before=[half])
    assert event.kind == "accept-queue-full"
    assert event.subject == {"listener": "0.0.0.0:9092"}
    assert rates.queue_events([over], before=[full]) == []  # still full: already said
    assert rates.queue_events([half], before=[full]) == []


def watch_json(ns: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tcpsleuth", "watch", "--netns", ns, "--format", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def nstat(ns: str, name: str) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nstat", "-asz", "--json", name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(json.loads(out)["kernel"][name])


def test_watch_sees_a_reconnect_storm(netns: str) -> None:
    # 8 s of samples: the storm (about 2 s here) is over well before the last one
    watcher = watch_json(netns, "--interval", "0.5", "--count", "16")
    time.sleep(1.2)
    farm = Farm(netns, "--port", "9092", "--backlog", "50", "--clients", "3000", "--storm")
    try:
        out, err = watcher.communicate(timeout=30)
        sent = nstat(netns, "TcpExtSyncookiesSent")
        overflows = nstat(netns, "TcpExtListenOverflows")
    finally:
        farm.stop()
    assert watcher.returncode == 1, err
    records = [json.loads(line) for line in out.splitlines()]
    samples = [r for r in records if r["type"] == "sample"]
    events = [r for r in records if r["type"] == "event"]
    assert len(samples) == 16
    assert samples[0]["counters"]["TcpExtSyncookiesSent"] == 0  # a fresh namespace
    # the last sample was taken after the storm: it equals what nstat reads now
    assert samples[-1]["counters"]["TcpExtSyncookiesSent"] == sent > 0
    assert samples[-1]["counters"]["TcpExtListenOverflows"] == overflows > 0
    storms = [e for e in events if e["kind"] == "syn-cookies-rate"]
    assert storms, events
    for storm in storms:
        evidence = storm["evidence"]
        assert evidence["cookies_per_second"] >= 10
        assert evidence["TcpExtSyncookiesSent"] <= sent
    assert sum(e["evidence"]["TcpExtSyncookiesSent"] for e in storms) <= sent
    assert any(e["kind"] == "listen-overflows-rate" for e in events)
    listeners = samples[-1]["listeners"]
    assert {k: listeners[0][k] for k in ("listener", "backlog")} == {
        "listener": "127.0.0.1:9092",
        "backlog": 50,
    }


def test_watch_reports_a_full_accept_queue_once(netns: str) -> None:
    with netns_source.entered(netns):
        server = socket.socket()
        server.bind(("127.0.0.1", 7071))
        server.listen(4)  # never accepted: the queue fills to backlog + 1
        watcher = watch_json(netns, "--interval", "0.3", "--count", "8")
        # the queue fills only once the watcher has sampled it empty, however long a
        # loaded machine takes to start it (a fixed wait once raced the start)
        assert watcher.stdout is not None
        first = watcher.stdout.readline()
        assert json.loads(first)["type"] == "sample", first
        clients = []
        for _ in range(8):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", 7071))
            clients.append(client)
    try:
        out, err = watcher.communicate(timeout=30)
        queue = subprocess.run(
            ["ip", "netns", "exec", netns, "ss", "-Hltn", "sport = :7071"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    finally:
        for sock in (*clients, server):
            sock.close()
    records = [json.loads(line) for line in [first, *out.splitlines()]]
    full = [r for r in records if r["type"] == "event" and r["kind"] == "accept-queue-full"]
    assert len(full) == 1, records
    assert full[0]["subject"] == {"listener": "127.0.0.1:7071"}
    # ss -lt: Recv-Q is the accept queue, Send-Q the backlog
    assert full[0]["evidence"] == {"accept_queue": int(queue[1]), "backlog": int(queue[2])}
    assert full[0]["evidence"]["accept_queue"] == 5
    assert watcher.returncode == 1, err


def test_watch_quiet_namespace_table(netns: str) -> None:
    result = run_tcpsleuth("watch", "--netns", netns, "--interval", "0.2", "--count", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("no change") == 2


def test_watch_bad_namespace() -> None:
    result = run_tcpsleuth("watch", "--netns", "tcpsleuth-no-such-ns", "--count", "1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no-such-ns" in result.stderr

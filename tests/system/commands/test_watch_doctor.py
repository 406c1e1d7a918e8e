"""doctor's counter-rates check: a few seconds of counter rates, live only."""

from __future__ import annotations

import json
import socket
import threading

from conftest import run_tcpsleuth

from tcpsleuth.lab import namespaces
from tcpsleuth.sources import netns as netns_source


def test_doctor_counter_rates_see_cookies_being_sent(netns: str) -> None:
    """With tcp_syncookies=2 every handshake is made by cookie; a client connecting
    in a loop for as long as doctor runs sends cookies at a steady rate, whenever
    doctor takes its sample."""
    namespaces.sysctl(netns, "net.ipv4.tcp_syncookies", 2)
    with netns_source.entered(netns):
        server = socket.socket()
        server.bind(("127.0.0.1", 9092))
        server.listen(128)
    stop = threading.Event()
    connected = [0]

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except TimeoutError:
                continue

    def connect() -> None:
        with netns_source.entered(netns):
            while not stop.is_set():
                with socket.create_connection(("127.0.0.1", 9092), timeout=5):
                    connected[0] += 1
                stop.wait(0.002)

    threads = [threading.Thread(target=accept), threading.Thread(target=connect)]
    for thread in threads:
        thread.start()
    try:
        result = run_tcpsleuth("doctor", "--netns", netns, "--format", "json")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        server.close()
    doc = json.loads(result.stdout)
    check = next(c for c in doc["checks"] if c["name"] == "counter-rates")
    assert check["ran"], check
    rates = check["data"]["per_second"]
    assert rates["TcpExtSyncookiesSent"] >= 10, (rates, connected)
    # every handshake was a cookie: the cookies that came back are the accepted ones
    assert rates["TcpExtSyncookiesRecv"] > 0.8 * rates["TcpExtSyncookiesSent"]
    storm = next(f for f in doc["findings"] if f["kind"] == "syn-cookies-rate")
    seconds = storm["evidence"]["seconds"]
    assert seconds == check["data"]["seconds"]
    # the finding's count over the check's seconds is the check's rate (both rounded)
    assert (
        abs(storm["evidence"]["TcpExtSyncookiesSent"] / seconds - rates["TcpExtSyncookiesSent"])
        <= 0.01 * rates["TcpExtSyncookiesSent"]
    )
    assert result.returncode == 1, result.stderr


def test_doctor_counter_rates_skip_bundles() -> None:
    result = run_tcpsleuth("doctor", "--example", "--format", "json")
    doc = json.loads(result.stdout)
    check = next(c for c in doc["checks"] if c["name"] == "counter-rates")
    assert not check["ran"] and "bundle" in check["skipped"]

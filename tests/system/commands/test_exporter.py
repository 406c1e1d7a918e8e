"""The exporter against the kernel and the tools people trust: counters against
/proc/net/netstat and nstat, connections and window scales against ss, the
exposition against promtool, window-limited connections made on purpose."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time

from conftest import Farm, run_tcpsleuth
from support import ss_text
from support.monitoring import Exporter, require_tool, samples

from tcpsleuth.reports.prometheus import node_exporter_key
from tcpsleuth.sources import netns as netns_source


def in_ns(ns: str, *command: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *command], capture_output=True, text=True, check=True
    ).stdout


def proc_counters(ns: str) -> dict[str, int]:
    """/proc/net/snmp and netstat as the kernel wrote them, read by `cat` in the namespace."""
    counters = {}
    lines = in_ns(ns, "cat", "/proc/net/snmp", "/proc/net/netstat").splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=True):
        group = head.split()[0].rstrip(":")
        for name, value in zip(head.split()[1:], values.split()[1:], strict=True):
            counters[group + name] = int(value)
    return counters


def nstat_counters(ns: str) -> dict[str, int]:
    # -a: absolute values (no history file), -z: zeros too, -s: leave history alone
    document = json.loads(in_ns(ns, "nstat", "-asz", "--json"))
    return {name: int(value) for name, value in document["kernel"].items()}


def test_node_exporter_names() -> None:
    assert node_exporter_key("TcpExtSyncookiesSent") == "TcpExt_SyncookiesSent"
    assert node_exporter_key("TcpExtListenOverflows") == "TcpExt_ListenOverflows"
    assert node_exporter_key("TcpCurrEstab") == "Tcp_CurrEstab"
    # node_exporter's default field pattern leaves these out, and so do we
    assert node_exporter_key("TcpExtTCPFastOpenListenOverflow") is None
    assert node_exporter_key("TcpExtTCPHPHits") is None
    assert node_exporter_key("UdpInDatagrams") is None


def test_counters_equal_proc_and_nstat_after_a_storm(netns: str) -> None:
    farm = Farm(netns, "--port", "9092", "--backlog", "50", "--clients", "3000", "--storm")
    exporter = Exporter("--netns", netns)
    try:
        for _ in range(10):  # until a scrape falls in a moment when nothing moves
            before = nstat_counters(netns)
            exposed = samples(exporter.scrape())
            proc = proc_counters(netns)
            after = nstat_counters(netns)
            exported = {
                name: exposed[f"node_netstat_{key}"]
                for name in proc
                if (key := node_exporter_key(name)) is not None
            }
            if all(before.get(n, 0) == after.get(n, 0) for n in exported):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("counters never stood still for one scrape")
        assert exported["TcpExtSyncookiesSent"] > 0, "the storm sent no cookies"
        assert exported["TcpExtListenOverflows"] > 0
        assert len(exported) >= 15
        # nstat leaves out TcpCurrEstab (a gauge, not a counter); it prints every other one.
        assert {name for name in exported if name not in after} == {"TcpCurrEstab"}
        for name, value in exported.items():
            assert value == proc[name], name
            if name in after:
                assert value == after[name], name
    finally:
        exporter.stop()
        farm.stop()


def test_exposition_passes_promtool(netns: str) -> None:
    farm = Farm(netns, "--port", "9092", "--backlog", "128", "--clients", "50")
    exporter = Exporter("--netns", netns)
    try:
        text = exporter.scrape()
    finally:
        exporter.stop()
        farm.stop()
    result = subprocess.run(
        [require_tool("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line]
    # node_exporter's names (node_netstat_TcpExt_SyncookiesSent) are camelCase by design;
    # promtool's lint says so for node_exporter too. Anything else is a real problem.
    other = [p for p in problems if not re.match(r"node_netstat_\w+ metric names should be", p)]
    assert other == [], other
    assert "tcpsleuth_listen_backlog" in text


def ss_established(ns: str) -> list[tuple[int, int, int, int]]:
    """(local port, remote port, snd_wscale, rcv_wscale) per established socket, from ss."""
    text = in_ns(ns, "ss", "-Htni", "state", "established")
    out = []
    for (local, remote), info in ss_text.sockets(text).items():
        ports = int(local.rsplit(":", 1)[1]), int(remote.rsplit(":", 1)[1])
        out.append((*ports, info.get("snd", 0), info.get("rcv", 0)))
    return out


def test_connections_and_wscales_match_ss_and_fold(netns: str) -> None:
    """Two listeners after a storm (some connections made by cookie); ports folded
    beyond --max-ports 2; every count compared with what ss prints."""
    farms = [
        Farm(netns, "--port", "9092", "--backlog", "50", "--clients", "1200", "--storm"),
        Farm(netns, "--port", "9093", "--backlog", "128", "--clients", "40"),
    ]
    exporter = Exporter("--netns", netns, "--max-ports", "2")
    try:
        exposed = samples(exporter.scrape())
        seen = ss_established(netns)
    finally:
        exporter.stop()
        for farm in farms:
            farm.stop()
    listening = {9092, 9093}
    expected: dict[tuple[str, str, int, int], int] = {}
    per_port: dict[tuple[str, str], int] = {}
    for local, remote, snd, rcv in seen:
        side, port = ("server", local) if local in listening else ("client", remote)
        label = str(port) if port == 9092 else "other"  # 9093 has fewer: folded
        per_port[(side, label)] = per_port.get((side, label), 0) + 1
        expected[(side, label, snd, rcv)] = expected.get((side, label, snd, rcv), 0) + 1
    got_ports = {
        (m["side"], m["port"]): v
        for key, v in exposed.items()
        if (m := _labels(key, "tcpsleuth_established_connections"))
    }
    got_scales = {
        (m["side"], m["port"], int(m["snd_wscale"]), int(m["rcv_wscale"])): v
        for key, v in exposed.items()
        if (m := _labels(key, "tcpsleuth_connections_by_wscale"))
    }
    assert per_port[("server", "9092")] == 1200
    assert per_port[("server", "other")] == 40
    assert got_ports == per_port
    assert got_scales == expected
    assert exposed["tcpsleuth_scrape_folded_ports"] == 2
    assert exposed['tcpsleuth_listen_backlog{address="127.0.0.1",port="9092"}'] == 50
    assert exposed['tcpsleuth_listen_backlog{address="127.0.0.1",port="9093"}'] == 128


def _labels(key: str, name: str) -> dict[str, str] | None:
    if not key.startswith(name + "{"):
        return None
    return dict(re.findall(r'(\w+)="([^"]*)"', key))


def test_window_limited_now_and_not_later(netns: str) -> None:
    """A reader that stops reading holds its sender at the window: the sender's
    connection counts as window-limited in the next scrape, and no longer once the
    reader has caught up and the sender is idle."""
    with netns_source.entered(netns):
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        server.bind(("127.0.0.1", 7070))
        server.listen(8)
        client = socket.create_connection(("127.0.0.1", 7070))
    reader, _ = server.accept()
    stop = threading.Event()

    def send() -> None:
        client.settimeout(0.2)
        chunk = b"x" * 65536
        while not stop.is_set():
            try:
                client.send(chunk)
            except TimeoutError:
                continue

    sender = threading.Thread(target=send)
    sender.start()
    exporter = Exporter("--netns", netns)
    try:
        time.sleep(1.0)
        first = samples(exporter.scrape())
        time.sleep(1.0)
        second = samples(exporter.scrape())
        stop.set()
        sender.join()
        reader.settimeout(0.5)
        while True:  # drain everything the sender queued
            try:
                if not reader.recv(1 << 20):
                    break
            except TimeoutError:
                break
        exporter.scrape()  # covers the draining
        time.sleep(0.5)
        idle = samples(exporter.scrape())
        info = in_ns(netns, "ss", "-Htni", "state", "established", "( dport = :7070 )")
    finally:
        exporter.stop()
        for sock in (client, reader, server):
            sock.close()
    client_key = 'tcpsleuth_rwnd_limited_connections{port="7070",side="client"}'
    server_key = 'tcpsleuth_rwnd_limited_connections{port="7070",side="server"}'
    assert first[client_key] == 1
    assert second[client_key] == 1
    assert second[server_key] == 0  # the reader sends nothing
    ratio = second['tcpsleuth_rwnd_limited_busy_ratio{port="7070",side="client"}']
    assert 0.2 <= ratio <= 1.0
    # ss agrees that the sender spent most of its busy time at the window
    share = re.search(r"rwnd_limited:\d+ms\(([\d.]+)%\)", info)
    assert share is not None and float(share.group(1)) >= 20, info
    assert idle[client_key] == 0


def test_bad_netns_and_listen_are_one_line_errors(netns: str) -> None:
    result = run_tcpsleuth("exporter", "--netns", "tcpsleuth-no-such-ns", check_status=2)
    assert result.stderr.count("\n") == 1 and "no-such-ns" in result.stderr
    result = run_tcpsleuth("exporter", "--listen", "localhost", check_status=2)
    assert result.stderr.count("\n") == 1 and "HOST:PORT" in result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_tcpsleuth("exporter", "--listen", f"127.0.0.1:{port}", check_status=2)
    assert result.stderr.count("\n") == 1 and "cannot listen" in result.stderr


def test_a_namespace_that_goes_away_fails_scrapes_not_the_exporter() -> None:
    from tcpsleuth.lab import namespaces

    with namespaces.namespace("gone") as ns:
        exporter = Exporter("--netns", ns)
        assert samples(exporter.scrape())["tcpsleuth_scrape_success"] == 1
    try:
        after = samples(exporter.scrape())
        assert exporter.process.poll() is None  # still serving
    finally:
        err = exporter.stop()
    assert after == {"tcpsleuth_scrape_success": 0}
    assert f"scrape failed: no network namespace named '{ns}'" in err

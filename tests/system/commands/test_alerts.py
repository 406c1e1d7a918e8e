"""Alert rules: promtool's checks and unit tests, and a real Prometheus server
scraping the exporter while a reconnect storm hits a backlog-50 listener."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from conftest import REPO, Farm
from support.monitoring import Exporter, Prometheus, require_tool

from tcpsleuth.sources import sampling

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "tcpsleuth.json"


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard, with Grafana's variables filled in
    as Grafana would for "all instances"."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"]]
    return [
        e.replace("$__rate_interval", "1m").replace("$instance", ".*").replace("$broker", ".*")
        for e in exprs
    ]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args], capture_output=True, text=True, check=False
    )


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests are not vacuous: with the cookie threshold raised above the
    storm's rate, the expected alert is missing and promtool says so."""
    rules = tmp_path / "alerts.yml"
    rules.write_text(
        RULES.read_text().replace(
            "rate(node_netstat_TcpExt_SyncookiesSent[1m]) > 1",
            "rate(node_netstat_TcpExt_SyncookiesSent[1m]) > 30",
        )
    )
    (tmp_path / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0
    assert "alertname: TcpSynCookieSpike" in result.stdout + result.stderr


def test_wscale_bug_rule_tests_can_fail(tmp_path: Path) -> None:
    """The heal alert's unit test is not vacuous: with the rule asking for more hit
    connections than the test's 12, the expected alert is missing and promtool says so."""
    rules = tmp_path / "alerts.yml"
    text = RULES.read_text()
    assert text.count("(tcpsleuth_listen_wscale_bug_connections) > 0") == 1
    rules.write_text(
        text.replace(
            "(tcpsleuth_listen_wscale_bug_connections) > 0",
            "(tcpsleuth_listen_wscale_bug_connections) > 12",
        )
    )
    (tmp_path / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0
    assert "alertname: TcpWscaleBugConnections" in result.stdout + result.stderr


def test_prometheus_sees_the_storm_and_fires(netns: str, tmp_path: Path) -> None:
    exporter = Exporter("--netns", netns)
    prometheus = None
    farm = None
    try:
        prometheus = Prometheus(tmp_path, [f"127.0.0.1:{exporter.port}"], [RULES])
        up = prometheus.poll('up{job="tcpsleuth"} == 1', 20)
        assert up, "Prometheus never scraped the exporter"
        # A fresh namespace has sent no cookies yet.
        assert prometheus.value("node_netstat_TcpExt_SyncookiesSent") == 0
        time.sleep(2)  # a few zero samples before the storm, as in production

        farm = Farm(netns, "--port", "9092", "--backlog", "50", "--clients", "3000", "--storm")
        sent = sampling.read_counters(netns)["TcpExtSyncookiesSent"]
        assert sent > 50, f"the storm made only {sent} cookies"

        rising = prometheus.poll("rate(node_netstat_TcpExt_SyncookiesSent[1m]) > 1", 20)
        assert rising, "the cookie rate never rose in Prometheus"
        firing = prometheus.poll('ALERTS{alertname="TcpSynCookieSpike", alertstate="firing"}', 20)
        assert firing, "TcpSynCookieSpike never fired"
        assert firing[0]["metric"]["instance"] == f"127.0.0.1:{exporter.port}"
        overflows = prometheus.poll(
            'ALERTS{alertname="TcpListenOverflows", alertstate="firing"}', 10
        )
        assert overflows, "TcpListenOverflows never fired"
        # What Prometheus stored is what the namespace's kernel counted.
        time.sleep(1.5)
        stored = prometheus.value("node_netstat_TcpExt_SyncookiesSent")
        assert stored == sampling.read_counters(netns)["TcpExtSyncookiesSent"]
        # The listener's backlog as Prometheus has it.
        backlog = prometheus.value('tcpsleuth_listen_backlog{port="9092"}')
        assert backlog == 50
        connections = prometheus.value(
            'tcpsleuth_established_connections{side="server",port="9092"}'
        )
        assert connections == farm.connected
        # The dashboard: every query is valid PromQL, names only metrics the exporter
        # serves, and the cookie panel shows the storm.
        served = exporter.scrape()
        queries = dashboard_queries()
        assert len(queries) >= 10
        for expr in queries:
            prometheus.query(expr)  # raises unless Prometheus accepts it
            for name in re.findall(r"\b(?:node_netstat|tcpsleuth)_\w+", expr):
                assert f"\n{name}" in served, name
        assert prometheus.query(queries[0]), queries[0]
    finally:
        if farm is not None:
            farm.stop()
        if prometheus is not None:
            prometheus.stop()
        exporter.stop()


def test_recorder_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """The recorder's alert is tested too: with a threshold of two incidents, the one
    incident of the test does not fire it and promtool says so."""
    rules = tmp_path / "alerts.yml"
    rules.write_text(
        RULES.read_text().replace(
            "increase(tcpsleuth_recorder_incidents_total[30m]) > 0",
            "increase(tcpsleuth_recorder_incidents_total[30m]) > 1",
        )
    )
    (tmp_path / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0
    assert "alertname: TcpStormRecorded" in result.stdout + result.stderr


def test_rcvbuf_rule_unit_tests_can_fail(tmp_path: Path) -> None:
    """With the kernel condition turned around, the locked listener on the affected
    kernel no longer fires and promtool says so."""
    rules = tmp_path / "alerts.yml"
    rules.write_text(
        RULES.read_text().replace(
            'tcpsleuth_kernel_cookie_wscale_fix{status="affected"}',
            'tcpsleuth_kernel_cookie_wscale_fix{status="fixed"}',
        )
    )
    (tmp_path / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0
    assert "TcpListenerRcvbufLockedOnAffectedKernel" in result.stdout + result.stderr


def _rule_expr(name: str) -> str:
    import yaml

    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                return str(rule["expr"])
    raise KeyError(name)


def test_prometheus_sees_each_listeners_rcvbuf_lock(netns: str, tmp_path: Path) -> None:
    """A real Prometheus scraping the exporter of a namespace with a locked and an
    unlocked listener: the lock gauge per listener as `ss -ltm` has it, this kernel's
    status, and the rule's expression: empty on this fixed kernel, exactly the locked
    listener once its kernel condition is this kernel's status."""
    import subprocess
    import sys

    code = (
        "import socket,sys,time\n"
        "a=socket.socket(); a.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,102400)\n"
        "a.bind(('127.0.0.1',9092)); a.listen(50)\n"
        "b=socket.socket(); b.bind(('127.0.0.1',9093)); b.listen(50)\n"
        "print('ready',flush=True); sys.stdin.read()\n"
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdout.readline().startswith("ready")
    exporter = Exporter("--netns", netns)
    prometheus = None
    try:
        ss = subprocess.run(
            ["ip", "netns", "exec", netns, "ss", "-Hltnm"], capture_output=True, text=True
        ).stdout
        prometheus = Prometheus(tmp_path, [f"127.0.0.1:{exporter.port}"], [RULES])
        locked = prometheus.poll('tcpsleuth_listen_rcvbuf_lock{state="locked"} == 1', 20)
        assert [r["metric"]["port"] for r in locked] == ["9092"]
        assert "rb204800" in ss.split("127.0.0.1:9092")[1].split("\n")[1]
        unlocked = prometheus.value('tcpsleuth_listen_rcvbuf_lock{port="9093",state="locked"}')
        assert unlocked == 0
        assert prometheus.value('tcpsleuth_listen_rcvbuf_bytes{port="9092"}') == 204800
        fixed = prometheus.value('tcpsleuth_kernel_cookie_wscale_fix{status="fixed"}')
        assert fixed == 1  # this host's kernel (6.x) has the fix
        expr = _rule_expr("TcpListenerRcvbufLockedOnAffectedKernel")
        assert prometheus.query(expr) == []
        here = prometheus.query(expr.replace('status="affected"', 'status="fixed"'))
        assert [(r["metric"]["address"], r["metric"]["port"]) for r in here] == [
            ("127.0.0.1", "9092")
        ]
    finally:
        if prometheus is not None:
            prometheus.stop()
        exporter.stop()
        if server.stdin:
            server.stdin.close()
        server.wait(timeout=10)

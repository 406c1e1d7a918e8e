"""The dashboard's and the alert rules' Kafka queries against a live Prometheus scraping a
real Apache Kafka broker's JMX exporter (deploy/kafka/jmx-exporter.yaml's names).

Prometheus runs in the broker's namespace (the exporter listens there), scrapes the
broker while Kafka's own Java producer sends to it, and must hold what the exporter's
page says; every Kafka query of the Grafana dashboard returns the broker's series, and
KafkaProduceTimeHigh stays quiet on this healthy broker while a copy of it with the
threshold at zero fires for the broker's instance.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from support.capabilities import needs_jdk
from support.monitoring import Prometheus, require_tool
from test_alerts import RULES, dashboard_queries

from tcpsleuth.lab import kafka_broker, kafka_java, namespaces
from tcpsleuth.lab.kafka_broker import KafkaBroker, KafkaSettings
from tcpsleuth.lab.kafka_metrics import metric_values

pytestmark = needs_jdk

HOST, PORT, METRICS = "127.0.0.1", 9092, 7071
P99 = 'kafka_network_request_total_time_ms{request="Produce",quantile="0.99"}'


def _produce(ns: str, version: str, records: int) -> None:
    argv = kafka_java.java_producer(
        kafka_broker.resolve(version), f"{HOST}:{PORT}", "lab", records, 1000, 200
    )
    result = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]


def _settled(
    broker: KafkaBroker, prometheus: Prometheus, seconds: float = 20
) -> tuple[str, tuple[float, float], tuple[float | None, float | None]]:
    """The exporter's page, its Produce count and p99, and what Prometheus stored of
    them, once Prometheus holds the page's values (or after ``seconds``): with a 1 s
    scrape interval a scrape that outlasts it (a JVM just started, on a loaded host) is
    dropped, and what was stored lags the page."""
    deadline = time.monotonic() + seconds
    while True:
        page = broker.metrics()
        [count] = metric_values(
            page, "kafka_network_request_total_time_ms_count", request="Produce"
        )
        [p99] = metric_values(
            page, "kafka_network_request_total_time_ms", request="Produce", quantile="0.99"
        )
        stored = (
            prometheus.value('kafka_network_request_total_time_ms_count{request="Produce"}'),
            prometheus.value(P99),
        )
        agree = stored[0] == count and stored[1] is not None and stored[1] == pytest.approx(p99)
        if agree or time.monotonic() > deadline:
            return page, (count, p99), stored
        time.sleep(1)


def test_dashboard_and_alerts_read_the_real_brokers_metrics(tmp_path: Path) -> None:
    require_tool("prometheus")
    alerting = tmp_path / "alerts-zero.yml"
    text = RULES.read_text()
    high = 'quantile="0.99"}) > 1000\n        for: 5m'
    assert text.count(high) == 1
    alerting.write_text(text.replace(high, 'quantile="0.99"}) > 0\n        for: 0s'))
    prometheus = None
    with namespaces.namespace("kmon") as ns:
        settings = KafkaSettings(version="4.4.0", host=HOST, port=PORT, metrics_port=METRICS)
        with KafkaBroker(ns, settings, workdir=tmp_path / "broker") as broker:
            try:
                broker.start()
                prometheus = Prometheus(tmp_path, [f"{HOST}:{METRICS}"], [alerting], ns=ns)
                assert prometheus.poll('up{job="tcpsleuth"} == 1', 30), "never scraped"
                # two bursts, each until Prometheus holds what the page says: the Produce
                # series appear with the first request, and a rate needs two samples
                # that differ (a loaded host can drop every scrape of one short burst)
                _produce(ns, "4.4.0", 200)
                first = _settled(broker, prometheus)[1][0]
                _produce(ns, "4.4.0", 200)
                # what Prometheus stored is what the broker's exporter page says
                page, (count, p99), stored = _settled(broker, prometheus)
                assert count > first
                assert count >= 1
                assert stored[0] == count
                assert stored[1] == pytest.approx(p99)
                assert 0 < p99 < 1000  # a healthy broker
                # every Kafka query of the dashboard has the broker's series
                queries = [q for q in dashboard_queries() if "kafka_" in q]
                assert len(queries) >= 8
                for expr in queries:
                    result = prometheus.query(expr)
                    assert result, expr
                    for name in re.findall(r"\bkafka_\w+", expr):
                        assert f"\n{name}" in page, name
                rate = prometheus.value(
                    'sum(rate(kafka_network_requests_count{request="Produce"}[1m]))'
                )
                assert rate is not None and rate > 0
                # the alert's expression: quiet at its real threshold on a healthy broker,
                # firing for this broker once the threshold is zero
                quiet = prometheus.query(f"max by (job, instance) ({P99}) > 1000")
                assert quiet == []
                firing = prometheus.poll(
                    'ALERTS{alertname="KafkaProduceTimeHigh", alertstate="firing"}', 20
                )
                assert firing, "KafkaProduceTimeHigh (threshold 0) never fired"
                assert firing[0]["metric"]["instance"] == f"{HOST}:{METRICS}"
            finally:
                if prometheus is not None:
                    prometheus.stop()
    assert ns not in namespaces.owned()

"""Parsers of collected text, on real output of the tools and kernels that write it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, Farm

from tcpsleuth.sources import netns as netns_source
from tcpsleuth.sources import procfs
from tcpsleuth.sources.kafkaconfig import read_kafka_config
from tcpsleuth.sources.nstattext import parse_nstat
from tcpsleuth.sources.sysctltext import read_sysctl_file

STORM = FIXTURES / "bundles" / "debian12-6.18-storm"


def _simple_nstat(text: str) -> dict[str, int]:
    return {
        line.split()[0]: int(line.split()[1])
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    }


def test_counters_equal_nstat_in_a_namespace(netns: str) -> None:
    """Differential: our /proc reader against iproute2's nstat, same namespace, same moment."""
    farm = Farm(netns, "--port", "9092", "--backlog", "50", "--clients", "300", "--storm")
    try:
        with netns_source.entered(netns):
            ours = procfs.read_live_counters()
        text = subprocess.run(
            ["ip", "netns", "exec", netns, "nstat", "-asz"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        farm.stop()
    trusted = _simple_nstat(text)
    common = set(ours) & set(trusted)
    assert len(common) > 100
    assert {name: ours[name] for name in common} == {name: trusted[name] for name in common}
    assert ours["TcpActiveOpens"] >= 300  # the storm's connections are there to see
    assert parse_nstat(text, "nstat") == trusted


def test_counter_file_of_this_kernel() -> None:
    counters = procfs.read_counter_file(STORM / "proc-net-netstat.txt")
    lines = (STORM / "proc-net-netstat.txt").read_text().splitlines()
    assert len(counters) == sum(len(line.split()) - 1 for line in lines[::2])
    assert all(name.startswith(("TcpExt", "IpExt", "MPTcpExt")) for name in counters)


def test_sysctl_file_of_this_host() -> None:
    values = read_sysctl_file(STORM / "sysctl-a.txt")
    names = {line.split(" = ")[0] for line in (STORM / "sysctl-a.txt").read_text().splitlines()}
    assert set(values) == names
    # multi-line values come as repeated names, one line each
    assert values["kernel.core_modes"] == "file pipe socket"
    assert values["net.ipv4.tcp_syncookies"] == "1"
    assert len(values["net.ipv4.tcp_rmem"].split()) == 3


def test_kafka_stock_config() -> None:
    config = read_kafka_config(FIXTURES / "kafka" / "server.properties")
    # listeners is commented out in the stock file: the broker listens on 9092
    assert [(k.name, k.port) for k in config.listeners] == [("PLAINTEXT", 9092)]
    assert config.receive_buffer_bytes == config.send_buffer_bytes == 102400
    assert config.listen_backlog_size is None and config.effective_listen_backlog == 50
    assert config.sets_so_rcvbuf
    assert config.properties["zookeeper.connect"] == "localhost:2181"


def test_kafka_kraft_config_with_two_listeners() -> None:
    config = read_kafka_config(FIXTURES / "kafka" / "kraft-server.properties")
    assert [(k.name, k.host, k.port) for k in config.listeners] == [
        ("PLAINTEXT", "", 9092),
        ("CONTROLLER", "", 9093),
    ]
    assert config.properties["listener.security.protocol.map"].startswith("CONTROLLER:PLAINTEXT")


def test_kafka_config_that_sets_the_backlog(tmp_path: Path) -> None:
    text = (FIXTURES / "kafka" / "kraft-server.properties").read_text()
    edited = tmp_path / "server.properties"
    edited.write_text(
        text.replace(
            "socket.receive.buffer.bytes=102400",
            "socket.receive.buffer.bytes=-1\nsocket.listen.backlog.size = 8192",
        )
    )
    config = read_kafka_config(edited)
    assert config.listen_backlog_size == 8192 and not config.sets_so_rcvbuf


@pytest.mark.parametrize("line", ["socket.listen.backlog.size=lots", "listeners=PLAINTEXT//nohost"])
def test_kafka_config_errors_name_the_setting(tmp_path: Path, line: str) -> None:
    bad = tmp_path / "server.properties"
    bad.write_text((FIXTURES / "kafka" / "server.properties").read_text() + "\n" + line + "\n")
    with pytest.raises(Exception, match=line.split("=")[0]) as caught:
        read_kafka_config(bad)
    assert str(bad) in str(caught.value)

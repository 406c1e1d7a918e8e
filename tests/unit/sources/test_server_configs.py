"""The server configuration readers (sources/config/) on files in each program's own
syntax (tests/fixtures/servers/PROVENANCE.md), and what the audit makes of them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO

from tcpsleuth.detectors.listeners import NO, UNDETERMINED, YES, listener_facts
from tcpsleuth.detectors.servers import identify
from tcpsleuth.errors import InputError
from tcpsleuth.model.programs import PROGRAMS
from tcpsleuth.model.records import HostSnapshot, Listener, ServerConfig, SocketOwner
from tcpsleuth.sources.config import locate, parse_option, read_server_config
from tcpsleuth.sources.kafkaprocess import broker_from_cmdline

SERVERS = FIXTURES / "servers"


def _by_address(config: ServerConfig) -> dict[tuple[str, int], tuple[int | None, int | None]]:
    return {(x.host, x.port): (x.backlog, x.rcvbuf) for x in config.listeners}


def test_nginx_listens_with_their_parameters_and_includes() -> None:
    config = read_server_config("nginx", SERVERS / "nginx.conf")
    assert _by_address(config) == {
        ("0.0.0.0", 80): (None, None),
        ("::", 80): (None, None),
        ("127.0.0.1", 8080): (4096, 64 * 1024),  # merged over both listen lines
        ("10.0.0.5", 443): (None, 131072),  # from sites/*.conf
        ("0.0.0.0", 9000): (100, None),  # stream {}
    }
    [api] = [x for x in config.listeners if x.port == 443]
    assert api.where == f"{SERVERS / 'sites' / 'api.conf'}:2"
    assert api.text == "listen 10.0.0.5:443 ssl rcvbuf=131072;"


def test_nginx_syntax_errors_name_the_line(tmp_path: Path) -> None:
    broken = tmp_path / "nginx.conf"
    broken.write_text("http {\n  server {\n    listen 80 rcvbuf=lots;\n  }\n}\n")
    with pytest.raises(InputError, match=r"nginx.conf:3: rcvbuf= is not a size") as raised:
        read_server_config("nginx", broken)
    assert "lots" not in str(raised.value)  # the line, never what the file says
    broken.write_text("http {\n  server {\n    listen 80;\n")
    with pytest.raises(InputError, match="never closed"):
        read_server_config("nginx", broken)


def test_zookeeper_client_port_and_backlog() -> None:
    config = read_server_config("zookeeper", SERVERS / "zoo.cfg")
    assert _by_address(config) == {("127.0.0.1", 2181): (1024, None)}
    assert config.settings["clientPortListenBacklog"] == "1024"
    assert config.listeners[0].where == f"{SERVERS / 'zoo.cfg'}:6"
    dynamic = read_server_config("zookeeper", SERVERS / "zoo-dynamic.cfg")
    assert _by_address(dynamic) == {("0.0.0.0", 2181): (None, None)}
    assert dynamic.notes  # no clientPortListenBacklog: 50


@pytest.mark.parametrize("name", ["rabbitmq.conf", "rabbitmq.config"])
def test_rabbitmq_both_formats(name: str) -> None:
    config = read_server_config("rabbitmq", SERVERS / name)
    expected = {
        "rabbitmq.conf": {("", 5672): (4096, 196608), ("::1", 5673): (4096, 196608)},
        "rabbitmq.config": {("127.0.0.1", 5672): (4096, 196608), ("", 5673): (4096, 196608)},
    }
    assert _by_address(config) == expected[name]
    assert config.settings["tcp_listen_options.recbuf"] == "196608"


def test_redis_binds_port_and_backlog() -> None:
    config = read_server_config("redis", SERVERS / "redis.conf")
    assert _by_address(config) == {("127.0.0.1", 6380): (2048, None), ("::1", 6380): (2048, None)}


def test_postgresql_backlog_is_twice_max_connections() -> None:
    config = read_server_config("postgresql", SERVERS / "postgresql.conf")
    assert _by_address(config) == {("0.0.0.0", 5433): (600, None), ("::", 5433): (600, None)}
    assert config.settings["max_connections"] == "300"


def test_envoy_socket_options_and_backlog() -> None:
    config = read_server_config("envoy", SERVERS / "envoy.yaml")
    assert _by_address(config) == {
        ("0.0.0.0", 10000): (None, 65536),
        ("127.0.0.1", 10001): (8192, None),
    }
    [ingress] = [x for x in config.listeners if x.port == 10000]
    assert ingress.where == f"{SERVERS / 'envoy.yaml'}:5" and ingress.text == "listener ingress"


def test_config_option_and_locate(tmp_path: Path) -> None:
    assert parse_option("nginx=/etc/nginx/nginx.conf") == ("nginx", Path("/etc/nginx/nginx.conf"))
    with pytest.raises(InputError, match="PROGRAM=FILE"):
        parse_option("apache=/etc/apache2/apache2.conf")
    conf = tmp_path / "zoo.cfg"
    conf.write_text("clientPort=2181\n")
    java = ["java", "-cp", "x", "org.apache.zookeeper.server.ZooKeeperServerMain", "zoo.cfg"]
    assert locate("zookeeper", java, tmp_path) == conf
    nginx_conf = tmp_path / "nginx.conf"
    nginx_conf.write_text("events {}\n")
    title = [f"nginx: master process /usr/sbin/nginx -c {nginx_conf}"]
    assert locate("nginx", title, None) == nginx_conf
    assert locate("nginx", ["nginx: worker process"], None) in (None, Path("/etc/nginx/nginx.conf"))


def _host(listeners: list[Listener], configs: tuple[ServerConfig, ...]) -> HostSnapshot:
    return HostSnapshot(
        origin="test",
        hostname="h",
        kernel_release="6.1.0",
        sysctls={
            "net.ipv4.tcp_rmem": "4096 131072 6291456",
            "net.core.rmem_max": "212992",
            "net.ipv4.tcp_adv_win_scale": "1",
        },
        counters={},
        listeners=listeners,
        connections=[],
        server_configs=configs,
    )


def test_config_settles_what_the_buffer_cannot() -> None:
    """A buffer equal to tcp_rmem[1] is undetermined from the kernel's numbers alone;
    nginx's file says which listen sets rcvbuf= (64k would give 131072 too)."""
    nginx = (SocketOwner("nginx", 10, 6, ("nginx: master process nginx -c x",)),)
    listeners = [
        Listener("127.0.0.1", 8080, 511, 0, rcvbuf=131072, owners=nginx),  # rcvbuf=64k
        Listener("0.0.0.0", 80, 511, 0, rcvbuf=131072, owners=nginx),  # no rcvbuf=
        Listener("10.0.0.5", 443, 511, 0, rcvbuf=262144, owners=nginx),  # kernel: locked
        Listener("0.0.0.0", 7000, 50, 0, rcvbuf=131072),  # nobody says
    ]
    config = read_server_config("nginx", SERVERS / "nginx.conf")
    facts = {f.local: f for f in listener_facts(_host(listeners, (config,)))}
    assert facts["127.0.0.1:8080"].rcvbuf_locked == YES
    assert "sets it to 65536" in facts["127.0.0.1:8080"].lock_reason
    assert facts["0.0.0.0:80"].rcvbuf_locked == NO
    assert facts["10.0.0.5:443"].rcvbuf_locked == YES
    assert facts["0.0.0.0:7000"].rcvbuf_locked == UNDETERMINED
    assert facts["0.0.0.0:7000"].program is None
    assert {f.program for f in facts.values() if f.local_port != 7000} == {"nginx"}


def test_a_reuseport_group_reports_the_buffer_its_lock_was_decided_on() -> None:
    """Two sockets on one address (SO_REUSEPORT), one at tcp_rmem[1] and one locked
    smaller: the lock is decided on the locked one, and that is the buffer reported
    (the largest, the unlocked one's, was reported while the verdict used the other)."""
    listeners = [
        Listener("0.0.0.0", 9092, 50, 0, rcvbuf=131072),
        Listener("0.0.0.0", 9092, 50, 0, rcvbuf=65536),  # SO_RCVBUF 32768
    ]
    [fact] = listener_facts(_host(listeners, ()))
    assert fact.rcvbuf_locked == YES and fact.rcvbuf == 65536
    doc = fact.to_dict()
    assert (doc["rcvbuf"], doc["so_rcvbuf"], doc["sockets"]) == (65536, 32768, 2)


CONFLUENT = "io.confluent.support.metrics.SupportedKafka"


@pytest.mark.parametrize(
    ("main", "program"),
    [
        ("kafka.Kafka", "kafka"),
        (CONFLUENT, "kafka"),
        ("org.apache.zookeeper.server.quorum.QuorumPeerMain", "zookeeper"),
        ("org.apache.zookeeper.server.ZooKeeperServerMain", "zookeeper"),
        ("org.example.Server", "java"),
    ],
)
def test_a_jvm_is_named_and_its_file_found_by_one_table(
    tmp_path: Path, main: str, program: str
) -> None:
    """Identification, configuration location and Kafka discovery agree on every main
    class: Confluent's SupportedKafka is Kafka for all three (it was "java" with no
    file found, while discovery knew it)."""
    argv = ("java", "-Xmx1G", "-cp", "/opt/kafka/libs/kafka_2.13-3.6.1.jar", main, "my.cfg")
    assert identify([SocketOwner("java", 7, 3, argv)]) == program
    found = locate(program, argv, tmp_path)
    assert found == (tmp_path / "my.cfg" if program != "java" else None)
    broker = broker_from_cmdline(7, list(argv), proc=tmp_path)
    if program == "kafka":
        assert broker is not None and broker.version == "3.6.1"
    else:
        assert broker is None


def _help_text_lines(tree: ast.Module) -> set[int]:
    """The lines of a module's docstrings (a click command's help is its docstring)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                first = body[0]
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def main_class_mentions(package: Path) -> list[str]:
    """FILE:LINE of every main class of the program table written anywhere under
    ``package`` but the table itself, the lab (which starts real servers) and help
    texts."""
    classes = [c for p in PROGRAMS.values() for c in p.main_classes]
    # a whole name: `kafka.Kafka` is a main class, `kafka.KafkaRequests` (the module
    # detectors.capture.kafka's class) is not
    named = re.compile("|".join(rf"(?<![\w.]){re.escape(c)}(?![\w])" for c in classes))
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] == "lab" or relative.as_posix() == "model/programs.py":
            continue
        text = path.read_text()
        if not named.search(text):
            continue
        helps = _help_text_lines(ast.parse(text)) if relative.parts[0] == "cli" else set()
        for number, line in enumerate(text.splitlines(), 1):
            if number not in helps and named.search(line):
                found.append(f"{relative}:{number}")
    return found


def test_main_classes_are_written_in_the_program_table_only(tmp_path: Path) -> None:
    package = REPO / "src" / "tcpsleuth"
    assert main_class_mentions(package) == []
    # the check can fail: a copy of the list in a source module is found
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "x.py").write_text(f'MAINS = ("a", "{CONFLUENT}")\n')
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "c.py").write_text(
        f'def c():\n    """pgrep -f {CONFLUENT}"""\n    return "kafka.Kafka"\n'
    )
    (tmp_path / "sources" / "y.py").write_text("requests: kafka.KafkaRequests\n")
    assert main_class_mentions(tmp_path) == ["cli/c.py:3", "sources/x.py:1"]

"""Server programs that listen for many clients, in one table: how to recognise them
from the process that holds a listener (the Java main classes of those running in a
JVM), where their configuration file is named or lies, what backlog they listen with
unless told otherwise, and the setting that changes their backlog or their listening
socket's receive buffer, in their own terms.

Identification (``detectors/servers.py``), configuration location
(``sources/config``) and Kafka process discovery (``sources/kafkaprocess.py``) all read
this table; a main class, option or default written anywhere else would drift from it.

The kernel knows every listener's backlog and receive buffer whatever program owns it
(sources/sockdiag.py); this table only turns those numbers into advice an operator of
that program can follow. Each default was checked against the program's own source or
documentation (cited per entry) before being relied on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerProgram:
    name: str  # the short name in JSON and in --config PROGRAM=FILE
    title: str  # as its users write it
    config_file: str  # where the setting lives
    default_backlog: str  # what it passes to listen() unless told otherwise
    backlog_setting: str  # the setting, in the program's own terms
    rcvbuf_setting: str | None  # what sets SO_RCVBUF on its listening socket, if anything
    source: str  # where the default comes from
    # Java main classes that start it: its process is `java`, told apart by these
    main_classes: tuple[str, ...] = ()
    # command-line options naming its configuration file (a main class's argument
    # names it too)
    config_options: tuple[str, ...] = ()
    # the file it reads when its command line names none (None: none it always reads)
    default_config: Path | None = None

    def backlog_advice(self, target: int, where: str = "") -> str:
        at = f" ({where})" if where else ""
        text = {
            "nginx": f"add backlog={target} to the `listen` directive of this address{at}"
            " (nginx listens with 511 on Linux unless told; backlog= may be given once per"
            " address:port)",
            "zookeeper": f"set clientPortListenBacklog={target} in zoo.cfg{at} (ZooKeeper"
            " 3.4.14, 3.5.5, 3.6.0 and later; unset, the client port listens with 50)",
            "rabbitmq": f"set tcp_listen_options.backlog = {target} in rabbitmq.conf{at}"
            " (RabbitMQ's default is 128)",
            "redis": f"set tcp-backlog {target} in redis.conf{at} (default 511)",
            "postgresql": "PostgreSQL listens with 2 x max_connections (postgresql.conf"
            f"{at}): the backlog grows only with max_connections; keep the clients that"
            " reconnect at once below it, or put a connection pooler in front",
            "envoy": f"set tcp_backlog_size: {target} on the listener{at} (unset, Envoy"
            " listens with net.core.somaxconn)",
            "kafka": f"set socket.listen.backlog.size={target} in server.properties{at}"
            " (Kafka 3.2.0 and later; older brokers hard-code 50)",
            "java": f"have the Java server bind with a backlog of at least {target}: a"
            " ServerSocket bound without one listens with 50",
        }
        return text.get(
            self.name, f"have {self.title} listen() with a backlog of at least {target}"
        )

    def rcvbuf_advice(self, where: str = "") -> str:
        at = f" ({where})" if where else ""
        text = {
            "nginx": f"remove rcvbuf= from the `listen` directive of this address{at}: nginx"
            " then leaves the listening socket's buffer to the kernel",
            "rabbitmq": f"remove tcp_listen_options.recbuf from rabbitmq.conf{at} (it sets"
            " SO_RCVBUF on the listening socket)",
            "envoy": f"remove the socket_options entry level 1 name 8 (SO_RCVBUF) from the"
            f" listener{at}",
            "kafka": f"set socket.receive.buffer.bytes=-1 in server.properties{at}: the"
            " broker then leaves SO_RCVBUF to the kernel",
        }
        return text.get(
            self.name,
            f"find what sets SO_RCVBUF on {self.title}'s listening socket and leave the "
            "buffer to the kernel (tcp_rmem), or set it on accepted sockets only",
        )


PROGRAMS = {
    p.name: p
    for p in (
        ServerProgram(
            "nginx",
            "nginx",
            "nginx.conf",
            "511",
            "listen ... backlog=N",
            "listen ... rcvbuf=SIZE (set after listen(); ss -ltm shows rb = 2 x SIZE)",
            # NGX_LISTEN_BACKLOG in src/os/unix/ngx_linux_config.h; rcvbuf is set by
            # ngx_configure_listening_sockets() in src/core/ngx_connection.c, after the
            # listen() of ngx_open_listening_sockets()
            "nginx src/os/unix/ngx_linux_config.h (NGX_LISTEN_BACKLOG 511), "
            "src/core/ngx_connection.c (SO_RCVBUF after listen())",
            config_options=("-c",),
            default_config=Path("/etc/nginx/nginx.conf"),  # Debian's --conf-path
        ),
        ServerProgram(
            "zookeeper",
            "ZooKeeper",
            "zoo.cfg",
            "50",
            "clientPortListenBacklog",
            None,
            # zookeeper-docs zookeeperAdmin.md: "By default, this value is unset (-1)
            # which, on Linux, uses a backlog of 50"; new in 3.4.14, 3.5.5, 3.6.0
            "ZooKeeper Administrator's Guide, clientPortListenBacklog",
            main_classes=(
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                "org.apache.zookeeper.server.ZooKeeperServerMain",
            ),
        ),
        ServerProgram(
            "rabbitmq",
            "RabbitMQ",
            "rabbitmq.conf",
            "128",
            "tcp_listen_options.backlog",
            "tcp_listen_options.recbuf",
            # rabbit.app.src / Makefile app env: tcp_listen_options [{backlog, 128}, ...];
            # the networking guide documents tcp_listen_options.recbuf
            "rabbitmq-server app env tcp_listen_options ({backlog, 128}); networking guide",
            default_config=Path("/etc/rabbitmq/rabbitmq.conf"),
        ),
        ServerProgram(
            "redis",
            "Redis",
            "redis.conf",
            "511",
            "tcp-backlog",
            None,
            "redis.conf (tcp-backlog 511, the built-in default too)",
        ),
        ServerProgram(
            "postgresql",
            "PostgreSQL",
            "postgresql.conf",
            "2 x max_connections (200 with the default 100)",
            "max_connections",
            None,
            # src/backend/libpq/pqcomm.c ListenServerPort: maxconn = MaxConnections * 2;
            # older releases used 2 x MaxBackends clamped at PG_SOMAXCONN
            "PostgreSQL src/backend/libpq/pqcomm.c (listen(fd, MaxConnections * 2))",
        ),
        ServerProgram(
            "envoy",
            "Envoy",
            "the bootstrap or listener YAML",
            "net.core.somaxconn",
            "tcp_backlog_size",
            "socket_options: level 1 (SOL_SOCKET), name 8 (SO_RCVBUF)",
            # api/envoy/config/listener/v3/listener.proto: "If no value is provided
            # net.core.somaxconn will be used on Linux and 128 otherwise."
            "Envoy listener.proto tcp_backlog_size",
            config_options=("-c", "--config-path"),
        ),
        ServerProgram(
            "kafka",
            "Apache Kafka",
            "server.properties",
            "50",
            "socket.listen.backlog.size (3.2.0+, KIP-764)",
            "socket.receive.buffer.bytes (default 102400; -1 leaves it to the kernel)",
            "Kafka SocketServer; KIP-764",
            # Confluent Platform's builds start the broker through SupportedKafka
            main_classes=("kafka.Kafka", "io.confluent.support.metrics.SupportedKafka"),
        ),
        ServerProgram(
            "java",
            "a Java server",
            "the server's own settings",
            "50 (java.net.ServerSocket without a backlog)",
            "the backlog argument of ServerSocket/bind()",
            "ServerSocket.setReceiveBufferSize() before bind()",
            "java.net.ServerSocket javadoc: the maximum queue length is set to 50",
        ),
    )
}


def java_main(args: Sequence[str]) -> tuple[ServerProgram, int] | None:
    """The server program a JVM command line starts, with the position of its main
    class in ``args``; None when no main class of the table is there."""
    for i, arg in enumerate(args):
        for program in PROGRAMS.values():
            if arg in program.main_classes:
                return program, i
    return None

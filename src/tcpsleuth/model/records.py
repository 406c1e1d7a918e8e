"""Plain records that sources produce and detectors consume.

Field names follow the kernel's ``tcp_info`` and ``ss`` (``snd_wscale``,
``rcv_wscale``, ``snd_wnd``, ``rwnd_limited``) so that anyone who knows those
tools can read the detectors. Times are in microseconds, as ``tcp_info`` keeps
them; ``None`` means the source did not have the field (an old kernel, an old
``ss``, a field that text output leaves out).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from tcpsleuth.model.findings import endpoint
from tcpsleuth.model.text import to_int

# TCP states as the kernel numbers them (include/net/tcp_states.h).
TCP_STATES = {
    1: "ESTAB",
    2: "SYN-SENT",
    3: "SYN-RECV",
    4: "FIN-WAIT-1",
    5: "FIN-WAIT-2",
    6: "TIME-WAIT",
    7: "UNCONN",
    8: "CLOSE-WAIT",
    9: "LAST-ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW-SYN-RECV",
}
STATE_NUMBERS = {name: number for number, name in TCP_STATES.items()}


@dataclass(frozen=True)
class SocketOwner:
    """A process holding a socket, as ``ss -p`` prints it: ``("nginx",pid=1234,fd=6)``
    (iproute2 before 3.14: ``("nginx",1234,6)``). ``comm`` is the kernel's 15-character
    task name (/proc/PID/comm); ``cmdline`` is read from /proc/PID/cmdline on a live host
    only (a bundle's ``ss`` output has none)."""

    comm: str
    pid: int
    fd: int | None = None
    cmdline: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Listener:
    """A LISTEN socket. ``backlog`` is the kernel's ``sk_max_ack_backlog``: the
    application's ``listen()`` backlog already capped by ``net.core.somaxconn``
    (``ss -ltn`` shows it as Send-Q). ``accept_queue`` is connections waiting
    for ``accept()`` (Recv-Q). ``rcvbuf`` is ``sk_rcvbuf`` in bytes (``ss -m``'s
    ``rb``, sock_diag's INET_DIAG_SKMEMINFO), None where the source did not have it;
    ``owners`` the processes holding it (``ss -p``), empty where unknown."""

    local_ip: str
    local_port: int
    backlog: int
    accept_queue: int
    rcvbuf: int | None = None
    inode: int | None = None
    owners: tuple[SocketOwner, ...] = ()

    @property
    def local(self) -> str:
        return endpoint(self.local_ip, self.local_port)


@dataclass(frozen=True)
class TcpConnection:
    """One TCP socket that is not listening, seen from the local end."""

    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    state: str
    recv_q: int = 0
    send_q: int = 0
    # tcp_info, when the source has it
    snd_wscale: int | None = None
    rcv_wscale: int | None = None
    rto: float | None = None  # ms
    rtt: float | None = None  # ms
    rttvar: float | None = None  # ms
    mss: int | None = None
    rcv_mss: int | None = None
    advmss: int | None = None
    pmtu: int | None = None
    cwnd: int | None = None
    ssthresh: int | None = None
    bytes_sent: int | None = None
    bytes_acked: int | None = None
    bytes_received: int | None = None
    bytes_retrans: int | None = None
    segs_out: int | None = None
    segs_in: int | None = None
    retrans_total: int | None = None
    unacked: int | None = None
    notsent_bytes: int | None = None
    rcv_space: int | None = None
    rcv_ssthresh: int | None = None
    snd_wnd: int | None = None
    rcv_wnd: int | None = None
    busy_time: int | None = None  # us
    rwnd_limited: int | None = None  # us
    sndbuf_limited: int | None = None  # us
    timestamps: bool | None = None
    sack: bool | None = None
    ecn: bool | None = None
    inode: int | None = None

    @property
    def local(self) -> str:
        return endpoint(self.local_ip, self.local_port)

    @property
    def remote(self) -> str:
        return endpoint(self.remote_ip, self.remote_port)


@dataclass(frozen=True)
class HostSnapshot:
    """Everything the host audit reads, from a live host or from a bundle.

    ``sysctls`` uses dotted names as ``sysctl -a`` prints them, values with
    runs of white space folded to one space. ``counters`` uses ``nstat``'s
    names (``TcpExtSyncookiesSent``); a counter the kernel does not have is
    absent, not zero. ``listeners`` or ``connections`` is ``None`` when the
    source had no socket listing at all.
    """

    origin: str
    hostname: str
    kernel_release: str
    sysctls: Mapping[str, str]
    counters: Mapping[str, int]
    listeners: list[Listener] | None
    connections: list[TcpConnection] | None
    kafka_config: KafkaConfig | None = None
    # other servers' configuration files (nginx, ZooKeeper, ...): what the kernel cannot
    # know, the setting to change and where it is
    server_configs: tuple[ServerConfig, ...] = ()
    proc_version: str | None = (
        None  # /proc/version, which names the upstream base on some distributions
    )
    notes: list[str] = field(default_factory=list)

    def sysctl_int(self, name: str) -> int | None:
        value = self.sysctls.get(name)
        if value is None:
            return None
        words = value.split()
        return to_int(words[0]) if words else None

    def established_per_port(self) -> Counter[int]:
        """Established connections per local port (the server side of each one)."""
        counts: Counter[int] = Counter()
        for conn in self.connections or ():
            if conn.state == "ESTAB":
                counts[conn.local_port] += 1
        return counts


def kafka_release(version: str | None) -> tuple[int, int, int] | None:
    """An Apache Kafka version (``3.1.2``, ``3.2``) as (3, 1, 2); None when it is not
    one. Confluent's builds (``7.1.0-ccs``) number differently and carry backports
    (KIP-764 in some 6.2.x), so they are not guessed at."""
    if not version or "ccs" in version:
        return None
    parts = []
    for part in version.split("-", 1)[0].split(".")[:3]:
        if not part.isdigit():
            break
        parts.append(int(part))
    if len(parts) < 2:
        return None
    return (parts[0], parts[1], parts[2] if len(parts) > 2 else 0)


@dataclass(frozen=True)
class ConfiguredListener:
    """A listening address as a server's configuration file gives it, with the settings
    that decide its socket: ``backlog`` (the value the file sets; None: the program's
    default) and ``rcvbuf`` (the SO_RCVBUF the program sets on the listening socket;
    None: not set, the kernel sizes it). ``host`` is "" for every address (nginx's
    ``listen 80``, ZooKeeper without clientPortAddress). ``where`` is FILE:LINE and
    ``text`` the directive as written, for advice."""

    host: str
    port: int
    backlog: int | None = None
    rcvbuf: int | None = None
    where: str = ""
    text: str = ""


@dataclass(frozen=True)
class ServerConfig:
    """A server program's configuration as far as its listeners are concerned.

    ``program`` is the short name tcpsleuth knows it by (``nginx``, ``zookeeper``,
    ``rabbitmq``, ``redis``, ``postgresql``, ``envoy``, ``kafka``); ``settings`` the raw
    values of the settings that matter, as the file writes them, under the program's own
    names (``clientPortListenBacklog``, ``tcp_listen_options.backlog``,
    ``max_connections``...); a setting the file leaves out is absent. Defaults are the
    detectors' business, not the reader's."""

    program: str
    path: str
    listeners: tuple[ConfiguredListener, ...]
    settings: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class KafkaListener:
    name: str
    host: str
    port: int


@dataclass(frozen=True)
class KafkaConfig:
    """The broker settings that decide how its listeners meet a reconnect storm.

    ``listen_backlog_size`` is ``None`` when the file does not set it: Kafka
    then uses 50 (hard-coded before 3.2.0, the default of
    ``socket.listen.backlog.size`` since). ``receive_buffer_bytes`` is
    ``socket.receive.buffer.bytes`` (default 102400; -1 leaves SO_RCVBUF to
    the OS). ``version`` is the broker's Kafka version when known (its jars, or
    the operator's word), ``version_source`` says where it came from.
    """

    path: str
    properties: Mapping[str, str]
    listeners: list[KafkaListener]
    listen_backlog_size: int | None
    receive_buffer_bytes: int
    send_buffer_bytes: int
    version: str | None = None
    version_source: str | None = None

    KAFKA_DEFAULT_BACKLOG = 50
    KAFKA_DEFAULT_BUFFER = 102400
    # KIP-764 (KAFKA-9648): socket.listen.backlog.size exists from Kafka 3.2.0; before
    # it the Acceptor binds with the JDK's default backlog, 50, whatever the file says.
    LISTEN_BACKLOG_SINCE = (3, 2, 0)

    @property
    def honours_listen_backlog(self) -> bool | None:
        """Whether this broker's version reads socket.listen.backlog.size (None: the
        version is not known)."""
        release = kafka_release(self.version)
        return None if release is None else release >= self.LISTEN_BACKLOG_SINCE

    @property
    def effective_listen_backlog(self) -> int:
        if self.honours_listen_backlog is False:
            return self.KAFKA_DEFAULT_BACKLOG
        return self.listen_backlog_size or self.KAFKA_DEFAULT_BACKLOG

    @property
    def sets_so_rcvbuf(self) -> bool:
        return self.receive_buffer_bytes != -1

    def server_config(self) -> ServerConfig:
        """This file seen like the other programs' files: every listener with
        socket.listen.backlog.size and the SO_RCVBUF the broker sets on it."""
        rcvbuf = self.receive_buffer_bytes if self.sets_so_rcvbuf else None
        return ServerConfig(
            "kafka",
            self.path,
            tuple(
                ConfiguredListener(
                    x.host,
                    x.port,
                    self.listen_backlog_size,
                    rcvbuf,
                    self.path,
                    f"listeners={x.name}://{x.host}:{x.port}",
                )
                for x in self.listeners
            ),
        )


@dataclass(frozen=True)
class WindowSample:
    """One socket's window state when it received a segment (``tcpsleuth trace``)."""

    time_ns: int
    netns: int
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    snd_wscale: int
    rcv_wscale: int
    snd_wnd: int  # bytes: the peer's window as this socket believes it
    rcv_wnd: int  # bytes: the window this socket offers
    window_clamp: int
    inflight: int  # snd_nxt - snd_una
    mss: int
    unsent: bool
    wait_ns: int  # total time spent waiting at the peer's window so far
    segs: int  # segments received so far (while traced)


@dataclass(frozen=True)
class ProbedConnection:
    """One connection of the kernel self-test (``tcpsleuth probe``), made by SYN cookie."""

    client: str
    server: str
    family: str
    timestamps: bool  # tcp_timestamps in the server namespace for this round
    announced_wscale: int | None  # in the SYN-ACK, from the capture (None: no option)
    client_snd_wscale: int | None
    server_rcv_wscale: int | None
    client_snd_wnd: int | None

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass
class ProbeResult:
    """What the kernel self-test measured on this host's kernel."""

    kernel_release: str
    rcvbuf: int
    connections: list[ProbedConnection] = field(default_factory=list)
    syncookies_sent: int = 0


# The sysctls the audit reads; the live source reads exactly these.
AUDIT_SYSCTLS = (
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_timestamps",
    "net.ipv4.tcp_window_scaling",
    "net.ipv4.tcp_sack",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_adv_win_scale",
    "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_syn_retries",
    "net.core.somaxconn",
    "net.core.rmem_max",
    "net.core.rmem_default",
    "net.core.wmem_max",
)

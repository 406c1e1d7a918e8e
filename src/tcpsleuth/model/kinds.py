"""Every finding kind tcpsleuth reports: its name, severities, subject and evidence.

This is the one place a kind is defined. ``Finding`` refuses a kind that is not here,
the README's and ``docs/findings.md``'s tables are generated from it
(``scripts/make_kinds_doc.py``), and a test checks both.

Naming: kebab-case, ``<what>-<state>``. A kind about a setting starts with the
setting's name without its ``tcp_`` prefix (``syncookies-always``, ``somaxconn-low``);
a kind about what happened on the wire names it in words (``syn-cookies-sent``,
``listen-overflows``); the same thing seen through another source of evidence keeps its
name and adds the source (``syn-cookies-rate`` from sampled counters,
``syn-cookies-seen`` from a capture). Kinds are stable: a renamed kind is still
accepted under its old name for one release and every finding of it carries the old
name in ``aliases`` (JSON), so a script matching on the old name can move at leisure.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

CONNECTION, LISTENER, HOST, SNAPSHOTS = "connection", "listener", "host", "snapshots"


@dataclass(frozen=True)
class Kind:
    name: str
    family: str  # settings, kernel, counters, listeners, connections, capture, kafka
    subject: str  # connection, listener, host or snapshots
    severities: tuple[str, ...]  # the severities it can have, worst first
    meaning: str  # one line
    evidence: tuple[str, ...]  # every key, from every command: null where one cannot know it
    aliases: tuple[str, ...] = field(default=())  # former names, kept for one release
    sources: tuple[str, ...] = field(default=())  # commands or evidence that report it

    @functools.cached_property
    def keys(self) -> frozenset[str]:
        return frozenset(self.evidence)


_C, _W, _I = "critical", "warning", "info"
_COOKIE_COUNTERS = (
    "TcpExtSyncookiesSent",
    "TcpExtSyncookiesRecv",
    "TcpExtSyncookiesFailed",
    "TcpExtTCPReqQFullDoCookies",
)
_OVERFLOW_COUNTERS = ("TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPReqQFullDrop")
_CLIENTS = ("clients", "client_ids")
_KERNEL_BUG = (
    "announced_wscale",
    "actual_wscale",
    "window_shrink_factor",
    "kernel_release",
    "kernel_status",
    "kernel_reason",
    "verdict_source",
    "tcp_syncookies",
    "tcp_timestamps",
    "so_rcvbuf",
    "locked_listeners",
    "undetermined_listeners",
    "affected_connections",
    "cookie_connections",
    "families",
    "client_snd_wnd",
)
# one connection from both ends (compare), both ends traced (trace), a capture's windows
# after the handshake (pcap, per server) or its SYN-ACKs against the server's sockets
# (record, per server): ``source`` says which; ``socket_wscale`` is null where no socket
# was read, ``inferred_wscale`` where no capture was
_WSCALE_MISMATCH = (
    "announced_wscale",
    "actual_wscale",
    "shrink_factor",
    "source",
    "socket_wscale",
    "inferred_wscale",
    "direction",
    "connections",
    *_CLIENTS,
    "reader",
    "believed_window_bytes",
    "offered_window_bytes",
    "mss",
    "rcv_space",
    "rwnd_limited_ms",
    "handshakes_joined",
    "connections_with_scaling",
    "exact_power_of_two",
    "connections_listed",
    "streams",
    "proof",
)
# a sender held at its peer's window: one connection from its socket (sockets), its trace
# (trace) or a capture (pcap, where the listener's many connections are one finding with
# medians; ``source`` says which)
_RWND_LIMITED = (
    "sender",
    "source",
    "direction",
    "rwnd_limited_ms",
    "rwnd_limited_share",
    "busy_ms",
    "effective_window_bytes",
    "effective_window_segments",
    "mss",
    "snd_wscale",
    "sndbuf_limited_ms",
    "rtt_ms",
    "stream",
    "waits",
    "min_window_bytes",
    "syn_wscale",
    "synack_wscale",
    "connections",
    "rwnd_limited_ms_median",
    "rwnd_limited_ms_max",
    "rwnd_limited_share_median",
    *_CLIENTS,
    "streams",
    "worst",
)

_KINDS = (
    # settings (sysctl -a, the live host, bundles)
    Kind("window-scaling-disabled", "settings", HOST, (_W,),
         "net.ipv4.tcp_window_scaling=0: windows cannot exceed 64 KiB",
         ("tcp_window_scaling",), sources=("audit", "doctor")),
    Kind("syncookies-without-timestamps", "settings", HOST, (_W,),
         "SYN cookies on with TCP timestamps off: cookie connections lose window scaling",
         ("tcp_syncookies", "tcp_timestamps"), sources=("audit", "doctor")),
    Kind("syncookies-always", "settings", HOST, (_W,),
         "net.ipv4.tcp_syncookies=2: every connection is made by cookie",
         ("tcp_syncookies", "tcp_timestamps"), sources=("audit", "doctor")),
    Kind("syncookies-disabled", "settings", HOST, (_I,),
         "SYN cookies off: a full queue drops SYNs and clients back off 1, 3, 7 s",
         ("tcp_syncookies", "tcp_max_syn_backlog"), sources=("audit", "doctor")),
    Kind("somaxconn-low", "settings", HOST, (_I,),
         "net.core.somaxconn caps every listen backlog low",
         ("somaxconn",), sources=("audit", "doctor")),
    # the kernel's cookie window-scale bug
    Kind("kernel-cookie-wscale-bug", "kernel", HOST, (_C, _W, _I),
         "the kernel lacks the fix: cookie connections to a listener with SO_RCVBUF set "
         "get a window scale the client never saw",
         _KERNEL_BUG, sources=("audit", "probe")),
    Kind("kernel-cookie-wscale-ok", "kernel", HOST, (_I,),
         "the probe's cookie connections used the announced window scale",
         ("announced_wscale", "actual_wscale", "cookie_connections", "families", "so_rcvbuf",
          "verdict_source"), sources=("probe",)),
    Kind("kernel-cookie-wscale-unknown", "kernel", HOST, (_W,),
         "whether this kernel has the fix cannot be told from its release; run the probe",
         _KERNEL_BUG, sources=("audit",)),
    Kind("kernel-cookie-without-timestamps", "kernel", HOST, (_I,),
         "the probe's cookie connections were made without timestamps, so without "
         "window scaling",
         ("announced_wscale", "client_snd_wscale", "server_rcv_wscale", "client_snd_wnd",
          "connections"),
         aliases=("cookie-without-timestamps",), sources=("probe",)),
    # counters (nstat, /proc/net/netstat, sampled rates)
    Kind("syn-cookies-sent", "counters", HOST, (_W,),
         "SYN cookies were sent since boot: a listen queue overflowed",
         _COOKIE_COUNTERS, aliases=("syncookies-sent",), sources=("audit", "doctor")),
    Kind("syn-cookies-rate", "counters", HOST, (_W,),
         "SYN cookies are being sent now, above the storm threshold",
         ("seconds", "cookies_per_second", *_COOKIE_COUNTERS),
         aliases=("syn-cookie-storm",), sources=("watch", "doctor")),
    Kind("listen-overflows", "counters", HOST, (_W,),
         "accept queues overflowed since boot",
         _OVERFLOW_COUNTERS, sources=("audit", "doctor")),
    Kind("listen-overflows-rate", "counters", HOST, (_W,),
         "accept queues are overflowing now",
         ("seconds", *_OVERFLOW_COUNTERS), aliases=("listen-overflow",),
         sources=("watch", "doctor")),
    Kind("rwnd-limited-rate", "counters", HOST, (_W,),
         "many connections of a port became window-limited between two samples",
         ("seconds", "ports", "rwnd_limited_connections", "previous", "connections"),
         sources=("record",)),
    # listeners
    Kind("accept-queue-full", "listeners", LISTENER, (_W,),
         "a listener's accept queue is at its backlog",
         ("accept_queue", "backlog"), sources=("watch",)),
    Kind("listen-backlog-small", "listeners", LISTENER, (_C, _W, _I),
         "a listener's backlog is smaller than the connections that come back after a restart",
         ("backlog", "established", "queue_limit", "somaxconn", "tcp_max_syn_backlog",
          "syn_queue_limit", "accept_queue", "listeners", "program", "processes",
          "backlog_setting", "program_default_backlog", "configured_backlog", "config"),
         sources=("audit", "doctor")),
    Kind("listener-rcvbuf-locked", "listeners", LISTENER, (_C, _W, _I),
         "a listener locks its receive buffer (SO_RCVBUF), whatever program owns it: on a "
         "kernel without the fix its cookie connections get a window scale the client never "
         "saw",
         ("rcvbuf", "rcvbuf_unlocked", "so_rcvbuf", "rcvbuf_locked_why", "program",
          "processes", "rcvbuf_setting", "config", "kernel_release", "kernel_status",
          "verdict_source", "tcp_syncookies", "tcp_timestamps", "announced_wscale",
          "actual_wscale", "window_shrink_factor"),
         sources=("audit", "doctor")),
    Kind("kafka-listen-backlog-small", "listeners", LISTENER, (_W,),
         "a Kafka listener's configured backlog is below what its clients need",
         ("listener_name", "socket_listen_backlog_size", "effective_backlog", "somaxconn"),
         sources=("audit",)),
    Kind("kafka-so-rcvbuf-set", "listeners", HOST, (_I,),
         "Kafka sets SO_RCVBUF on its listener (socket.receive.buffer.bytes), the "
         "precondition of the cookie window-scale bug",
         ("socket_receive_buffer_bytes", "explicit"), sources=("audit",)),
    Kind("somaxconn-caps-backlog", "listeners", HOST, (_W,),
         "net.core.somaxconn is below Kafka's socket.listen.backlog.size",
         ("socket_listen_backlog_size", "somaxconn"), sources=("audit",)),
    Kind("kafka-listen-backlog-ignored", "listeners", HOST, (_W,),
         "socket.listen.backlog.size is set but the broker predates it (Kafka before 3.2.0, "
         "KIP-764) and listens with backlog 50",
         ("socket_listen_backlog_size", "kafka_version", "version_source",
          "effective_listen_backlog"),
         sources=("audit",)),
    # connections (ss, sock_diag, both ends, trace)
    Kind("wscale-mismatch", "connections", CONNECTION, (_C, _W),
         "the two ends of a connection use different window scales",
         _WSCALE_MISMATCH, sources=("compare", "trace", "pcap", "lab", "record")),
    Kind("rwnd-limited", "connections", CONNECTION, (_C, _W),
         "a sender spent its time waiting for the peer's receive window",
         _RWND_LIMITED, sources=("sockets", "trace", "pcap", "lab")),
    Kind("tiny-window", "connections", CONNECTION, (_W, _I),
         "a connection's usable window is a few segments",
         ("sender", "effective_window_bytes", "effective_window_segments", "mss",
          "snd_wscale", "peer_recv_q", "peer_rcv_wscale", "send_q"), sources=("sockets",)),
    Kind("wscale-off", "connections", CONNECTION, (_I,),
         "connections between a service and a peer run without window scaling",
         ("connections", "timestamps", "sack"), sources=("sockets",)),
    Kind("wscale-inconsistent", "connections", CONNECTION, (_W,),
         "one service's connections use different shifts where one is expected",
         ("side", "shifts", "connections"), sources=("sockets",)),
    Kind("unmatched-connections", "connections", SNAPSHOTS, (_I,),
         "connections seen from one end only when joining two snapshots",
         ("matched", "matched_by_ports", "client_only", "server_only", "ambiguous",
          "client_only_top_remote_ports"), sources=("compare",)),
    # captures
    Kind("syn-cookies-seen", "capture", LISTENER, (_W,),
         "the capture shows a server answering with SYN cookies, per connection",
         ("cookie_synacks", "cookie_connections", "cookie_connections_high_confidence",
          "ordinary_connections", "undecided_connections", "undecided_why", "server_clock",
          "handshakes",
          "per_second", *_CLIENTS),
         aliases=("syn-cookies",), sources=("pcap", "lab")),
    Kind("wscale-stripped", "capture", LISTENER, (_C, _W),
         "window scaling announced by one end only (a middlebox stripped the option)",
         ("announced_by", "announced_wscale", "inferred_wscale", "shrink_factor",
          "connections", "connections_scaled_anyway", *_CLIENTS, "streams", "proof"),
         sources=("pcap",)),
    Kind("wscale-lost-syn-cookies", "capture", LISTENER, (_W,),
         "SYN cookies without timestamps: the SYN-ACK kept the MSS only, window scaling lost",
         ("cookie_connections", "cookie_connections_high_confidence", "confidence",
          "handshakes", "offered", "returned", "listener_synacks",
          "listener_synacks_with_options", "window_ceiling_bytes", "rtt_ms",
          "throughput_ceiling_bytes_per_s", *_CLIENTS, "streams"),
         sources=("pcap",)),
    # Kafka
    Kind("kafka-send-time", "kafka", CONNECTION, (_W,),
         "requests take longer to put on the wire than the broker takes to answer",
         ("client", "server", "api_key", "api", "requests", "answered", "client_ids",
          "send_ms_p50", "send_ms_p99", "broker_ms_p50", "broker_ms_p99", "slow_requests",
          "slow_client_ids"), sources=("pcap", "lab")),
)  # fmt: skip

KINDS: Mapping[str, Kind] = {kind.name: kind for kind in _KINDS}
ALIASES: Mapping[str, str] = {old: kind.name for kind in _KINDS for old in kind.aliases}
assert len(KINDS) == len(_KINDS) and not set(ALIASES) & set(KINDS), "kind names must be unique"


class UnknownKind(ValueError):
    """A finding made with a kind that is not registered here, or with a subject or an
    evidence key its kind does not have: a bug in tcpsleuth."""


# the keys of each type of subject; a connection's client is ``IP:PORT``, or ``IP`` for
# all the connections of that client address, or ``*`` for all of the server's clients
SUBJECT_KEYS: Mapping[str, tuple[str, ...]] = {
    CONNECTION: ("client", "server"),
    LISTENER: ("listener",),
    HOST: ("host",),
    SNAPSHOTS: ("snapshots",),
}
ALL_CLIENTS = "*"


def subject_of(kind: Kind, subject: Mapping[str, str]) -> Mapping[str, str]:
    """``subject`` in its kind's subject type: a listener given for a connection kind
    (one finding for many of its connections) is that server's connections with every
    client (``{"client": "*", "server": listener}``)."""
    if kind.subject == CONNECTION and set(subject) == {"listener"}:
        return {"client": ALL_CLIENTS, "server": subject["listener"]}
    if tuple(sorted(subject)) != tuple(sorted(SUBJECT_KEYS[kind.subject])):
        raise UnknownKind(
            f"finding kind {kind.name!r} is about a {kind.subject} "
            f"({', '.join(SUBJECT_KEYS[kind.subject])}), not {', '.join(sorted(subject))}"
        )
    return subject


def evidence_of(kind: Kind, evidence: Mapping[str, object]) -> dict[str, object]:
    """``evidence`` with every key its kind has, in the registry's order: null where the
    command that made it cannot know one. A key the kind does not have is refused."""
    unknown = [k for k in evidence if k not in kind.keys]
    if unknown:
        raise UnknownKind(
            f"finding kind {kind.name!r} has no evidence key {', '.join(map(repr, unknown))}: "
            "register it in tcpsleuth.model.kinds"
        )
    return {key: evidence.get(key) for key in kind.evidence}


def lookup(name: str) -> Kind:
    """The registered kind for ``name``, or for the former name ``name``."""
    kind = KINDS.get(name) or KINDS.get(ALIASES.get(name, ""))
    if kind is None:
        raise UnknownKind(f"finding kind {name!r} is not registered in tcpsleuth.model.kinds")
    return kind

"""``ss`` text output (``ss -ltn``, ``ss -tn``, ``ss -tni``, ``ss -tnie``) as records.

What it accepts, because hosts without tcpsleuth run whatever iproute2 they have:
- with or without the header line (``-H``), with or without the State column
  (``ss ... state established`` drops it) and the Netid column;
- IPv6 as new iproute2 writes it (``[::ffff:10.0.0.1]:9092``, ``[::]:*``) and
  as old iproute2 did (``::ffff:10.0.0.1:9092``, ``:::*``), with ``%iface``;
- the ``-i`` details on indented continuation lines, and main lines that a
  terminal wrapped onto an indented continuation;
- fields that old kernels or old ``ss`` do not print (they stay ``None``).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from tcpsleuth.errors import InputError
from tcpsleuth.model.records import STATE_NUMBERS, Listener, TcpConnection
from tcpsleuth.sources.sockdiag import SocketTable
from tcpsleuth.sources.textfile import read_text, where

STATES = frozenset(STATE_NUMBERS) | {"UNKNOWN", "SYN-RECV"}
NETIDS = frozenset(
    {
        "tcp",
        "tcp6",
        "udp",
        "raw",
        "u_str",
        "u_dgr",
        "u_seq",
        "nl",
        "p_raw",
        "p_dgr",
        "mptcp",
        "sctp",
        "dccp",
        "v_str",
        "v_dgr",
        "xdp",
    }
)
HEADER_FIRST = frozenset({"State", "Netid", "Recv-Q"})

# `-i` details: integer fields copied as they are
_INT_FIELDS = {
    "mss": "mss",
    "rcvmss": "rcv_mss",
    "advmss": "advmss",
    "pmtu": "pmtu",
    "cwnd": "cwnd",
    "ssthresh": "ssthresh",
    "bytes_sent": "bytes_sent",
    "bytes_acked": "bytes_acked",
    "bytes_received": "bytes_received",
    "bytes_retrans": "bytes_retrans",
    "segs_out": "segs_out",
    "segs_in": "segs_in",
    "unacked": "unacked",
    "notsent": "notsent_bytes",
    "rcv_space": "rcv_space",
    "rcv_ssthresh": "rcv_ssthresh",
    "snd_wnd": "snd_wnd",
    "rcv_wnd": "rcv_wnd",
}
# `-i` durations printed in milliseconds, kept in microseconds as tcp_info does
_MS_FIELDS = {
    "busy": "busy_time",
    "rwnd_limited": "rwnd_limited",
    "sndbuf_limited": "sndbuf_limited",
}
# keywords whose value is the next token ("send 1.2Mbps")
_SPACED = frozenset({"send", "pacing_rate", "delivery_rate"})
_FLAGS = {"ts": "timestamps", "sack": "sack", "ecn": "ecn"}
_MS_VALUE = re.compile(r"^(\d+(?:\.\d+)?)ms(?:\([\d.]+%\))?$")


def parse_endpoint(token: str) -> tuple[str, int]:
    """``ss``'s ``address:port`` in any of its spellings -> (ip, port)."""
    if token.startswith("["):
        host, sep, port = token[1:].partition("]:")
        if not sep:
            raise ValueError(token)
    else:
        host, sep, port = token.rpartition(":")
        if not sep:
            raise ValueError(token)
    host = host.split("%", 1)[0]
    if host in ("*", ""):
        host = "0.0.0.0"
    ip = ipaddress.ip_address(host)
    return ip.compressed, 0 if port == "*" else int(port)


def _details(tokens: list[str], source: Path | str, number: int) -> dict[str, object]:
    fields: dict[str, object] = {}
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
            continue
        if token in _SPACED:
            skip_next = True
            continue
        if token in _FLAGS:
            fields[_FLAGS[token]] = True
            continue
        key, sep, value = token.partition(":")
        if not sep:
            continue  # congestion control name, app_limited, ...
        try:
            if key == "wscale":
                snd, rcv = value.split(",")
                fields["snd_wscale"], fields["rcv_wscale"] = int(snd), int(rcv)
            elif key == "rtt":
                rtt, _, rttvar = value.partition("/")
                fields["rtt"] = float(rtt)
                if rttvar:
                    fields["rttvar"] = float(rttvar)
            elif key == "rto":
                fields["rto"] = float(value)
            elif key == "retrans":
                fields["retrans_total"] = int(value.partition("/")[2] or value)
            elif key in _INT_FIELDS:
                fields[_INT_FIELDS[key]] = int(value)
            elif key in _MS_FIELDS:
                match = _MS_VALUE.match(value)
                if match is None:
                    raise ValueError(value)
                fields[_MS_FIELDS[key]] = round(float(match.group(1)) * 1000)
        except ValueError:
            raise InputError(
                f"{where(source, number)}: cannot read {token!r} in `ss -i` details"
            ) from None
    if fields:
        # ss prints wscale (and ts, sack) only when negotiated: absent means off.
        fields.setdefault("snd_wscale", 0)
        fields.setdefault("rcv_wscale", 0)
        for flag in _FLAGS.values():
            fields.setdefault(flag, False)
    return fields


def parse_ss(text: str, source: Path | str, default_state: str = "ESTAB") -> SocketTable:
    """Parse ``ss`` TCP output. ``default_state`` is used when the State column is absent."""
    records: list[tuple[int, list[str], list[str]]] = []  # (line, main tokens, details)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        tokens = line.split()
        if not line[0].isspace():
            if tokens[0] in HEADER_FIRST:
                continue
            records.append((number, tokens, []))
            continue
        if not records:
            raise InputError(
                f"{where(source, number)}: indented line before any socket line; "
                "expected `ss -tn`/`ss -tni` output"
            )
        main = records[-1][1]
        # A wrapped main line continues with the peer address; details are key:value.
        if _main_incomplete(main):
            main.extend(tokens)
        else:
            records[-1][2].extend(tokens)

    listeners: list[Listener] = []
    connections: list[TcpConnection] = []
    for number, main, details in records:
        tokens = main[1:] if main[0] in NETIDS else main
        state = default_state
        if tokens and tokens[0] in STATES:
            state, tokens = tokens[0], tokens[1:]
        try:
            recv_q, send_q = int(tokens[0]), int(tokens[1])
            local_ip, local_port = parse_endpoint(tokens[2])
            remote_ip, remote_port = parse_endpoint(tokens[3])
        except (ValueError, IndexError):
            raise InputError(
                f"{where(source, number)}: cannot read this line as `ss` TCP output "
                "(expected State Recv-Q Send-Q Local:Port Peer:Port)"
            ) from None
        if state == "LISTEN":
            listeners.append(Listener(local_ip, local_port, backlog=send_q, accept_queue=recv_q))
            continue
        info = _details(details + tokens[4:], source, number)
        connections.append(
            TcpConnection(
                local_ip,
                local_port,
                remote_ip,
                remote_port,
                state,
                recv_q=recv_q,
                send_q=send_q,
                **info,
            )
        )  # type: ignore[arg-type]
    return SocketTable(listeners, connections)


def _main_incomplete(main: list[str]) -> bool:
    tokens = main[1:] if main and main[0] in NETIDS else main
    if tokens and tokens[0] in STATES:
        tokens = tokens[1:]
    return len(tokens) < 4


def read_ss_file(path: Path, default_state: str = "ESTAB") -> SocketTable:
    table = parse_ss(read_text(path, "`ss` output"), path, default_state)
    return table

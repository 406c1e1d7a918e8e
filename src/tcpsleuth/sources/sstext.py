"""``ss`` text output (``ss -ltn``, ``ss -tn``, ``ss -tni``, ``ss -tnie``) as records.

What it accepts, because hosts without tcpsleuth run whatever iproute2 they have:
- with or without the header line (``-H``), with or without the State column
  (``ss ... state established`` drops it) and the Netid column;
- IPv6 as new iproute2 writes it (``[::ffff:10.0.0.1]:9092``, ``[::]:*``) and
  as old iproute2 did (``::ffff:10.0.0.1:9092``, ``:::*``), with ``%iface``;
- the ``-i`` details on indented continuation lines, and main lines that a
  terminal wrapped onto an indented continuation;
- fields that old kernels or old ``ss`` do not print (they stay ``None``);
- for listeners, ``-m`` (``skmem:(r0,rb131072,...)``: the receive buffer) and ``-p``
  (``users:(("nginx",pid=1234,fd=6))``, and ``users:(("nginx",1234,6))`` as iproute2
  before 3.14 printed it, without the labels).

The wildcard ``*``: iproute2 before 4.14 printed the IPv4 wildcard as ``*`` and the
IPv6 one as ``::``/``[::]``; from 4.14 (commit 1267c0b924de, "ss: Distinguish between
IPv4 and IPv6 wildcard sockets") the IPv4 one is ``0.0.0.0``, ``[::]`` is an IPV6_V6ONLY
socket and ``*`` the dual-stack IPv6 one. A file that prints ``0.0.0.0`` anywhere (the
peer of every IPv4 listener, from 4.14 on) is read the new way; otherwise ``*`` is IPv4.

Every number is read as ``model.text`` reads outside text: ASCII digits of bounded
length, decimals finite (no ``nan``, no ``1e999``). The text may come from another host
and another person: ``²``, ``٣`` or 5,000 digits in a field is one line naming the file
and the line (InputError), never a ValueError from ``int()``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from pathlib import Path

from tcpsleuth.errors import InputError
from tcpsleuth.model.records import STATE_NUMBERS, Listener, SocketOwner, TcpConnection
from tcpsleuth.model.text import MAX_DIGITS, is_number, shortened, to_float, to_int
from tcpsleuth.sources.sockdiag import SocketTable, gc_paused
from tcpsleuth.sources.textfile import file_line, read_text

STATES = frozenset(STATE_NUMBERS) | {"UNKNOWN", "SYN-RECV"}
NETIDS = frozenset(
    {
        "tcp",
        "tcp6",
        "udp",
        "udp6",
        "raw6",
        "icmp",
        "icmp6",
        "tipc",
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
TCP_NETIDS = frozenset({"tcp", "tcp6"})

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
_FLAGS = {"ts": "timestamps", "sack": "sack", "ecn": "ecn"}
# what `-i`/`-e`/`-o` details look like, to tell wrapped details from garbage
_DETAIL = re.compile(
    r"^(?:[a-z][a-z0-9_]*:\S*|[\d.]+[KMGT]?bps(?:/[\d.]+[KMGT]?bps)?|<->|->|<-|"
    r"ts|sack|ecn|ecnseen|fastopen|app_limited|send|pacing_rate|delivery_rate|"
    r"cubic|reno|bbr|bbr2|bbr3|dctcp|htcp|vegas|westwood|bic|illinois|hybla|"
    r"scalable|lp|veno|yeah|highspeed|nv|cdg|prague)$"
)
_MS_VALUE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)ms(?:\([0-9.]+%\))?$")


def parse_endpoint(token: str, star: str = "0.0.0.0") -> tuple[str, int]:
    """``ss``'s ``address:port`` in any of its spellings -> (ip, port). ``star`` is
    the address a ``*`` stands for (see the module's docstring)."""
    if token.startswith("["):
        host, sep, port = token[1:].partition("]:")
        if not sep:
            raise ValueError(token)
    else:
        host, sep, port = token.rpartition(":")
        if not sep:
            raise ValueError(token)
    host = host.split("%", 1)[0]
    if host == "*":
        host = star
    elif host == "":
        host = "0.0.0.0"
    return _ip(host), _port(port)


@functools.lru_cache(maxsize=65536)
def _ip(host: str) -> str:
    return ipaddress.ip_address(host).compressed


@functools.lru_cache(maxsize=4096)
def _port(port: str) -> int:
    if port == "*":
        return 0
    if is_number(port, 5):
        number = int(port)
        if number > 65535:
            raise ValueError(port)
        return number
    if port[:1].isdigit():
        raise ValueError(port)  # Unicode digits (`²`, `٣`): no service is named so
    # `ss` without -n writes service names (from /etc/services)
    try:
        return socket.getservbyname(port, "tcp")
    except OSError:
        raise ValueError(port) from None


MAX_WSCALE = 14  # RFC 7323: larger shifts are treated as 14
# a number read without _int/_float is bounded as they bound it (MAX_DIGITS digits)
MAX_WHOLE = 10**MAX_DIGITS
MAX_DECIMAL = float(MAX_WHOLE)


def _int(text: str) -> int:
    """A whole number as ``ss`` prints it: ASCII digits, bounded (``model.text``)."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS:
        return int(text)  # the common case, without a call
    value = to_int(text)
    if value is None:
        raise ValueError(text)
    return value


def _float(text: str) -> float:
    """A decimal as ``ss`` prints it (``0.021``), finite: no ``nan``, no ``1e999``."""
    if text.isascii() and text.replace(".", "", 1).isdigit() and len(text) <= MAX_DIGITS:
        return float(text)  # 0.021: the common case, without the full check
    value = to_float(text)
    if value is None:
        raise ValueError(text)
    return value


_KEYS = frozenset(["wscale", "rtt", "rto", "retrans", "ino", *_INT_FIELDS, *_MS_FIELDS])


def _details(
    tokens: list[str], source: Path | str, number: int, flags_shown: bool, ascii_text: bool
) -> dict[str, object]:
    """The fields of one socket's `-i`/`-e` details (~40 tokens, most not kept:
    they are skipped with one set lookup, which is what makes 100k sockets fast).
    ``ascii_text``: the whole file is ASCII (one check), so ``isdigit`` means 0-9 here."""
    fields: dict[str, object] = {}
    keys, flags, int_fields, most = _KEYS, _FLAGS, _INT_FIELDS, MAX_WHOLE
    for token in tokens:
        key, sep, value = token.partition(":")
        if key not in keys:
            if not sep and token in flags:
                fields[flags[token]] = True
            continue  # congestion control name, send 1Mbps, lastsnd:..., ...
        try:
            if key in int_fields:
                # _int inlined (most of the ~20 numbers of each socket are these): in an
                # ASCII file without `+`, int() reads [0-9_-]+ only; one comparison
                # bounds it (an `_` between digits, or a `-`, reads as _int reads them)
                whole = int(value) if ascii_text else _int(value)
                if whole >= most:
                    raise ValueError(value)
                fields[int_fields[key]] = whole
            elif key == "wscale":
                snd, rcv = value.split(",")
                shifts = (int(snd), int(rcv)) if ascii_text else (_int(snd), _int(rcv))
                fields["snd_wscale"], fields["rcv_wscale"] = shifts
                if not (0 <= shifts[0] <= MAX_WSCALE and 0 <= shifts[1] <= MAX_WSCALE):
                    raise InputError(
                        f"{file_line(source, number)}: '{shortened(token)}': a window-scale "
                        f"shift is 0 to {MAX_WSCALE} (RFC 7323)"
                    )
            elif key == "rtt":
                rtt, _, rttvar = value.partition("/")
                if ascii_text:
                    # _float inlined: the range refuses what float() takes and _float
                    # does not (nan, inf, 1e999, a sign)
                    seconds = float(rtt)
                    variation = float(rttvar) if rttvar else 0.0
                    if not (0 <= seconds < MAX_DECIMAL and 0 <= variation < MAX_DECIMAL):
                        raise ValueError(value)
                    fields["rtt"] = seconds
                    if rttvar:
                        fields["rttvar"] = variation
                else:
                    fields["rtt"] = _float(rtt)
                    if rttvar:
                        fields["rttvar"] = _float(rttvar)
            elif key == "rto":
                seconds = float(value) if ascii_text else _float(value)
                if not 0 <= seconds < MAX_DECIMAL:
                    raise ValueError(value)
                fields["rto"] = seconds
            elif key == "retrans":
                fields["retrans_total"] = _int(value.partition("/")[2] or value)
            elif key == "ino":
                fields["inode"] = _int(value)
            else:
                match = _MS_VALUE.match(value)
                if match is None:
                    raise ValueError(value)
                # the pattern is [0-9]+(.[0-9]+)?: float() of it needs only the range
                seconds = float(match.group(1))
                if seconds >= MAX_DECIMAL:
                    raise ValueError(value)
                fields[_MS_FIELDS[key]] = round(seconds * 1000)
        except ValueError:
            raise InputError(
                f"{file_line(source, number)}: cannot read '{shortened(token)}' in `ss -i` details"
            ) from None
    if fields:
        _fill_unprinted(fields, flags_shown)
    return fields


def _fill_unprinted(fields: dict[str, object], flags_shown: bool) -> None:
    """Set the fields ``ss`` leaves out when they are off or zero."""
    # ss prints wscale only when it was negotiated: absent means off (shift 0).
    fields.setdefault("snd_wscale", 0)
    fields.setdefault("rcv_wscale", 0)
    # ts/sack/ecn are printed by iproute2 < 4.x always, by newer ones only with
    # -e or -o: absent means off only when the file shows them at all.
    if flags_shown:
        for flag in _FLAGS.values():
            fields.setdefault(flag, False)
    # busy, rwnd_limited and sndbuf_limited are printed only when non-zero,
    # the last two only after a busy time (tcp_info has them since 4.10).
    if "busy_time" in fields:
        fields.setdefault("rwnd_limited", 0)
        fields.setdefault("sndbuf_limited", 0)


# `-p`: ("comm",pid=N,fd=M), or ("comm",N,M) before iproute2 3.14; -T adds tid=
_OWNER = re.compile(r'\("((?:[^"\\]|\\.)*)",(?:pid=)?([0-9]+),(?:tid=[0-9]+,)?(?:fd=)?([0-9]+)\)')
_USERS = re.compile(r"users:\((.*)\)")
_SKMEM_RCVBUF = re.compile(r"skmem:\([^)]*\brb([0-9]+)")


def _listener_details(
    tokens: list[str], source: Path | str, number: int
) -> tuple[int | None, tuple[SocketOwner, ...]]:
    """The receive buffer (``-m``) and the owning processes (``-p``) of a listener."""
    text = " ".join(tokens)
    rcvbuf = None
    try:
        found = _SKMEM_RCVBUF.search(text)
        if found:
            rcvbuf = _int(found.group(1))
        owners: tuple[SocketOwner, ...] = ()
        users = _USERS.search(text)
        if users:
            owners = tuple(
                SocketOwner(comm.replace('\\"', '"'), _int(pid), _int(fd))
                for comm, pid, fd in _OWNER.findall(users.group(1))
            )
    except ValueError as exc:
        raise InputError(
            f"{file_line(source, number)}: cannot read '{shortened(str(exc))}' as a number in "
            "`ss -m`/`-p` details"
        ) from None
    return rcvbuf, owners


def parse_ss(text: str, source: Path | str, default_state: str = "ESTAB") -> SocketTable:
    """Parse ``ss`` TCP output. ``default_state`` is used when the State column is absent.

    With a Netid column (``ss -a``, ``ss -tua``), rows of other protocols are skipped.
    A line that cannot be read raises InputError naming the file and line number.
    """
    with gc_paused():
        return _parse_ss(text, source, default_state)


def wildcard_star(text: str) -> str:
    """The address ``*`` stands for in this file (see the module's docstring)."""
    return "::" if "0.0.0.0:" in text else "0.0.0.0"


def _parse_ss(text: str, source: Path | str, default_state: str) -> SocketTable:
    star = wildcard_star(text)
    # one look at the whole text decides how each number may be read (see _details)
    ascii_text = text.isascii() and "+" not in text
    records = _socket_lines(text, source)
    flags_shown = any(
        not _FLAGS.keys().isdisjoint(details) or not _FLAGS.keys().isdisjoint(main[4:])
        for _, main, details in records
    )
    listeners: list[Listener] = []
    connections: list[TcpConnection] = []
    for number, main, details in records:
        tokens = main
        if main[0] in NETIDS:
            if main[0] not in TCP_NETIDS:
                continue
            tokens = main[1:]
        state = default_state
        if tokens and tokens[0] in STATES:
            state, tokens = tokens[0], tokens[1:]
        try:
            if ascii_text:  # _int inlined, as in _details
                recv_q, send_q = int(tokens[0]), int(tokens[1])
                if not (0 <= recv_q < MAX_WHOLE and 0 <= send_q < MAX_WHOLE):
                    raise ValueError(tokens[0:2])
            else:
                recv_q, send_q = _int(tokens[0]), _int(tokens[1])
            local_ip, local_port = parse_endpoint(tokens[2], star)
            remote_ip, remote_port = parse_endpoint(tokens[3], star)
        except (ValueError, IndexError):
            raise InputError(
                f"{file_line(source, number)}: cannot read this line as `ss` TCP output "
                "(expected State Recv-Q Send-Q Local:Port Peer:Port, ports 0 to 65535)"
            ) from None
        if state == "LISTEN":
            rcvbuf, owners = _listener_details(tokens[4:] + details, source, number)
            listeners.append(
                Listener(
                    local_ip,
                    local_port,
                    backlog=send_q,
                    accept_queue=recv_q,
                    rcvbuf=rcvbuf,
                    owners=owners,
                )
            )
            continue
        # `ss -tni` prints the details on their own line: tokens[4:] is most often empty
        info = _details(
            details + tokens[4:] if len(tokens) > 4 else details,
            source, number, flags_shown, ascii_text,
        )  # fmt: skip
        connections.append(
            TcpConnection(
                local_ip,
                local_port,
                remote_ip,
                remote_port,
                state,
                recv_q=recv_q,
                send_q=send_q,
                **info,  # type: ignore[arg-type]
            )
        )
    return SocketTable(listeners, connections)


def _socket_lines(text: str, source: Path | str) -> list[tuple[int, list[str], list[str]]]:
    """The text's sockets as (line number, main line tokens, detail tokens): headers
    skipped, wrapped main lines and indented details joined to their socket."""
    records: list[tuple[int, list[str], list[str]]] = []
    after_header = False
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if not line[0].isspace():
            if tokens[0] in HEADER_FIRST:
                after_header = True
                continue
            if after_header and tokens[0] in ("Peer", "Address:Port", "Process"):
                continue  # the rest of a header wrapped by a terminal or a mail
            after_header = False
            if _starts_socket(tokens[0]) or not records:
                records.append((number, tokens, []))
                continue
            # Wrapped by a narrow terminal (or a mail): the peer address of an
            # incomplete main line, or more details, at the start of a line.
            if not _main_incomplete(records[-1][1]) and not all(
                _DETAIL.match(token) for token in tokens
            ):
                raise InputError(
                    f"{file_line(source, number)}: cannot read this line as `ss` TCP output "
                    "(neither a socket line nor `-i` details)"
                )
        elif not records:
            raise InputError(
                f"{file_line(source, number)}: indented line before any socket line; "
                "expected `ss -tn`/`ss -tni` output"
            )
        main = records[-1][1]
        # A wrapped main line continues with the peer address; details are key:value.
        if _main_incomplete(main):
            main.extend(tokens)
        else:
            records[-1][2].extend(tokens)
    return records


def _starts_socket(token: str) -> bool:
    """A socket line starts with its Netid, its State or (without a State
    column) its Recv-Q."""
    return token in NETIDS or token in STATES or (token.isdigit() and token.isascii())


def _main_incomplete(main: list[str]) -> bool:
    tokens = main[1:] if main and main[0] in NETIDS else main
    if tokens and tokens[0] in STATES:
        tokens = tokens[1:]
    return len(tokens) < 4


def read_ss_file(path: Path, default_state: str = "ESTAB") -> SocketTable:
    table = parse_ss(read_text(path, "`ss` output"), path, default_state)
    return table

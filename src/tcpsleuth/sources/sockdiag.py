"""Live TCP sockets over netlink sock_diag (INET_DIAG), with ``tcp_info``.

This is what ``ss -tni`` reads, without a subprocess and without text: one dump
request per address family, answered by the kernel in batches of netlink
messages. Layouts are those of include/uapi/linux/inet_diag.h and
include/uapi/linux/tcp.h.

Speed: a broker can hold tens of thousands of connections, so the dump is
decoded in bulk. Sockets of one state and family produce messages of one length
with the same attributes, so each read is cut into runs of same-length messages:
Python reads the first header and attribute list of a run, NumPy checks every
other header of the run and copies out each message's fixed ``inet_diag_msg``
and its ``tcp_info`` bytes; NumPy then reads every field of every socket at once
through structured dtypes (``DiagDump``). Records (``TcpConnection``) are built
only when a caller asks for them. On 100,000 sockets this is several times
faster than ``ss -tni`` (bench/bench_sockets.py).

``tcp_info`` has grown over the years (``busy_time`` in 4.10, ``snd_wnd`` in
5.4, ``rcv_wnd`` in 6.x); the kernel sends the struct of its own version, so a
field counts as present only when the attribute is long enough to hold it.

The netlink request and the decoding of its messages into columns are here; the
columns (``DiagDump``) and the records made from them are in :mod:`.diag_dump`; the
dtypes in ``model/sockdiag.py``.
"""

from __future__ import annotations

import dataclasses
import errno
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.model.records import (
    STATE_NUMBERS,
    TCP_STATES,
    Listener,
    SocketOwner,
    TcpConnection,
)
from tcpsleuth.model.sockdiag import (
    DIAG_DTYPE,
    TCP_INFO_DTYPE,
)
from tcpsleuth.sources import netns
from tcpsleuth.sources.diag_dump import DiagDump, text_addresses
from tcpsleuth.sources.diag_dump import gc_paused as gc_paused  # sstext's

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2
INET_DIAG_SKMEMINFO = 7  # u32 sk_meminfo[]: what `ss -m` prints as skmem:(r,rb,t,tb,...)
SK_MEMINFO_RCVBUF = 1  # sk_rcvbuf, `ss -m`'s rb

NLMSGHDR = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (zeros)
REQ_V2 = struct.Struct("=BBBxI48x")
RTATTR = struct.Struct("=HH")
_LENGTH_KIND = struct.Struct("=IH")

ALL_BUT_TIMEWAIT = sum(1 << n for n in TCP_STATES if n not in (6, 7, 12))
LISTEN = STATE_NUMBERS["LISTEN"]


@dataclass(frozen=True)
class SocketTable:
    listeners: list[Listener]
    connections: list[TcpConnection]


# inet_diag_bc_op codes (include/uapi/linux/inet_diag.h): the port comparisons every
# kernel since 2.6 knows (S_EQ and D_EQ came only in 4.x), and the unconditional jump
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_JMP = 1
INET_DIAG_BC_S_GE = 2
INET_DIAG_BC_S_LE = 3
INET_DIAG_BC_D_GE = 4
INET_DIAG_BC_D_LE = 5
BC_OP = struct.Struct("=BBH")
MAX_FILTER_PORTS = 1500  # 2 tests of 20 bytes a port: under the 65,535 a jump can span


def port_filter(ports: Iterable[int]) -> bytes:
    """sock_diag bytecode that keeps sockets whose local or remote port is one of
    ``ports``, so the kernel sends only those (what ``ss '( sport = :9092 )'`` sends).

    The kernel runs it (net/ipv4/inet_diag.c, inet_diag_bc_run) as: take ``yes`` bytes
    forward when an op holds, ``no`` bytes when it does not; the socket is kept when
    the walk ends exactly at the end, dropped when it jumps 4 bytes past it. Each port
    test is ``>= P`` then ``<= P`` (a port compare is two ops: the second carries P),
    and a jump to the end when both hold; a final jump past the end drops the rest.
    """
    tests = [
        (ge, le, port)
        for port in sorted(set(ports))
        for ge, le in (
            (INET_DIAG_BC_S_GE, INET_DIAG_BC_S_LE),
            (INET_DIAG_BC_D_GE, INET_DIAG_BC_D_LE),
        )
    ]
    term = 4 * BC_OP.size + BC_OP.size  # GE + its port, LE + its port, JMP
    total = term * len(tests) + BC_OP.size
    out = bytearray()
    for number, (ge, le, port) in enumerate(tests):
        start, following = number * term, (number + 1) * term
        out += BC_OP.pack(ge, 8, following - start) + BC_OP.pack(0, 0, port)
        out += BC_OP.pack(le, 8, following - (start + 8)) + BC_OP.pack(0, 0, port)
        out += BC_OP.pack(INET_DIAG_BC_JMP, 4, total - (start + 16))  # both held: keep
    out += BC_OP.pack(INET_DIAG_BC_JMP, 4, 8)  # no port matched: 4 bytes past the end
    return bytes(out)


def _request(
    family: int, states: int, with_info: bool, ports: frozenset[int] | None = None
) -> bytes:
    ext = 1 << (INET_DIAG_INFO - 1) if with_info else 0
    body = REQ_V2.pack(family, socket.IPPROTO_TCP, ext, states)
    if ports is not None:
        code = port_filter(ports)
        body += RTATTR.pack(RTATTR.size + len(code), INET_DIAG_REQ_BYTECODE) + code
    return (
        NLMSGHDR.pack(
            NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
        )
        + body
    )


# A run of at least this many same-length messages in one read is decoded by NumPy.
FAST_RUN = 8


def _info_offset(chunk: bytes, pos: int, length: int) -> tuple[int, int]:
    """(offset of the INET_DIAG_INFO attribute from the message start, its length),
    or (-1, 0): walk the attributes after the fixed inet_diag_msg."""
    apos = pos + NLMSGHDR.size + DIAG_DTYPE.itemsize
    end = pos + length
    while apos + RTATTR.size <= end:
        alen, akind = RTATTR.unpack_from(chunk, apos)
        if alen < RTATTR.size:
            break
        if akind == INET_DIAG_INFO:
            return apos - pos, alen
        apos += (alen + 3) & ~3
    return -1, 0


def _uniform_run(chunk: bytes, pos: int, length: int) -> int:
    """How many consecutive SOCK_DIAG_BY_FAMILY messages of ``length`` bytes start
    at ``pos``. Exact, not a guess: the header at pos + k*step is a real header only
    if messages 0..k-1 all had this length, and the first one that does not ends the
    run."""
    step = (length + 3) & ~3
    most = (len(chunk) - pos) // step
    if most < FAST_RUN:
        return 1
    # one struct read first: mixed lengths then cost no NumPy call per message
    following, kind = _LENGTH_KIND.unpack_from(chunk, pos + step)
    if following != length or kind != SOCK_DIAG_BY_FAMILY:
        return 1
    rows = np.frombuffer(chunk, np.uint8, count=most * step, offset=pos).reshape(most, step)
    lengths = np.ascontiguousarray(rows[:, 0:4]).view("=u4").ravel()
    kinds = np.ascontiguousarray(rows[:, 4:6]).view("=u2").ravel()
    same = (lengths == length) & (kinds == SOCK_DIAG_BY_FAMILY)
    return most if same.all() else int(np.argmin(same))


def _collect(
    sock: socket.socket,
    family: int,
    states: int,
    with_info: bool,
    heads: list,
    infos: list,
    ports: frozenset[int] | None = None,
) -> None:
    """Append the sockets of one dump to ``heads`` (blocks of inet_diag_msg bytes)
    and ``infos`` ((count, length, bytes): tcp_info blocks, length 0 when absent)."""
    sock.send(_request(family, states, with_info, ports))
    header = NLMSGHDR.size
    head_from, head_to = header, header + DIAG_DTYPE.itemsize
    unpack_header = NLMSGHDR.unpack_from
    while True:
        chunk = sock.recv(1 << 20)
        n = len(chunk)
        if n == 0:
            raise OSError(errno.EPROTO, "sock_diag: dump ended without NLMSG_DONE")
        pos = 0
        while pos + header <= n:
            length, kind, _flags, _seq, _pid = unpack_header(chunk, pos)
            if length < header:
                raise OSError(errno.EPROTO, "sock_diag: malformed netlink message")
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", chunk, pos + header)[0]
                if code == 0:
                    return
                raise OSError(code, f"sock_diag dump failed: {errno.errorcode.get(code, code)}")
            step = (length + 3) & ~3
            if kind != SOCK_DIAG_BY_FAMILY:
                pos += step
                continue
            at, alen = _info_offset(chunk, pos, length)
            run = _uniform_run(chunk, pos, length)
            rows = np.frombuffer(chunk, np.uint8, count=run * step, offset=pos).reshape(run, step)
            if at >= 0 and run > 1:
                # the same attribute layout in every message of the run, or one at a time
                attr = np.ascontiguousarray(rows[:, at : at + 4]).view("=u2")
                if not ((attr[:, 0] == alen).all() and (attr[:, 1] == INET_DIAG_INFO).all()):
                    run = 1
                    rows = rows[:1]
            heads.append(rows[:, head_from:head_to].tobytes())
            if at >= 0:
                infos.append((run, alen - 4, rows[:, at + 4 : at + alen].tobytes()))
            else:
                infos.append((run, 0, b""))
            pos += run * step


def _decode(heads: list, infos: list) -> DiagDump:
    diag = np.frombuffer(b"".join(heads), dtype=DIAG_DTYPE)
    n = len(diag)
    counts = np.array([count for count, _, _ in infos], dtype=np.int64)
    lengths = np.array([length for _, length, _ in infos], dtype=np.uint32)
    info_len = np.repeat(lengths, counts) if len(infos) else np.zeros(0, np.uint32)
    size = TCP_INFO_DTYPE.itemsize
    if n and (lengths == size).all():
        info = np.frombuffer(b"".join(block for _, _, block in infos), dtype=TCP_INFO_DTYPE)
        return DiagDump(diag, info, info_len)
    # shorter (old kernels), longer (newer kernels: keep the prefix we know), or none
    raw = np.zeros((n, size), dtype=np.uint8)
    row = 0
    for count, length, block in infos:
        keep = min(length, size)
        if keep:
            raw[row : row + count, :keep] = np.frombuffer(block, np.uint8).reshape(count, length)[
                :, :keep
            ]
        row += count
    return DiagDump(diag, raw.view(TCP_INFO_DTYPE).ravel(), info_len)


def _open(netns_name: str | None) -> socket.socket:
    with netns.entered(netns_name):
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        except OSError as exc:
            raise EnvironmentProblem(
                f"cannot open a sock_diag netlink socket ({exc.strerror}); "
                "the kernel may lack CONFIG_INET_DIAG: use `ss` output instead"
            ) from None


def dump(
    netns_name: str | None = None,
    states: int = ALL_BUT_TIMEWAIT | (1 << LISTEN),
    with_info: bool = True,
    families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6),
    ports: Iterable[int] | None = None,
) -> DiagDump:
    """Every TCP socket of a namespace (ours when ``netns_name`` is None) in the
    ``states`` bit mask, decoded in bulk; with ``ports``, only those whose local or
    remote port is one of them, chosen by the kernel (the others are never copied)."""
    wanted = frozenset(ports) if ports is not None else None
    if wanted is not None and len(wanted) > MAX_FILTER_PORTS:
        # a jump over the whole program must fit the op's 16 bits: filter here instead
        return dump(netns_name, states, with_info, families).filtered(ports=wanted)
    heads: list = []
    infos: list = []
    sock = _open(netns_name)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        for family in families:
            try:
                _collect(sock, family, states, with_info, heads, infos, wanted)
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno in (errno.ENOENT, errno.EINVAL):
                    continue  # IPv6 disabled or inet6_diag not loaded: no IPv6 sockets
                raise EnvironmentProblem(
                    f"sock_diag dump failed ({exc.strerror}); use `ss -tni` output instead"
                ) from None
    return _decode(heads, infos)


def _listener_messages(sock: socket.socket, family: int) -> Iterator[bytes]:
    """The SOCK_DIAG_BY_FAMILY messages of one LISTEN-only dump with the memory
    extension. A host has few listeners, so they are read one at a time."""
    body = REQ_V2.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_SKMEMINFO - 1), 1 << LISTEN)
    header = NLMSGHDR.pack(
        NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 2, 0
    )
    sock.send(header + body)
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise OSError(errno.EPROTO, "sock_diag: dump ended without NLMSG_DONE")
        pos = 0
        while pos + NLMSGHDR.size <= len(chunk):
            length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(chunk, pos)
            if length < NLMSGHDR.size:
                raise OSError(errno.EPROTO, "sock_diag: malformed netlink message")
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", chunk, pos + NLMSGHDR.size)[0]
                if code == 0:
                    return
                raise OSError(code, f"sock_diag dump failed: {errno.errorcode.get(code, code)}")
            if kind == SOCK_DIAG_BY_FAMILY:
                yield chunk[pos : pos + length]
            pos += (length + 3) & ~3


def _rcvbuf(message: bytes) -> int | None:
    """sk_rcvbuf from a message's INET_DIAG_SKMEMINFO attribute (None without one)."""
    apos = NLMSGHDR.size + DIAG_DTYPE.itemsize
    while apos + RTATTR.size <= len(message):
        alen, akind = RTATTR.unpack_from(message, apos)
        if alen < RTATTR.size:
            break
        if akind == INET_DIAG_SKMEMINFO and alen >= RTATTR.size + 4 * (SK_MEMINFO_RCVBUF + 1):
            return int(
                struct.unpack_from("=I", message, apos + RTATTR.size + 4 * SK_MEMINFO_RCVBUF)[0]
            )
        apos += (alen + 3) & ~3
    return None


def listeners(
    netns_name: str | None = None,
    families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6),
) -> list[Listener]:
    """Every LISTEN socket of a namespace with its receive buffer (``ss -ltnm``):
    backlog (idiag_wqueue), accept queue (idiag_rqueue), sk_rcvbuf and inode.
    Owners are not filled in here (see :mod:`tcpsleuth.sources.owners`)."""
    out: list[Listener] = []
    sock = _open(netns_name)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for family in families:
            try:
                messages = list(_listener_messages(sock, family))
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno in (errno.ENOENT, errno.EINVAL):
                    continue
                raise EnvironmentProblem(
                    f"sock_diag dump failed ({exc.strerror}); use `ss -ltnm` output instead"
                ) from None
            for message in messages:
                row = np.frombuffer(message, DIAG_DTYPE, count=1, offset=NLMSGHDR.size)
                [ip] = text_addresses(row["src"], row["family"])
                out.append(
                    Listener(
                        ip,
                        int(row["sport"][0]),
                        backlog=int(row["wqueue"][0]),
                        accept_queue=int(row["rqueue"][0]),
                        rcvbuf=_rcvbuf(message),
                        inode=int(row["inode"][0]),
                    )
                )
    return out


def with_owners(
    found: list[Listener], owners: dict[int, tuple[SocketOwner, ...]]
) -> list[Listener]:
    """The listeners with the processes that hold them (by socket inode)."""
    return [dataclasses.replace(x, owners=owners.get(x.inode, ())) if x.inode else x for x in found]


def snapshot(
    netns_name: str | None = None,
    ports: frozenset[int] | None = None,
    states: int = ALL_BUT_TIMEWAIT | (1 << LISTEN),
    with_info: bool = True,
    addresses: Iterable[str] | None = None,
) -> SocketTable:
    """Listeners and connections of a namespace (ours when ``netns_name`` is None).

    ``ports`` keeps sockets whose local or remote port is in the set,
    ``addresses`` those whose local or remote address is one of them.
    """
    table = dump(netns_name, states, with_info)
    if ports is not None or addresses is not None:
        table = table.filtered(ports, addresses)
    return SocketTable(table.listeners(), table.connections())

"""Ending a connection without SOCK_DESTROY: a reset to each end, with sequence numbers
the kernel itself supplies.

A reset is accepted at once only with the exact next sequence number the receiver
expects (RFC 5961; Linux answers any other in-window reset with a challenge ACK).
Those numbers are not guessed or sniffed here: each end is made to send one segment,
and a firewall rule rejects that segment "with tcp reset". The kernel's reject
(nf_send_reset) builds the reset from the rejected segment itself: its sequence number
is the segment's acknowledgment number, exactly what the sender expects next.

- The server's end: a SYN with the client's address and port sent to the server's
  socket makes it answer with a challenge ACK (tcp_validate_incoming, RFC 5961 4.2;
  since 3.6). The output rule rejects that ACK, and the reset goes back to the local
  socket, which closes (tcp_reset): the broker's read fails and it drops the socket.
- The client's end: an out-of-window ACK from the server's address makes the client
  answer with a duplicate ACK (tcp_send_dupack); the input rule rejects it, and the
  reset goes to the client. Once the server's socket is closed, any later segment of
  the client is answered with a reset by the server's own stack as well.

The firewall state lives in a table of its own (``inet tcpsleuth_heal_<pid>``) made
through one ``nft -i`` child: the table has the ``owner`` flag (kernel 5.12+), so the
kernel deletes it when that child's netlink socket closes, which happens when heal
ends in any way, SIGKILL included (the child reads EOF on its standard input). Each
connection is one element of a set with a timeout, so even a table left behind (an old
kernel without the owner flag) matches nothing once its elements expire. Segments
heal sends itself carry a firewall mark so that the rules let them pass.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import select
import socket
import struct
import subprocess
import time

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.model.heal import DiagSocket
from tcpsleuth.sources import netns

MARK = 0x74637368  # "tcsh": heal's own probes, which the output rule lets through
SYN, RST, ACK = 0x02, 0x04, 0x10
IP_HEADER = struct.Struct("!BBHHHBBH4s4s")
TCP_HEADER = struct.Struct("!HHIIBBHHH")
TABLE_PREFIX = "tcpsleuth_heal_"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def wire_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address as packets carry it: a dual-stack socket's ::ffff:a.b.c.d is IPv4."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def segment(src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int) -> bytes:
    """A bare TCP segment (no options, no data) with its IP header; for IPv6 the IP
    header is the kernel's to add (see Injector)."""
    source, target = wire_address(src), wire_address(dst)
    tcp = TCP_HEADER.pack(sport, dport, seq, ack, 5 << 4, flags, 1024, 0, 0)
    if source.version == 4:
        pseudo = source.packed + target.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, 20)
    else:
        pseudo = source.packed + target.packed + struct.pack("!I3xB", 20, socket.IPPROTO_TCP)
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    if source.version == 6:
        header = struct.pack("!IHBB", 6 << 28, 20, socket.IPPROTO_TCP, 64)
        return header + source.packed + target.packed + tcp
    ip = IP_HEADER.pack(
        0x45, 0, 40, random.getrandbits(16), 0, 64, socket.IPPROTO_TCP, 0,
        source.packed, target.packed,
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + tcp


class Injector:
    """Raw sockets of one namespace that send segments with any source address (IP
    header included), marked MARK."""

    def __init__(self, netns_name: str | None) -> None:
        self._sockets: dict[int, socket.socket] = {}
        with netns.entered(netns_name):
            for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
                try:
                    raw = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
                except OSError as exc:
                    if version == 6:
                        continue
                    raise EnvironmentProblem(
                        f"cannot open a raw socket ({exc.strerror}): --method reset needs "
                        "CAP_NET_RAW"
                    ) from None
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
                self._sockets[version] = raw

    def send(
        self, src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int
    ) -> None:
        target = wire_address(dst)
        raw = self._sockets.get(target.version)
        if raw is None:
            raise EnvironmentProblem("cannot send IPv6 segments here (no raw IPv6 socket)")
        packet = segment(src, sport, dst, dport, seq, ack, flags)
        with contextlib.suppress(OSError):  # a route that vanished: the retry says so
            raw.sendto(packet, (str(target), 0))

    def provoke_server(self, conn: DiagSocket) -> None:
        """A SYN from the client's address to the server's socket: a challenge ACK back."""
        self.send(
            conn.remote_ip, conn.remote_port, conn.local_ip, conn.local_port,
            random.getrandbits(32), 0, SYN,
        )  # fmt: skip

    def provoke_client(self, conn: DiagSocket) -> None:
        """An ACK from the server's address the client cannot accept: a duplicate ACK back."""
        self.send(
            conn.local_ip, conn.local_port, conn.remote_ip, conn.remote_port,
            random.getrandbits(32), random.getrandbits(32), ACK,
        )  # fmt: skip

    def close(self) -> None:
        for raw in self._sockets.values():
            raw.close()


def table_name(pid: int | None = None) -> str:
    return f"{TABLE_PREFIX}{pid or os.getpid()}"


def _key(conn: DiagSocket) -> tuple[int, str]:
    client, server = wire_address(conn.remote_ip), wire_address(conn.local_ip)
    return client.version, f"{client} . {conn.remote_port} . {server} . {conn.local_port}"


class ResetTable:
    """heal's nftables table, held by one ``nft -i`` child; see the module's text."""

    def __init__(self, netns_name: str | None, element_seconds: int) -> None:
        self.name = table_name()
        self.element_seconds = element_seconds
        try:
            self._nft = subprocess.Popen(
                [*netns.exec_prefix(netns_name), "nft", "-i"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            self._pending = b""
        except FileNotFoundError:
            raise EnvironmentProblem("--method reset needs nft (nftables) on PATH") from None
        self.owner_flag = True
        try:
            self._run(f"add table inet {self.name} {{ flags owner; }}")
        except EnvironmentProblem:
            # a kernel before 5.12 has no owner flag: the elements' timeouts still bound it
            self.owner_flag = False
            self._run(f"add table inet {self.name}")
        t = self.name
        keep = f"meta mark != {MARK:#x} tcp flags & rst == 0"  # heal's own, and resets
        server_to_client = "{ip} daddr . tcp dport . {ip} saddr . tcp sport"
        client_to_server = "{ip} saddr . tcp sport . {ip} daddr . tcp dport"
        commands = [
            f"add chain inet {t} out {{ type filter hook output priority 0; }}",
            f"add chain inet {t} in {{ type filter hook input priority 0; }}",
        ]
        for version, ip, address in ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr")):
            commands += [
                f"add set inet {t} hit{version} {{ type {address} . inet_service . {address}"
                f" . inet_service; flags timeout; timeout {element_seconds}s; }}",
                f"add rule inet {t} out {keep} {server_to_client.format(ip=ip)} "
                f"@hit{version} reject with tcp reset",
                f"add rule inet {t} in {keep} {client_to_server.format(ip=ip)} "
                f"@hit{version} reject with tcp reset",
            ]
        self._run("\n".join(commands))

    def _run(self, commands: str) -> None:
        """Send commands to the nft child and wait until it has applied them (it lists
        the table after them), or fail with what nft said."""
        assert self._nft.stdin is not None and self._nft.stdout is not None
        assert self._nft.stderr is not None
        self._nft.stdin.write(commands + f"\nlist table inet {self.name}\n")
        self._nft.stdin.flush()
        out, err = self._nft.stdout.fileno(), self._nft.stderr.fileno()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ready, _, _ = select.select([out, err], [], [], 0.5)
            if err in ready:
                time.sleep(0.05)  # the rest of nft's message (it repeats the command)
                problem = os.read(err, 65536).decode(errors="replace").strip()
                self._pending = b""
                raise EnvironmentProblem(
                    f"nft refused heal's firewall table: {problem.splitlines()[0]}"
                )
            if out in ready:
                chunk = os.read(out, 65536)
                if not chunk:
                    raise EnvironmentProblem("nft ended unexpectedly")
                self._pending += chunk
                if b"\n}\n" in b"\n" + self._pending:
                    self._pending = b""
                    return
        raise EnvironmentProblem("nft did not answer within 10 s")

    def add(self, conn: DiagSocket) -> None:
        version, key = _key(conn)
        self._run(f"add element inet {self.name} hit{version} {{ {key} }}")

    def remove(self, conn: DiagSocket) -> None:
        version, key = _key(conn)
        with contextlib.suppress(EnvironmentProblem):  # expired already: nothing to do
            self._run(f"delete element inet {self.name} hit{version} {{ {key} }}")

    def close(self) -> None:
        """Delete the table and end the child (which drops an owned table anyway)."""
        with contextlib.suppress(OSError, ValueError):
            assert self._nft.stdin is not None
            self._nft.stdin.write(f"delete table inet {self.name}\n")
            self._nft.stdin.close()
        try:
            self._nft.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._nft.kill()
            self._nft.wait()

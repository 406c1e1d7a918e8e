"""The truth of a storm (see storm_lab.py), per SYN-ACK and per connection, read with
tshark from the captures and with a plain split from ``ss``: nothing here comes
from tcpsleuth's own decoding."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from support.tshark_diff import tshark


@dataclass
class ConnectionTruth:
    client: str  # IP:PORT as tcpsleuth writes it
    synacks: int  # SYN-ACKs the capture holds for it
    cookie_synacks: int  # of them SYN cookies
    cookie: bool | None  # the SYN-ACK the client acknowledged was a cookie (None: no ACK)
    server_rcv_wscale: int | None  # from the server's ss (None: not established there)
    client_snd_wscale: int | None
    server_windows_after: int  # server segments after the handshake with a window (no RST)

    @property
    def disagree(self) -> bool | None:
        """The client believes another shift than the server uses (None: not known)."""
        if self.server_rcv_wscale is None or self.client_snd_wscale is None:
            return None
        return self.server_rcv_wscale != self.client_snd_wscale


def _endpoint(ip4: str, ip6: str, port: str) -> str:
    return f"{ip4}:{port}" if ip4 else f"[{ip6}]:{port}"


def _ss_shifts(text: str, client_is_local: bool) -> dict[str, tuple[int, int]]:
    """Client endpoint -> (snd_wscale, rcv_wscale) of each established socket."""
    out: dict[str, tuple[int, int]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        fields = line.split()  # ss -H state established: no State column
        if line.startswith(("\t", " ")) or len(fields) < 4:
            continue
        local, peer = fields[2], fields[3]
        info = lines[i + 1] if i + 1 < len(lines) else ""
        found = re.search(r"wscale:(\d+),(\d+)", info)
        if found:
            client = local if client_is_local else peer
            client = (
                client.replace("[::ffff:", "").replace("]:", ":") if "::ffff:" in client else client
            )
            out[client] = (int(found.group(1)), int(found.group(2)))
    return out


COOKIE_DSCP = "8"  # CS1, set by storm_lab's rule on SYN-ACKs without a socket


def connections(pcap: Path, server_ss: str, client_ss: str) -> dict[str, ConnectionTruth]:
    """Per client endpoint: its SYN-ACKs, which were cookies, and both ends' shifts."""
    rows = tshark(
        pcap,
        "tcp.flags.syn",
        "tcp.flags.ack",
        "ip.src",
        "ipv6.src",
        "tcp.srcport",
        "ip.dst",
        "ipv6.dst",
        "tcp.dstport",
        "tcp.seq_raw",
        "tcp.ack_raw",
        "tcp.flags.reset",
        "ip.dsfield.dscp",
        "ipv6.tclass.dscp",
    )
    synacks: dict[str, list[tuple[int, bool]]] = {}
    accepted: dict[str, int] = {}
    windows_after: dict[str, int] = {}
    for syn, ack, s4, s6, sport, d4, d6, dport, seq, ackno, rst, dscp4, dscp6 in rows:
        if syn == "0" and ack == "1" and rst == "0" and _endpoint(d4, d6, dport) in synacks:
            client = _endpoint(d4, d6, dport)
            windows_after[client] = windows_after.get(client, 0) + 1
        if syn == "1" and ack == "1":
            client = _endpoint(d4, d6, dport)
            cookie = COOKIE_DSCP in (dscp4, dscp6)
            synacks.setdefault(client, []).append((int(seq), cookie))
        elif syn == "0" and ack == "1":
            client = _endpoint(s4, s6, sport)
            if client in synacks and client not in accepted:
                accepted[client] = (int(ackno) - 1) % (1 << 32)
    server_side = _ss_shifts(server_ss, client_is_local=False)
    client_side = _ss_shifts(client_ss, client_is_local=True)
    out = {}
    for client, sent in synacks.items():
        kinds = dict(sent)
        seq = accepted.get(client)
        out[client] = ConnectionTruth(
            client,
            len(sent),
            sum(cookie for _, cookie in sent),
            None if seq is None else kinds.get(seq),
            server_side[client][1] if client in server_side else None,
            client_side[client][0] if client in client_side else None,
            windows_after.get(client, 0),
        )
    return out

"""Faults injected with nftables on a namespace's egress (never on the host).

Both rewrite the window-scale option of the SYN-ACKs a server sends. In a Linux
SYN-ACK that carries MSS, SACK-permitted, timestamps and window scale, the
options are laid out MSS (bytes 20-23 of the TCP header), SACK-permitted (24-25),
timestamps (26-35), NOP (36), then window scale: kind 3 at byte 37, length 3 at
byte 38 and the shift at byte 39. The rules match that layout exactly (kind and
length checked), so a SYN-ACK laid out otherwise passes untouched. nftables
recomputes the TCP checksum after a raw payload write.

- ``announce_wscale``: the SYN-ACK announces a different shift than the server
  uses. This is what the pre-fix kernel does to a SYN-cookie connection on a
  listener with SO_RCVBUF set (announces the shift of the locked buffer, uses the
  shift of the system maximum). With ``cookies_only`` the rewrite touches exactly
  the SYN-ACKs that are SYN cookies: tcp_make_synack() attaches a normal SYN-ACK
  to its request socket but leaves a cookie SYN-ACK without a socket ("to avoid
  false sharing" under a flood), so ``meta skuid``, which needs the sending
  socket, matches every SYN-ACK except the cookies; those are accepted untouched
  first, and what reaches the rewrite is a cookie.
- ``strip_wscale``: the option is replaced by three NOPs, as a broken middlebox
  does: the server believes scaling is on, the client that it is off.
"""

from __future__ import annotations

import subprocess

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.lab.namespaces import PREFIX

TABLE = "tcpsleuth_fault"
_MATCH = "tcp sport {port} tcp flags & (syn | ack) == syn | ack @th,296,16 0x0303"


def _load(ns: str, statement: str, port: int, cookies_only: bool = False) -> None:
    match = _MATCH.format(port=port)
    skip_normal = f"    {match} meta skuid >= 0 accept\n" if cookies_only else ""
    ruleset = (
        f"table inet {TABLE} {{\n"
        "  chain synack_out {\n"
        "    type filter hook output priority 0; policy accept;\n"
        f"{skip_normal}"
        f"    {match} {statement}\n"
        "  }\n"
        "}\n"
    )
    load_ruleset(ns, ruleset)


def load_ruleset(ns: str, ruleset: str) -> None:
    """Load an nftables ruleset into namespace ``ns`` (a tcpsleuth one, never the host's)."""
    if not ns.startswith(PREFIX):
        raise ValueError(f"refusing to add nftables rules outside a tcpsleuth namespace: {ns}")
    result = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=ruleset,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise EnvironmentProblem(f"nftables rule not loaded in {ns}: {result.stderr.strip()}")


def announce_wscale(ns: str, port: int, shift: int, cookies_only: bool = False) -> None:
    """SYN-ACKs from ``port`` (only the SYN cookies, with ``cookies_only``) announce
    ``shift`` whatever the socket really uses."""
    _load(ns, f"@th,312,8 set {shift}", port, cookies_only)


def strip_wscale(ns: str, port: int) -> None:
    """SYN-ACKs from ``port`` lose their window-scale option (three NOPs instead)."""
    _load(ns, "@th,296,24 set 0x010101", port)


def clear(ns: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", TABLE],
        capture_output=True,
        check=False,
    )

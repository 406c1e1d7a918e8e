"""``tcpsleuth probe`` rendered: the test connections and the verdict."""

from __future__ import annotations

from typing import Any

from rich.console import Group

from tcpsleuth.model.findings import Finding
from tcpsleuth.reports import table


def tables(result: Any, rcvbuf: int, findings: list[Finding]) -> Group:
    """``result`` is the probe's run (``lab.probe.ProbeResult``)."""
    return Group(
        table.records_table(
            f"Kernel self-test on {result.kernel_release} (SO_RCVBUF={rcvbuf}, cookies forced)",
            [
                "client",
                "family",
                "timestamps",
                "SYN-ACK announced",
                "client snd_wscale",
                "server rcv_wscale",
                "client snd_wnd",
            ],
            [
                (
                    c.client,
                    c.family,
                    "on" if c.timestamps else "off",
                    c.announced_wscale,
                    c.client_snd_wscale,
                    c.server_rcv_wscale,
                    c.client_snd_wnd,
                )
                for c in result.connections
            ],
        ),
        table.findings_table(findings),
    )

"""``tcpsleuth probe``: test this host's kernel for the SYN-cookie window-scale bug."""

from __future__ import annotations

from pathlib import Path

import click

from tcpsleuth.cli.options import (
    INT32_MAX,
    format_option,
    kafka_config_option,
    load_kafka_config,
)
from tcpsleuth.detectors.probe import probe_findings, verdict
from tcpsleuth.lab.probe import run_probe
from tcpsleuth.model.findings import exit_status, ranked
from tcpsleuth.reports import jsonout, probeview, table


@click.command("probe")
@click.option(
    "--rcvbuf",
    type=click.IntRange(1, INT32_MAX),
    default=None,
    help="SO_RCVBUF of the test listener [default 102400, Kafka's].",
)
@kafka_config_option
@format_option
def probe_command(rcvbuf: int | None, kafka_config: Path | None, output_format: str) -> int:
    """Test the running kernel by experiment: in a throwaway pair of network namespaces,
    with SYN cookies forced there only, connect over IPv4 and IPv6 to a listener that
    sets SO_RCVBUF before listen(), and compare the window-scale shift each SYN-ACK
    announced (from a capture of the handshake) with the shifts both ends use
    (sock_diag). A version table can only guess for distribution kernels; this knows.
    Needs root; nothing outside its namespaces changes.

    \b
    Examples:
      sudo tcpsleuth probe
      sudo tcpsleuth probe --kafka-config /etc/kafka/server.properties --format json
    """
    if rcvbuf is None:
        kafka = load_kafka_config(kafka_config)
        rcvbuf = kafka.receive_buffer_bytes if kafka and kafka.sets_so_rcvbuf else 102400
    result = run_probe(rcvbuf)
    import socket

    findings = ranked(probe_findings(result, socket.gethostname()))
    judged = verdict(result)
    if output_format == "json":
        jsonout.emit(
            jsonout.document(
                "probe",
                findings,
                kernel=judged.to_dict(),
                so_rcvbuf=rcvbuf,
                syncookies_sent=result.syncookies_sent,
                connections=[c.to_dict() for c in result.connections],
            )
        )
    else:
        table.console().print(probeview.tables(result, rcvbuf, findings))
    return exit_status(findings)

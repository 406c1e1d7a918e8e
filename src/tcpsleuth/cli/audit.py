"""``tcpsleuth audit``: the risk check to run on a broker host before a rolling restart."""

from __future__ import annotations

from pathlib import Path

import click

from tcpsleuth.cli import examples
from tcpsleuth.cli.options import (
    config_option,
    exclusive,
    format_option,
    kafka_config_option,
    load_kafka_config,
    netns_option,
)
from tcpsleuth.model.findings import exit_status
from tcpsleuth.model.records import HostSnapshot, KafkaConfig, ServerConfig, kafka_release
from tcpsleuth.reports import auditview, jsonout, table
from tcpsleuth.reports.auditview import render
from tcpsleuth.sources import config as server_config
from tcpsleuth.sources.kafkaconfig import read_kafka_config
from tcpsleuth.usecases.audit import host_snapshot, probe_rcvbuf, run_audit

__all__ = ["audit_command", "snapshot_from"]


def _given_configs(
    configs: tuple[str, ...], kafka: KafkaConfig | None
) -> tuple[list[ServerConfig], KafkaConfig | None]:
    """--config PROGRAM=FILE, read; a Kafka file is the same as --kafka-config."""
    given: list[ServerConfig] = []
    for text in configs:
        program, path = server_config.parse_option(text)
        if program == "kafka":
            if kafka is not None:
                raise click.UsageError("give the Kafka file once (--kafka-config or --config)")
            kafka = read_kafka_config(path)
        else:
            given.append(server_config.read_server_config(program, path))
    return given, kafka


def snapshot_from(
    bundle: Path | None,
    netns: str | None,
    kafka_config: Path | None,
    example: str | None = None,
    kafka_version: str | None = None,
    configs: tuple[str, ...] = (),
) -> HostSnapshot:
    """The options of audit and doctor that name a host, checked, to its snapshot
    (usecases.audit.host_snapshot)."""
    exclusive(bundle=bundle, netns=netns, example=example)
    kafka = load_kafka_config(kafka_config)
    given, kafka = _given_configs(configs, kafka)
    discover = bundle is None and example is None
    if example is not None:
        bundle = examples.path(example)
    snapshot = host_snapshot(bundle, netns, kafka, kafka_version, given, discover)
    if kafka_version is not None and snapshot.kafka_config is None:
        raise click.UsageError("--kafka-version is about the broker of --kafka-config")
    return snapshot


@click.command("audit")
@click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Audit a bundle collected on another host instead of this one.",
)
@click.option(
    "--probe",
    is_flag=True,
    help="Test this host's kernel by experiment (tcpsleuth probe) instead of trusting "
    "the version table; needs root.",
)
@netns_option
@kafka_config_option
@click.option(
    "--kafka-version",
    metavar="VERSION",
    default=None,
    help="The broker's Kafka version (as 3.1.2), when the running broker's class path "
    "cannot tell it (a broker that is down, or a bundle); what some settings do depends on "
    "it (socket.listen.backlog.size exists from 3.2.0).",
)
@config_option
@format_option
def audit_command(
    bundle: Path | None,
    probe: bool,
    netns: str | None,
    kafka_config: Path | None,
    kafka_version: str | None,
    configs: tuple[str, ...],
    output_format: str,
) -> int:
    """Check this host for the settings and state that turn a server restart into
    slow or failing requests: the kernel's SYN-cookie window-scale bug, every
    listener whose receive buffer is locked (whatever program owns it), SYN cookie
    and timestamp settings, listen backlogs too small for the clients that will
    reconnect at once, and overflows that already happened. The servers' own
    configuration files (found from their command lines, or given with --config)
    name the setting to change.

    \b
    Examples:
      tcpsleuth audit                                   # this host
      tcpsleuth audit --kafka-config /etc/kafka/server.properties
      tcpsleuth audit --kafka-config server.properties --kafka-version 3.1.2
      tcpsleuth audit --bundle broker-17/ --format json # collected elsewhere
      sudo tcpsleuth audit --netns blue                 # one network namespace
      sudo tcpsleuth audit --probe                      # kernel tested, not looked up
      tcpsleuth audit --config nginx=/etc/nginx/nginx.conf --config redis=/etc/redis/redis.conf
    """
    if probe and bundle is not None:
        raise click.UsageError("--probe tests this host's kernel, not a bundle's")
    if kafka_version is not None and kafka_release(kafka_version) is None:
        raise click.BadParameter(
            f"{kafka_version!r} is not an Apache Kafka version (as 3.1.2)",
            param_hint="--kafka-version",
        )
    snapshot = snapshot_from(
        bundle, netns, kafka_config, kafka_version=kafka_version, configs=configs
    )
    probed = None
    if probe:
        # imported here: the probe's namespaces and sock_diag cost `audit --help` 0.1 s
        from tcpsleuth.lab.probe import run_probe

        probed = run_probe(probe_rcvbuf(snapshot))
    result = run_audit(snapshot, probed)
    if output_format == "json":
        verdict = auditview.host_verdict(result).to_dict()
        jsonout.emit(jsonout.document("audit", result.findings, verdict=verdict, **result.data()))
    else:
        table.console().print(render(result))
    return exit_status(result.findings)

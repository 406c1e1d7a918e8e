"""``tcpsleuth audit``: the risk check to run on a broker host before a rolling restart."""

from __future__ import annotations

import os
import time
from dataclasses import replace
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
from tcpsleuth.detectors.audit import audit
from tcpsleuth.detectors.kernel import assess_kernel
from tcpsleuth.detectors.listeners import YES, listener_facts
from tcpsleuth.detectors.probe import probe_findings
from tcpsleuth.detectors.probe import verdict as probe_verdict
from tcpsleuth.detectors.servers import identify
from tcpsleuth.errors import InputError
from tcpsleuth.lab.probe import run_probe
from tcpsleuth.model.findings import exit_status, ranked
from tcpsleuth.model.records import (
    HostSnapshot,
    KafkaConfig,
    ProbeResult,
    ServerConfig,
    kafka_release,
)
from tcpsleuth.model.text import printable
from tcpsleuth.reports import auditview, jsonout, table
from tcpsleuth.reports.auditview import AuditResult, render
from tcpsleuth.sources import config as server_config
from tcpsleuth.sources import netns
from tcpsleuth.sources.bundle import read_bundle
from tcpsleuth.sources.config.asowner import SECONDS, process_owner, read_as_owner
from tcpsleuth.sources.host import live_snapshot
from tcpsleuth.sources.kafkaconfig import read_kafka_config
from tcpsleuth.sources.kafkaprocess import broker_for
from tcpsleuth.sources.owners import working_directory

# Discovered files are read one forked reader each (asowner); together they get this
# long, and this many readers, so that a user with a thousand listeners cannot make the
# audit take a thousand budgets.
DISCOVERY_SECONDS = 30.0
MAX_DISCOVERED = 64


def _root_of(pid: int) -> tuple[int, int] | None:
    """The process's root directory (device, inode): two containers may both name
    /etc/nginx/nginx.conf."""
    try:
        found = os.stat(f"/proc/{pid}/root")
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _discovered(snapshot: HostSnapshot, given: set[tuple[str, str]]) -> list[ServerConfig]:
    """The configuration files of the servers holding the live listeners, where their
    command lines name them, each read as its process's owner inside its root (never
    as root: the command line is the owner's to write); a file that cannot be read
    becomes a note naming the file, never an error nor its text."""
    found: list[ServerConfig] = []
    done: set[tuple[str, str, tuple[int, int] | None]] = set()
    tried: set[tuple[str, str, tuple[int, int] | None, int]] = set()
    started = time.monotonic()
    skipped = 0
    for listener in snapshot.listeners or ():
        program = identify(listener.owners, listener.local_port)
        if program is None or (program == "kafka" and snapshot.kafka_config is not None):
            continue
        # the processes sharing one socket are one server (nginx's master as root, its
        # workers as nobody): its most privileged process reads first, so that a
        # worker's denied read does not come before the master's
        holders = [
            (owner, credentials)
            for owner in listener.owners
            if owner.cmdline and (credentials := process_owner(owner.pid)) is not None
        ]
        for owner, credentials in sorted(holders, key=lambda held: held[1].uid):
            assert owner.cmdline is not None
            path = server_config.locate(program, owner.cmdline, None)
            if path is None:
                continue
            cwd = working_directory(owner.pid) if not path.is_absolute() else None
            shown = str(cwd / path) if cwd is not None else str(path)
            root = _root_of(owner.pid)
            if (program, shown) in given or (program, shown, root) in done:
                continue
            if (program, shown, root, credentials.uid) in tried:
                continue
            tried.add((program, shown, root, credentials.uid))
            left = DISCOVERY_SECONDS - (time.monotonic() - started)
            if len(tried) > MAX_DISCOVERED or left <= 0:
                skipped += 1
                continue
            try:
                config = read_as_owner(credentials, program, path, min(SECONDS, left))
            except InputError as problem:
                snapshot.notes.append(
                    printable(f"{program} configuration of pid {owner.pid} not read: {problem}")
                )
                continue
            if config is None:
                continue
            done.add((program, shown, root))
            if isinstance(config, KafkaConfig):
                found.append(config.server_config())
            else:
                found.append(config)
    if skipped:
        snapshot.notes.append(
            f"{skipped} more configuration file(s) named by listeners' command lines not "
            f"read: at most {MAX_DISCOVERED} files and {DISCOVERY_SECONDS:g} s are spent on them"
        )
    return found


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
    exclusive(bundle=bundle, netns=netns, example=example)
    kafka = load_kafka_config(kafka_config)
    given, kafka = _given_configs(configs, kafka)
    snapshot = _snapshot(bundle, netns, kafka, example, kafka_version)
    if bundle is None and example is None:
        given += _discovered(snapshot, {(c.program, c.path) for c in given})
    if given:
        snapshot = replace(snapshot, server_configs=tuple(given))
    return snapshot


def _snapshot(
    bundle: Path | None,
    netns: str | None,
    kafka: KafkaConfig | None,
    example: str | None,
    kafka_version: str | None,
) -> HostSnapshot:
    if example is not None:
        bundle = examples.path(example)
    if bundle is not None:
        snapshot = read_bundle(bundle, kafka)
        if kafka_version is not None and snapshot.kafka_config is not None:
            given = replace(
                snapshot.kafka_config, version=kafka_version, version_source="--kafka-version"
            )
            snapshot = replace(snapshot, kafka_config=given)
    else:
        if kafka is not None:
            kafka = with_kafka_version(kafka, kafka_version, netns)
        snapshot = live_snapshot(netns, kafka)
    if kafka_version is not None and snapshot.kafka_config is None:
        raise click.UsageError("--kafka-version is about the broker of --kafka-config")
    return snapshot


def with_kafka_version(
    kafka: KafkaConfig, version: str | None, netns_name: str | None
) -> KafkaConfig:
    """``kafka`` with its broker's version: the one given, else the one of the running
    broker started with that file (or the only broker in the namespace), read from the
    jars on its class path."""
    if version is not None:
        return replace(kafka, version=version, version_source="--kafka-version")
    if netns_name is not None:
        inode = netns.inode(netns_name)
    else:
        inode = os.stat("/proc/self/ns/net").st_ino
    broker = broker_for(Path(kafka.path), inode)
    if broker is None or broker.version is None:
        return kafka
    return replace(kafka, version=broker.version, version_source=f"class path of pid {broker.pid}")


def run_audit(snapshot: HostSnapshot, probe: ProbeResult | None = None) -> AuditResult:
    """The audit; with ``probe`` (the kernel self-test of this host) the kernel's status
    comes from the experiment instead of the version table."""
    facts = listener_facts(snapshot)
    if probe is not None:
        verdict = probe_verdict(probe)
        # The bug finding itself comes from the audit, which weighs this host's settings
        # (cookies, timestamps, SO_RCVBUF) against the experiment's verdict.
        measured = [
            f
            for f in probe_findings(probe, snapshot.hostname)
            if f.kind != "kernel-cookie-wscale-bug"
        ]
        return AuditResult(
            snapshot, verdict, ranked([*audit(snapshot, verdict, facts), *measured]), facts
        )
    verdict = assess_kernel(snapshot.kernel_release, snapshot.proc_version)
    return AuditResult(snapshot, verdict, audit(snapshot, verdict, facts), facts)


def probe_rcvbuf(snapshot: HostSnapshot) -> int:
    """The SO_RCVBUF the probe tests with: the broker's, else the first locked
    listener's (half its buffer), else Kafka's default."""
    kafka = snapshot.kafka_config
    if kafka is not None and kafka.sets_so_rcvbuf:
        return kafka.receive_buffer_bytes
    for facts in listener_facts(snapshot):
        if facts.rcvbuf_locked == YES and facts.rcvbuf:
            return max(facts.rcvbuf // 2, 1152)
    return 102400


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
        probed = run_probe(probe_rcvbuf(snapshot))
    result = run_audit(snapshot, probed)
    if output_format == "json":
        verdict = auditview.host_verdict(result).to_dict()
        jsonout.emit(jsonout.document("audit", result.findings, verdict=verdict, **result.data()))
    else:
        table.console().print(render(result))
    return exit_status(result.findings)

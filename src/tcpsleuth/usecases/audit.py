"""The audit as a use case, for every command that needs one (audit, doctor): a host's
snapshot (live, in a namespace, or from a bundle) with the configuration files of the
servers holding its listeners, and the audit of it (with the kernel tested by
experiment where asked). Options are the commands' business (cli/); what they ask
arrives here checked.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from tcpsleuth.detectors.audit import audit
from tcpsleuth.detectors.kernel import assess_kernel
from tcpsleuth.detectors.listeners import YES, listener_facts
from tcpsleuth.detectors.probe import probe_findings
from tcpsleuth.detectors.probe import verdict as probe_verdict
from tcpsleuth.detectors.servers import identify
from tcpsleuth.errors import InputError
from tcpsleuth.model.findings import ranked
from tcpsleuth.model.records import HostSnapshot, KafkaConfig, ProbeResult, ServerConfig
from tcpsleuth.model.text import printable
from tcpsleuth.reports.auditview import AuditResult
from tcpsleuth.sources import config as server_config
from tcpsleuth.sources import netns
from tcpsleuth.sources.bundle import read_bundle
from tcpsleuth.sources.config.asowner import SECONDS, process_owner, read_as_owner
from tcpsleuth.sources.host import live_snapshot
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


def discovered(
    snapshot: HostSnapshot, given: set[tuple[str, str]]
) -> tuple[list[ServerConfig], list[str]]:
    """The configuration files of the servers holding the live listeners, where their
    command lines name them, each read as its process's owner inside its root (never
    as root: the command line is the owner's to write), and notes: a file that cannot
    be read becomes a note naming the file, never an error nor its text."""
    found: list[ServerConfig] = []
    notes: list[str] = []
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
                notes.append(
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
        notes.append(
            f"{skipped} more configuration file(s) named by listeners' command lines not "
            f"read: at most {MAX_DISCOVERED} files and {DISCOVERY_SECONDS:g} s are spent on them"
        )
    return found, notes


def host_snapshot(
    bundle: Path | None,
    netns_name: str | None,
    kafka: KafkaConfig | None,
    kafka_version: str | None,
    given: list[ServerConfig],
    discover: bool,
) -> HostSnapshot:
    """The host to audit: ``bundle``'s, else this host's (in ``netns_name``), with the
    broker's file ``kafka`` (its version: ``kafka_version``, else its running broker's)
    and the server files ``given``; with ``discover``, also the files the live
    listeners' command lines name (their notes added to the snapshot's)."""
    if bundle is not None:
        snapshot = read_bundle(bundle, kafka)
        if kafka_version is not None and snapshot.kafka_config is not None:
            versioned = replace(
                snapshot.kafka_config, version=kafka_version, version_source="--kafka-version"
            )
            snapshot = replace(snapshot, kafka_config=versioned)
    else:
        if kafka is not None:
            kafka = with_kafka_version(kafka, kafka_version, netns_name)
        snapshot = live_snapshot(netns_name, kafka)
    configs = list(given)
    if discover:
        found, notes = discovered(snapshot, {(c.program, c.path) for c in given})
        configs += found
        if notes:
            snapshot = replace(snapshot, notes=[*snapshot.notes, *notes])
    if configs:
        snapshot = replace(snapshot, server_configs=tuple(configs))
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

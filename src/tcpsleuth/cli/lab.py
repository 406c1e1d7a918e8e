"""``tcpsleuth lab``: reproduce the incident, and each mitigation, on this machine.

About 480 lines: ``lab run`` has fifteen options (a hundred lines of them) and a run's
report is one long dictionary (``_report``); beside them the run's wiring, each part
named: its checks, its size, the scenarios run in turn, the rendering. The run in a
guest is in ``lab_guest.py``, the kernels' commands in ``lab_kernel.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tcpsleuth.cli import lab_guest
from tcpsleuth.cli.lab_kernel import kernel_group
from tcpsleuth.cli.options import FiniteFloat, format_option
from tcpsleuth.errors import InputError
from tcpsleuth.lab import analysis, healing, kafka_broker, namespaces
from tcpsleuth.lab.answers import STORM_PASSED_SHARE
from tcpsleuth.lab.kernel import build as kbuild
from tcpsleuth.lab.runner import LabSize, discard, run_scenario, temporary_workdir
from tcpsleuth.lab.scenarios import SCENARIOS, on_real_kernel
from tcpsleuth.model.findings import Finding, exit_status, ranked
from tcpsleuth.reports import jsonout, table
from tcpsleuth.reports.labview import render_runs


@click.group("lab")
def lab_group() -> None:
    """Reproduce TCP failures in network namespaces on this machine, with a Kafka-protocol
    broker and real Kafka producer libraries (kafka-python and librdkafka), and hand what
    each run captured to tcpsleuth's own detectors. Needs root; changes nothing outside
    the namespaces it makes, and removes them (and any a killed run left) every time.

    \b
    Examples:
      tcpsleuth lab list
      sudo tcpsleuth lab run wscale-bug
      sudo tcpsleuth lab run wscale-bug no-syncookies big-backlog --keep out/
    """


lab_group.add_command(kernel_group)


@lab_group.command("list")
@format_option
def list_command(output_format: str) -> int:
    """The scenarios, and what each shows.

    \b
    Examples:
      tcpsleuth lab list
      tcpsleuth lab list --format json
    """
    if output_format == "json":
        jsonout.emit(
            jsonout.document(
                "lab list",
                [],
                scenarios=[
                    {"name": s.name, "summary": s.summary, "emulates": s.emulates or None}
                    for s in SCENARIOS.values()
                ],
            )
        )
    else:
        table.console().print(
            table.records_table(
                "Lab scenarios",
                ["scenario", "what it shows"],
                [(s.name, s.summary) for s in SCENARIOS.values()],
            )
        )
    return 0


def _report(
    artifacts: Any, sysctls: dict[str, str], in_guest: str | None = None
) -> tuple[dict[str, Any], list[Any]]:
    captured = analysis.capture(artifacts)
    found = analysis.findings(artifacts, sysctls, captured)
    scenario = artifacts.scenario
    latency = analysis.latency(artifacts)
    own = analysis.broker_latency(artifacts)
    report = {
        "scenario": scenario.name,
        "summary": scenario.summary,
        "emulation": scenario.emulates or None,
        "kernel": lab_guest.kernel_report(scenario, in_guest),
        "broker": artifacts.broker,
        "broker_note": (
            "the user's broker sets its own socket buffers, so only the SYN-ACK rewrite of "
            "the emulation applies"
            if scenario.rcvbuf_after_accept and artifacts.broker.startswith("the user's")
            else "Apache Kafka sets SO_RCVBUF only on its listener: to emulate the pre-fix "
            "kernel its listener is left unlocked (socket.receive.buffer.bytes=-1), so its "
            "sockets use shift 7, and the cookie SYN-ACKs are rewritten to announce 1"
            if scenario.rcvbuf_after_accept and artifacts.broker.startswith("Apache Kafka")
            else None
        ),
        "broker_metrics": artifacts.broker_metrics or None,
        "broker_latency_ms": own,
        "settings": {
            "tcp_syncookies": scenario.tcp_syncookies,
            "tcp_timestamps": scenario.tcp_timestamps,
            "socket.listen.backlog.size": scenario.listen_backlog,
            "socket.receive.buffer.bytes": scenario.broker_rcvbuf,
            "fault": scenario.fault,
            "restart": scenario.restart,
        },
        "link": {
            "delay_by": artifacts.link,
            "rtt_ms": artifacts.size.rtt_ms,
            "measured_rtt_ms": round(artifacts.rtt_probe_ms, 3) if artifacts.rtt_probe_ms else None,
            "rate_mbit": artifacts.size.rate_mbit,
        },
        "size": {k: getattr(artifacts.size, k) for k in artifacts.size.__dataclass_fields__},
        "latency_ms": latency,
        "librdkafka_ms": analysis.librdkafka_split(artifacts),
        "counters": analysis.counters(artifacts),
        "syn_cookies": analysis.syn_cookies(artifacts, captured),
        "shifts": analysis.shifts(artifacts),
        "storm_amplification": None
        if "amplified" not in artifacts.window
        else {
            "started": artifacts.window["amplified"],
            "ended": artifacts.window.get("amplified_end"),
            "reconnecting_clients": artifacts.reconnecting,
            "answered_when_ended": artifacts.storm_answered,
            "listen_backlog": scenario.listen_backlog,
            "what": "more clients reconnect than the listen backlog holds, so the storm was "
            "answered with SYN cookies (tcp_syncookies=2 in the broker namespace until the "
            f"broker had answered again on {STORM_PASSED_SHARE:.0%} of its clients' "
            "connections), as the kernel of a broker with thousands of clients answers it",
        },
        # whether the timed producers had worked off their queues of the outage before
        # the "after" window opened (None: no restart, or not asked: LabSize.drain_outages)
        "drained": artifacts.drained,
        "findings_by_kind": analysis.findings_summary(found),
        "window": artifacts.window,
        "phases_s": {name: round(value, 1) for name, value in artifacts.phases_s.items()},
        # phases that reached their cap short of answered requests (LabSize.after_answered)
        "short_phases": artifacts.short,
        "mitigation_note": (
            "socket.listen.backlog.size is ignored by this Kafka version (before 3.2.0, "
            "KIP-764): its listener keeps backlog 50"
            if "ignored before KIP-764" in artifacts.broker
            else None
        ),
        "recorder": artifacts.recorder,
        "heal": analysis.heal(artifacts, latency, own),
    }
    return report, found


def _must_be_new(directory: Path | None, option: str) -> None:
    """A folder the run fills must be new or empty (click has refused a file)."""
    if directory is not None and directory.exists() and any(directory.iterdir()):
        raise InputError(f"{directory}: exists and is not empty; give a new directory to {option}")


def _check_run_options(
    names: tuple[str, ...], broker_kind: str, broker_cmd: str | None, heal: bool
) -> None:
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise InputError(
            f"no lab scenario {', '.join(map(repr, unknown))}; `tcpsleuth lab list` shows them"
        )
    if broker_kind != "lab":
        kafka_broker.parse_broker(broker_kind)
        if broker_cmd:
            raise InputError("--broker and --broker-cmd name two brokers; give one")
    if heal and broker_cmd:
        # the user's broker: its port and its clients are not the lab's to reset
        raise InputError(
            "--heal runs with the lab's broker or a real Kafka (--broker), not --broker-cmd"
        )


def _run_scenarios(
    names: tuple[str, ...],
    size: LabSize,
    keep: Path | None,
    broker_kind: str,
    broker_cmd: str | None,
    in_guest: str | None,
    record_dir: Path | None,
    heal: tuple[bool, str],
    output_format: str,
) -> tuple[list[dict[str, Any]], list[Any], dict[str, str]]:
    """Each scenario run and analysed in turn, with a progress bar (not for JSON): their
    reports, every finding, and the client libraries' versions; with ``keep``, each
    run's report.json and the latency plot of all of them. ``heal``: (--heal,
    --heal-method)."""
    reports: list[dict[str, Any]] = []
    all_findings = []
    plot_runs = []
    # heal and the recorder are told the prefix guest's kernel is affected: its release
    # (6.1) says fixed, and the lab built it with the fix reverted
    told = "affected" if in_guest == "prefix" else None
    with Progress(
        TextColumn("[bold]{task.fields[scenario]}"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=table.console(stderr=True),
        transient=True,
        disable=output_format == "json",
    ) as progress:
        for name in names:
            task = progress.add_task("starting", total=1.0, scenario=name)
            workdir = keep / name if keep is not None else temporary_workdir()
            try:
                scenario = SCENARIOS[name]
                artifacts = run_scenario(
                    on_real_kernel(scenario) if in_guest else scenario,
                    size,
                    workdir,
                    lambda phase, done, task=task: progress.update(
                        task, description=phase, completed=done
                    ),
                    broker_cmd=broker_cmd,
                    broker_kind=broker_kind,
                    record_dir=record_dir / name if record_dir is not None else None,
                    heal=healing.HealRun(heal[1], told) if heal[0] else None,
                    kernel_told=told,
                )
                progress.update(task, description="analysing")
                report, found = _report(artifacts, artifacts.server_sysctls, in_guest)
            finally:
                if keep is None:
                    discard(workdir)
            progress.update(task, completed=1.0, description="done")
            reports.append(report)
            all_findings += found
            plot_runs.append(
                {
                    "scenario": name,
                    "window": artifacts.window,
                    "requests": [
                        x for x in artifacts.client_lines if x["type"] in ("latency", "pending")
                    ],
                }
            )
            if keep is not None:
                (keep / name / "report.json").write_text(
                    jsonout.dumps({**report, "findings": [f.to_dict() for f in found]}, indent=2)
                )
    if keep is not None:
        from tcpsleuth.reports.labplots import latency_over_time

        latency_over_time(plot_runs, keep / "latency.png")
    return reports, all_findings, artifacts.library_versions


def _size(
    size_name: str | None,
    real_kafka: bool,
    crowd: int | None,
    measured: int | None,
    rtt_ms: float,
    rate_mbit: float,
    after_s: float | None,
    heal: bool,
) -> LabSize:
    """The --size preset (guest sized for a real Kafka with ``real_kafka``) with the
    link, the clients and the after window the options give, and with --heal the
    producers' timeout and interval heal needs."""
    sizes = {"small": LabSize.small, "guest": LabSize.guest, "full": LabSize}
    if real_kafka:
        sizes["guest"] = LabSize.guest_kafka
    base = sizes[size_name or "full"]()
    return dataclasses.replace(
        base,
        rtt_ms=rtt_ms,
        rate_mbit=rate_mbit,
        crowd=base.crowd if crowd is None else crowd,
        measured=base.measured if measured is None else measured,
        after_s=base.after_s if after_s is None else after_s,
        timeout_s=max(base.timeout_s, healing.PRODUCER_TIMEOUT_S) if heal else base.timeout_s,
        interval_ms=(base.heal_interval_ms or base.interval_ms) if heal else base.interval_ms,
    )


def _show_runs(
    reports: list[dict[str, Any]],
    findings: list[Finding],
    libraries: dict[str, str],
    keep: Path | None,
    output_format: str,
) -> int:
    """The runs' reports as JSON or as the table with the client libraries (and where
    they were kept); the exit status of ``findings``."""
    if output_format == "json":
        jsonout.emit(
            jsonout.document(
                "lab run",
                findings,
                libraries=libraries,
                runs=reports,
                mitigations=analysis.mitigations(reports),
            )
        )
    else:
        table.console().print(render_runs(reports, analysis.mitigations(reports)))
        versions = ", ".join(f"{name} {version}" for name, version in libraries.items())
        table.console().print(f"client libraries: {versions}")
        if keep is not None:
            table.console().print(
                f"kept in {keep} (latency.png, and per scenario report.json, "
                "the capture and the socket snapshots)"
            )
    return exit_status(findings)


@lab_group.command("run")
@click.argument("names", nargs=-1, required=True)
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    metavar="DIR",
    help="Keep captures, socket snapshots, client output, report.json and plots.",
)
@click.option(
    "--size",
    "size_name",
    type=click.Choice(["full", "small", "guest"]),
    default=None,
    help="small: fewer clients and shorter phases (tests, CI); guest: sized for a guest "
    "whose CPU QEMU emulates. [default: full, or guest with --kernel]",
)
@click.option(
    "--kernel",
    "kernel_name",
    type=click.Choice(list(kbuild.VARIANTS)),
    default=None,
    help="Run the scenarios inside a guest booted with this lab kernel (`tcpsleuth lab "
    "kernel build`). With prefix the real pre-fix kernel makes the window-scale mismatch: "
    "nothing is emulated.",
)
@click.option("--in-guest", "in_guest", default=None, hidden=True)
@click.option(
    "--crowd",
    type=click.IntRange(min=0),
    default=None,
    help=f"librdkafka producers sending a small message a second [full: {LabSize.crowd}].",
)
@click.option(
    "--measured",
    type=click.IntRange(min=1),
    default=None,
    help=f"Producers per library whose requests are timed [full: {LabSize.measured}].",
)
@click.option(
    "--broker",
    "broker_kind",
    default="lab",
    show_default=True,
    metavar="lab|kafka[:VERSION]",
    help="lab: tcpsleuth's own Kafka-protocol broker, the quick option. kafka: a real "
    "Apache Kafka (KRaft, one node) from Maven Central, checksum-checked: "
    f"kafka:{' or kafka:'.join(kafka_broker.VERSIONS)} [kafka: {kafka_broker.DEFAULT_VERSION}]; "
    "needs a JDK and Maven.",
)
@click.option(
    "--broker-cmd",
    default=None,
    metavar="COMMAND",
    help="Run this broker (a real Kafka, say) in the broker namespace instead of the lab "
    "broker; {host}, {port}, {backlog} and {rcvbuf} are filled in.",
)
@click.option(
    "--rtt-ms",
    type=FiniteFloat(0, 60_000),
    default=LabSize.rtt_ms,
    show_default=True,
    help="Round-trip time of the link.",
)
@click.option(
    "--rate-mbit",
    type=FiniteFloat(1, 1_000_000),
    default=LabSize.rate_mbit,
    show_default=True,
    help="Bandwidth of the link.",
)
@click.option(
    "--after-s",
    type=FiniteFloat(5, 86400),
    default=None,
    help=f"Seconds of traffic measured after the restart [full: {LabSize.after_s}].",
)
@click.option(
    "--record",
    "record_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    metavar="DIR",
    help="Attach `tcpsleuth record` to the broker's namespace and port once the clients "
    "are connected, told nothing about the restart, with its incidents in DIR/SCENARIO; "
    "the report says what it recorded.",
)
@click.option(
    "--heal",
    "heal",
    is_flag=True,
    help="After the restart storm, run `tcpsleuth heal --apply` on the broker's namespace "
    "and measure a third window, after heal; the report's `heal` says what it ended and "
    "the clients' p50 before, after the restart and after heal.",
)
@click.option(
    "--heal-method",
    type=click.Choice(healing.METHODS),
    default="auto",
    show_default=True,
    help="With --heal: heal's --method (destroy: SOCK_DESTROY; reset: resets through a "
    "firewall table).",
)
@format_option
def run_command(
    names: tuple[str, ...],
    keep: Path | None,
    size_name: str,
    crowd: int | None,
    measured: int | None,
    broker_kind: str,
    broker_cmd: str | None,
    rtt_ms: float,
    rate_mbit: float,
    after_s: float | None,
    kernel_name: str | None,
    in_guest: str | None,
    record_dir: Path | None,
    heal: bool,
    heal_method: str,
    output_format: str,
) -> int:
    """Run one or more scenarios (see `tcpsleuth lab list`) and report produce latency
    before and after the broker restart, the SYN-cookie and listen counters, the
    window-scale shifts both ends use, and tcpsleuth's findings on what the run captured.

    \b
    Examples:
      sudo tcpsleuth lab run wscale-bug
      sudo tcpsleuth lab run wscale-bug no-syncookies big-backlog --keep out/
      sudo tcpsleuth lab run wscale-bug --broker kafka:3.1.2 --rtt-ms 2
      sudo tcpsleuth lab run wscale-bug --kernel prefix --format json > run.json
    """
    _check_run_options(names, broker_kind, broker_cmd, heal)
    namespaces.require_root("tcpsleuth lab")
    # (in a guest, KEEP and RECORD are folders the outer command checked and shared)
    if not in_guest:
        _must_be_new(keep, "--keep")
        _must_be_new(record_dir, "--record")
    if kernel_name is not None:
        if broker_cmd:
            raise InputError("--broker-cmd cannot be used with --kernel")
        options = {
            "--size": size_name or "guest",
            "--crowd": crowd,
            "--measured": measured,
            "--rtt-ms": rtt_ms,
            "--rate-mbit": rate_mbit,
            "--after-s": after_s,
            "--heal": heal or None,
            "--heal-method": heal_method if heal else None,
        }
        return lab_guest.run_in_guest(
            kernel_name, names, keep, options, output_format, broker_kind, record_dir
        )
    real_kafka = broker_kind != "lab" and not broker_cmd
    size = _size(size_name, real_kafka, crowd, measured, rtt_ms, rate_mbit, after_s, heal)
    reports, all_findings, libraries = _run_scenarios(
        names,
        size,
        keep,
        broker_kind,
        broker_cmd,
        in_guest,
        record_dir,
        (heal, heal_method),
        output_format,
    )
    return _show_runs(reports, ranked(all_findings), libraries, keep, output_format)

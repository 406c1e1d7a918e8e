"""``tcpsleuth lab run --kernel NAME``: the same lab run, inside a guest kernel.

The outer command boots the guest and runs ``tcpsleuth lab run ... --in-guest NAME
--format json`` there; the inner run replaces the emulated fault by the real kernel
(``scenarios.on_real_kernel``) and says so in each report; the outer command renders
what came back as if the run had been local.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tcpsleuth.errors import EnvironmentProblem
from tcpsleuth.lab import analysis, kafka_broker, kafka_java
from tcpsleuth.lab.kernel import build as kbuild
from tcpsleuth.lab.kernel import guest
from tcpsleuth.lab.scenarios import REAL_KERNEL_NOTE, Scenario
from tcpsleuth.model.findings import Finding, exit_status
from tcpsleuth.reports import jsonout, table
from tcpsleuth.reports.labview import render_runs

KAFKA_GUEST_MEMORY = "4G"
FIXED_NOTE = (
    "run on the guest's real kernel (Debian's 6.1 as shipped, with the fix); no nftables "
    "rewrite is installed and the broker sets SO_RCVBUF on its listener before listen()"
)


def kernel_report(scenario: Scenario, in_guest: str | None) -> dict[str, Any] | None:
    """What the report says about the kernel a run inside a guest had."""
    if in_guest is None:
        return None
    return {
        "name": in_guest,
        "release": platform.release(),
        "fault_emulated": scenario.fault != "none",
        "note": REAL_KERNEL_NOTE if in_guest == "prefix" else FIXED_NOTE,
    }


def _prepare_kafka(version: str) -> None:
    """What the guest reads from the host's cache and cannot make itself: Kafka
    ``version``'s jars, our Java clients and the JVMs' class-data archives."""
    kafka_java.harness(kafka_broker.resolve(version))
    if kafka_broker.prepare_archives(version):
        table.console(stderr=True).print(
            f"made Kafka {version}'s class-data archives on this host (once, for the guest)"
        )


def _inner_command(
    kernel_name: str, names: tuple[str, ...], options: dict[str, Any], broker_kind: str
) -> tuple[list[str], str, dict[str, str]]:
    """The command line of the lab run inside the guest (its folders apart), the guest's
    memory and the run's environment."""
    argv = ["lab", "run", *names, "--format", "json", "--in-guest", kernel_name]
    # Python alone takes tens of seconds to import a child's modules under an emulated
    # CPU, minutes with a busy host beside it
    memory, env = "2G", {"TCPSLEUTH_READY_S": "600"}
    if broker_kind != "lab":
        # A real Kafka in the guest: its jars, our Java clients and the class-data
        # archives the host made, read from the host's cache (the guest has no network
        # and writes only its own /tmp); JVMs under an emulated CPU start in minutes.
        argv += ["--broker", broker_kind]
        memory = KAFKA_GUEST_MEMORY
        env = {
            **env,
            "TCPSLEUTH_KAFKA_CACHE": str(kafka_broker.CACHE),
            "TCPSLEUTH_KAFKA_DATA": "/tmp",
            "TCPSLEUTH_READY_S": "900",
        }
    for option, value in options.items():
        if value is True:  # a flag
            argv.append(option)
        elif value is not None:
            argv += [option, str(value)]
    return argv, memory, env


def _shared_folders(
    keep: Path | None, record_dir: Path | None, env: dict[str, str]
) -> tuple[tuple[Path, ...], list[str], dict[str, str]]:
    """The folders the guest writes (--keep, --record), made here: the folders, their
    options for the inner run, and ``env`` with what the recorder in the guest needs."""
    rwdirs: tuple[Path, ...] = ()
    args: list[str] = []
    if keep is not None:
        keep = keep.resolve()
        keep.mkdir(parents=True, exist_ok=True)
        rwdirs = (keep,)
        args += ["--keep", str(keep)]
    if record_dir is not None:
        # the recorder in the guest writes its incidents here; it takes tens of seconds
        # to start under an emulated CPU
        record_dir = record_dir.resolve()
        record_dir.mkdir(parents=True, exist_ok=True)
        rwdirs = (*rwdirs, record_dir)
        args += ["--record", str(record_dir)]
        env = {
            **env,
            "TCPSLEUTH_RECORD_LOCAL": "1",
            "TCPSLEUTH_RECORDER_READY_S": "240",
            "TCPSLEUTH_RECORDER_REPORT_S": "1200",
        }
    return rwdirs, args, env


def _document(result: guest.GuestResult, kernel_name: str) -> dict[str, Any]:
    """The inner run's JSON document, or an EnvironmentProblem with the last line it
    printed to stderr."""
    try:
        doc: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise EnvironmentProblem(
            f"the lab run in the {kernel_name} guest failed (exit {result.status}): {last} "
            f"(all it printed: {kbuild.cache_root() / 'last-guest-stderr.txt'})"
        ) from None
    return doc


def run_in_guest(
    kernel_name: str,
    names: tuple[str, ...],
    keep: Path | None,
    options: dict[str, Any],
    output_format: str,
    broker_kind: str = "lab",
    record_dir: Path | None = None,
) -> int:
    """Boot a guest with the lab kernel ``kernel_name``, run the scenarios in it and
    render what came back as a local run would be; the exit status of its findings."""
    kernel = kbuild.require(kernel_name)
    if broker_kind != "lab":
        _prepare_kafka(kafka_broker.parse_broker(broker_kind))
    argv, memory, env = _inner_command(kernel_name, names, options, broker_kind)
    rwdirs, folder_args, env = _shared_folders(keep, record_dir, env)
    argv += folder_args
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TimeElapsedColumn(),
        console=table.console(stderr=True),
        transient=True,
        disable=output_format == "json",
    ) as progress:
        progress.add_task(f"running {' '.join(names)} in a guest with the {kernel_name} kernel")
        result = guest.run(
            kernel,
            guest.python_command(*argv),
            # heal adds two windows, each sized by the producers' answers (runs.LabSize)
            timeout=3600 + (1800 if options.get("--heal") else 0),
            rwdirs=rwdirs,
            memory=memory,
            env=env,
        )
    doc = _document(result, kernel_name)
    doc["guest"] = {
        "kernel": kernel.describe(),
        "memory": memory,
        "accel": result.accel,
        "accel_note": result.accel_note,
        "seconds": round(result.seconds, 1),
    }
    findings = [Finding.from_dict(f) for f in doc.get("findings", [])]
    if output_format == "json":
        jsonout.emit(doc)
    else:
        table.console().print(render_runs(doc["runs"], analysis.mitigations(doc["runs"])))
        table.console().print(
            f"guest kernel {kernel.release} ({kernel_name}) under {result.accel_note}, "
            f"{result.seconds:.0f} s"
        )
    return exit_status(findings)

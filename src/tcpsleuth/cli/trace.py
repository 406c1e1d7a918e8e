"""``tcpsleuth trace``: the window-scale shifts and windows the kernel really uses."""

from __future__ import annotations

import click
from rich.live import Live

from tcpsleuth.cli.options import PORT, FiniteFloat, format_option, netns_names_option
from tcpsleuth.detectors.tracing import fold, trace_findings
from tcpsleuth.model.findings import exit_status, ranked
from tcpsleuth.model.records import WindowSample
from tcpsleuth.reports import jsonout, table, traceview
from tcpsleuth.sources import sockdiag
from tcpsleuth.sources.bpf import tracer
from tcpsleuth.sources.procfs import local_ports_of_pid


def _server_ports(netns_names: tuple[str, ...]) -> frozenset[int]:
    ports: set[int] = set()
    listen = 1 << 10
    for name in netns_names or (None,):
        table_ = sockdiag.snapshot(name, states=listen, with_info=False)
        ports.update(listener.local_port for listener in table_.listeners)
    return frozenset(ports)


@click.command("trace")
@click.option(
    "--port",
    "ports",
    type=PORT,
    multiple=True,
    help="Trace connections with this local or remote port (repeatable).",
)
@click.option(
    "--pid",
    type=click.IntRange(min=1),
    default=None,
    help="Trace the connections of this process (its local ports).",
)
@netns_names_option
@click.option(
    "--duration",
    type=FiniteFloat(0.5, 7 * 86400),
    default=10.0,
    show_default=True,
    help="Seconds to trace.",
)
@click.option(
    "--sample-ms",
    type=FiniteFloat(0.0, 3_600_000),
    default=10.0,
    show_default=True,
    help="At most one sample per socket this often (and on every window change).",
)
@click.option(
    "--method",
    type=click.Choice(list(tracer.METHODS)),
    default="tracepoint",
    show_default=True,
    help="tracepoint: tcp:tcp_probe, at every segment a socket receives (needs BTF); "
    "kprobe: a kprobe on __tcp_select_window, where a socket computes the window it "
    "advertises, the method of the original investigation (needs kprobes and BTF).",
)
@format_option
def trace_command(
    ports: tuple[int, ...],
    pid: int | None,
    netns_names: tuple[str, ...],
    duration: float,
    sample_ms: float,
    method: str,
    output_format: str,
) -> int:
    """Attach to the kernel's tcp:tcp_probe tracepoint, or with --method kprobe to
    __tcp_select_window (bpftrace, reading the socket through BTF), and show, per
    connection and over time, the window-scale shift each side uses, the window it
    offers, the window its peer believes, and how long a sender waits at that window.
    A connection with both ends on this host (loopback or two namespaces) is checked
    for a window-scale mismatch from both sides.
    Needs root and a kernel with BTF.

    \b
    Examples:
      sudo tcpsleuth trace --port 9092 --duration 30
      sudo tcpsleuth trace --pid $(pgrep -f kafka.Kafka) --format json
      sudo tcpsleuth trace --netns broker --netns clients --port 9092
      sudo tcpsleuth lab kernel run prefix -- tcpsleuth trace --method kprobe --port 9092
    """
    port_filter = set(ports)
    if pid is not None:
        pid_ports = local_ports_of_pid(pid)
        if not pid_ports:
            raise click.UsageError(f"process {pid} holds no TCP sockets to trace")
        port_filter |= pid_ports
    inodes = frozenset(tracer.netns_inode(name) for name in netns_names)
    program = tracer.build_program(frozenset(port_filter), inodes, sample_ms, method)
    tracer.check_environment(method)  # before anything is drawn
    server_ports = _server_ports(netns_names)

    samples: list[WindowSample] = []
    if output_format == "json":
        samples.extend(tracer.trace(program, duration, method=method))
    else:
        title = f"tcpsleuth trace ({duration:g} s)"
        with Live(
            traceview.sockets_table([], title),
            console=table.console(),
            transient=False,
            auto_refresh=False,
        ) as live:

            def tick() -> None:
                live.update(traceview.sockets_table(fold(samples), title), refresh=True)

            for sample in tracer.trace(program, duration, on_tick=tick, method=method):
                samples.append(sample)
            tick()
    sockets = fold(samples)
    findings = ranked(trace_findings(sockets, server_ports))
    if output_format == "json":
        jsonout.emit(
            jsonout.document(
                "trace",
                findings,
                duration_s=duration,
                method=method,
                ports=sorted(port_filter),
                netns=list(netns_names),
                samples=len(samples),
                connections=[s.summary() for s in sockets],
            )
        )
    else:
        table.console().print(table.findings_table(findings))
    return exit_status(findings)

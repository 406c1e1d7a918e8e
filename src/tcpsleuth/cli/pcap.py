"""``tcpsleuth pcap``: what TCP did to each connection in a capture file."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import IO

import click

from tcpsleuth import compiled, safefile
from tcpsleuth.cli.options import format_option, writable
from tcpsleuth.detectors.capture.run import CaptureResult, SecondPass, analyse_stream, second_pass
from tcpsleuth.detectors.capture.selection import ranked_streams, streams_named
from tcpsleuth.detectors.verdict import capture_verdict
from tcpsleuth.errors import InputError
from tcpsleuth.model.findings import exit_status, ranked
from tcpsleuth.reports import jsonout, pcapview, table
from tcpsleuth.sources.pcap import CaptureStream, file_size, open_capture, read_once

TABLE_ROWS = 20
# --format json lists the connections findings name and the top ones by window
# waits and bytes; --all-connections lists every one (large captures: large output).
JSON_CONNECTIONS = 200
JSON_FLAGGED = 1000
PROGRESS_MIN_BYTES = 32 << 20


def analyse_file(
    path: Path, kafka_ports: frozenset[int], show_progress: bool, keep: IO[bytes] | None = None
) -> tuple[CaptureResult, CaptureStream]:
    """Every capture detector over ``path``, with a progress bar on big files, and the
    stream it read (to read it again); ``keep`` gets a copy of a capture that cannot be
    read twice (a FIFO, a pipe)."""
    size = file_size(path)
    compiled.use_python_for(size)
    if not (show_progress and size >= PROGRESS_MIN_BYTES):
        stream = open_capture(path, keep=keep)
        return analyse_stream(stream, kafka_ports), stream
    # imported here: rich.progress costs a small capture's start-up 25 ms
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=table.console(),
    ) as progress:
        task = progress.add_task(f"analysing {path.name}", total=size)
        stream = open_capture(path, lambda done: progress.update(task, completed=min(done, size)))
        return analyse_stream(stream, kafka_ports), stream


def _json_streams(result: CaptureResult, all_connections: bool) -> list[int]:
    """The connections the JSON lists: every one, or those the findings name and the
    top ones by window waits and bytes."""
    if all_connections:
        return list(range(len(result.analysis.connections)))
    flagged = streams_named(result.findings, result.requests, JSON_FLAGGED)
    ranked_top = ranked_streams(result.analysis, JSON_CONNECTIONS)
    return sorted(set(flagged) | set(ranked_top))


def _plot_groups(result: CaptureResult) -> dict[int, list[int]]:
    """The connections the graphs draw (look-alikes drawn once), each with those it
    stands for."""
    from tcpsleuth.reports import plots

    named = streams_named(result.findings, result.requests, plots.MAX_CONNECTIONS)
    return pcapview.plot_groups(result, named)


def _pictures(
    results: list[CaptureResult],
    drawn_groups: list[dict[int, list[int]]],
    again: list[SecondPass],
    plot_dir: Path | None,
    html_file: Path | None,
) -> None:
    from tcpsleuth.reports import html, plots

    with tempfile.TemporaryDirectory(prefix="tcpsleuth-plots-") as scratch:
        directory = plot_dir if plot_dir is not None else Path(scratch)
        sections = []
        for index, (result, groups, second) in enumerate(
            zip(results, drawn_groups, again, strict=True)
        ):
            prefix = f"{index}-{Path(result.capture.path).name}-" if len(results) > 1 else ""
            drawn = list(groups)
            assert second.detail is not None
            pictures = plots.write_connection_plots(
                second.detail,
                drawn,
                result.requests.of_streams(drawn),
                directory,
                prefix,
                {s: pcapview.plot_caption(result, s, groups[s]) for s in drawn},
            )
            sections.append(pcapview.html_section(result, pictures))
        if html_file is not None:
            safefile.write_file(html_file, html.render("tcpsleuth pcap", sections), streams=True)


@click.command("pcap")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--kafka-port",
    "kafka_ports",
    type=click.IntRange(1, 65535),
    multiple=True,
    default=(9092,),
    show_default=True,
    help="Decode Kafka requests and responses on this server port (repeatable).",
)
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    callback=writable(directory=True),
    help="Write time-sequence and request-latency graphs of flagged connections here.",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    callback=writable(directory=False),
    help="Write a self-contained HTML report with the findings and graphs.",
)
@click.option(
    "--all-connections",
    is_flag=True,
    help=f"JSON: list every connection and request (default: those findings name, and the "
    f"top {JSON_CONNECTIONS} by window waits and bytes).",
)
@format_option
def pcap_command(
    files: tuple[Path, ...],
    kafka_ports: tuple[int, ...],
    plot_dir: Path | None,
    html_file: Path | None,
    all_connections: bool,
    output_format: str,
) -> int:
    """Read tcpdump captures (pcap or pcapng, gzip-compressed or not) and show, per
    connection, what TCP did: handshake options of each side, packets, bytes,
    retransmissions, zero windows, the windows each side advertised (in bytes, as
    the peer computes them) and the time senders waited at a full window. Finds
    SYN-cookie SYN-ACKs, servers whose windows are scaled by another shift than
    their SYN-ACK announced (wscale-mismatch), stripped window scaling, and times
    every Kafka request: on the wire versus in the broker.

    \b
    Examples:
      tcpdump -i eth0 -s 128 -w broker.pcap 'tcp port 9092'
      tcpsleuth pcap broker.pcap
      tcpsleuth pcap --format json broker.pcap.gz > broker.json
      tcpsleuth pcap --kafka-port 9093 --plot graphs/ --html report.html broker.pcapng
    """
    ports = frozenset(kafka_ports)
    pictures = plot_dir is not None or html_file is not None
    with contextlib.ExitStack() as kept:
        # a capture read twice (JSON, graphs) from a FIFO or a pipe: read once, kept
        def keep(path: Path) -> IO[bytes] | None:
            if not (read_once(path) and (pictures or output_format == "json")):
                return None
            return kept.enter_context(tempfile.NamedTemporaryFile(prefix="tcpsleuth-capture-"))

        read = [analyse_file(path, ports, output_format == "table", keep(path)) for path in files]
        results = [result for result, _ in read]
        streams = [stream for _, stream in read]
        return _report(results, streams, plot_dir, html_file, all_connections, output_format)


def _report(
    results: list[CaptureResult],
    streams: list[CaptureStream],
    plot_dir: Path | None,
    html_file: Path | None,
    all_connections: bool,
    output_format: str,
) -> int:
    for result in results:
        for warning in result.capture.warnings:
            click.echo(f"tcpsleuth: warning: {warning}", err=True)
    pictures = plot_dir is not None or html_file is not None
    as_json = output_format == "json"
    # the JSON's window series and the graphs' segments: one more read of each capture
    # for both (the first pass keeps no segment; what to keep is known only after it)
    listed = [_json_streams(r, all_connections) if as_json else [] for r in results]
    drawn = [_plot_groups(r) if pictures else {} for r in results]
    again = [
        second_pass(stream.again().chunks, r.analysis, chosen, list(groups) if pictures else None)
        for r, stream, chosen, groups in zip(results, streams, listed, drawn, strict=True)
        if pictures or as_json
    ]
    if pictures:
        try:
            _pictures(results, drawn, again, plot_dir, html_file)
        except OSError as exc:
            where = exc.filename or html_file or plot_dir
            raise InputError(
                f"{where}: cannot write the graphs or report ({exc.strerror or exc})"
            ) from None
    findings = [finding for result in results for finding in result.findings]
    if as_json:
        jsonout.emit(
            jsonout.document(
                "pcap",
                ranked(findings),
                verdict=capture_verdict(
                    findings,
                    sum(len(r.analysis.connections) for r in results),
                    sum(int((r.wscale.mismatch == 0).sum()) for r in results),
                ).to_dict(),
                files=[
                    pcapview.document(r, streams, second.series, all_connections)
                    for r, streams, second in zip(results, listed, again, strict=True)
                ],
            )
        )
    else:
        for result in results:
            shown = pcapview.table_streams(result, TABLE_ROWS)
            pcapview.print_tables(table.console(), result, shown, TABLE_ROWS)
    return exit_status(findings)

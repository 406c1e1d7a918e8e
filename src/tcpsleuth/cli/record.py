"""``tcpsleuth record``: keep the evidence of the next reconnect storm by itself."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from tcpsleuth.cli.options import PORT, FiniteFloat, kafka_config_option, netns_option
from tcpsleuth.detectors import rates
from tcpsleuth.recorder.incidents import Policy
from tcpsleuth.recorder.loop import Recorder, Settings
from tcpsleuth.recorder.ring import DEFAULT_SNAPLEN
from tcpsleuth.reports import jsonout

MIN_DISK = 1 << 20
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ByteSize(click.ParamType):
    """``500M``, ``2G``, ``1048576``: bytes, with K, M, G or T (powers of 1024)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in UNITS and not text[-1:].isdigit() else ""
        number = text[: len(text) - len(unit)]
        try:
            size = int(float(number) * UNITS[unit])
        except (ValueError, OverflowError):
            self.fail(f"{value!r} is not a size (e.g. 500M, 2G)", param, ctx)
        if size < MIN_DISK:
            self.fail(f"{value!r} is below the least the recorder can work with (1M)", param, ctx)
        return size


def parse_listen(text: str) -> tuple[str, int]:
    from tcpsleuth.cli.serving import parse_listen as parse

    return parse(text, "--metrics-listen", "127.0.0.1:9470")


def _printer(output_format: str) -> Any:
    def say(line: str, record: dict[str, Any]) -> None:
        if output_format == "json":
            # never NaN or Infinity in a line a log collector parses
            sys.stdout.write(jsonout.dumps({"time": round(time.time(), 3), **record}) + "\n")
        else:
            stamp = time.strftime("%H:%M:%S", time.gmtime())
            sys.stdout.write(f"{stamp} tcpsleuth record: {line}\n")
        sys.stdout.flush()

    return say


def _serve_metrics(listen: str, recorder: Recorder) -> None:
    from prometheus_client import CollectorRegistry

    from tcpsleuth.cli.serving import serve
    from tcpsleuth.reports import prometheus

    class Collector:
        def collect(self) -> Any:
            return list(prometheus.recorder_families(recorder.health, str(recorder.dir)))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())  # type: ignore[arg-type]
    host, port = parse_listen(listen)
    serve(host, port, registry, "tcpsleuth record")


def _run(settings: Settings, output_format: str, metrics_listen: str | None) -> int:
    """Record until stopped (or --duration), with the metrics served at ``metrics_listen``
    when given (its address checked first)."""
    recorder = Recorder(settings, _printer(output_format))
    if metrics_listen is not None:
        parse_listen(metrics_listen)
        _serve_metrics(metrics_listen, recorder)
    recorder.run()
    return 0


@click.command("record")
@click.option(
    "--port",
    "ports",
    type=PORT,
    multiple=True,
    required=True,
    help="Service port to record (repeatable), e.g. the broker's 9092.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where the ring and the incidents go: made with mode 0700, or an existing "
    "directory of this user's that nobody else can write (its mode is left as it is).",
)
@netns_option
@click.option(
    "--max-disk",
    type=ByteSize(),
    default="1G",
    show_default=True,
    help="The most the directory may hold: old ring files go first, then the oldest "
    "incidents; the capture pauses if that is not enough.",
)
@click.option(
    "--before",
    type=FiniteFloat(0, 3600),
    default=30,
    show_default=True,
    help="Seconds of capture kept from before the first event.",
)
@click.option(
    "--after",
    type=FiniteFloat(1, 3600),
    default=30,
    show_default=True,
    help="Seconds of capture kept after the last event.",
)
@click.option(
    "--merge",
    type=FiniteFloat(0, 3600),
    default=60,
    show_default=True,
    help="An event within this many seconds of the previous one joins its incident.",
)
@click.option(
    "--max-incident",
    type=FiniteFloat(10, 86400),
    default=300,
    show_default=True,
    help="An incident ends at most this many seconds after its first event.",
)
@click.option(
    "--per-hour",
    type=click.IntRange(1, 1000),
    default=6,
    show_default=True,
    help="At most this many incidents in any hour; later events are counted, not recorded.",
)
@click.option(
    "--cookie-rate",
    type=FiniteFloat(0, 1e9),
    default=10,
    show_default=True,
    help="SYN cookies per second that make an event.",
)
@click.option(
    "--overflow-rate",
    type=FiniteFloat(0, 1e9),
    default=10,
    show_default=True,
    help="Accept-queue overflows or drops per second that make an event.",
)
@click.option(
    "--queue-full/--no-queue-full",
    default=True,
    show_default=True,
    help="A listener of the port whose accept queue reaches its backlog makes an event.",
)
@click.option(
    "--rwnd-jump",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="This many more window-limited connections on the port than at the sample "
    "before make an event (0: not checked).",
)
@click.option(
    "--interval",
    type=FiniteFloat(0.2, 60),
    default=1.0,
    show_default=True,
    help="Seconds between samples of the counters and listeners.",
)
@click.option(
    "--interface",
    default="any",
    show_default=True,
    help="Interface tcpdump captures on.",
)
@click.option(
    "--snaplen",
    type=click.IntRange(96, 65535),
    default=DEFAULT_SNAPLEN,
    show_default=True,
    help="Bytes tcpdump keeps of each packet: link, IP and TCP headers with options, "
    "and the Kafka request header.",
)
@click.option(
    "--rotate",
    type=click.IntRange(1, 3600),
    default=10,
    show_default=True,
    help="Seconds per ring file (tcpdump -G).",
)
@click.option(
    "--cut-payload/--keep-payload",
    default=True,
    show_default=True,
    help="Cut what an incident keeps of each packet's payload past the Kafka request "
    "header (SASL PLAIN credentials travel right after it).",
)
@click.option(
    "--later",
    type=FiniteFloat(0, 600),
    default=5,
    show_default=True,
    help="Seconds after the last event for the second snapshot of the port's sockets.",
)
@click.option(
    "--trace",
    "trace_s",
    type=FiniteFloat(0, 600),
    default=5,
    show_default=True,
    help="Seconds of `tcpsleuth trace` at the first event (0: none; skipped with one line "
    "where bpftrace or the tracepoint is missing).",
)
@kafka_config_option
@click.option(
    "--metrics-listen",
    default=None,
    metavar="HOST:PORT",
    help="Serve the recorder's metrics (incidents recorded, health) for Prometheus here.",
)
@click.option(
    "--metrics-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the same metrics to this file every sample (node_exporter's textfile collector).",
)
@click.option(
    "--duration",
    type=FiniteFloat(1, 10 * 365 * 86400),
    default=None,
    help="Stop after this many seconds (default: until stopped).",
)
@click.option(
    "--heal",
    is_flag=True,
    help="Once an incident's storm is over, end the connections the SYN-cookie window-scale "
    "bug hit on the ports (`tcpsleuth heal --apply`), and keep what was done in the incident.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table: one line per thing that happens; json: one JSON object per line.",
)
def record_command(
    ports: tuple[int, ...],
    directory: Path,
    netns: str | None,
    max_disk: int,
    before: float,
    after: float,
    merge: float,
    max_incident: float,
    per_hour: int,
    cookie_rate: float,
    overflow_rate: float,
    queue_full: bool,
    rwnd_jump: int,
    interval: float,
    interface: str,
    snaplen: int,
    rotate: int,
    cut_payload: bool,
    later: float,
    trace_s: float,
    kafka_config: Path | None,
    metrics_listen: str | None,
    metrics_file: Path | None,
    duration: float | None,
    heal: bool,
    output_format: str,
) -> int:
    """Keep a ring of header-only capture of the service ports, sample the counters and
    listen queues as `watch` does, and when a storm starts (SYN cookies, accept-queue
    overflows, a full accept queue, a jump in window-limited connections) freeze an
    incident into DIR/incident-<UTC time>/: the capture from --before seconds before
    the first event to --after seconds after the last, the port's sockets (sock_diag)
    during the storm and --later seconds after it, a bundle of the host (as `collect`),
    a short trace where the kernel allows it; then analyse it with tcpsleuth's own
    detectors into report.json and a self-contained report.html. `tcpsleuth report DIR`
    reopens an incident, here or on another machine.

    Events within --merge seconds of each other are one incident (closed --merge
    seconds after its last event, at most --max-incident after its first); at most
    --per-hour incidents in any hour. Everything is readable by root only; the
    recorder changes nothing on the host unless --heal is given (then, as each incident
    closes, `tcpsleuth heal --apply` runs on the ports; see its help). Stop it with
    Ctrl-C, SIGTERM or SIGHUP: nothing is left running; after a SIGKILL the next start
    ends what was left and reuses DIR.

    \b
    Examples:
      sudo tcpsleuth record --port 9092 --dir /var/lib/tcpsleuth
      sudo tcpsleuth record --port 9092 --port 9093 --dir /var/lib/tcpsleuth --max-disk 5G \\
          --metrics-listen 127.0.0.1:9470
      sudo tcpsleuth record --port 9092 --dir /tmp/rec --netns broker1 --after 20
      tcpsleuth report /var/lib/tcpsleuth/incident-20261130T085300Z
    """
    if merge > max_incident:
        raise click.UsageError("--merge cannot be longer than --max-incident")
    settings = Settings(
        directory=directory.absolute(),
        ports=tuple(sorted(set(ports))),
        netns=netns,
        interface=interface,
        snaplen=snaplen,
        rotate_s=rotate,
        max_disk=max_disk,
        policy=Policy(before, after, merge, max_incident, per_hour),
        thresholds=rates.Thresholds(cookie_rate, overflow_rate, rwnd_jump),
        queue_full=queue_full,
        interval=interval,
        later_s=later,
        trace_s=trace_s,
        cut_payload=cut_payload,
        kafka_config=kafka_config,
        duration=duration,
        metrics_file=metrics_file,
        heal=heal,
    )
    return _run(settings, output_format, metrics_listen)

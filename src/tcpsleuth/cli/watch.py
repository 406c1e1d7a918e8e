"""``tcpsleuth watch``: TCP counter rates and listen queues, live, with events."""

from __future__ import annotations

import sys

import click
from rich.live import Live

from tcpsleuth.cli import output
from tcpsleuth.cli.options import FiniteFloat, format_option, netns_option
from tcpsleuth.detectors import rates
from tcpsleuth.model.findings import Finding, exit_status
from tcpsleuth.reports import table, watchview
from tcpsleuth.sources import sampling
from tcpsleuth.sources.sampling import CounterSample

ALARMING = frozenset(rates.OVERFLOW_COUNTERS) | {
    "TcpExtSyncookiesSent",
    "TcpExtSyncookiesFailed",
    "TcpExtTCPReqQFullDoCookies",
}


@click.command("watch")
@click.option(
    "--interval",
    type=FiniteFloat(0.1, 3600),
    default=1.0,
    show_default=True,
    help="Seconds between samples.",
)
@click.option(
    "--count",
    type=click.IntRange(1),
    default=None,
    help="Stop after this many intervals (default: until Ctrl-C).",
)
@click.option(
    "--cookie-rate",
    type=FiniteFloat(0, 1e9),
    default=rates.Thresholds.cookies_per_second,
    show_default=True,
    help="SYN cookies per second from which a syn-cookie-storm event is reported.",
)
@netns_option
@format_option
def watch_command(
    interval: float, count: int | None, cookie_rate: float, netns: str | None, output_format: str
) -> int:
    """Sample the TCP counters and listen queues every interval, show their rates, and
    report events as they happen: a SYN-cookie storm (cookies sent faster than
    --cookie-rate), accept-queue overflows and drops, a listener whose accept queue
    reaches its backlog.

    With --format json, one JSON object per line: {"type": "sample", ...} every
    interval and {"type": "event", "kind": ..., ...} for each event. The exit status
    is 1 when an event of warning or worse was seen.

    \b
    Examples:
      tcpsleuth watch
      tcpsleuth watch --interval 5 --cookie-rate 1
      tcpsleuth watch --netns broker1 --count 60 --format json | jq 'select(.type=="event")'
    """
    host = sampling.host_label(netns)
    thresholds = rates.Thresholds(cookies_per_second=cookie_rate)
    seen: list[tuple[float, Finding]] = []
    stream = sampling.every(netns, interval, count)
    before = next(stream)
    out = table.console()
    live: Live | None = None
    if output_format == "table" and out.is_terminal:
        live = Live(console=out, auto_refresh=False, transient=False)
        live.start()
    try:
        for after in stream:
            events = rates.between(before, after, host, thresholds)
            seen.extend((after.wall_time, e) for e in events)
            _show(output_format, out, live, before, after, events, seen, host)
            before = after
            if output.stdout_closed():
                break  # `watch | head`: the reader has gone, so has the point of watching
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    return exit_status(e for _, e in seen)


def _show(
    output_format: str,
    out: object,
    live: Live | None,
    before: CounterSample,
    after: CounterSample,
    events: list[Finding],
    seen: list[tuple[float, Finding]],
    host: str,
) -> None:
    seconds = after.at - before.at
    per_second = rates.rates(before.counters, after.counters, seconds)
    if output_format == "json":
        watchview.write_json_line(
            sys.stdout,
            watchview.sample_record(
                after.wall_time,
                seconds,
                after.counters,
                per_second,
                rates.RATE_COUNTERS,
                after.listeners,
            ),
        )
        for event in events:
            watchview.write_json_line(sys.stdout, watchview.event_record(after.wall_time, event))
        return
    grown = rates.deltas(before.counters, after.counters)
    title = f"{host} at {watchview.clock(after.wall_time)} (over {seconds:.1f} s)"
    rates_view = watchview.rates_table(
        title, rates.RATE_COUNTERS, after.counters, per_second, grown, ALARMING
    )
    if live is not None:
        live.update(
            watchview.screen(rates_view, watchview.listeners_table(after.listeners), seen),
            refresh=True,
        )
        return
    # Not a terminal: one line per interval with the counters that moved, and events.
    moved = "  ".join(f"{name}=+{grown[name]}" for name in rates.RATE_COUNTERS if grown.get(name))
    console = table.console()
    # one line per record, however long: these lines are for logs and grep
    console.print(f"{watchview.clock(after.wall_time)} {moved or 'no change'}", soft_wrap=True)
    for event in events:
        console.print(watchview.event_line(after.wall_time, event), soft_wrap=True)

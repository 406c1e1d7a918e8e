"""``tcpsleuth collect``: write a bundle of this host for analysis elsewhere."""

from __future__ import annotations

from pathlib import Path

import click

from tcpsleuth.cli.options import format_option, kafka_config_option, netns_option
from tcpsleuth.reports import jsonout, table
from tcpsleuth.sources.bundle import write_bundle


@click.command("collect")
@click.argument("out_dir", type=click.Path(path_type=Path))
@netns_option
@kafka_config_option
@format_option
def collect_command(
    out_dir: Path, netns: str | None, kafka_config: Path | None, output_format: str
) -> int:
    """Write a bundle of plain text files (uname, sysctl, counters, ss listings and,
    with --kafka-config, the broker config) to OUT_DIR, a new or empty directory.
    `tcpsleuth audit --bundle OUT_DIR` analyses it anywhere. Nothing on the host
    is changed.

    \b
    Examples:
      tcpsleuth collect /tmp/broker-17
      tcpsleuth collect /tmp/broker-17 --kafka-config /etc/kafka/server.properties
    """
    written = write_bundle(out_dir, netns, kafka_config)
    if output_format == "json":
        jsonout.emit(jsonout.document("collect", [], directory=str(out_dir), files=written))
    else:
        out = table.console()
        out.print(f"Bundle written to {table.plain(out_dir)}")
        out.print(
            table.records_table(
                "Files",
                ["file", "bytes"],
                [(name, (out_dir / name).stat().st_size) for name in written],
            )
        )
        out.print(f"Analyse it anywhere with: tcpsleuth audit --bundle {table.plain(out_dir)}")
    return 0

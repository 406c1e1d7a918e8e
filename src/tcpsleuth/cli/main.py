"""Entry point: the command group, and the one place errors become exit status 2."""

from __future__ import annotations

import sys

import click

from tcpsleuth import __version__
from tcpsleuth.cli.audit import audit_command
from tcpsleuth.cli.collect import collect_command
from tcpsleuth.cli.compare import compare_command
from tcpsleuth.cli.doctor import doctor_command
from tcpsleuth.cli.exporter import exporter_command
from tcpsleuth.cli.lab import lab_group
from tcpsleuth.cli.pcap import pcap_command
from tcpsleuth.cli.probe import probe_command
from tcpsleuth.cli.sockets import sockets_command
from tcpsleuth.cli.trace import trace_command
from tcpsleuth.cli.watch import watch_command
from tcpsleuth.errors import InputError

USAGE_ERROR = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tcpsleuth")
def cli() -> None:
    """Find out why TCP is delaying requests on servers with many clients (Kafka
    brokers first), prove it, and say how to stop it.

    Exit status: 0 nothing of warning or worse, 1 findings of warning or worse,
    2 usage or input error.
    """


for command in (
    doctor_command,
    audit_command,
    collect_command,
    sockets_command,
    compare_command,
    trace_command,
    pcap_command,
    watch_command,
    exporter_command,
    lab_group,
    probe_command,
):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    try:
        status = cli.main(args=argv, prog_name="tcpsleuth", standalone_mode=False)
    except click.exceptions.Exit as exc:
        status = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        status = USAGE_ERROR
    except click.exceptions.Abort:
        click.echo("tcpsleuth: interrupted", err=True)
        status = 130
    except InputError as exc:
        click.echo(f"tcpsleuth: error: {exc}", err=True)
        status = USAGE_ERROR
    except KeyboardInterrupt:
        click.echo("tcpsleuth: interrupted", err=True)
        status = 130
    except BrokenPipeError:
        status = 0
    sys.exit(status if isinstance(status, int) else 0)

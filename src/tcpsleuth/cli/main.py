"""Entry point: the command group, and the one error boundary of the command line.

Exit status: 0 nothing of warning or worse, 1 findings of warning or worse, 2 a usage,
input or environment error tcpsleuth recognises (one line on stderr), 3 anything
unexpected, a bug in tcpsleuth (one line on stderr naming the file that holds the
traceback), 128+N after signal N (SIGINT, SIGTERM, SIGHUP: cleaned up as for Ctrl-C).
A broken pipe on standard output ends quietly with the status the command had.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
import traceback
from types import FrameType

import click

from tcpsleuth import __version__
from tcpsleuth.cli import output
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
INTERNAL_ERROR = 3
INTERRUPTED = 128 + signal.SIGINT


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="tcpsleuth")
def cli() -> None:
    """Find out why TCP is delaying requests on servers with many clients (Kafka
    brokers first), prove it, and say how to stop it.

    Exit status: 0 nothing of warning or worse, 1 findings of warning or worse,
    2 usage or input error, 3 a bug in tcpsleuth (the traceback is saved to a file).
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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that every command cleans up
    (namespaces, child processes, temporary files) exactly as it does for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    # one signal starts the clean-up; more of them must not interrupt it
    for other in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(other, signal.SIG_IGN)
    raise Terminated(signum)


def install_signal_handlers() -> None:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue  # nohup: the user asked for this signal to be ignored
        signal.signal(signum, _on_signal)


def one_line(text: str) -> str:
    return " ".join(text.split())


def save_traceback(exc: BaseException) -> str:
    """Write the traceback to a new file under $TMPDIR; its path, or why it could not."""
    try:
        fd, path = tempfile.mkstemp(
            prefix=f"tcpsleuth-crash-{time.strftime('%Y%m%dT%H%M%S')}-", suffix=".txt"
        )
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as out:
            out.write(f"tcpsleuth {__version__}\nargv: {sys.argv!r}\n\n")
            out.write("".join(traceback.format_exception(exc)))
    except OSError as problem:
        return f"the traceback could not be saved ({problem.strerror})"
    return f"traceback saved to {path}"


def _usage_line(exc: click.UsageError) -> str:
    where = exc.ctx.command_path if exc.ctx is not None else "tcpsleuth"
    return f"tcpsleuth: error: {one_line(exc.format_message())} (see `{where} --help`)"


def run(argv: list[str] | None = None) -> int:
    """Run the command line; every outcome becomes an exit status here."""
    try:
        status = cli.main(args=argv, prog_name="tcpsleuth", standalone_mode=False)
    except click.exceptions.Exit as exc:
        status = exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # `tcpsleuth` alone: the help, as every tool does
        status = USAGE_ERROR
    except click.UsageError as exc:
        click.echo(_usage_line(exc), err=True)
        status = USAGE_ERROR
    except click.ClickException as exc:
        click.echo(f"tcpsleuth: error: {one_line(exc.format_message())}", err=True)
        status = USAGE_ERROR
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # click turns KeyboardInterrupt (and so Terminated) into Abort
        cause = exc.__cause__ or exc.__context__ if isinstance(exc, click.Abort) else exc
        if isinstance(cause, Terminated):
            click.echo(f"tcpsleuth: stopped by {cause}", err=True)
            status = 128 + cause.signum
        else:
            click.echo("tcpsleuth: interrupted", err=True)
            status = INTERRUPTED
    except InputError as exc:
        click.echo(f"tcpsleuth: error: {one_line(str(exc))}", err=True)
        status = USAGE_ERROR
    except RecursionError as exc:
        # input nested deeper than Python can follow (e.g. a JSON document 100,000 deep)
        click.echo(f"tcpsleuth: error: input nested too deeply to read ({exc})", err=True)
        status = USAGE_ERROR
    except MemoryError:
        click.echo("tcpsleuth: error: out of memory reading the input", err=True)
        status = USAGE_ERROR
    except Exception as exc:  # the boundary: anything else is a bug in tcpsleuth
        where = save_traceback(exc)
        click.echo(
            f"tcpsleuth: internal error (a bug in tcpsleuth): {type(exc).__name__}: "
            f"{one_line(str(exc))[:300]}; {where}",
            err=True,
        )
        status = INTERNAL_ERROR
    if status is None:
        return 0
    return status if isinstance(status, int) else 0


def main(argv: list[str] | None = None) -> None:
    install_signal_handlers()
    guard = output.install()
    status = run(argv)
    with contextlib.suppress(OSError):
        guard.flush()
    sys.exit(status)

"""Entry point: the command group, and the one error boundary of the command line.

Exit status: 0 nothing of warning or worse, 1 findings of warning or worse, 2 a usage,
input or environment error tcpsleuth recognises (one line on stderr), 3 anything
unexpected, a bug in tcpsleuth (one line on stderr naming the file that holds the
traceback), 128+N after signal N (SIGINT, SIGTERM, SIGHUP: cleaned up as for Ctrl-C).
A broken pipe on standard output ends quietly with the status the command had.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

# NumPy's OpenBLAS starts a thread per core when numpy is imported, which took 20 to 60
# ms of every command's start-up here (more on a busy host); tcpsleuth does no linear
# algebra worth a thread (its passes that split run compiled loops in threads of its
# own). A value the user set stands.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click

from tcpsleuth import __version__
from tcpsleuth.cli import output
from tcpsleuth.errors import EnvironmentProblem, InputError
from tcpsleuth.model.text import printable

if TYPE_CHECKING:
    from sys import UnraisableHookArgs

USAGE_ERROR = 2
INTERNAL_ERROR = 3
INTERRUPTED = 128 + signal.SIGINT


# Each command's module is imported only when that command runs (numba, matplotlib
# and the lab cost half a second to import): name -> (module, attribute, summary).
COMMANDS = {
    "doctor": (
        "doctor",
        "doctor_command",
        "Run every read-only check available and rank what they find.",
    ),
    "audit": (
        "audit",
        "audit_command",
        "Check this host for the settings and state that turn a broker restart into an incident.",
    ),
    "collect": (
        "collect",
        "collect_command",
        "Write a bundle of plain text files for analysis elsewhere.",
    ),
    "sockets": (
        "sockets",
        "sockets_command",
        "Show TCP connections with their window scale, windows, RTT and window-limited time.",
    ),
    "compare": (
        "compare",
        "compare_command",
        "Join a snapshot taken at the client with one taken at the server.",
    ),
    "trace": (
        "trace",
        "trace_command",
        "Follow the window scale and windows the kernel really uses, per connection.",
    ),
    "pcap": (
        "pcap",
        "pcap_command",
        "Read tcpdump captures and say what TCP did to each connection.",
    ),
    "watch": (
        "watch",
        "watch_command",
        "Sample the TCP counters and listen queues every interval, with events.",
    ),
    "exporter": (
        "exporter",
        "exporter_command",
        "Serve Prometheus metrics node_exporter does not have.",
    ),
    "record": (
        "record",
        "record_command",
        "Keep a ring of capture and freeze the next storm into an incident, analysed.",
    ),
    "report": (
        "report",
        "report_command",
        "Reopen an incident the recorder kept (table, JSON or HTML).",
    ),
    "heal": (
        "heal",
        "heal_command",
        "End the connections the SYN-cookie window-scale bug has hit (dry run by default).",
    ),
    "lab": ("lab", "lab_group", "Reproduce TCP failures in network namespaces on this machine."),
    "probe": (
        "probe",
        "probe_command",
        "Test the running kernel by experiment for the SYN-cookie window-scale bug.",
    ),
}

# what the extras of pyproject.toml bring, by top-level module: a command whose import
# misses one names the extra instead of failing with an ImportError
EXTRAS = {"kio": "lab", "kafka": "lab", "confluent_kafka": "lab", "virtme_ng": "kernel"}


class LazyGroup(click.Group):
    """A group whose commands are imported when used, and listed from COMMANDS."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *(name for name in self.commands if name not in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return self.commands.get(cmd_name)  # added with cli.add_command
        module, attribute, _summary = COMMANDS[cmd_name]
        try:
            loaded = importlib.import_module(f"tcpsleuth.cli.{module}")
        except ModuleNotFoundError as missing:
            extra = EXTRAS.get((missing.name or "").partition(".")[0])
            if extra is None:
                raise
            raise EnvironmentProblem(
                f"`tcpsleuth {cmd_name}` needs the {extra} extra ({missing.name} is not "
                f"installed): pip install 'tcpsleuth[{extra}]'"
            ) from None
        command = getattr(loaded, attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_m, _a, summary) in COMMANDS.items()])


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="tcpsleuth")
def cli() -> None:
    """Find out why TCP is delaying requests on servers with many clients (Kafka
    brokers first), prove it, and say how to stop it.

    Exit status: 0 nothing of warning or worse, 1 findings of warning or worse,
    2 usage or input error, 3 a bug in tcpsleuth (the traceback is saved to a file).
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that every command cleans up
    (namespaces, child processes, temporary files) exactly as it does for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# signals received: a handler's exception can land where Python only reports it (an
# at-fork hook, a finaliser) and the command then goes on; run() still ends with the
# signal's status
_received: list[int] = []


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    # one signal starts the clean-up; more of them must not interrupt it
    for other in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(other, signal.SIG_IGN)
    _received.append(signum)
    raise Terminated(signum)


def _unraisable_hook(
    previous: Callable[[UnraisableHookArgs], object],
) -> Callable[[UnraisableHookArgs], object]:
    def hook(unraisable: UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, Terminated):
            return  # recorded in _received; run() reports it once
        previous(unraisable)

    return hook


def install_signal_handlers() -> None:
    sys.unraisablehook = _unraisable_hook(sys.unraisablehook)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue  # nohup: the user asked for this signal to be ignored
        signal.signal(signum, _on_signal)


def one_line(text: str, limit: int = 1000) -> str:
    """One line of a message, its control characters shown as escapes (messages quote
    file names and text that somebody else wrote), at most ``limit`` characters."""
    line = printable(" ".join(text.split()))
    return line if len(line) <= limit else line[: limit - 1] + "…"


# What a path the user gave can do to any open, stat or mkdir: exit 2 with its name
# (ENAMETOOLONG: a component over 255 bytes or a path over 4,096; ELOOP: a symlink
# loop). Anything else unforeseen stays a bug (exit 3).
PATH_ERRORS = frozenset(
    {
        errno.ENAMETOOLONG,
        errno.ELOOP,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENOENT,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENXIO,
        errno.ENODEV,
    }
)


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


def _internal_error(exc: BaseException) -> int:
    where = save_traceback(exc)
    click.echo(
        f"tcpsleuth: internal error (a bug in tcpsleuth): {type(exc).__name__}: "
        f"{one_line(str(exc), 300)}; {where}",
        err=True,
    )
    return INTERNAL_ERROR


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
    except OSError as exc:
        if exc.errno in PATH_ERRORS and exc.filename is not None:
            name = exc.filename if isinstance(exc.filename, str) else repr(exc.filename)
            click.echo(f"tcpsleuth: error: {one_line(name, 300)}: {exc.strerror}", err=True)
            status = USAGE_ERROR
        else:
            status = _internal_error(exc)
    except RecursionError as exc:
        # input nested deeper than Python can follow (e.g. a JSON document 100,000 deep)
        click.echo(f"tcpsleuth: error: input nested too deeply to read ({exc})", err=True)
        status = USAGE_ERROR
    except MemoryError:
        click.echo("tcpsleuth: error: out of memory reading the input", err=True)
        status = USAGE_ERROR
    except Exception as exc:  # the boundary: anything else is a bug in tcpsleuth
        status = _internal_error(exc)
    if status is None or not isinstance(status, int):
        status = 0
    if _received and status != 128 + _received[0]:
        # the signal's exception was swallowed where Python cannot raise it; the
        # command finished (and cleaned up) on its own
        click.echo(f"tcpsleuth: stopped by {signal.Signals(_received[0]).name}", err=True)
        status = 128 + _received[0]
    return status


def main(argv: list[str] | None = None) -> None:
    install_signal_handlers()
    output.install_stderr_guard()
    guard = output.install()
    status = run(argv)
    with contextlib.suppress(OSError):
        guard.flush()
    sys.exit(status)

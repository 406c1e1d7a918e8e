"""Options every command shares, and the plumbing from findings to exit status."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tcpsleuth import safefile
from tcpsleuth.errors import InputError

if TYPE_CHECKING:  # annotations only: every command's start-up would pay for the records
    from tcpsleuth.model.records import KafkaConfig

F = TypeVar("F", bound=Callable[..., Any])


PORT = click.IntRange(0, 65535)
INT32_MAX = 2**31 - 1  # an int socket option (SO_RCVBUF) or a Java int (Kafka settings)


class FiniteFloat(click.FloatRange):
    """A number in [min, max] that is finite: NaN fails no comparison, so a plain range
    check lets it through (``watch --interval nan`` busy-looped), and infinity means
    "never" to a timer. Every float option of every command uses this type."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        result = super().convert(value, param, ctx)
        if not math.isfinite(result):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return result


def format_option(func: F) -> F:
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="table for people, json for machines (one document).",
    )(func)


def _checked_netns(
    _ctx: click.Context, _param: click.Parameter, value: str | tuple[str, ...] | None
) -> str | tuple[str, ...] | None:
    """``--netns`` as given, once it names a namespace (see netns.checked_name)."""
    if value is None:
        return None
    # imported here: the namespace and container code costs the start-up of commands
    # without --netns (pcap, report) 8 ms
    from tcpsleuth.sources.netns import checked_name

    try:
        if isinstance(value, tuple):
            return tuple(checked_name(name) for name in value)
        return checked_name(value)
    except InputError as problem:
        raise click.BadParameter(str(problem), param_hint="--netns") from None


def netns_option(func: F) -> F:
    return click.option(
        "--netns",
        metavar="NAME",
        default=None,
        callback=_checked_netns,
        help=(
            "Look inside this network namespace: an `ip netns` name, pid:N (the namespace "
            "of process N) or container:NAME (podman, docker or crictl tells its pid); "
            "needs root."
        ),
    )(func)


def netns_names_option(func: F) -> F:
    """``--netns NAME``, repeatable."""
    return click.option(
        "--netns",
        "netns_names",
        multiple=True,
        metavar="NAME",
        callback=_checked_netns,
        help=(
            "Trace sockets of this network namespace: an `ip netns` name, pid:N or "
            "container:NAME (repeatable; default: all)."
        ),
    )(func)


def kafka_config_option(func: F) -> F:
    return click.option(
        "--kafka-config",
        metavar="FILE",
        type=click.Path(path_type=Path),
        default=None,
        help="The broker's server.properties: listeners, backlog and socket buffer settings.",
    )(func)


def config_option(func: F) -> F:
    """``--config PROGRAM=FILE``, repeatable."""
    return click.option(
        "--config",
        "configs",
        multiple=True,
        metavar="PROGRAM=FILE",
        help="A server's configuration file, for the setting to change and where "
        "(nginx, zookeeper, rabbitmq, redis, postgresql, envoy, kafka; repeatable). "
        "Running servers' files are found from their command lines where they name them.",
    )(func)


def load_kafka_config(path: Path | None) -> KafkaConfig | None:
    if path is None:
        return None
    # imported here: the configuration readers cost the start-up of every command 13 ms
    from tcpsleuth.sources.kafkaconfig import read_kafka_config

    return read_kafka_config(path)


def exclusive(**given: object) -> None:
    named = [name for name, value in given.items() if value]
    if len(named) > 1:
        raise click.UsageError(
            " and ".join("--" + name.replace("_", "-") for name in named) + " cannot be combined"
        )


def require(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def _try_writing_in(directory: Path, named: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise InputError(f"{named}: cannot write there ({exc.strerror or exc})") from None


def check_writable(path: Path, directory: bool) -> None:
    """InputError unless ``path`` can be written (a file) or written into (a directory,
    made later if missing): tried before any work, so that a long analysis does not end
    on a place it cannot write. Nothing is left by the trial."""
    if path.exists():
        if directory != path.is_dir():
            kind = "is not a directory" if directory else "is a directory"
            raise InputError(f"{path}: {kind}")
        if directory:
            _try_writing_in(path, path)
            return
        # a regular file is replaced, never opened (tcpsleuth.safefile): what matters
        # is its directory; a FIFO or device named directly is written into; nothing is
        # written through a symbolic link
        kind = safefile.output_kind(path)
        if kind is not None:
            raise InputError(f"{path}: {kind}; give another path")
        _try_writing_in(path.absolute().parent, path)
        return
    ancestor = path.absolute().parent
    if not directory and not ancestor.is_dir():
        raise InputError(f"{path}: {ancestor} is not a directory")
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{path}: {ancestor} is not a directory")
    _try_writing_in(ancestor, path)


def writable(directory: bool) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: the option's path checked with :func:`check_writable`."""

    def callback(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            try:
                check_writable(Path(value), directory)
            except InputError as problem:
                raise click.BadParameter(str(problem), param_hint=param.opts[0]) from None
        return value

    return callback

"""``tcpsleuth lab kernel``: build real guest kernels with and without the SYN-cookie
window-scale fix, and run commands on them."""

from __future__ import annotations

import sys

import click
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from tcpsleuth.cli.options import format_option
from tcpsleuth.lab.kernel import build as kbuild
from tcpsleuth.lab.kernel import guest
from tcpsleuth.reports import jsonout, table


@click.group("kernel")
def kernel_group() -> None:
    """Guest kernels built from Debian's linux-source-6.1: `fixed` as shipped, and
    `prefix` with the SYN-cookie window-scale fix (commit 909172a14974) reverted. They
    boot under QEMU with this machine's root filesystem shared read-only (virtme-ng),
    so tcpsleuth runs in them as installed here.

    \b
    Examples:
      sudo tcpsleuth lab kernel build prefix
      sudo tcpsleuth lab kernel run prefix -- tcpsleuth probe --format json
      sudo tcpsleuth lab run wscale-bug --kernel prefix
      tcpsleuth lab kernel list
    """


@kernel_group.command("build")
@click.argument("name", type=click.Choice(list(kbuild.VARIANTS)))
@format_option
def build_command(name: str, output_format: str) -> int:
    """Build guest kernel NAME (cached: a second build of the same source, configuration
    and patch is instant). The first build takes about 15 minutes on 2 cores; building
    the other variant afterwards reuses the tree and takes a minute or two.

    \b
    Examples:
      sudo tcpsleuth lab kernel build prefix      # the fix reverted: the real bug
      sudo tcpsleuth lab kernel build fixed --format json
    """
    objects = 0
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
        console=table.console(stderr=True),
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task(f"building {name}", step="")

        def on_line(line: str) -> None:
            nonlocal objects
            parts = line.split()
            if len(parts) >= 2 and parts[0] in ("CC", "LD", "AR", "AS", "BTF", "BTFIDS"):
                objects += 1
                progress.update(task, step=f"{objects} steps · {parts[0]} {parts[-1]}")

        kernel = kbuild.build(name, on_line)
    described = kernel.describe()
    if output_format == "json":
        jsonout.emit(jsonout.document("lab kernel build", [], kernel=described))
    else:
        table.console().print(table.key_values(f"Kernel {name}", described.items()))
    return 0


@kernel_group.command("list")
@format_option
def list_command(output_format: str) -> int:
    """The kernels built so far for the installed source.

    \b
    Examples:
      tcpsleuth lab kernel list
      tcpsleuth lab kernel list --format json
    """
    kernels = [k.describe() for k in kbuild.cached()]
    if output_format == "json":
        jsonout.emit(jsonout.document("lab kernel list", [], kernels=kernels))
    else:
        table.console().print(
            table.records_table(
                "Guest kernels",
                ["name", "release", "source", "image", "what"],
                [
                    (k["name"], k["release"], k["source_version"], k["image"], k["what"])
                    for k in kernels
                ],
            )
        )
    return 0


@kernel_group.command(
    "run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("name", type=click.Choice(list(kbuild.VARIANTS)))
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--timeout",
    type=click.IntRange(min=10),
    default=900,
    show_default=True,
    help="Seconds before the guest is stopped.",
)
def run_command(name: str, command: tuple[str, ...], timeout: int) -> int:
    """Boot kernel NAME and run COMMAND in it as root; print its output and exit with its
    status. Uses KVM where it can boot the guest and software emulation otherwise (said
    on stderr).

    \b
    Examples:
      sudo tcpsleuth lab kernel run prefix -- tcpsleuth probe --format json
      sudo tcpsleuth lab kernel run fixed --timeout 300 -- uname -r
    """
    argv = list(command[1:] if command[:1] == ("--",) else command)
    if not argv:
        raise click.UsageError("give the command to run after --")
    result = guest.run(kbuild.require(name), argv, timeout=timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    click.echo(f"tcpsleuth: guest kernel {result.release} ran under {result.accel_note}", err=True)
    return result.status

"""`--help` of every command and subcommand has examples of itself (issue 29): under an
``Examples:`` line, at least one command line that runs that very command."""

from __future__ import annotations

from collections.abc import Iterator

import click
import click.testing
import pytest

from tcpsleuth.cli.main import cli


def commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


def help_text(path: tuple[str, ...]) -> str:
    runner = click.testing.CliRunner()
    result = runner.invoke(cli, [*path, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def examples_of(text: str) -> list[str]:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Examples:"), None)
    if start is None:
        return []
    out = []
    for line in lines[start + 1 :]:
        if not line.strip() or not line.startswith("    "):
            break
        out.append(line.strip())
    return out


ALL = sorted(commands())


def test_the_walk_sees_the_subcommands() -> None:
    assert {("lab", "run"), ("lab", "list"), ("lab", "kernel", "run"),
            ("lab", "kernel", "build")} <= set(ALL)  # fmt: skip
    assert len(ALL) >= 20


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_every_command_has_examples_of_itself(path: tuple[str, ...]) -> None:
    examples = examples_of(help_text(path))
    own = " ".join(("tcpsleuth", *path))
    assert any(own in example for example in examples), (path, examples)


def test_examples_without_an_examples_line_are_not_found() -> None:
    assert examples_of("Usage: x\n\n  Does x.\n") == []
    assert examples_of("  Examples:\n    tcpsleuth x --y\n\n") == ["tcpsleuth x --y"]

"""Errors that end a command with exit status 2 and one line on stderr."""


class InputError(Exception):
    """Something the user gave (a file, a bundle, an option) cannot be used.

    The message is the whole line the user sees: it names what is wrong and,
    where it helps, what to do instead.
    """


class EnvironmentProblem(InputError):
    """This host cannot do what was asked: a missing privilege, tool or kernel feature."""

"""The one exception type that reaches users as a clean error line, and how its messages name options."""

from __future__ import annotations

import contextlib
import contextvars

_command_line = contextvars.ContextVar("mnistgan_command_line", default=False)


class UserError(Exception):
    """A problem the user can fix: bad option, bad file, missing data.

    The CLI prints ``mnistgan: error: <message>`` and exits with status 2, without a traceback,
    so the message must name the problem and say what to do about it.
    """


# Python arguments whose command-line flag is not simply the name with dashes.
FLAG_NAMES = {"overrides": "set", "run_dir": "run"}


def option(name: str) -> str:
    """How a message names an option: ``--batch-size`` on the command line, ``'batch_size'`` in Python.

    The same error reaches a shell user and a notebook user; each should read the name they typed.
    """
    if _command_line.get():
        return "--" + FLAG_NAMES.get(name, name).replace("_", "-")
    return f"'{name}'"


@contextlib.contextmanager
def command_line_names():
    """While a command runs, messages name options as its flags."""
    token = _command_line.set(True)
    try:
        yield
    finally:
        _command_line.reset(token)

"""The one error policy of every command: a user error is one line and exit 2; anything else is a bug.

A ``UserError`` says what is wrong with an input the user controls (an option, a config key, a file, a record)
and how to fix it; every CLI's ``main`` is wrapped in ``cli_main`` so such an error prints as ``error: ...`` on
stderr and exits 2, with no traceback. Every other exception propagates with its traceback: hiding a bug behind
a friendly line ("internal error") only makes it harder to report.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix; the message names the option, key, file or record, and the fix."""


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown or impossible; the message names the dotted key."""


def cli_main(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI's ``main(argv) -> exit code``: a ``UserError`` becomes one ``error:`` line and exit 2."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapped

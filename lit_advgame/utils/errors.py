"""How the command-line entry points report user errors: one ``error: <message>`` line, exit status 2.

A bad config, argument, file or checkpoint raises one of :data:`USER_ERRORS` with a message that names
the argument or file. The ``lit-advgame`` and ``python -m lit_advgame.evaluation`` entry points print
``error: <message>`` to stderr and exit with status 2 (argparse's status for usage errors) instead of
a long traceback. Set the environment variable ``LIT_ADVGAME_DEBUG=1`` to get the full traceback
(the exception propagates). Other exceptions (bugs) always propagate with their traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from lightning_fabric.utilities.exceptions import MisconfigurationException

DEBUG_ENV = "LIT_ADVGAME_DEBUG"
"""Environment variable: set to 1 (or true/yes) to see the full traceback of a user error."""

USER_ERROR_EXIT_CODE = 2

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    MisconfigurationException,
)
"""Exceptions reported as ``error: <message>`` (their messages name the argument/file and what is allowed)."""

T = TypeVar("T")


def debug_enabled() -> bool:
    """Whether ``LIT_ADVGAME_DEBUG`` asks for full tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def error_message(err: BaseException) -> str:
    """The message of ``err`` as one ``error:`` report (KeyError without its repr quotes)."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        return str(err.args[0])
    return str(err) or type(err).__name__


def run_reporting_user_errors(fn: Callable[[], T]) -> T:
    """Call ``fn()``; a user error prints ``error: <message>`` to stderr and exits with status 2.

    With ``LIT_ADVGAME_DEBUG=1`` the exception propagates (full traceback).
    """
    try:
        return fn()
    except USER_ERRORS as err:
        if debug_enabled():
            raise
        print(f"error: {error_message(err)}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None

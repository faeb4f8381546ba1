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


class MissingExtraError(ImportError):
    """An optional dependency (a pip extra of the package) is not installed; the message gives the install command."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    MissingExtraError,
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


UNION_WRAPPER = "Does not validate against any of the Union subtypes"
"""How jsonargparse starts the message of an error raised while it instantiates a class given as a union
(``model``/``data`` in subclass mode): it lists each subtype's error, with the value it was given."""


def unwrap_union_error(message: str) -> str:
    r"""The errors jsonargparse collected under :data:`UNION_WRAPPER`, without the subtype list, the
    ``Expected a <class 'NoneType'>`` alternative and the dump of the given value.

    >>> unwrap_union_error(
    ...     "Does not validate against any of the Union subtypes\nSubtypes: [A, NoneType]\nErrors:\n"
    ...     "  - unknown model name 'x'. Available: lenet\n  - Expected a <class 'NoneType'>\n"
    ...     "Given value type: <class 'Namespace'>\nGiven value: Namespace(arch='x')"
    ... )
    "unknown model name 'x'. Available: lenet"
    """
    if not message.startswith(UNION_WRAPPER) or "\nErrors:\n" not in message:
        return message
    errors = []
    for line in message.split("\nErrors:\n", 1)[1].splitlines():
        if line.startswith("Given value"):
            break
        if line.startswith("  - "):
            errors.append(line[4:])
        elif errors:
            errors[-1] += "\n" + line
    errors = [e for e in errors if not e.startswith("Expected a <class 'NoneType'>")]
    return "; ".join(errors) if errors else message


def error_message(err: BaseException) -> str:
    """The message of ``err`` as one ``error:`` report (KeyError without its repr quotes; jsonargparse's
    union wrapper removed, see :func:`unwrap_union_error`)."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        return str(err.args[0])
    return unwrap_union_error(str(err)) or type(err).__name__


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

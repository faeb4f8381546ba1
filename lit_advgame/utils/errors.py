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


def _type_name(expected: str) -> str:
    """``"Expected a <class 'int'>"`` -> ``"int"``; ``"Expected a <class 'NoneType'>"`` -> ``"null"``."""
    name = expected.removeprefix("Expected a ").strip()
    if name.startswith("<class '") and name.endswith("'>"):
        name = name[len("<class '") : -2].rsplit(".", 1)[-1]
    return "null" if name == "NoneType" else name


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _union_errors(lines: list[str]) -> list[str]:
    """The errors of the union report ``lines`` (nested unions flattened), without the ``null`` alternative and,
    when a real error is among them, without jsonargparse's generic ``Not a valid subclass``/type alternatives."""
    head = lines[0].strip()
    if head != UNION_WRAPPER:
        return [strip_subclass_forms("\n".join(line.strip() for line in lines)).replace("\n", " ")]
    base = _indent(lines[0])
    bullets: list[list[str]] = []
    bullet_indent: int | None = None
    given = None
    errors_at = next((k for k, line in enumerate(lines) if line.strip() == "Errors:"), None)
    for line in lines[(errors_at or len(lines)) + 1 :]:
        text = line.strip()
        if _indent(line) <= base and text.startswith("Given value"):
            if text.startswith("Given value:"):
                given = text.removeprefix("Given value:").strip()
            continue
        if text.startswith("- ") and bullet_indent in (None, _indent(line)):
            bullet_indent = _indent(line)
            bullets.append([" " * (_indent(line) + 2) + text[2:]])
        elif bullets:
            bullets[-1].append(line)
    found = [e for bullet in bullets for e in _union_errors(bullet)]
    found = [e for e in found if e != "Expected a <class 'NoneType'>"] or found
    real = [e for e in found if not e.startswith(("Expected a ", "Not a valid subclass of "))]
    if real:
        return real
    if found and all(e.startswith("Expected a ") for e in found):
        types = " or ".join(_type_name(e) for e in found + ["Expected a <class 'NoneType'>"] * ("null" not in head))
        return [f"expected {types}; got {given!r}"]
    return found


def unwrap_union_error(message: str) -> str:
    r"""The errors jsonargparse collected under :data:`UNION_WRAPPER` (nested unions included, after an optional
    ``Parser key "<key>":`` line), without the subtype lists, the ``Expected a <class 'NoneType'>`` alternatives,
    the dumps of the given values and the lists of accepted subclass forms. Where every alternative is a type
    mismatch, one line names the key, the expected types and the given value.

    >>> unwrap_union_error(
    ...     "Does not validate against any of the Union subtypes\nSubtypes: [A, NoneType]\nErrors:\n"
    ...     "  - unknown model name 'x'. Available: lenet\n  - Expected a <class 'NoneType'>\n"
    ...     "Given value type: <class 'Namespace'>\nGiven value: Namespace(arch='x')"
    ... )
    "unknown model name 'x'. Available: lenet"
    >>> unwrap_union_error(
    ...     'Parser key "trainer.max_epochs":\n  Does not validate against any of the Union subtypes\n'
    ...     "  Subtypes: [<class 'int'>, <class 'NoneType'>]\n  Errors:\n    - Expected a <class 'int'>\n"
    ...     "    - Expected a <class 'NoneType'>\n  Given value type: <class 'str'>\n  Given value: x"
    ... )
    "trainer.max_epochs: expected int or null; got 'x'"
    """
    lines = message.splitlines()
    key = None
    if lines and lines[0].startswith('Parser key "') and lines[0].endswith('":'):
        key, lines = lines[0][len('Parser key "') : -2], lines[1:]
    if not lines or lines[0].strip() != UNION_WRAPPER:
        return strip_subclass_forms(message)
    errors = _union_errors(lines)
    return (f"{key}: " if key else "") + "; ".join(errors) if errors else message


SUBCLASS_FORMS = "Subclass types expect one of:"
"""How jsonargparse starts its list of the accepted forms of a subclass argument, after the actual error."""


def strip_subclass_forms(message: str) -> str:
    r"""``message`` without jsonargparse's list of accepted subclass forms, and without its trailing ``Not a valid
    subclass of <Base>`` when a real error precedes it.

    >>> strip_subclass_forms(
    ...     "probe_size must be >= 1; got -3; Not a valid subclass of Callback\n    Subclass types expect one of:\n"
    ...     "    - a class path (str)"
    ... )
    'probe_size must be >= 1; got -3'
    """
    if SUBCLASS_FORMS not in message:
        return message
    head = message.split(SUBCLASS_FORMS, 1)[0].rstrip()
    cut = head.rfind("; Not a valid subclass of ")
    return head[:cut] if cut > 0 else head


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

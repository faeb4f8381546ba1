"""Keyword options of the functional API: checked against an approximator's fields, and the
deprecated aliases kept for one release (renamed result attributes and keyword arguments)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, TypeVar

T = TypeVar("T")


def build_approximator(cls: type[T], owner: str, *, extra: tuple[str, ...] = (), **options: Any) -> T:
    """``cls(**options)`` for the function ``owner``, with a ``TypeError`` naming the allowed keywords for an
    unknown one (the function's ``generator`` is the approximator's ``random_state``; ``extra``: the
    function's own keywords)."""
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        allowed = [*extra, *("generator" if name == "random_state" else name for name in fields)]
        raise TypeError(f"{owner}() got unknown keyword(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return cls(**options)


def deprecated_alias(new: str, old: str, note: str = "") -> property:
    """A read-only property ``old`` that warns (``DeprecationWarning`` naming ``new``) and returns ``self.new``."""

    def getter(self: Any) -> Any:
        warnings.warn(
            f"{type(self).__name__}.{old} is deprecated and will be removed in the next release; use .{new}{note}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(self, new)

    return property(getter, doc=f"Deprecated alias of :attr:`{new}`{note}.")


def renamed_keyword(options: dict[str, Any], old: str, new: str, owner: str) -> None:
    """Move ``options[old]`` to ``options[new]`` with a ``DeprecationWarning`` (error if both are given)."""
    if old not in options:
        return
    if new in options:
        raise TypeError(f"{owner}: pass {new}= only ({old}= is its deprecated old name)")
    warnings.warn(
        f"{owner}: the keyword {old}= is deprecated and will be removed in the next release; use {new}=",
        DeprecationWarning,
        stacklevel=3,
    )
    options[new] = options.pop(old)

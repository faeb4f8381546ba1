"""Diversity regularizers by name: ``"none"`` (plain ensemble), ``"trs"``, ``"gal"``, ``"adp"``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from lit_advgame.ensembles.adp import ADPRegularizer
from lit_advgame.ensembles.base import DiversityRegularizer
from lit_advgame.ensembles.gal import GALRegularizer
from lit_advgame.ensembles.trs import TRSRegularizer

REGULARIZERS: dict[str, type[DiversityRegularizer]] = {
    "none": DiversityRegularizer,
    "trs": TRSRegularizer,
    "gal": GALRegularizer,
    "adp": ADPRegularizer,
}


def register_regularizer(name: str) -> Callable[[type[DiversityRegularizer]], type[DiversityRegularizer]]:
    """Class decorator adding a :class:`DiversityRegularizer` subclass under ``name``."""

    def decorator(cls: type[DiversityRegularizer]) -> type[DiversityRegularizer]:
        if not (isinstance(cls, type) and issubclass(cls, DiversityRegularizer)):
            raise TypeError(f"{cls!r} is not a DiversityRegularizer subclass")
        if name in REGULARIZERS:
            raise ValueError(f"a regularizer named {name!r} is already registered")
        REGULARIZERS[name] = cls
        return cls

    return decorator


def available_regularizers() -> list[str]:
    return list(REGULARIZERS)


def regularizer_options(name: str) -> list[str]:
    """The keyword options of regularizer ``name`` (besides ``num_members`` and ``scaling``)."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p not in ("self", "num_members", "scaling")]


def _lookup(name: str) -> type[DiversityRegularizer]:
    if not isinstance(name, str) or name.lower() not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {name!r}; choose one of: {', '.join(REGULARIZERS)}")
    return REGULARIZERS[name.lower()]


def build_regularizer(name: str, num_members: int, scaling: str = "reference", **kwargs: Any) -> DiversityRegularizer:
    """Build regularizer ``name`` for an ensemble of ``num_members`` with options ``kwargs``.

    Raises ``ValueError`` for an unknown name or too few members, ``TypeError`` for an unknown option.
    """
    cls = _lookup(name)
    allowed = regularizer_options(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"regularizer {name!r} got unknown option(s) {unknown}; its options are: {', '.join(allowed) or 'none'}"
        )
    return cls(num_members, scaling, **kwargs)

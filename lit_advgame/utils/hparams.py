"""Hyperparameters as plain Python values.

jsonargparse parses an argument annotated with a restricted type (``PositiveInt``,
``NonNegativeFloat``...) into an instance of that ``int``/``float`` subclass. Saved as is in a
checkpoint's hyperparameters, such a value cannot be read back with ``torch.load(weights_only=True)``
(an unsupported global) and is written to ``hparams.yaml`` with a Python tag. A module that annotates
its ``__init__`` with such types saves its hyperparameters with :func:`save_builtin_hyperparameters`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import FrameType
from typing import Any

from pytorch_lightning.core.mixins import HyperparametersMixin


def builtin_value(value: Any) -> Any:
    """``value`` with every ``int``/``float``/``str`` subclass instance (not ``bool``) turned into the plain
    type, inside dicts, lists and tuples too; everything else unchanged.

    >>> from jsonargparse.typing import PositiveInt
    >>> type(builtin_value({"batch_size": PositiveInt(8), "sizes": [PositiveInt(2)]})["batch_size"])
    <class 'int'>
    >>> builtin_value((True, 1.5, "a", None))
    (True, 1.5, 'a', None)
    """
    if isinstance(value, bool) or value is None:
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return value if type(value) is kind else kind(value)
    if isinstance(value, Mapping):
        return {key: builtin_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(builtin_value(item) for item in value)
    return value


def save_builtin_hyperparameters(obj: HyperparametersMixin, frame: FrameType | None = None) -> None:
    """``obj.save_hyperparameters()`` for the ``__init__`` that calls this (and the subclasses' ``__init__``
    calling it in turn), then the same hyperparameters as plain values (:func:`builtin_value`)."""
    if frame is None:
        current = inspect.currentframe()
        frame = current.f_back if current is not None else None
    obj.save_hyperparameters(frame=frame)
    obj.save_hyperparameters(builtin_value(dict(obj.hparams)), frame=frame)

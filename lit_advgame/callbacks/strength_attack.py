"""Deprecated location of the strength-controlled attack, an attack that lives in :mod:`lit_advgame.attacks.strength`.

Importing this module still works for one release (with a ``DeprecationWarning``); import
:class:`~lit_advgame.attacks.StrengthControlledAttack` from :mod:`lit_advgame.attacks` instead.
"""

from __future__ import annotations

import warnings

from lit_advgame.attacks.strength import *  # noqa: F403
from lit_advgame.attacks.strength import StrengthAttackResult, StrengthControlledAttack

warnings.warn(
    "lit_advgame.callbacks.strength_attack is deprecated; import StrengthControlledAttack and StrengthAttackResult "
    "from lit_advgame.attacks (module lit_advgame.attacks.strength)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["StrengthAttackResult", "StrengthControlledAttack"]

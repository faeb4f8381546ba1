"""Run an attack with the source model(s) in eval mode (re-exports :func:`lit_advgame.utils.modes.eval_mode`)."""

from __future__ import annotations

from lit_advgame.utils.modes import eval_mode

__all__ = ["eval_mode"]

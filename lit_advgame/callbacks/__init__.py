"""Validation callbacks that log game-theoretic interaction metrics to TensorBoard over epochs.

* :class:`MultiOrderInteractionCallback` -- ``I^(m)`` on clean and adversarial probes (strength-controlled
  attack), ``ΔI^(m)``, ``ΔJ^(m)`` and the normalized share per order (Ren et al., NeurIPS 2021).
* :class:`DisentanglementCallback` -- ``D^(m)`` per order (Ren et al., Eq. 4).
* :class:`TransferabilityCallback` -- the intra-ensemble transfer matrix (DVERGE protocol).
* :class:`PerturbationInteractionCallback` -- ``E_ij[I_ij(δ)]`` of adversarial perturbations (Wang et al., ICLR 2021).
* :class:`InteractionStrengthCallback` -- interaction strength ``E|I(i, j)|`` (and per order), a generalization
  monitor (Zhang et al., ICLR 2021).
* :class:`RobustAccuracy` -- PGD-k and AutoAttack robust accuracy of the tested model, at the end of ``trainer.test``
  (:mod:`lit_advgame.callbacks.robustness`).

The probe callbacks run at the end of validation epochs on a fixed, seeded probe set, on global rank 0 only, and log
with the **epoch** as step (see :mod:`lit_advgame.callbacks.base`). In a config::

    trainer:
      callbacks+:
        - class_path: lit_advgame.callbacks.MultiOrderInteractionCallback
          init_args: {probe_size: 16, every_n_epochs: 1, game: {grid: 8, num_pairs: 4}}

Shared settings are defined once: the probe settings in :class:`ProbeCallback` (every callback forwards
them), the game settings in :class:`GameSettings` (``game:``, via :class:`GameCallback`), the
perturbation-interaction settings in
:class:`~lit_advgame.interactions.perturbation_spec.PerturbationInteraction` (``interaction:``).

The strength-controlled attack (stop at a fixed drop of the true-class logit) is an attack:
:class:`lit_advgame.attacks.StrengthControlledAttack` (importing it from here still works for one
release, with a ``DeprecationWarning``).
"""

from lit_advgame.callbacks.base import ProbeCallback, log_figures, log_scalars
from lit_advgame.callbacks.disentanglement import DisentanglementCallback
from lit_advgame.callbacks.game_settings import GameCallback, GameSettings
from lit_advgame.callbacks.interaction_strength import InteractionStrengthCallback
from lit_advgame.callbacks.multi_order import MultiOrderInteractionCallback
from lit_advgame.callbacks.perturbation import PerturbationInteractionCallback
from lit_advgame.callbacks.probe_attack import AttackOutcome, ProbeAttack
from lit_advgame.callbacks.probes import classifier_of, members_of
from lit_advgame.callbacks.robustness import RobustAccuracy
from lit_advgame.callbacks.transferability import TransferabilityCallback

__all__ = [
    "AttackOutcome",
    "DisentanglementCallback",
    "GameCallback",
    "GameSettings",
    "InteractionStrengthCallback",
    "MultiOrderInteractionCallback",
    "PerturbationInteractionCallback",
    "ProbeAttack",
    "ProbeCallback",
    "RobustAccuracy",
    "TransferabilityCallback",
    "classifier_of",
    "log_figures",
    "log_scalars",
    "members_of",
]


def __getattr__(name: str):
    """Deprecated names: the strength-controlled attack moved to :mod:`lit_advgame.attacks.strength`."""
    if name in ("StrengthControlledAttack", "StrengthAttackResult"):
        import warnings

        from lit_advgame.attacks import strength

        warnings.warn(
            f"lit_advgame.callbacks.{name} is deprecated; import it from lit_advgame.attacks",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(strength, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Ensembles trained jointly with a diversity regularizer (TRS, GAL, ADP) and optional adversarial training.

One optimizer over all members, automatic optimisation (as the TRS repository's TRS/GAL/ADP
trainers). Per training batch (x, y):

    out  = regularizer(ensemble, x, y)                      # members' logits on x + weighted penalty
    CE   = Σ_i CE(f_i(x), y)  (scaling="reference")  or  mean_i CE(f_i(x), y)  (scaling="mean")
    loss = CE + penalty

With ``attack`` settings a PGD (L∞ by default) (:class:`lit_advgame.attacks.Attack`, random start, models
in eval mode) against the *ensemble output* (log of the mean member probability, as DVERGE's
``train_adv.py``) gives x_adv; the members' CE on x_adv replaces the clean CE (``adv_loss="replace"``,
Madry/DVERGE) or is added to it (``"add"``, the TRS paper's "TRS + AT"). The regularizer always acts
on the clean batch.

Logged: ``train/loss`` (total), ``train/ce`` (clean classification term), ``train/ce_adv`` (with
adversarial training), the regularizer's terms ``train/sim``, ``train/smooth``, ``train/eps``
(TRS; ``eps`` is the ramped inner radius of "plus"), ``train/gal`` (GAL), ``train/adp_entropy``,
``train/adp_logdet`` (ADP), ``train/acc`` (ensemble); ``val|test/loss`` (NLL of the averaged
probabilities), ``val|test/acc`` (ensemble) and ``val|test/acc_member{i}``.

DDP: the double backprop (``create_graph=True``) only differentiates w.r.t. the input inside
``training_step``; the weights get their gradients in the single ``loss.backward()`` that DDP's
reducer hooks, so the plain ``strategy: ddp`` works (tested with 2 CPU processes over gloo).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lit_advgame.attacks.pgd_settings import PGDSettings, settings_from_deprecated
from lit_advgame.ensembles.base import SCALINGS, member_cross_entropy
from lit_advgame.ensembles.model import (
    EnsembleModel,
    build_ensemble_model,
    combine_member_logits,
)
from lit_advgame.ensembles.registry import build_regularizer
from lit_advgame.training.base import ClassifierModule
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.utils.seeding import derive_seed
from lit_advgame.vocabulary import ENSEMBLE_ADV_LOSSES, EnsembleAdvLoss, RegularizerScaling

AdvLoss = EnsembleAdvLoss
Scaling = RegularizerScaling
ADV_LOSSES = ENSEMBLE_ADV_LOSSES
DEFAULT_NUM_MEMBERS = 3
#: deprecated flat keywords (one release) -> the ``attack`` setting they set
DEPRECATED_ATTACK_KEYWORDS = {"adv_eps": "eps", "adv_steps": "steps", "adv_step_size": "step_size"}


def _resolve_members(num_members: int | None, archs: Sequence[str] | None, arch: str) -> tuple[int, list[str]]:
    if archs is not None:
        if isinstance(archs, str) or not all(isinstance(a, str) for a in archs) or len(archs) == 0:
            raise ValueError(f"archs must be a non-empty list of architecture names; got {archs!r}")
        archs = list(archs)
        if num_members is not None and num_members != len(archs):
            raise ValueError(f"num_members={num_members} but archs lists {len(archs)} architectures")
        return len(archs), archs
    num = DEFAULT_NUM_MEMBERS if num_members is None else num_members
    check_int(num, "num_members", minimum=1)
    return num, [arch] * num


def _attack_from_deprecated(kwargs: dict[str, Any], attack: PGDSettings | dict | None) -> PGDSettings | dict | None:
    """The previous release's ``adversarial_training`` flag and ``adv_*`` keywords (deprecated) as ``attack``."""
    flag = kwargs.pop("adversarial_training", None)
    from_flat = settings_from_deprecated(kwargs, attack, "attack", DEPRECATED_ATTACK_KEYWORDS)
    if flag is None:
        return from_flat
    warnings.warn(
        "adversarial_training is deprecated; give the training attack as attack (e.g. `attack: {eps: "
        "0.03}`; attack: null, the default, trains without it)",
        DeprecationWarning,
        stacklevel=3,
    )
    if not isinstance(flag, bool):
        raise TypeError(f"adversarial_training must be a bool; got {flag!r}")
    return (from_flat if from_flat is not None else PGDSettings()) if flag else None


class Ensemble(ClassifierModule):
    """An ensemble of N registry classifiers trained with a diversity regularizer.

    Args:
        num_members: N (default 3, or ``len(archs)``).
        archs: optional list of N architecture names (one per member); otherwise every member is ``arch``.
        regularizer: ``"none"`` (plain ensemble), ``"trs"``, ``"gal"`` or ``"adp"``.
        regularizer_kwargs: options of the regularizer, e.g. for TRS ``{lambda_sim: 40,
            lambda_smooth: 2.5, variant: plus, eps_start: 0.01, eps_end: 0.03}``
            (see :mod:`lit_advgame.ensembles.trs`, ``.gal``, ``.adp``).
        scaling: ``"reference"`` (default: sum of member CEs and the TRS code's term scalings, so
            published coefficients carry over) or ``"mean"`` (N- and batch-size-independent);
            see :mod:`lit_advgame.ensembles.base`.
        attack: PGD adversarial training against the ensemble output,
            :class:`~lit_advgame.attacks.pgd_settings.PGDSettings` (YAML: ``attack: {eps: 0.03, steps: 10}``;
            defaults L∞, ε = 8/255, 10 steps of 2.5·ε/10, random start); ``None`` (default): no adversarial training.
        adv_loss: ``"replace"`` the clean CE by the adversarial one, or ``"add"`` it.
        seed: base seed of the training-time randomness (inner-attack starts, input noise,
            adversarial-training starts); each step uses seed ⊕ global rank ⊕ global step, so a
            resumed run draws the same numbers as an uninterrupted one.
        **kwargs: the arguments of :class:`~lit_advgame.training.base.ClassifierModule`: ``arch`` (of every
            member when ``archs`` is not given), ``arch_kwargs`` (shared by all members), ``num_classes``,
            ``input_shape``, ``mean``, ``std``, ``optimizer``, ... (``weights`` is not supported: load a Lightning
            checkpoint instead). Deprecated for one release: ``adversarial_training``, ``adv_eps``, ``adv_steps``,
            ``adv_step_size`` (now ``attack``).

    The classifier contract: :attr:`classifier` is the :class:`~lit_advgame.ensembles.model.EnsembleModel`
    (output: log of the mean member probability; ``.members`` the member classifiers).
    """

    def __init__(
        self,
        num_members: int | None = None,
        archs: list[str] | None = None,
        regularizer: str = "none",
        regularizer_kwargs: dict[str, Any] | None = None,
        scaling: Scaling = "reference",
        attack: PGDSettings | None = None,
        adv_loss: AdvLoss = "replace",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        attack = _attack_from_deprecated(kwargs, attack)
        settings = None if attack is None else PGDSettings.coerce(attack, "attack").resolved()
        check_choice(scaling, "scaling", SCALINGS)
        if regularizer_kwargs is not None and not isinstance(regularizer_kwargs, dict):
            raise TypeError(f"regularizer_kwargs must be a dict of options; got {type(regularizer_kwargs).__name__}")
        check_choice(adv_loss, "adv_loss", ADV_LOSSES)
        check_int(seed, "seed", minimum=0)
        if kwargs.get("weights") is not None:
            raise ValueError("Ensemble does not take `weights`; resume or load a Lightning checkpoint instead")
        attack = None if settings is None else settings.as_dict()  # hyper-parameters: a plain dict
        super().__init__(**kwargs)
        members = self.model.num_members
        self.regularizer = build_regularizer(regularizer, members, scaling, **(regularizer_kwargs or {}))
        self.attack_settings = settings
        self.num_members = members
        num_classes = self.hparams.num_classes
        self.val_member_acc = nn.ModuleList(
            MulticlassAccuracy(num_classes=num_classes, average="micro") for _ in range(members)
        )
        self.test_member_acc = nn.ModuleList(
            MulticlassAccuracy(num_classes=num_classes, average="micro") for _ in range(members)
        )

    # ----------------------------------------------------------------- model
    @override
    def build_network(self) -> EnsembleModel:
        hp = self.hparams
        num, names = _resolve_members(hp.num_members, hp.archs, hp.arch)
        return build_ensemble_model(num, names, hp.num_classes, hp.input_shape, hp.mean, hp.std, hp.arch_kwargs)

    @override
    def member_metadata(self) -> list[dict[str, Any]]:
        hp = self.hparams
        _, names = _resolve_members(hp.num_members, hp.archs, hp.arch)
        return [{"arch": name, "arch_kwargs": dict(hp.arch_kwargs or {})} for name in names]

    # ----------------------------------------------------------------- randomness and schedule
    def _step_seed(self) -> int:
        attached = self.attached_trainer() is not None
        rank = self.global_rank if attached else 0
        step = self.global_step if attached else 0
        return derive_seed(self.hparams.seed, "ensemble_step", rank, step)

    def _epoch_info(self) -> tuple[int, int | None]:
        if self.attached_trainer() is None:  # called outside a Trainer: the first epoch of a one-epoch run
            return 0, 1
        max_epochs = self.trainer.max_epochs
        return self.current_epoch, (max_epochs if max_epochs is not None and max_epochs > 0 else None)

    @override
    def on_fit_start(self) -> None:
        # fail before the first step if a radius schedule cannot be resolved
        self.regularizer.current_eps(0, self._epoch_info()[1])

    # ----------------------------------------------------------------- training
    def _log_train(self, name: str, value: torch.Tensor, batch_size: int) -> None:
        if self.attached_trainer() is not None:
            self.log(f"train/{name}", value, on_step=True, on_epoch=True, batch_size=batch_size)

    @override
    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hp = self.hparams
        seed = self._step_seed()
        generator = torch.Generator().manual_seed(seed)
        epoch, max_epochs = self._epoch_info()
        out = self.regularizer(self.model, x, y, epoch=epoch, max_epochs=max_epochs, generator=generator)
        ce = member_cross_entropy(out.member_logits, y, hp.scaling)
        classification = ce
        batch = len(y)
        if self.attack_settings is not None:
            x_adv = self.attack_settings.build(self.model, seed=seed)(x, y)
            ce_adv = member_cross_entropy(self.model.member_logits(x_adv), y, hp.scaling)
            classification = ce_adv if hp.adv_loss == "replace" else ce + ce_adv
            self._log_train("ce_adv", ce_adv.detach(), batch)
        self._log_train("ce", ce.detach(), batch)
        for name, value in out.terms.items():
            self._log_train(name, value, batch)
        loss = classification + out.penalty
        return loss, combine_member_logits(out.member_logits.detach())

    # ----------------------------------------------------------------- evaluation
    def _evaluate_ensemble(
        self,
        batch: tuple[torch.Tensor, torch.Tensor],
        stage: str,
        metric: MulticlassAccuracy,
        member_metrics: nn.ModuleList,
    ) -> None:
        x, y = batch
        member_logits = self.model.member_logits(x)
        logits = combine_member_logits(member_logits)
        loss = F.cross_entropy(logits, y)
        metric(logits, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=True, batch_size=len(y))
        for i, member_metric in enumerate(member_metrics):
            member_metric(member_logits[i], y)
            self.log(f"{stage}/acc_member{i}", member_metric, on_epoch=True, batch_size=len(y))

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate_ensemble(batch, "val", self.val_acc, self.val_member_acc)

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate_ensemble(batch, "test", self.test_acc, self.test_member_acc)

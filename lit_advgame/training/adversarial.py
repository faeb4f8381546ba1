"""Adversarial training: PGD-AT (Madry et al., ICLR 2018) and TRADES (Zhang et al., ICML 2019).

PGD-AT solves the saddle-point problem of Madry et al. (their Eq. 2.1)

    min_θ E_(x,y) [ max_{‖δ‖ ≤ ε, x+δ ∈ [0,1]} CE(f_θ(x + δ), y) ],

the inner maximisation approximated by projected gradient ascent (PGD: uniform random start in
the ε-ball, ``steps`` sign steps of ``step_size``, projection), configured by the injected ``attack``
settings (:class:`~lit_advgame.attacks.pgd_settings.PGDSettings`). With ``mixed_fraction = α > 0`` the
loss is Goodfellow et al.'s (ICLR 2015, Eq. 3) mix α·CE(f(x), y) + (1 − α)·CE(f(x_adv), y).

TRADES (Zhang et al. 2019, Eq. 5) minimises

    CE(f_θ(x), y) + β · KL(f_θ(x) ‖ f_θ(x'))  with  x' = argmax_{‖x'−x‖ ≤ ε} KL(f_θ(x) ‖ f_θ(x')),

the inner maximisation of the *KL* (not the CE) as in ``yaodongyu/TRADES`` ``trades.py``: sign
ascent on Σ_i KL_i started at x + 0.001·N(0, I), projected to the ε-ball and [0, 1]; the outer KL is
KL_sum / B with gradients through both distributions. The inner attack is the project's
:class:`~lit_advgame.attacks.Attack` with the KL :class:`~lit_advgame.attacks.trades.TradesKL` that replaces
its classification loss, and a norm whose random start is the reference's small Gaussian
(``trades_start="gaussian"``, default; ``"uniform"`` starts uniformly in the ε-ball instead). The
only difference to the reference: the Gaussian start is clipped to the ε-ball and image box before
the first step (the reference clips after it), a change of at most 0.001 per pixel at step 0.

BatchNorm during the attack: by default (``attack_in_train_mode=False``) the inner attack runs in
eval mode, as TRADES does (``model.eval()`` before the attack) and as the project's Attack always
does. ``attack_in_train_mode=True`` runs it in train mode instead (batch statistics, active dropout),
as MadryLab's ``robustness`` and the TRS inner PGD do; the BatchNorm running statistics are restored
after the attack, so only the training forward passes update them (those references also let the
attack's forward passes move them).

Validation and test also report robust accuracy (``val/adv_acc``, ``test/adv_acc``) under a
cheaper, configurable PGD-CE attack (``eval_attack``; ``eval_attack: {steps: 0}`` switches it off).
Lightning runs validation and test under ``torch.inference_mode()``, in which no gradient can be
taken, so these attacks need ``Trainer(inference_mode=False)`` (YAML: ``trainer.inference_mode:
false``; the configs set it); the attack itself then runs under ``torch.enable_grad()``. Under
inference mode the step fails with a message saying so instead of reporting robust accuracy
that was never computed.

Randomness: each batch's attack gets its own base seed derived from ``attack_seed`` and (rank, epoch,
batch index) (training) or (rank, stage, batch index) (validation/test; the same every epoch), so
runs reproduce exactly, resumed runs included, and DDP ranks draw independent starts. With
``attack_seed=None`` the seeds come from torch's global generator (``seed_everything``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lit_advgame.attacks import Attack, build_norm
from lit_advgame.attacks.mode_lock import ModeLockedView, restored_buffers
from lit_advgame.attacks.pgd_settings import PGD_DEFAULTS, PGDSettings, settings_from_deprecated
from lit_advgame.attacks.seeding import derive_seed
from lit_advgame.attacks.trades import TRADES_START_STD, GaussianStart, TradesKL, kl_per_example
from lit_advgame.training.base import ClassifierModule
from lit_advgame.utils.checks import check_choice, check_int, check_positive
from lit_advgame.vocabulary import ADVERSARIAL_METHODS, TRADES_STARTS, AdversarialMethod, TradesStart

__all__ = [
    "AdversarialTraining",
    "GaussianStart",
    "TRADES_START_STD",
    "TradesKL",
    "kl_per_example",
    "restored_buffers",
]

Method = AdversarialMethod
METHODS = ADVERSARIAL_METHODS

#: deprecated flat keywords (one release) -> the ``attack`` setting they set
DEPRECATED_ATTACK_KEYWORDS = {
    "norm": "norm",
    "eps": "eps",
    "step_size": "step_size",
    "steps": "steps",
    "random_start": "random_start",
}
#: deprecated flat keywords (one release) -> the ``eval_attack`` setting they set
DEPRECATED_EVAL_KEYWORDS = {
    "val_eps": "eps",
    "val_step_size": "step_size",
    "val_steps": "steps",
    "val_random_start": "random_start",
}
#: the flat keywords' old defaults, kept for callers that still use them (so their results do not change)
LEGACY_ATTACK_DEFAULTS = {"norm": "linf", "eps": 0.1, "step_size": 0.025, "steps": 10, "random_start": True}

_ModeLockedView = ModeLockedView  # the old private name (moved to lit_advgame.attacks.mode_lock)


# --------------------------------------------------------------------------------- the module
class AdversarialTraining(ClassifierModule):
    """Adversarial training (PGD-AT or TRADES) of a pixel-space classifier, with robust validation.

    Args:
        method: ``"pgd"`` (Madry et al.) or ``"trades"`` (Zhang et al.).
        attack: the inner attack, :class:`~lit_advgame.attacks.pgd_settings.PGDSettings` (``norm``, ``eps``,
            ``steps``, ``step_size``, ``random_start``; YAML: ``attack: {eps: 0.1, steps: 5}``). Defaults: L∞,
            ε = 8/255, 10 steps of 2.5·ε/10, random start. ε = 0: no perturbation (standard training).
            TRADES always starts randomly (``trades_start``).
        eval_attack: the PGD-CE attack of validation and test (``val/adv_acc``, ``test/adv_acc``); its ``norm``
            and ``eps`` default to the training attack's, then 10 steps of 2.5·ε/10 with a random start;
            ``steps: 0`` switches robust validation/test off.
        beta: TRADES' β >= 0 (β = 1/λ; the paper uses 1–10, 6 on CIFAR-10).
        trades_start: TRADES' start, ``"gaussian"`` (reference: x + 0.001·N(0, I)) or ``"uniform"``.
        attack_in_train_mode: run the training attack in train mode (default False: eval mode).
        mixed_fraction: PGD only, weight α in [0, 1] of the clean CE in α·CE(x) + (1 − α)·CE(x_adv).
        eps_warmup_epochs: ramp ε (and α, in proportion) linearly from 0 to ``attack.eps`` over this many
            epochs, per batch (0: off). Validation always uses the full ε of ``eval_attack``.
        attack_seed: base seed of every attack's random start (``None``: torch's global generator).
        **kwargs: the arguments of :class:`~lit_advgame.training.base.ClassifierModule` (``arch``,
            ``num_classes``, ``input_shape``, ``mean``, ``std``, ``arch_kwargs``, ``weights``, ``optimizer``,
            ``lr_scheduler``, ``scheduler_interval``, ``scheduler_monitor``). Deprecated for one release: the
            flat ``norm``, ``eps``, ``step_size``, ``steps``, ``random_start`` (now ``attack``) and ``val_eps``,
            ``val_step_size``, ``val_steps``, ``val_random_start`` (now ``eval_attack``); given in Python, they
            keep their old defaults (ε = 0.1, α = 0.025).

    Logs ``train/loss``, ``train/adv_loss``, ``train/adv_acc``, ``train/eps`` and, when computed,
    ``train/clean_loss``/``train/clean_acc`` (TRADES or ``mixed_fraction > 0``) and ``train/kl``
    (TRADES); ``val/loss``, ``val/acc``, ``val/adv_loss``, ``val/adv_acc`` (and ``test/...``).
    """

    def __init__(
        self,
        method: Method = "pgd",
        attack: PGDSettings = PGD_DEFAULTS,
        eval_attack: PGDSettings = PGD_DEFAULTS,
        beta: float = 6.0,
        trades_start: TradesStart = "gaussian",
        attack_in_train_mode: bool = False,
        mixed_fraction: float = 0.0,
        eps_warmup_epochs: float = 0.0,
        attack_seed: int | None = 0,
        **kwargs: Any,
    ) -> None:
        attack = settings_from_deprecated(kwargs, attack, "attack", DEPRECATED_ATTACK_KEYWORDS, LEGACY_ATTACK_DEFAULTS)
        eval_attack = settings_from_deprecated(kwargs, eval_attack, "eval_attack", DEPRECATED_EVAL_KEYWORDS)
        train_settings = PGDSettings.coerce(attack, "attack").resolved()
        eval_settings = PGDSettings.coerce(eval_attack, "eval_attack").resolved(inherit=train_settings)
        check_choice(method, "method", METHODS)
        check_int(train_settings.steps, "attack.steps", minimum=1)
        check_positive(beta, "beta", allow_zero=True)
        check_choice(trades_start, "trades_start", TRADES_STARTS)
        _check_bool(attack_in_train_mode, "attack_in_train_mode")
        check_positive(mixed_fraction, "mixed_fraction", allow_zero=True)
        if mixed_fraction > 1:
            raise ValueError(f"mixed_fraction must be in [0, 1]; got {mixed_fraction!r}")
        if method == "trades" and mixed_fraction > 0:
            raise ValueError("mixed_fraction applies to method='pgd' only (TRADES already has its clean CE term)")
        check_positive(eps_warmup_epochs, "eps_warmup_epochs", allow_zero=True)
        if attack_seed is not None:
            check_int(attack_seed, "attack_seed", minimum=0)
        # the checkpoint's hyper-parameters hold the resolved settings as plain dicts
        attack, eval_attack = train_settings.as_dict(), eval_settings.as_dict()
        super().__init__(**kwargs)
        self.attack_settings = train_settings
        self.eval_attack_settings = eval_settings
        num_classes = self.hparams.num_classes
        self.train_adv_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.train_clean_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_adv_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_adv_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    # ------------------------------------------------------------------------ attack settings
    @property
    def robust_eval_eps(self) -> float:
        """ε of the validation/test attack."""
        return float(self.eval_attack_settings.eps)

    @property
    def robust_eval_step_size(self) -> float:
        """α of the validation/test attack (default 2.5·ε/steps, Madry et al.)."""
        return float(self.eval_attack_settings.step_size)

    def current_eps(self, batch_idx: int = 0) -> float:
        """Training ε at this point of the fit: ``attack.eps``, or its linear warm-up value.

        During warm-up, ε_t = ε·min(1, (epoch + (batch_idx + 1)/batches_per_epoch)/eps_warmup_epochs),
        so the first batch already trains on a (small) perturbation. Without a trainer: ``attack.eps``.
        """
        hp = self.hparams
        eps = float(self.attack_settings.eps)
        if hp.eps_warmup_epochs == 0 or self.attached_trainer() is None:
            return eps
        batches = self.trainer.num_training_batches
        if isinstance(batches, (int, float)) and math.isfinite(batches) and batches > 0:
            progress = self.current_epoch + (batch_idx + 1) / batches
        else:
            progress = self.current_epoch + 1
        return eps * min(1.0, progress / hp.eps_warmup_epochs)

    def _derived_seed(self, name: str) -> int | None:
        if self.hparams.attack_seed is None:
            return None
        return derive_seed(self.hparams.attack_seed, f"{name}/rank{self.global_rank}")

    def training_attack(self, eps: float | None = None, seed: int | None = None) -> Attack:
        """The inner attack of the training objective at radius ``eps`` (default: ``attack.eps``).

        The step size scales with ε during warm-up (α_t = α·ε_t/ε), keeping steps·α/ε fixed.
        """
        hp, settings = self.hparams, self.attack_settings
        eps = float(settings.eps) if eps is None else float(eps)
        model: nn.Module = ModeLockedView(self.model) if hp.attack_in_train_mode else self.model
        if hp.method == "trades":
            norm = build_norm(settings.norm)
            if hp.trades_start == "gaussian":
                norm = GaussianStart(norm)
            return settings.build(model, eps=eps, norm=norm, loss_terms=[TradesKL()], random_start=True, seed=seed)
        return settings.build(model, eps=eps, seed=seed)

    def robust_eval_attack(self, seed: int | None = None) -> Attack:
        """The (cheaper) PGD-CE attack of validation and test, in eval mode."""
        return self.eval_attack_settings.build(self.model, seed=seed)

    def adversarial_examples(
        self, x: torch.Tensor, y: torch.Tensor, eps: float | None = None, seed: int | None = None
    ) -> torch.Tensor:
        """x' of the training objective (PGD-CE or TRADES' PGD-KL) for clean ``x``, labels ``y``."""
        eps = float(self.attack_settings.eps) if eps is None else float(eps)
        if eps == 0:
            return x.detach().clone()
        attack = self.training_attack(eps, seed)
        if self.hparams.attack_in_train_mode:
            with restored_buffers(self.model):
                return attack(x, y)
        return attack(x, y)

    # --------------------------------------------------------------------------- objectives
    def trades_loss(
        self, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CE(f(x), y) + β·(1/B)·Σ_i KL(f(x_i) ‖ f(x'_i)) (TRADES Eq. 5; ``trades.py``)."""
        clean_logits = self(x)
        adv_logits = self(x_adv)
        clean_loss = F.cross_entropy(clean_logits, y)
        kl = kl_per_example(clean_logits, adv_logits).mean()
        loss = clean_loss + self.hparams.beta * kl
        return loss, {
            "clean_loss": clean_loss,
            "adv_loss": F.cross_entropy(adv_logits, y).detach(),
            "kl": kl,
            "clean_logits": clean_logits,
            "adv_logits": adv_logits,
        }

    def pgd_loss(
        self, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(1 − α)·CE(f(x'), y) + α·CE(f(x), y), α = ``mixed_fraction`` (PGD-AT: α = 0)."""
        alpha = float(self.hparams.mixed_fraction)
        adv_logits = self(x_adv)
        adv_loss = F.cross_entropy(adv_logits, y)
        parts: dict[str, torch.Tensor] = {"adv_loss": adv_loss, "adv_logits": adv_logits}
        if alpha == 0:
            return adv_loss, parts
        clean_logits = self(x)
        clean_loss = F.cross_entropy(clean_logits, y)
        parts.update(clean_loss=clean_loss, clean_logits=clean_logits)
        return (1 - alpha) * adv_loss + alpha * clean_loss, parts

    def adversarial_objective(
        self, x: torch.Tensor, y: torch.Tensor, eps: float | None = None, seed: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the inner attack at ``eps`` and return the training loss and its parts."""
        x_adv = self.adversarial_examples(x, y, eps, seed)
        if self.hparams.method == "trades":
            return self.trades_loss(x, x_adv, y)
        return self.pgd_loss(x, x_adv, y)

    @override
    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, adversarial logits)`` at the current ε (the base-class contract)."""
        seed = self._derived_seed(f"train/step{self.global_step}")
        loss, parts = self.adversarial_objective(x, y, self.current_eps(), seed)
        return loss, parts["adv_logits"]

    # --------------------------------------------------------------------------------- steps
    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        eps = self.current_eps(batch_idx)
        seed = self._derived_seed(f"train/epoch{self.current_epoch}/batch{batch_idx}")
        loss, parts = self.adversarial_objective(x, y, eps, seed)
        loss = self.add_penalty(loss, x, y)
        n = len(y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/eps", eps, on_step=True, on_epoch=False, batch_size=n)
        for name in ("adv_loss", "clean_loss", "kl"):
            if name in parts:
                self.log(f"train/{name}", parts[name].detach(), on_step=True, on_epoch=True, batch_size=n)
        self.train_adv_acc(parts["adv_logits"].detach(), y)
        self.log("train/adv_acc", self.train_adv_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        if "clean_logits" in parts:
            self.train_clean_acc(parts["clean_logits"].detach(), y)
            self.log("train/clean_acc", self.train_clean_acc, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _robust_evaluate(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, stage: str, metric: MulticlassAccuracy
    ) -> None:
        if self.eval_attack_settings.steps == 0:
            return
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"AdversarialTraining's robust {stage} accuracy runs a gradient attack, which cannot run under "
                "torch.inference_mode(): build the Trainer with inference_mode=False (YAML: "
                "`trainer: inference_mode: false`), or set eval_attack.steps=0 to skip the robust metrics."
            )
        x, y = batch
        with torch.enable_grad():
            x_adv = self.robust_eval_attack(self._derived_seed(f"{stage}/batch{batch_idx}"))(x, y)
        logits = self(x_adv)
        metric(logits, y)
        self.log(f"{stage}/adv_loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log(f"{stage}/adv_acc", metric, on_epoch=True, prog_bar=True, batch_size=len(y))

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)
        self._robust_evaluate(batch, batch_idx, "val", self.val_adv_acc)

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)
        self._robust_evaluate(batch, batch_idx, "test", self.test_adv_acc)


def _check_bool(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false; got {value!r}")

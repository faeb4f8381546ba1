"""Adversarial training: PGD-AT (Madry et al., ICLR 2018) and TRADES (Zhang et al., ICML 2019).

PGD-AT solves the saddle-point problem of Madry et al. (their Eq. 2.1)

    min_θ E_(x,y) [ max_{‖δ‖ ≤ ε, x+δ ∈ [0,1]} CE(f_θ(x + δ), y) ],

the inner maximisation approximated by projected gradient ascent (PGD: uniform random start in
the ε-ball, ``steps`` sign steps of ``step_size``, projection). With ``mixed_fraction = α > 0`` the
loss is Goodfellow et al.'s (ICLR 2015, Eq. 3) mix α·CE(f(x), y) + (1 − α)·CE(f(x_adv), y).

TRADES (Zhang et al. 2019, Eq. 5) minimises

    CE(f_θ(x), y) + β · KL(f_θ(x) ‖ f_θ(x'))  with  x' = argmax_{‖x'−x‖ ≤ ε} KL(f_θ(x) ‖ f_θ(x')),

the inner maximisation of the *KL* (not the CE) as in ``yaodongyu/TRADES`` ``trades.py``: sign
ascent on Σ_i KL_i started at x + 0.001·N(0, I), projected to the ε-ball and [0, 1]; the outer KL is
KL_sum / B with gradients through both distributions. The inner attack is the project's
:class:`~lit_advgame.attacks.Attack` with a KL :class:`~lit_advgame.attacks.LossTerm` that replaces
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
cheaper, configurable PGD-CE attack (``val_*`` arguments; ``val_steps=0`` switches it off).
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

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lit_advgame.attacks import Attack, LossTerm, Norm, build_norm
from lit_advgame.attacks.seeding import derive_seed
from lit_advgame.training.base import ClassifierModule, default_optimizer
from lit_advgame.utils.checks import check_choice, check_int, check_positive

METHODS = ("pgd", "trades")
NORM_NAMES = ("linf", "l2")
TRADES_STARTS = ("gaussian", "uniform")
#: standard deviation of TRADES' random start x + 0.001·N(0, I) (``trades.py``)
TRADES_START_STD = 1e-3


# ------------------------------------------------------------------------------- TRADES pieces
def kl_per_example(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, p = softmax(clean_logits), q = softmax(adv_logits), in nats."""
    return F.kl_div(
        F.log_softmax(adv_logits, dim=1), F.log_softmax(clean_logits, dim=1), reduction="none", log_target=True
    ).sum(dim=1)


class TradesKL(LossTerm):
    """TRADES' inner objective KL(f(x) ‖ f(x + δ)) per image; replaces the attack's CE.

    f(x) is computed once per attack (no gradient), in the mode the attack runs in; the reference
    recomputes it every step, which gives the same values because the model is in eval mode.
    """

    name = "kl"
    replaces_classification_loss = True
    prefers_zero_start = False

    def __init__(self) -> None:
        self._clean_log_probs: torch.Tensor | None = None

    def start(self, x: torch.Tensor, generator: torch.Generator) -> None:
        self._clean_log_probs = None

    def __call__(self, model: nn.Module, x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor):
        if self._clean_log_probs is None:
            with torch.no_grad():
                self._clean_log_probs = F.log_softmax(model(x), dim=1)
        adv_log_probs = F.log_softmax(model(x + delta), dim=1)
        kl = F.kl_div(adv_log_probs, self._clean_log_probs, reduction="none", log_target=True).sum(dim=1)
        return kl, {"kl": kl.detach()}


class GaussianStart(Norm):
    """A norm whose random start is σ·N(0, I) (TRADES), projected into the ε-ball and image box."""

    def __init__(self, base: Norm, std: float = TRADES_START_STD) -> None:
        self.base = base
        self.std = float(std)
        self.name = base.name

    def random_init(self, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.base.project(self.std * noise, x, eps)

    def step(self, delta: torch.Tensor, direction: torch.Tensor, step_size: float) -> torch.Tensor:
        return self.base.step(delta, direction, step_size)

    def project(self, delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        return self.base.project(delta, x, eps)

    def norms(self, delta: torch.Tensor) -> torch.Tensor:
        return self.base.norms(delta)


# ------------------------------------------------------------------------- train-mode attacks
class _ModeLockedView(nn.Module):
    """Calls ``net`` without registering it as a submodule, so the Attack's eval-mode switch
    (which walks ``.modules()``) leaves ``net`` in its current (train) mode."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_net", net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x)


@contextlib.contextmanager
def restored_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``model`` (BatchNorm running statistics) on exit."""
    saved = [(buf, buf.detach().clone()) for buf in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


# --------------------------------------------------------------------------------- the module
class AdversarialTraining(ClassifierModule):
    """Adversarial training (PGD-AT or TRADES) of a pixel-space classifier, with robust validation.

    Args:
        arch, num_classes, input_shape, mean, std, arch_kwargs, weights, optimizer, lr_scheduler,
            scheduler_interval, scheduler_monitor: see :class:`~lit_advgame.training.base.ClassifierModule`.
        method: ``"pgd"`` (Madry et al.) or ``"trades"`` (Zhang et al.).
        norm: ``"linf"`` or ``"l2"``; the threat model of training and of the robust validation.
        eps: radius ε >= 0 in pixel space [0, 1] (ε = 0: no perturbation, standard training).
        step_size: inner step α > 0 (L∞: sign step; L2: normalised-gradient step).
        steps: inner ascent steps (>= 1).
        random_start: PGD starts uniformly in the ε-ball (Madry et al.), else at δ = 0.
        beta: TRADES' β >= 0 (β = 1/λ; the paper uses 1–10, 6 on CIFAR-10).
        trades_start: TRADES' start, ``"gaussian"`` (reference: x + 0.001·N(0, I)) or ``"uniform"``.
        attack_in_train_mode: run the training attack in train mode (default False: eval mode).
        mixed_fraction: PGD only, weight α in [0, 1] of the clean CE in α·CE(x) + (1 − α)·CE(x_adv).
        eps_warmup_epochs: ramp ε (and α, in proportion) linearly from 0 to ``eps`` over this many
            epochs, per batch (0: off). Validation always uses the full ``val_eps``.
        val_eps: ε of the robust validation/test attack (default: ``eps``).
        val_step_size: its step (default 2.5·val_eps/val_steps, Madry et al.'s rule).
        val_steps: its PGD steps (0: no robust validation/test).
        val_random_start: its random start.
        attack_seed: base seed of every attack's random start (``None``: torch's global generator).

    Logs ``train/loss``, ``train/adv_loss``, ``train/adv_acc``, ``train/eps`` and, when computed,
    ``train/clean_loss``/``train/clean_acc`` (TRADES or ``mixed_fraction > 0``) and ``train/kl``
    (TRADES); ``val/loss``, ``val/acc``, ``val/adv_loss``, ``val/adv_acc`` (and ``test/...``).
    """

    def __init__(
        self,
        arch: str = "small_cnn",
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 16, 16),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        arch_kwargs: dict[str, Any] | None = None,
        weights: str | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        method: str = "pgd",
        norm: str = "linf",
        eps: float = 0.1,
        step_size: float = 0.025,
        steps: int = 10,
        random_start: bool = True,
        beta: float = 6.0,
        trades_start: str = "gaussian",
        attack_in_train_mode: bool = False,
        mixed_fraction: float = 0.0,
        eps_warmup_epochs: float = 0.0,
        val_eps: float | None = None,
        val_step_size: float | None = None,
        val_steps: int = 10,
        val_random_start: bool = True,
        attack_seed: int | None = 0,
    ) -> None:
        check_choice(method, "method", METHODS)
        check_choice(norm, "norm", NORM_NAMES)
        check_positive(eps, "eps", allow_zero=True)
        check_positive(step_size, "step_size")
        check_int(steps, "steps", minimum=1)
        _check_bool(random_start, "random_start")
        check_positive(beta, "beta", allow_zero=True)
        check_choice(trades_start, "trades_start", TRADES_STARTS)
        _check_bool(attack_in_train_mode, "attack_in_train_mode")
        check_positive(mixed_fraction, "mixed_fraction", allow_zero=True)
        if mixed_fraction > 1:
            raise ValueError(f"mixed_fraction must be in [0, 1]; got {mixed_fraction!r}")
        if method == "trades" and mixed_fraction > 0:
            raise ValueError("mixed_fraction applies to method='pgd' only (TRADES already has its clean CE term)")
        check_positive(eps_warmup_epochs, "eps_warmup_epochs", allow_zero=True)
        if val_eps is not None:
            check_positive(val_eps, "val_eps", allow_zero=True)
        if val_step_size is not None:
            check_positive(val_step_size, "val_step_size")
        check_int(val_steps, "val_steps", minimum=0)
        _check_bool(val_random_start, "val_random_start")
        if attack_seed is not None:
            check_int(attack_seed, "attack_seed", minimum=0)
        super().__init__(
            arch=arch,
            num_classes=num_classes,
            input_shape=input_shape,
            mean=mean,
            std=std,
            arch_kwargs=arch_kwargs,
            weights=weights,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            scheduler_interval=scheduler_interval,
            scheduler_monitor=scheduler_monitor,
        )
        self.train_adv_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.train_clean_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_adv_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_adv_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    # ------------------------------------------------------------------------ attack settings
    @property
    def robust_eval_eps(self) -> float:
        """ε of the validation/test attack."""
        hp = self.hparams
        return float(hp.eps if hp.val_eps is None else hp.val_eps)

    @property
    def robust_eval_step_size(self) -> float:
        """α of the validation/test attack (default 2.5·ε/steps, Madry et al.)."""
        hp = self.hparams
        if hp.val_step_size is not None:
            return float(hp.val_step_size)
        eps = self.robust_eval_eps
        return 2.5 * eps / hp.val_steps if eps > 0 and hp.val_steps > 0 else 1.0

    def current_eps(self, batch_idx: int = 0) -> float:
        """Training ε at this point of the fit: ``eps``, or its linear warm-up value.

        During warm-up, ε_t = ε·min(1, (epoch + (batch_idx + 1)/batches_per_epoch)/eps_warmup_epochs),
        so the first batch already trains on a (small) perturbation. Without a trainer: ``eps``.
        """
        hp = self.hparams
        if hp.eps_warmup_epochs == 0 or self._trainer is None:
            return float(hp.eps)
        batches = self.trainer.num_training_batches
        if isinstance(batches, (int, float)) and math.isfinite(batches) and batches > 0:
            progress = self.current_epoch + (batch_idx + 1) / batches
        else:
            progress = self.current_epoch + 1
        return float(hp.eps) * min(1.0, progress / hp.eps_warmup_epochs)

    def _derived_seed(self, name: str) -> int | None:
        if self.hparams.attack_seed is None:
            return None
        return derive_seed(self.hparams.attack_seed, f"{name}/rank{self.global_rank}")

    def training_attack(self, eps: float | None = None, seed: int | None = None) -> Attack:
        """The inner attack of the training objective at radius ``eps`` (default: ``eps``).

        The step size scales with ε during warm-up (α_t = α·ε_t/ε), keeping steps·α/ε fixed.
        """
        hp = self.hparams
        eps = float(hp.eps) if eps is None else float(eps)
        step_size = hp.step_size * eps / hp.eps if hp.eps > 0 and eps > 0 else hp.step_size
        model: nn.Module = _ModeLockedView(self.model) if hp.attack_in_train_mode else self.model
        if hp.method == "trades":
            norm = build_norm(hp.norm)
            if hp.trades_start == "gaussian":
                norm = GaussianStart(norm)
            return Attack(model, norm, eps, step_size, hp.steps, random_start=True, loss_terms=[TradesKL()], seed=seed)
        return Attack(model, hp.norm, eps, step_size, hp.steps, loss="ce", random_start=hp.random_start, seed=seed)

    def robust_eval_attack(self, seed: int | None = None) -> Attack:
        """The (cheaper) PGD-CE attack of validation and test, in eval mode."""
        hp = self.hparams
        return Attack(
            self.model, hp.norm, self.robust_eval_eps, self.robust_eval_step_size, hp.val_steps,
            loss="ce", random_start=hp.val_random_start, seed=seed,
        )

    def adversarial_examples(
        self, x: torch.Tensor, y: torch.Tensor, eps: float | None = None, seed: int | None = None
    ) -> torch.Tensor:
        """x' of the training objective (PGD-CE or TRADES' PGD-KL) for clean ``x``, labels ``y``."""
        eps = float(self.hparams.eps) if eps is None else float(eps)
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
            "clean_loss": clean_loss, "adv_loss": F.cross_entropy(adv_logits, y).detach(), "kl": kl,
            "clean_logits": clean_logits, "adv_logits": adv_logits,
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

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, adversarial logits)`` at the current ε (the base-class contract)."""
        loss, parts = self.adversarial_objective(x, y, self.current_eps(), self._derived_seed(f"train/step{self.global_step}"))
        return loss, parts["adv_logits"]

    # --------------------------------------------------------------------------------- steps
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        eps = self.current_eps(batch_idx)
        seed = self._derived_seed(f"train/epoch{self.current_epoch}/batch{batch_idx}")
        loss, parts = self.adversarial_objective(x, y, eps, seed)
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

    def _robust_evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, stage: str,
                         metric: MulticlassAccuracy) -> None:
        if self.hparams.val_steps == 0:
            return
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"AdversarialTraining's robust {stage} accuracy runs a gradient attack, which cannot run under "
                "torch.inference_mode(): build the Trainer with inference_mode=False (YAML: "
                "`trainer: inference_mode: false`), or set val_steps=0 to skip the robust metrics."
            )
        x, y = batch
        with torch.enable_grad():
            x_adv = self.robust_eval_attack(self._derived_seed(f"{stage}/batch{batch_idx}"))(x, y)
        logits = self(x_adv)
        metric(logits, y)
        self.log(f"{stage}/adv_loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log(f"{stage}/adv_acc", metric, on_epoch=True, prog_bar=True, batch_size=len(y))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)
        self._robust_evaluate(batch, batch_idx, "val", self.val_adv_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)
        self._robust_evaluate(batch, batch_idx, "test", self.test_adv_acc)


def _check_bool(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false; got {value!r}")

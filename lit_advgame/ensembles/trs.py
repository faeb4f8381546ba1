"""TRS: Transferability Reduced Smooth ensembles (Yang et al., NeurIPS 2021, arXiv 2104.00671).

The TRS loss (paper Sec. 3 and Algorithm 1 of Appendix E; official
``train/Empirical/trainer.py::TRS_Trainer``) adds to the members' cross-entropies

    λ_a · L_sim + λ_b · L_smooth,
    L_sim    = mean over the N(N−1)/2 member pairs and the batch of |cos(∇_x ℓ_i, ∇_x ℓ_j)|,
    L_smooth = mean over members of the squared input-gradient norm ||∇_x ℓ_i(x̃)||²,

with ℓ_i = CE(f_i(·), y) and double backprop through the gradients. ``variant`` picks x̃:

* ``"vanilla"`` (the maintainer's "cos-l2"): x̃ = the clean batch.
* ``"plus"`` (TRS proper): x̃ = the first ``1 − perturbed_fraction`` of the batch clean and the
  rest perturbed by :func:`smoothness_pgd`, an L∞ PGD that *maximises the members' mean squared
  gradient norm* (not the CE): ``inner_steps`` = 6 steps of ``inner_step_ratio·ε`` = ε/3, uniform
  random start, clamp to [0, 1]. The radius grows linearly over the run,
  ε(epoch) = δ0 + (δM − δ0)·epoch / max_epochs (0-based epoch, so δM is approached, not reached).

Reference behaviours kept as options (defaults in brackets):

* ``perturbed_fraction`` [0.5]: the reference perturbs the second half of the batch.
* ``accumulate_inner_grad`` [False]: the reference never zeroes ``adv.grad`` between steps, so it
  steps along the sign of the *accumulated* gradient (momentum 1); we take each step's own gradient.
* ``inner_bn_mode`` [``"eval"``]: the reference runs the inner attack in train mode (BatchNorm
  uses batch statistics and updates its running statistics on the perturbed data); ``"eval"``
  freezes BatchNorm/Dropout during the attack (modes are restored afterwards).
* The reference's attack also leaves ``.grad`` on the weights (cleared later by
  ``zero_grad``); ours only differentiates w.r.t. the input. The reference also runs the inner
  attack in "vanilla" mode and discards it; we skip it (and skip it when λ_b = 0).
* In "vanilla" mode the smoothness reuses the gradients of the similarity term (the reference
  recomputes the same values with a second forward pass).
* ``absolute`` [True]: |cos| as the reference; ``False`` gives the signed cosine, and with
  ``lambda_smooth = 0`` the plain "CosSim" baseline of the paper.

Scaling (:mod:`lit_advgame.ensembles.base`): with ``"reference"`` the smoothness is
``2·mean_b ||g_b / B||²`` (the reference's ``Magnitude`` of the gradient of the batch-mean CE over
the B examples), so λ_a = 40, λ_b = 2.5 (CIFAR-10, TRS issue #1) carry over, but the effective
smoothness weight falls as 1/B² with the batch size B; ``"mean"`` uses ``mean_b ||g_b||²`` of
per-example gradients. The reference's ``scale·coeff`` and ``scale·lamda`` are λ_a and λ_b.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from typing_extensions import override

from lit_advgame.attacks.model_mode import eval_mode
from lit_advgame.ensembles.base import (
    DiversityRegularizer,
    RegularizerOutput,
    RegularizerStep,
)
from lit_advgame.ensembles.gradients import member_input_gradients, pairwise_cosine
from lit_advgame.ensembles.model import EnsembleModel
from lit_advgame.utils.checks import check_choice, check_int, check_positive
from lit_advgame.vocabulary import BATCHNORM_MODES, TRS_VARIANTS

VARIANTS = TRS_VARIANTS
BN_MODES = BATCHNORM_MODES


def gradient_similarity(grads: torch.Tensor, absolute: bool = True) -> torch.Tensor:
    """L_sim: mean over member pairs and examples of |cos(g_i, g_j)| (signed cosine if not ``absolute``).

    The loss-gradient similarity term of TRS (Yang et al., NeurIPS 2021, Sec. 3, summed over member
    pairs j < k in Algorithm 1, Appendix E), averaged over pairs as the official ``TRS_Trainer``.

    Args:
        grads: (N, B, D) input gradients of N >= 2 members.
    """
    cos = pairwise_cosine(grads)
    return (cos.abs() if absolute else cos).mean()


def smoothness(grads: torch.Tensor, scaling: str = "reference") -> torch.Tensor:
    """L_smooth: the members' mean squared input-gradient norm.

    The model-smoothness term of TRS (Yang et al., NeurIPS 2021, Sec. 3: a regularizer of the loss
    gradient ‖∇_x ℓ‖, motivated by Theorem 2), scaled as the official ``TRS_Trainer``.

    Args:
        grads: (N, B, D) *per-example* gradients ``∇_x CE(f_i(x_b), y_b)``
            (:func:`~lit_advgame.ensembles.gradients.member_input_gradients`).
        scaling: ``"reference"``: ``(1/N) Σ_i 2·mean_b ||g_ib / B||²``, the reference's
            ``Magnitude`` of the gradient of the batch-mean CE; ``"mean"``: ``(1/N) Σ_i mean_b ||g_ib||²``.
    """
    check_choice(scaling, "scaling", ("reference", "mean"))
    squared = grads.pow(2).sum(dim=-1)  # (N, B)
    if scaling == "reference":
        return 2.0 * squared.mean() / grads.shape[1] ** 2
    return squared.mean()


def smoothness_pgd(
    model: EnsembleModel,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int = 6,
    step_size: float | None = None,
    accumulate_grad: bool = False,
    bn_mode: str = "eval",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L∞ PGD that maximises the members' summed squared input-gradient norm (TRS "plus" inner attack).

    The perturbed points x̃ of the smoothness term of TRS (Yang et al., NeurIPS 2021, Sec. 3; the
    official ``TRS_Trainer``'s PGD on the gradient magnitude).

    Each step differentiates Σ_b Σ_i ||∇_x CE(f_i(x_b), y_b)||² w.r.t. the input (a double
    backprop through every member); its sign equals that of the reference's mean-based objective.
    Starts from a uniform point of the ε-box, steps by ``step_size`` (default ε/3) along the sign
    of the gradient (of the running sum of gradients with ``accumulate_grad``), projects onto the
    ε-box and clamps to [0, 1]. ``bn_mode="eval"`` runs the members in eval mode (restored after);
    ``"train"`` leaves their modes alone (the reference). Returns detached images.
    """
    check_positive(eps, "eps", allow_zero=True)
    check_int(steps, "steps", minimum=1)
    check_choice(bn_mode, "bn_mode", BN_MODES)
    x = x.detach()
    if eps == 0 or x.shape[0] == 0:
        return x.clone()
    step_size = eps / 3.0 if step_size is None else step_size
    check_positive(step_size, "step_size")
    noise = torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device)
    adv = (x + (2.0 * noise.to(device=x.device, dtype=x.dtype) - 1.0) * eps).clamp(0.0, 1.0)
    direction = torch.zeros_like(x)
    context = eval_mode([model]) if bn_mode == "eval" else contextlib.nullcontext()
    with context, torch.enable_grad():
        for _ in range(steps):
            adv = adv.detach().requires_grad_(True)
            _, grads = member_input_gradients(model, adv, y, create_graph=True)
            (grad,) = torch.autograd.grad(grads.pow(2).sum(), adv)
            direction = direction + grad if accumulate_grad else grad
            adv = adv.detach() + step_size * direction.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0.0, 1.0)
    return adv.detach()


@dataclass
class TRSRegularizer(DiversityRegularizer):
    """λ_a·L_sim + λ_b·L_smooth of TRS (Yang et al., NeurIPS 2021, Sec. 3 and Algorithm 1; module docstring: options).

    Args:
        num_members: N >= 2.
        scaling: ``"reference"`` (default) or ``"mean"``.
        lambda_sim: λ_a (reference CIFAR-10: 40; MNIST script defaults: 10).
        lambda_smooth: λ_b (reference CIFAR-10: 2.5; MNIST script defaults: 10).
        variant: ``"plus"`` (TRS) or ``"vanilla"`` (cos-l2, smoothness on clean inputs).
        eps_start, eps_end: δ0 and δM of the radius ramp (reference CIFAR-10: 0.01, 0.03; MNIST 0.1, 0.2).
        ramp_epochs: length of the ramp in epochs; ``None`` uses the trainer's ``max_epochs``.
        inner_steps: steps of the inner attack (6).
        inner_step_ratio: step size as a fraction of the current radius (1/3).
        perturbed_fraction: fraction of the batch perturbed for the smoothness term (0.5).
        accumulate_inner_grad: step on the accumulated gradient as the reference (False).
        inner_bn_mode: ``"eval"`` (default) or ``"train"`` (reference) during the inner attack.
        absolute: use |cos| (True, TRS) or the signed cosine (False, CosSim).
    """

    lambda_sim: float = 40.0
    lambda_smooth: float = 2.5
    variant: Literal["plus", "vanilla"] = "plus"
    eps_start: float = 0.01
    eps_end: float = 0.03
    ramp_epochs: int | None = None
    inner_steps: int = 6
    inner_step_ratio: float = 1.0 / 3.0
    perturbed_fraction: float = 0.5
    accumulate_inner_grad: bool = False
    inner_bn_mode: Literal["eval", "train"] = "eval"
    absolute: bool = True

    name: ClassVar[str] = "trs"
    min_members: ClassVar[int] = 2
    term_names: ClassVar[tuple[str, ...]] = ("sim", "smooth", "eps")

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        self._numbers(
            nonnegative=("lambda_sim", "lambda_smooth", "eps_start", "eps_end", "perturbed_fraction"),
            positive=("inner_step_ratio",),
        )
        check_choice(self.variant, "variant", VARIANTS)
        if self.ramp_epochs is not None:
            check_int(self.ramp_epochs, "ramp_epochs", minimum=1)
        check_int(self.inner_steps, "inner_steps", minimum=1)
        if self.perturbed_fraction > 1:
            raise ValueError(f"perturbed_fraction must be in [0, 1]; got {self.perturbed_fraction}")
        check_choice(self.inner_bn_mode, "inner_bn_mode", BN_MODES)
        for name in ("accumulate_inner_grad", "absolute"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool; got {getattr(self, name)!r}")

    @override
    def current_eps(self, epoch: int, max_epochs: int | None) -> float | None:
        """δ0 + (δM − δ0)·min(epoch, E)/E with E = ``ramp_epochs`` or ``max_epochs`` ("plus" only).

        The linear radius schedule of the official TRS code (``TRS_Trainer``; Yang et al., NeurIPS 2021)."""
        if self.variant != "plus":
            return None
        total = self.ramp_epochs if self.ramp_epochs is not None else max_epochs
        if total is None or total < 1:
            raise ValueError(
                "TRS 'plus' ramps the inner-attack radius over the run: set trainer.max_epochs or give "
                f"regularizer_kwargs.ramp_epochs (got max_epochs={max_epochs})"
            )
        return self.eps_start + (self.eps_end - self.eps_start) * min(epoch, total) / total

    @override
    def regularize(
        self, model: EnsembleModel, x: torch.Tensor, y: torch.Tensor, step: RegularizerStep
    ) -> RegularizerOutput:
        member_logits, grads = member_input_gradients(model, x, y, create_graph=True)
        sim = gradient_similarity(grads, self.absolute)
        terms = {"sim": sim.detach()}
        if self.variant == "vanilla":
            smooth = smoothness(grads, self.scaling)
        else:
            eps = self.current_eps(step.epoch, step.max_epochs)
            terms["eps"] = torch.tensor(eps, device=x.device)
            if self.lambda_smooth == 0:
                smooth = sim.new_zeros(())
            else:
                n_clean = int(x.shape[0] * (1.0 - self.perturbed_fraction))
                perturbed = smoothness_pgd(
                    model,
                    x[n_clean:],
                    y[n_clean:],
                    eps,
                    steps=self.inner_steps,
                    step_size=self.inner_step_ratio * eps if eps > 0 else None,
                    accumulate_grad=self.accumulate_inner_grad,
                    bn_mode=self.inner_bn_mode,
                    generator=step.generator,
                )
                x_smooth = torch.cat([x[:n_clean].detach(), perturbed])
                _, smooth_grads = member_input_gradients(model, x_smooth, y, create_graph=True)
                smooth = smoothness(smooth_grads, self.scaling)
        terms["smooth"] = smooth.detach()
        penalty = self.lambda_sim * sim + self.lambda_smooth * smooth
        return RegularizerOutput(member_logits, penalty, terms, x)

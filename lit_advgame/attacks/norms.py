"""Perturbation norms: random start, ascent step and projection (IR paper, Appendix C, Eqs. 9–10).

All operations are per sample on a batch ``delta`` of shape (B, C, H, W) and end with the box
constraint x + δ ∈ [0, 1] (δ ← clip(x + δ, 0, 1) − x), which never increases |δ_i|, so the
norm bound still holds after it (up to float rounding of (x + δ) − x, ~1e-7).
"""

from __future__ import annotations

import torch

from lit_advgame.vocabulary import NORMS


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor to broadcast against a (B, ...) tensor."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norms, shape (B,)."""
    return t.flatten(1).norm(p=2, dim=1)


def clip_to_box(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Return δ' with x + δ' = clip(x + δ, 0, 1)."""
    return (x + delta).clamp_(0.0, 1.0) - x


class Norm:
    """Interface of a perturbation norm (all methods are per sample and pure)."""

    name: str = ""

    def random_init(self, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def step(self, delta: torch.Tensor, direction: torch.Tensor, step_size: float) -> torch.Tensor:
        raise NotImplementedError

    def project(self, delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        raise NotImplementedError

    def norms(self, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LinfNorm(Norm):
    """L∞ ball: sign step δ ← δ + α·sign(g), projection by clamping to [−ε, ε].

    Wang et al., ICLR 2021, Appendix C, Eqs. 9–10 with p = ∞ (the PGD attack of Madry et al., ICLR 2018)."""

    name = "linf"

    def random_init(self, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        """Uniform in the ε-box, then clipped to the image box (advertorch ``rand_init_delta``)."""
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return clip_to_box((2.0 * u - 1.0) * eps, x)

    def step(self, delta: torch.Tensor, direction: torch.Tensor, step_size: float) -> torch.Tensor:
        return delta + step_size * direction.sign()

    def project(self, delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        return clip_to_box(delta.clamp(-eps, eps), x)

    def norms(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().amax(dim=1)


class L2Norm(Norm):
    """L2 ball: normalised step δ ← δ + α·g/‖g‖₂, projection by rescaling δ ← δ·min(1, ε/‖δ‖₂).

    Wang et al., ICLR 2021, Appendix C, Eqs. 9–10 with p = 2.

    The rescale factor is computed per sample (the official code writes it as an element-wise
    ratio ε·δ/‖δ‖/δ, which is NaN wherever δ_i = 0); a zero gradient gives a zero step.

    Args:
        init: random start. ``"image"`` (the official code, advertorch ``rand_init_delta``):
            δ = u − x with u uniform in [0, 1]^n, rescaled into the ε-ball. ``"ball"``: uniform
            in the ε-ball (Gaussian direction, radius ε·U^{1/n}), then clipped to the image box.
    """

    name = "l2"

    def __init__(self, init: str = "image") -> None:
        if init not in ("image", "ball"):
            raise ValueError(f"unknown L2 random init {init!r}; choose one of: image, ball")
        self.init = init

    def random_init(self, x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
        if self.init == "image":
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            return self.project(u - x, x, eps)
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / _per_sample(l2_norms(direction).clamp_min(1e-12), x)
        n = x[0].numel()
        radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / n)
        return self.project(direction * _per_sample(eps * radius, x), x, eps)

    def step(self, delta: torch.Tensor, direction: torch.Tensor, step_size: float) -> torch.Tensor:
        norms = l2_norms(direction)
        unit = direction / _per_sample(torch.where(norms > 0, norms, torch.ones_like(norms)), direction)
        return delta + step_size * unit

    def project(self, delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        norms = l2_norms(delta)
        factor = torch.where(
            norms > eps, eps / torch.where(norms > 0, norms, torch.ones_like(norms)), torch.ones_like(norms)
        )
        return clip_to_box(delta * _per_sample(factor, delta), x)

    def norms(self, delta: torch.Tensor) -> torch.Tensor:
        return l2_norms(delta)


def build_norm(name: str | Norm, **options) -> Norm:
    """A :class:`Norm` from its name (``"linf"``, ``"l2"``; ``"inf"`` and ``"2"`` are accepted)."""
    if isinstance(name, Norm):
        return name
    key = str(name).lower().replace("∞", "inf")
    aliases = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "2": "l2"}
    if key not in aliases:
        raise ValueError(f"unknown norm {name!r}; choose one of: {', '.join(NORMS)}")
    if aliases[key] == "linf":
        if options:
            raise ValueError(f"the linf norm takes no options; got {sorted(options)}")
        return LinfNorm()
    return L2Norm(**options)

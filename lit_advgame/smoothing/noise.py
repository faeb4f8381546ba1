"""Gaussian noise of randomized smoothing, in pixel space, with per-example seeding.

Cohen et al. (ICML 2019, Sec. 3) smooth a base classifier ``f`` with isotropic noise
``ε ~ N(0, σ² I)`` added to the **[0, 1] pixel-space image**, i.e. *before* the model's in-model
normalizer, so radii are certified in pixel coordinates. Noisy images are **not clamped** to
[0, 1] (as in Cohen's ``train.py``/``core.py``; clamping would change the smoothing distribution
and void the guarantee).

Evaluation noise is drawn from a ``torch.Generator`` per example, seeded from
``(seed, stream, dataset index)`` with NumPy's ``SeedSequence``, so that certification and
noisy-accuracy results do not depend on batch order, batch composition or the number of
devices. ``stream`` separates independent uses of the same example (validation, test, CERTIFY,
PREDICT).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from lit_advgame.smoothing.statistics import check_sigma
from lit_advgame.utils.checks import check_int
from lit_advgame.utils.seeding import derive_seed

STREAM_VALIDATION = 1
STREAM_TEST = 2
STREAM_CERTIFY = 3
STREAM_PREDICT = 4


def example_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit generator seed derived from ``(seed, stream, index)`` (all integers >= 0): the package's one
    seed derivation, :func:`lit_advgame.utils.seeding.derive_seed` ``(seed, stream, index)``."""
    check_int(seed, "seed", minimum=0)
    check_int(index, "index", minimum=0)
    check_int(stream, "stream", minimum=0)
    return derive_seed(seed, stream, index)


def example_generators(
    seed: int, indices: Iterable[int], device: torch.device | str = "cpu", stream: int = 0
) -> list[torch.Generator]:
    """One ``torch.Generator`` on ``device`` per dataset index, seeded by :func:`example_seed`."""
    device = torch.device(device)
    generators = []
    for index in indices:
        generator = torch.Generator(device=device)
        generator.manual_seed(example_seed(seed, int(index), stream))
        generators.append(generator)
    return generators


def check_generator(generator: torch.Generator, device: torch.device, name: str = "generator") -> None:
    """Check ``generator`` is a ``torch.Generator`` on the device type of the data."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator; got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(
            f"{name} lives on {generator.device} but the input is on {device}; create it with "
            f"torch.Generator(device=x.device)"
        )


def add_gaussian_noise(
    x: torch.Tensor,
    sigma: float,
    generator: torch.Generator | None = None,
    *,
    prob: float = 1.0,
    clamp: bool = False,
) -> torch.Tensor:
    """``x + σ ε`` with ``ε ~ N(0, I)`` drawn from ``generator`` (the global RNG when ``None``; a generator on
    another device than ``x`` draws there); no clamp by default (randomized smoothing, Cohen et al. 2019).

    ``prob < 1`` adds the noise to each image with probability ``prob`` only and ``clamp`` clips the noisy
    images to [0, 1]: the input noise of DVERGE's GAL baseline (``AddGaussianNoise``, std 0.045, p = 0.5).
    The one Gaussian-noise helper of the package (smoothing and the ensemble regularizers)."""
    check_sigma(sigma)
    if isinstance(prob, bool) or not 0 <= float(prob) <= 1:
        raise ValueError(f"prob must be in [0, 1]; got {prob!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
    device = x.device if generator is None else generator.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    noisy = x + float(sigma) * noise
    if clamp:
        noisy = noisy.clamp(0.0, 1.0)
    if prob < 1:
        apply = (torch.rand(x.shape[0], generator=generator, device=device) < prob).to(x.device)
        noisy = torch.where(apply.view(-1, *([1] * (x.dim() - 1))), noisy, x)
    return noisy


def add_per_example_noise(x: torch.Tensor, sigma: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """``x[i] + σ ε_i`` with ``ε_i`` drawn from ``generators[i]`` (one generator per example); no clamp."""
    check_sigma(sigma)
    if len(generators) != x.shape[0]:
        raise ValueError(f"need one generator per example: got {len(generators)} for a batch of {x.shape[0]}")
    noisy = torch.empty_like(x)
    for i, generator in enumerate(generators):
        check_generator(generator, x.device, f"generators[{i}]")
        noise = torch.randn(x.shape[1:], generator=generator, device=x.device, dtype=x.dtype)
        noisy[i] = x[i] + float(sigma) * noise
    return noisy

"""Independent, reproducible random streams: the one seed derivation and generator helper of the package.

Every stochastic part (an attack's random start, VR noise, DI resizing, the IR term's grid sampling,
a batch of a predict run, ...) draws from its *own* ``torch.Generator`` whose seed is derived from one
base seed and stable keys naming the part (e.g. ``"random_start"``, ``"VarianceReduction#0"``,
``"batch:128"``), so adding or removing one part never shifts the random numbers another part sees.
The derivation is NumPy's ``SeedSequence`` (strings enter through their CRC-32).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from lit_advgame.utils.checks import check_int

SEED_BITS = 63
"""Derived seeds lie in ``[0, 2**63)`` (valid for ``torch.Generator.manual_seed``)."""


def _key_word(key: int | str) -> int:
    if isinstance(key, str):
        return zlib.crc32(key.encode("utf-8"))
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"seed keys must be strings or non-negative integers; got {key!r}")
    if key < 0:
        raise ValueError(f"seed keys must be strings or non-negative integers; got {key}")
    return key


def derive_seed(base_seed: int, *keys: int | str) -> int:
    """A 63-bit seed for the stream named by ``keys``, derived from ``base_seed``.

    ``SeedSequence([base_seed mod 2**64, *keys])`` (a string key enters as its CRC-32) gives two 32-bit
    words ``w0, w1``; the seed is ``w0 << 31 | w1 >> 1``. With one string key this is the attacks'
    historical ``derive_seed(base_seed, name)``, bit for bit.

    >>> derive_seed(0, "random_start") == derive_seed(0, "random_start")
    True
    >>> derive_seed(0, "random_start") != derive_seed(0, "VarianceReduction#0")
    True
    >>> 0 <= derive_seed(2**70, "batch:0", 3) < 2**63
    True
    """
    entropy = [int(base_seed) % (1 << 64), *(_key_word(key) for key in keys)]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << SEED_BITS) - 1)


def make_generator(
    seed: int | torch.Generator | None, name: int | str | None = None, device: torch.device | str = "cpu"
) -> torch.Generator | None:
    """A ``torch.Generator`` on ``device`` for the stream ``name`` of ``seed``.

    * ``seed`` an int without ``name``: seeded with ``seed`` itself (``torch.Generator().manual_seed(seed)``);
    * ``seed`` an int with ``name``: seeded with :func:`derive_seed` ``(seed, name)``;
    * ``seed`` a generator: returned as is (the caller owns the stream); ``None``: ``None`` (torch's
      global generator); both only without ``name``.

    >>> a = make_generator(0, "random_start")
    >>> b = make_generator(0, "random_start")
    >>> torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))
    True
    >>> make_generator(7).initial_seed(), make_generator(None)
    (7, None)
    """
    if seed is None or isinstance(seed, torch.Generator):
        if name is not None:
            raise ValueError(f"the stream name {name!r} needs an integer seed to derive it from; got {seed!r}")
        return seed
    check_int(seed, "seed")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if name is None else derive_seed(seed, name))
    return generator


def draw_base_seed(generator: torch.Generator | None = None) -> int:
    """Draw a fresh base seed in ``[0, 2**62)`` from ``generator`` (or from torch's global generator)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())

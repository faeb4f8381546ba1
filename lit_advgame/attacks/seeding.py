"""Independent, reproducible random streams for the parts of an attack.

Every stochastic part of an attack (the random start, VR noise, DI resizing, the IR term's
grid sampling) draws from its *own* ``torch.Generator``. Each stream's seed is derived from
one base seed and a stable name of the part (e.g. ``"random_start"``,
``"VarianceReduction#0"``), so adding or removing one part never shifts the random numbers
another part sees. This is what makes equivalences such as "MI with μ = 0 equals PGD under
the same seed" hold bit for bit.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch


def derive_seed(base_seed: int, name: str) -> int:
    """A 63-bit seed for the stream ``name``, derived from ``base_seed`` (NumPy ``SeedSequence``)."""
    entropy = [int(base_seed) % (1 << 64), zlib.crc32(name.encode("utf-8"))]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def make_generator(base_seed: int, name: str, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with :func:`derive_seed` ``(base_seed, name)``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(base_seed, name))
    return gen


def draw_base_seed(generator: torch.Generator | None = None) -> int:
    """Draw a fresh 63-bit base seed from ``generator`` (or from torch's global generator)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())

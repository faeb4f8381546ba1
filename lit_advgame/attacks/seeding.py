"""Independent, reproducible random streams for the parts of an attack.

Every stochastic part of an attack (the random start, VR noise, DI resizing, the IR term's
grid sampling) draws from its *own* ``torch.Generator``. Each stream's seed is derived from
one base seed and a stable name of the part (e.g. ``"random_start"``,
``"VarianceReduction#0"``), so adding or removing one part never shifts the random numbers
another part sees. This is what makes equivalences such as "MI with μ = 0 equals PGD under
the same seed" hold bit for bit. The helpers live in :mod:`lit_advgame.utils.seeding` (re-exported here).
"""

from __future__ import annotations

from lit_advgame.utils.seeding import derive_seed, draw_base_seed, make_generator

__all__ = ["derive_seed", "draw_base_seed", "make_generator"]

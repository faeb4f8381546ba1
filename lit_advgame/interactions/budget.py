"""Forward-pass budget guard: refuse a computation *before* doing any work when it is too costly."""

from __future__ import annotations

from lit_advgame.utils.checks import check_int

#: Generous default cap on masked forward passes per call (the reference recipe costs about
#: 1.8 M per image for 11 orders, clean + adversarial; see ``scripts/bench_interactions.py``).
DEFAULT_MAX_FORWARD_PASSES = 50_000_000


def check_budget(planned: int, max_forward_passes: int | None, what: str) -> None:
    """Raise ``ValueError`` when ``planned`` forward passes exceed ``max_forward_passes`` (``None`` = no cap)."""
    if max_forward_passes is None:
        return
    check_int(max_forward_passes, "max_forward_passes", minimum=1)
    if planned > max_forward_passes:
        raise ValueError(
            f"{what} needs up to {planned:,} forward passes, more than max_forward_passes={max_forward_passes:,}; "
            "reduce the number of images/pairs/contexts/orders/samples or raise max_forward_passes"
        )

"""Result objects of the estimators: small dataclasses of tensors with a flat ``to_dict()`` for logging.

One convention for every sampled result: ``values`` / ``stderr`` are the estimate **aggregated
over the images** (per order, or per player for Shapley values) and its standard error;
``per_image`` / ``per_image_stderr`` hold the same quantity per image (leading ``B``), and finer
levels are named after their unit (``per_pair``, ``per_player``). ``utility`` is always the
per-pair attacking utility ``ΔJ^(m) = w(m) · ΔI^(m)`` and ``utility_sum`` its sum over ordered
pairs. Renamed attributes stay readable under their old names for one release (with a
``DeprecationWarning``). Every result also holds the per-image
numbers, the orders (``orders`` = context sizes m, ``ratios`` = the ratios they came from, or
``None`` for explicit orders) and ``num_forward_passes`` (masked inputs actually evaluated).
``to_dict(prefix)`` returns ``{name: float}`` with names such as ``interaction/r0.10`` and
``interaction/r0.10_stderr`` (``m3`` instead of ``r0.10`` for explicit orders).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from lit_advgame.interactions.options import deprecated_alias
from lit_advgame.interactions.orders import Orders


class ResultMixin:
    """``as_tensors()`` (dict of the fields) and a ``to_dict()`` of flat scalars."""

    def as_tensors(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def to_dict(self, prefix: str = "") -> dict[str, float]:  # pragma: no cover - overridden
        raise NotImplementedError


def _per_order(
    prefix: str, labels: tuple[str, ...], values: torch.Tensor, stderr: torch.Tensor | None
) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, label in enumerate(labels):
        out[f"{prefix}/{label}"] = float(values[k])
        if stderr is not None:
            out[f"{prefix}/{label}_stderr"] = float(stderr[k])
    return out


@dataclass
class OrderResult(ResultMixin):
    """Fields shared by the per-order results: ``orders``, ``ratios``, ``num_players`` and the
    image-aggregated ``values`` / ``stderr`` of shape ``(O,)``; ``labels`` names the orders for logging."""

    orders: tuple[int, ...]
    ratios: tuple[float, ...] | None
    num_players: int
    values: torch.Tensor
    stderr: torch.Tensor

    #: the ``to_dict`` prefix when none is given
    default_prefix: ClassVar[str] = "orders"

    @property
    def labels(self) -> tuple[str, ...]:
        return Orders(self.orders, self.ratios).labels

    def extra_metrics(self, prefix: str) -> dict[str, float]:
        """Per-order scalars logged besides ``values`` and ``stderr`` (none here)."""
        return {}

    def to_dict(self, prefix: str | None = None) -> dict[str, float]:
        """``{prefix}/{label}``, ``{prefix}/{label}_stderr`` per order, the extra metrics and the forward passes."""
        prefix = self.default_prefix if prefix is None else prefix
        out = _per_order(prefix, self.labels, self.values, self.stderr)
        out.update(self.extra_metrics(prefix))
        out[f"{prefix}/num_forward_passes"] = float(self.num_forward_passes)  # type: ignore[attr-defined]
        return out


@dataclass
class MultiOrderResult(OrderResult):
    """Multi-order interactions ``I^(m) = E_x E_{(i,j)} I^(m)_ij(x)`` (Ren et al., NeurIPS 2021, §4.1).

    Attributes:
        orders, ratios: context sizes m and the ratios of n they came from (``None`` if explicit).
        num_players: n.
        values, stderr: ``(O,)`` mean over images and pairs, and its standard error.
        per_image, per_image_stderr: ``(B, O)``.
        per_pair, per_pair_stderr: ``(B, O, P)`` estimates of ``I^(m)_ij`` (mean over contexts).
        pairs: ``(B, P, 2)`` the pairs ``(i, j)``.
        num_contexts: contexts per pair and order.
        num_forward_passes: masked inputs evaluated.
        pair_kind: the pairs the means run over: ``"neighbour"`` (the reference default: adjacent
            players only -- not comparable with the exact oracle's all-pairs
            :attr:`~lit_advgame.interactions.ExactInteractions.all_pairs_interaction`; compare with
            ``exact.mean_over_pairs(result.pairs)``) or ``"uniform"`` (all pairs, sampled).
        exhaustive_pairs: every pair of the kind was used.
    """

    per_image: torch.Tensor
    per_image_stderr: torch.Tensor
    per_pair: torch.Tensor
    per_pair_stderr: torch.Tensor
    pairs: torch.Tensor
    num_contexts: int
    num_forward_passes: int
    pair_kind: str = "neighbour"
    exhaustive_pairs: bool = False

    default_prefix: ClassVar[str] = "interaction"


@dataclass
class InteractionChangeResult(ResultMixin):
    """Change of multi-order interactions under attack and the attacking utility (Ren et al., Eq. 3).

    ``ΔI^(m) = I^(m)(x) - I^(m)(x_adv)``, estimated with the **same** pairs and contexts for both
    inputs (paired), so its standard error comes from the paired per-context differences.

    Attributes:
        clean, adversarial: the two :class:`MultiOrderResult`.
        values, stderr: ``(O,)`` ``ΔI^(m)`` and its (paired) standard error.
        per_image, per_image_stderr: ``(B, O)``.
        per_pair: ``(B, O, P)`` ``ΔI^(m)_ij``.
        weights: ``(O,)`` ``w(m) = (n-1-m)/(n(n-1))``.
        utility, utility_stderr: ``(O,)`` ``ΔJ^(m) = w(m) · ΔI^(m)`` -- the paper's
            ``E_x E_ij ΔJ^(m)_ij`` (per-pair mean times the weight, as the reference ``plot.py``).
        utility_sum: ``(O,)`` ``n(n-1) · w(m) · ΔI^(m)``: the sum over ordered pairs that enters the
            efficiency decomposition Eq. 3 (an unbiased estimate of it with uniform pairs; with
            neighbour pairs it extrapolates local pairs to all pairs).
        share: ``(O,)`` ``|ΔI^(m)| / Σ_{m'} |ΔI^(m')|`` over the requested orders (supplement Table 2).
    """

    clean: MultiOrderResult
    adversarial: MultiOrderResult
    values: torch.Tensor
    stderr: torch.Tensor
    per_image: torch.Tensor
    per_image_stderr: torch.Tensor
    per_pair: torch.Tensor
    weights: torch.Tensor
    utility: torch.Tensor
    utility_stderr: torch.Tensor
    utility_sum: torch.Tensor
    share: torch.Tensor

    @property
    def orders(self) -> tuple[int, ...]:
        return self.clean.orders

    @property
    def ratios(self) -> tuple[float, ...] | None:
        return self.clean.ratios

    @property
    def num_forward_passes(self) -> int:
        return self.clean.num_forward_passes + self.adversarial.num_forward_passes

    @property
    def pair_kind(self) -> str:
        """``"neighbour"`` or ``"uniform"``: the pairs the means run over (see :class:`MultiOrderResult`)."""
        return self.clean.pair_kind

    def to_dict(self, prefix: str = "interaction") -> dict[str, float]:
        labels = self.clean.labels
        out = _per_order(f"{prefix}/clean", labels, self.clean.values, self.clean.stderr)
        out.update(_per_order(f"{prefix}/adversarial", labels, self.adversarial.values, self.adversarial.stderr))
        out.update(_per_order(f"{prefix}/delta", labels, self.values, self.stderr))
        out.update(_per_order(f"{prefix}/utility", labels, self.utility, self.utility_stderr))
        out.update(_per_order(f"{prefix}/utility_sum", labels, self.utility_sum, None))
        out.update(_per_order(f"{prefix}/share", labels, self.share, None))
        out[f"{prefix}/num_forward_passes"] = float(self.num_forward_passes)
        return out


@dataclass
class DisentanglementResult(OrderResult):
    """Interaction disentanglement ``D^(m)`` (Ren et al., NeurIPS 2021, Eq. 4).

    Attributes:
        values, stderr: ``(O,)`` ratio of means over images and pairs,
            ``mean |Î^(m)_ij| / mean Ê_S |Δv_ij(S)|`` (the reference ``plot.py``), and its
            delta-method standard error (with every pair used, only the context sampling counts).
        per_pair_form: ``(O,)`` the paper's literal form, the mean over images and pairs of the
            per-pair ratios ``|Î^(m)_ij| / Ê_S |Δv_ij(S)|``.
        per_image: ``(B, O)`` ratio of means per image.
        numerator, denominator: ``(O,)`` ``mean |Î^(m)_ij|`` and ``mean Ê_S |Δv_ij(S)|``.
        num_skipped_pairs: ``(O,)`` (image, pair) units left out because their ``Ê_S |Δv_ij(S)|``
            is rounding noise (at most :func:`~lit_advgame.interactions.stats.rounding_floor` of
            the image's largest ``|v|``: the pair does not interact, e.g. on a linear piece of a
            ReLU net); a ratio whose units are all skipped is NaN.

    Note ``|Î|`` with T contexts is biased upwards for small ``|I|`` (by about ``se/sqrt(T)``).
    """

    per_pair_form: torch.Tensor
    per_image: torch.Tensor
    numerator: torch.Tensor
    denominator: torch.Tensor
    num_contexts: int
    num_forward_passes: int
    num_skipped_pairs: torch.Tensor | None = None

    default_prefix: ClassVar[str] = "disentanglement"

    def extra_metrics(self, prefix: str) -> dict[str, float]:
        out = _per_order(f"{prefix}/per_pair_form", self.labels, self.per_pair_form, None)
        if self.num_skipped_pairs is not None:
            out.update(_per_order(f"{prefix}/num_skipped_pairs", self.labels, self.num_skipped_pairs, None))
        return out


@dataclass
class ShapleyResult(ResultMixin):
    """Shapley values by permutation sampling (Ren et al., NeurIPS 2021, Eq. 1).

    Attributes:
        values, stderr: ``(n,)`` per player, averaged over the images, and its standard error.
        per_image, per_image_stderr: ``(B, n)`` per image and player.
        num_permutations: permutations per image.
        num_forward_passes: masked inputs evaluated.
    """

    values: torch.Tensor
    stderr: torch.Tensor
    per_image: torch.Tensor
    per_image_stderr: torch.Tensor
    num_permutations: int
    num_forward_passes: int

    def to_dict(self, prefix: str = "shapley") -> dict[str, float]:
        out = {f"{prefix}/player{i}": float(v) for i, v in enumerate(self.values.tolist())}
        out[f"{prefix}/sum"] = float(self.per_image.sum(dim=1).mean())
        out[f"{prefix}/num_forward_passes"] = float(self.num_forward_passes)
        return out


@dataclass
class MultiOrderShapleyResult(OrderResult):
    """Multi-order Shapley values ``φ^(m)(i) = E_{S ⊆ N\\{i}, |S|=m} [v(S ∪ {i}) - v(S)]``.

    Ren et al., NeurIPS 2021, supplement B.2, Eq. 10.

    Attributes:
        orders, ratios: orders m in ``[0, n-1]`` (ratios map to ``int((n-1) r)``).
        num_players: n (``game.num_players``).
        players: ``(B, k)`` the players evaluated.
        values, stderr: ``(O,)`` averaged over images and the evaluated players.
        per_image, per_image_stderr: ``(B, O)`` averaged over the evaluated players of each image.
        per_player, per_player_stderr: ``(B, O, k)`` per image, order and evaluated player.
        num_contexts: contexts per player and order.
        num_forward_passes: masked inputs evaluated.
    """

    players: torch.Tensor
    per_image: torch.Tensor
    per_image_stderr: torch.Tensor
    per_player: torch.Tensor
    per_player_stderr: torch.Tensor
    num_contexts: int
    num_forward_passes: int

    mean_over_players = deprecated_alias("values", "mean_over_players")
    mean_over_players_stderr = deprecated_alias("stderr", "mean_over_players_stderr")

    default_prefix: ClassVar[str] = "multi_order_shapley"


@dataclass
class PerturbationInteractionResult(ResultMixin):
    """Average interaction inside a perturbation ``E_ij[I_ij(δ)]`` (Wang et al., ICLR 2021, Eq. 4/39).

    Attributes:
        values, stderr: scalar tensors, the mean over images and its standard error.
        per_image, per_image_stderr: ``(B,)``.
        form: ``"coalition"`` (reference code) or ``"single"`` (paper).
        scale: ``"reference"`` (no ``1/(n-1)``) or ``"paper"``.
        num_samples: groups (coalition form) or players (single form) per image.
        num_players: n.
        num_forward_passes: masked inputs evaluated.
    """

    values: torch.Tensor
    stderr: torch.Tensor
    per_image: torch.Tensor
    per_image_stderr: torch.Tensor
    form: str
    scale: str
    num_samples: int
    num_players: int
    num_forward_passes: int

    def to_dict(self, prefix: str = "perturbation_interaction") -> dict[str, float]:
        return {
            f"{prefix}": float(self.values),
            f"{prefix}_stderr": float(self.stderr),
            f"{prefix}/num_forward_passes": float(self.num_forward_passes),
        }

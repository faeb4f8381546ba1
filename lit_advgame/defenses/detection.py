"""Attribution-based detection of adversarial examples (Ren et al., NeurIPS 2021, §4.3 and supplement G).

ML-LOO (Yang et al., AAAI 2020) scores every input variable ``i`` by leaving it out,
``φ(x)_i = f(x)_c - f(x_(i))_c`` with ``c = argmax_j f(x)_j`` and ``x_(i)`` the input with variable ``i`` masked
by 0 (supplement G, Eq. 16), and flags an input whose scores are spread widely over the variables (a scale
estimate: the inter-quartile range). In game terms the score is ``v(N|x) - v(N\\{i}|x) = φ^(n-1)(i|x)``, the
multi-order Shapley value of the highest order: exactly so for a game whose absent players are 0
(``baseline="zeros"``) and whose class is fixed as the **unmasked prediction** (``y=None``), which
:func:`ml_loo_game` builds. By the accumulation property (supplement B.3 (2), used in G)
``φ^(m)(i) = E_{j≠i}[Σ_{k<m} I^(k)_ij] + φ^(0)(i)``, so ``φ^(n-1)`` carries every order of interaction up to
``n-2``, the high orders that attacks change most (§4.1): :func:`shapley_from_interactions` computes the right
side from the exact oracle.

Three detectors (:class:`AttributionDetector`, ``kind``), each a score per image (and order) from a game:

* ``"ml_loo"``: ``φ^(n-1)(i)`` from ``n + 1`` masked inputs per image (:func:`leave_one_out_scores`), the
  statistic over players (default the inter-quartile range, ML-LOO's);
* ``"shapley"``: ``φ^(m)(i)`` at the requested orders (sampled contexts,
  :class:`~lit_advgame.interactions.MultiOrderShapleyApproximator`), the statistic over players (default IQR);
* ``"interaction"``: ``I^(m)_ij`` at the requested orders (sampled pairs and contexts,
  :class:`~lit_advgame.interactions.MultiOrderApproximator`), the statistic over pairs (default the mean: the
  ``I^(m)`` of §4.1).

:func:`detection_auc` is the ROC-AUC of normal (label 0) vs adversarial (label 1) scores, computed by torchmetrics;
:func:`detect` scores a normal and an adversarial game and returns the AUC per order. An AUC below 0.5 means the
score is *lower* on adversarial examples (e.g. their high-order interactions); ``separation = max(AUC, 1 - AUC)``
is the direction-free separability that Figure 6 (left) compares.

Costs: every detector states its masked forward passes (:meth:`AttributionDetector.planned_forward_passes`,
announced with ``rank_zero_info`` before the work) and refuses, before any work, a plan over its
``max_forward_passes`` (the engine's :func:`~lit_advgame.interactions.check_budget`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pytorch_lightning.utilities import rank_zero_info
from scipy.stats import rankdata
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from lit_advgame.interactions import (
    DEFAULT_MAX_FORWARD_PASSES,
    ExactInteractions,
    InputGame,
    MaskedGame,
    MultiOrderApproximator,
    MultiOrderShapleyApproximator,
    Orders,
    check_budget,
    resolve_orders,
)
from lit_advgame.interactions.multi_order import context_counts
from lit_advgame.interactions.orders import OrderSpec
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.vocabulary import (
    DETECTOR_KINDS,
    DETECTOR_STATISTICS,
    PAIR_KINDS,
    Autocast,
    DetectorKind,
    DetectorStatistic,
    PairKind,
)

#: the statistic of each detector when none is given: ML-LOO's IQR over players, the mean over pairs (``I^(m)``)
DEFAULT_STATISTICS: dict[str, str] = {"ml_loo": "iqr", "shapley": "iqr", "interaction": "mean"}


def ml_loo_game(
    model: nn.Module,
    x: torch.Tensor,
    *,
    grid: int | tuple[int, int] | None = None,
    player_map: torch.Tensor | None = None,
    value: str | Callable[..., torch.Tensor] = "log_prob",
    batch_size: int | None = None,
    autocast: Autocast | None = None,
    channels_last: bool = False,
) -> InputGame:
    """The input game whose ``φ^(n-1)(i)`` is ML-LOO's score (Ren et al., NeurIPS 2021, supplement G, Eq. 16).

    ML-LOO's setting: absent players are 0 (``baseline="zeros"``) and the class is the model's prediction on the
    unmasked image (``y=None``), fixed for every coalition. ``grid`` defaults to one player per pixel
    (``(H, W)``), ML-LOO's variables; ``value`` is the output ``f(x)_c`` compared (default ``"log_prob"``, the
    paper's ``v``; ``"logit"`` or a callable for another output).
    """
    if grid is None and player_map is None:
        grid = tuple(x.shape[-2:])  # type: ignore[assignment]
    return InputGame(
        model,
        x,
        None,
        grid=grid if grid is not None else 16,
        player_map=player_map,
        value=value,
        baseline="zeros",
        batch_size=batch_size,
        autocast=autocast,
        channels_last=channels_last,
    )


@dataclass
class LeaveOneOutScores:
    """ML-LOO's scores ``φ^(n-1)(i|x) = v(N|x) - v(N\\{i}|x)`` of a batch of games.

    Attributes:
        per_player: ``(B, n)`` float64 scores.
        full_value: ``(B,)`` ``v(N|x)``.
        num_forward_passes: masked inputs evaluated (``B · (n + 1)``, plus ``B`` when the class was resolved).
    """

    per_player: torch.Tensor
    full_value: torch.Tensor
    num_forward_passes: int


def _check_game(game: object) -> MaskedGame:
    if not isinstance(game, MaskedGame):
        raise TypeError(f"game must be a MaskedGame (e.g. InputGame, ml_loo_game(...)); got {type(game).__name__}")
    return game


def leave_one_out_scores(
    game: MaskedGame, *, max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES
) -> LeaveOneOutScores:
    """``φ^(n-1)(i|x) = v(N|x) - v(N\\{i}|x)`` for every player (Ren et al., NeurIPS 2021, supplement G, Eq. 16).

    ``n + 1`` coalitions per image (the full set and the ``n`` leave-one-out sets), refused before any work when
    ``B · (n + 1)`` exceeds ``max_forward_passes``. On :func:`ml_loo_game` this is ML-LOO's attribution score.
    """
    game = _check_game(game)
    n, batch = game.num_players, game.num_images
    check_budget(batch * (n + 1), max_forward_passes, f"leave-one-out scores of {n} players")
    before = game.forward_passes
    coalitions = torch.cat([torch.ones(1, n, dtype=torch.bool), ~torch.eye(n, dtype=torch.bool)])
    values = game.evaluate(coalitions.to(game.device)).detach().to(torch.float64).cpu()
    return LeaveOneOutScores(
        per_player=values[:, :1] - values[:, 1:],
        full_value=values[:, 0],
        num_forward_passes=game.forward_passes - before,
    )


def shapley_from_interactions(exact: ExactInteractions, orders: OrderSpec | None = None) -> torch.Tensor:
    """``φ^(m)(i) = E_{j ∈ N\\{i}}[Σ_{k=0}^{m-1} I^(k)_ij] + φ^(0)(i)`` from the exact interactions, ``(B, O, n)``.

    The accumulation property (Ren et al., NeurIPS 2021, supplement B.3 (2)); at ``m = n - 1`` it is the
    decomposition of ML-LOO's score in supplement G. ``orders``: multi-order Shapley orders in ``[0, n-1]``
    (explicit ints, ratios or a preset; default all ``0 .. n-1``). Compare with ``exact.multi_order_shapley``,
    computed from the marginal contributions directly.
    """
    if not isinstance(exact, ExactInteractions):
        raise TypeError(f"exact must be an ExactInteractions (from exact_interactions); got {type(exact).__name__}")
    n = exact.num_players
    resolved = resolve_orders(list(range(n)) if orders is None else orders, n, shapley=True)
    first_order = exact.singleton_values - exact.empty_value.unsqueeze(1)  # φ^(0)(i) = v({i}) - v(∅), (B, n)
    mean_over_j = exact.multi_order.sum(dim=-1) / (n - 1)  # E_{j≠i} I^(k)_ij (zero diagonal), (B, n-1, n)
    accumulated = torch.cat([torch.zeros_like(mean_over_j[:, :1]), mean_over_j.cumsum(dim=1)], dim=1)  # (B, n, n)
    return first_order.unsqueeze(1) + accumulated[:, list(resolved.orders)]


def attribution_statistic(values: torch.Tensor, statistic: DetectorStatistic, dim: int = -1) -> torch.Tensor:
    """One score per image from its attributions along ``dim``: ML-LOO's inter-quartile range ``Q3 - Q1``
    (``torch.quantile`` with linear interpolation, as ``scipy.stats.iqr``), the mean, the mean absolute value or the
    standard deviation (Bessel-corrected)."""
    check_choice(statistic, "statistic", DETECTOR_STATISTICS)
    if statistic == "iqr":
        quartiles = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=values.dtype), dim=dim)
        return quartiles[1] - quartiles[0]
    if statistic == "mean":
        return values.mean(dim=dim)
    if statistic == "mean_abs":
        return values.abs().mean(dim=dim)
    return values.std(dim=dim)


def _check_scores(scores: torch.Tensor, name: str) -> torch.Tensor:
    scores = torch.as_tensor(scores).detach().to(torch.float64).cpu().flatten()
    if scores.numel() == 0:
        raise ValueError(f"{name} must hold at least one score")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{name} contains NaN or infinite scores")
    return scores


def detection_auc(normal: torch.Tensor, adversarial: torch.Tensor) -> float:
    """ROC-AUC of a detector score: adversarial examples (label 1) against normal ones (label 0).

    ``torchmetrics``' exact ``binary_auroc`` on the scores' ranks (average ranks for ties, scaled into ``(0, 1]``):
    the AUC depends only on the order of the scores, and ranks keep torchmetrics from reading scores outside
    ``[0, 1]`` as logits (its sigmoid would tie large scores). 1: every adversarial score is above every normal one;
    0.5: no separation; below 0.5: adversarial scores are lower.

    >>> detection_auc(torch.tensor([0.1, 0.4, 35.0]), torch.tensor([0.4, 50.0, 70.0]))  # ties count one half
    0.8333333...
    """
    normal, adversarial = _check_scores(normal, "normal"), _check_scores(adversarial, "adversarial")
    scores = torch.cat([normal, adversarial])
    ranks = torch.as_tensor(rankdata(scores.numpy(), method="average"), dtype=torch.float64) / scores.numel()
    target = torch.cat([torch.zeros(normal.numel()), torch.ones(adversarial.numel())]).long()
    return float(binary_auroc(ranks, target, thresholds=None))


@dataclass
class DetectorScores:
    """Scores of one detector on a batch of images.

    Attributes:
        kind, statistic: the detector.
        orders: the orders ``m`` scored (``(n-1,)`` for ML-LOO).
        scores: ``(B, O)`` float64, one score per image and order.
        num_forward_passes: masked inputs evaluated.
    """

    kind: str
    statistic: str
    orders: Orders
    scores: torch.Tensor
    num_forward_passes: int


@dataclass
class DetectionResult:
    """Normal vs adversarial scores of one detector and their ROC-AUC per order.

    Attributes:
        normal, adversarial: the two :class:`DetectorScores`.
        auc: ``(O,)`` ROC-AUC (adversarial positive) per order; separation: ``(O,)`` ``max(auc, 1 - auc)``.
    """

    normal: DetectorScores
    adversarial: DetectorScores
    auc: torch.Tensor
    separation: torch.Tensor

    @property
    def orders(self) -> Orders:
        return self.normal.orders

    def to_dict(self, prefix: str | None = None) -> dict[str, float]:
        """``{prefix}/auc/{label}`` and ``{prefix}/separation/{label}`` per order (prefix: ``detection/<kind>``)."""
        prefix = f"detection/{self.normal.kind}" if prefix is None else prefix
        out: dict[str, float] = {}
        for k, label in enumerate(self.orders.labels):
            out[f"{prefix}/auc/{label}"] = float(self.auc[k])
            out[f"{prefix}/separation/{label}"] = float(self.separation[k])
        passes = self.normal.num_forward_passes + self.adversarial.num_forward_passes
        out[f"{prefix}/num_forward_passes"] = float(passes)
        return out


@dataclass
class AttributionDetector:
    """A detector of adversarial examples from attributions (Ren et al., NeurIPS 2021, §4.3, supplement G).

    Args:
        kind: ``"ml_loo"`` (``φ^(n-1)(i)``), ``"shapley"`` (``φ^(m)(i)``) or ``"interaction"`` (``I^(m)_ij``).
        orders: the orders scored (a preset, ratios or explicit ints; ``None``: ``"reference"``); Shapley orders
            lie in ``[0, n-1]``, interaction orders in ``[0, n-2]``. ML-LOO scores order ``n-1`` only and takes
            none.
        statistic: how the attributions of an image become one score (``None``: :data:`DEFAULT_STATISTICS`).
        num_contexts: contexts per player/pair and order (sampled detectors).
        num_pairs, pairs: pairs per image and how they are drawn (``"interaction"``).
        max_forward_passes: the budget per scored game (refused before any work; ``None``: no cap).
        random_state: seed of the contexts and pairs (an ``int`` gives the same draws on every call, so a normal
            and an adversarial game of the same shape are scored on the same pairs and contexts).
    """

    kind: DetectorKind = "interaction"
    orders: OrderSpec | None = None
    statistic: DetectorStatistic | None = None
    num_contexts: int = 100
    num_pairs: int | None = 200
    pairs: PairKind = "neighbour"
    max_forward_passes: int | None = DEFAULT_MAX_FORWARD_PASSES
    random_state: int | None = 0

    def __post_init__(self) -> None:
        check_choice(self.kind, "kind", DETECTOR_KINDS)
        if self.statistic is None:
            self.statistic = DEFAULT_STATISTICS[self.kind]  # type: ignore[assignment]
        check_choice(self.statistic, "statistic", DETECTOR_STATISTICS)
        if self.kind == "ml_loo" and self.orders is not None:
            raise ValueError(f"the ml_loo detector scores order n-1 only; do not pass orders (got {self.orders!r})")
        check_int(self.num_contexts, "num_contexts", minimum=1)
        if self.num_pairs is not None:
            check_int(self.num_pairs, "num_pairs", minimum=1)
        check_choice(self.pairs, "pairs", PAIR_KINDS)
        if self.max_forward_passes is not None:
            check_int(self.max_forward_passes, "max_forward_passes", minimum=1)

    @property
    def name(self) -> str:
        return f"{self.kind}[{self.statistic}]"

    def resolve_orders(self, num_players: int) -> Orders:
        """The orders scored for ``n`` players (ValueError naming the allowed range for an order outside it)."""
        if self.kind == "ml_loo":
            return Orders((num_players - 1,), None)
        orders = "reference" if self.orders is None else self.orders
        return resolve_orders(orders, num_players, shapley=self.kind == "shapley")

    def planned_forward_passes(self, num_images: int, num_players: int) -> int:
        """Masked forward passes to score ``num_images`` images of ``num_players`` players (an upper bound:
        deduplication and exhausted pairs lower it), including the forward that fixes each image's class."""
        n = num_players
        orders = self.resolve_orders(n).orders
        if self.kind == "ml_loo":
            return num_images * (n + 2)
        if self.kind == "shapley":
            _, contexts = context_counts(n, 1, orders, self.num_contexts, True)
            return num_images * (2 * n * sum(contexts) + 1)
        _, contexts = context_counts(n, 2, orders, self.num_contexts, True)
        pairs = n * (n - 1) // 2 if self.num_pairs is None else self.num_pairs
        return num_images * (4 * pairs * sum(contexts) + 1)

    def describe_plan(self, num_images: int, num_players: int, forward_multiplier: int = 1) -> str:
        """``"<kind>[<statistic>]: <passes> masked forward passes (<images> images x <n> players x <O> orders)"``;
        with ``forward_multiplier > 1`` (a model that runs its base classifier several times per input, e.g.
        :class:`~lit_advgame.defenses.NoisyLogProbabilities`) also the base classifier's forward passes."""
        passes = self.planned_forward_passes(num_images, num_players)
        orders = len(self.resolve_orders(num_players))
        plan = (
            f"{self.name}: up to {passes:,} masked forward passes ({num_images} images x {num_players} players x "
            f"{orders} order(s))"
        )
        if forward_multiplier > 1:
            plan += f" x {forward_multiplier} base-classifier passes each = {passes * forward_multiplier:,}"
        return plan

    def scores(self, game: MaskedGame) -> DetectorScores:
        """Score every image of ``game``: ``(B, O)`` (announces its cost, checks the budget first)."""
        game = _check_game(game)
        n, batch = game.num_players, game.num_images
        resolved = self.resolve_orders(n)
        # a smoothed model runs its base classifier `forward_multiplier` times per masked input: the budget counts them
        multiplier = int(getattr(game.model, "forward_multiplier", 1))
        plan = self.describe_plan(batch, n, multiplier)
        check_budget(self.planned_forward_passes(batch, n) * multiplier, self.max_forward_passes, plan)
        rank_zero_info(plan)
        before = game.forward_passes
        if self.kind == "ml_loo":
            attributions = leave_one_out_scores(game, max_forward_passes=None).per_player.unsqueeze(1)  # (B, 1, n)
        elif self.kind == "shapley":
            estimator = MultiOrderShapleyApproximator(
                orders=list(resolved.orders),
                num_contexts=self.num_contexts,
                max_forward_passes=None,
                random_state=self.random_state,
            )
            attributions = estimator.approximate(game).per_player  # (B, O, n)
        else:
            estimator = MultiOrderApproximator(
                orders=list(resolved.orders),
                num_contexts=self.num_contexts,
                num_pairs=self.num_pairs,
                pairs=self.pairs,
                max_forward_passes=None,
                random_state=self.random_state,
            )
            attributions = estimator.approximate(game).per_pair  # (B, O, P)
        return DetectorScores(
            kind=self.kind,
            statistic=self.statistic,  # type: ignore[arg-type]
            orders=resolved,
            scores=attribution_statistic(attributions.to(torch.float64), self.statistic),  # type: ignore[arg-type]
            num_forward_passes=game.forward_passes - before,
        )

    def exact_scores(self, exact: ExactInteractions) -> torch.Tensor:
        """The detector's scores ``(B, O)`` from the exact oracle (all pairs for ``"interaction"``): a check of
        :meth:`scores` on small games."""
        n = exact.num_players
        orders = list(self.resolve_orders(n).orders)
        if self.kind == "interaction":
            iu = torch.triu_indices(n, n, offset=1)
            attributions = exact.multi_order[:, orders][..., iu[0], iu[1]]  # (B, O, n(n-1)/2)
        else:
            attributions = exact.multi_order_shapley[:, orders]  # (B, O, n)
        return attribution_statistic(attributions, self.statistic)  # type: ignore[arg-type]


def detect(detector: AttributionDetector, normal: MaskedGame, adversarial: MaskedGame) -> DetectionResult:
    """Score normal and adversarial images with ``detector`` and compute the ROC-AUC per order (adversarial
    positive; Ren et al., NeurIPS 2021, §4.3 and Figure 6 left). The two games need the same number of players."""
    if not isinstance(detector, AttributionDetector):
        raise TypeError(f"detector must be an AttributionDetector; got {type(detector).__name__}")
    normal, adversarial = _check_game(normal), _check_game(adversarial)
    if normal.num_players != adversarial.num_players:
        raise ValueError(
            f"normal and adversarial games need the same players; got n = {normal.num_players} and "
            f"{adversarial.num_players}"
        )
    normal_scores, adversarial_scores = detector.scores(normal), detector.scores(adversarial)
    auc = torch.tensor(
        [
            detection_auc(normal_scores.scores[:, k], adversarial_scores.scores[:, k])
            for k in range(len(normal_scores.orders))
        ],
        dtype=torch.float64,
    )
    return DetectionResult(normal_scores, adversarial_scores, auc, torch.maximum(auc, 1.0 - auc))

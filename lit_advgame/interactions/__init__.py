"""Game-theoretic interaction engine: games, an exact oracle and batched, seeded estimators.

Games (``game.py``): :class:`InputGame` (Ren et al., NeurIPS 2021: absent players take a
baseline) and :class:`PerturbationGame` (Wang et al., ICLR 2021: absent perturbation cells keep
the clean pixel), over an ``L x L`` grid or any player map, with a named or custom value function.

Exact oracle (``exact.py``, n <= 16): :func:`exact_interactions` -> Shapley values, SII, BII,
``I^(m)_ij``, ``φ^(m)_i``, ``J^(m)``, ``D^(m)``, the IR paper's ``E_ij[I_ij]``.

Estimators, as objects (shapiq style: settings, a forward-pass budget ``max_forward_passes`` and
a ``random_state`` at construction, ``approximate(game)`` to run; the game counts its forward
passes) and as the functions they back (``generator=`` is the random state), chunked by
``batch_size``, with standard errors:

* :class:`PerturbationInteractionApproximator` / :func:`perturbation_interaction`,
  :func:`perturbation_interaction_estimate` -- ``E_ij[I_ij(δ)]``;
* :class:`MultiOrderApproximator` / :func:`multi_order_interactions` -- ``I^(m)``;
* :class:`InteractionChangeApproximator` / :func:`interaction_change` (alias
  :func:`attacking_utility`) -- ``ΔI^(m)``, ``ΔJ^(m)``, shares;
* :class:`DisentanglementApproximator` / :func:`disentanglement` -- ``D^(m)``;
* :class:`ShapleyApproximator` / :func:`shapley_values`, :class:`MultiOrderShapleyApproximator` /
  :func:`multi_order_shapley`;
* :class:`InteractionStrength` / :func:`interaction_strength` -- ``E_{i≠j}|I(i, j)|`` (or ``E|φ(i)|``, an order
  band), differentiable w.r.t. the model's parameters (the interaction penalty of training).

Every result's ``values`` / ``stderr`` are aggregated over the images; per-image numbers are
``per_image`` (see :mod:`~lit_advgame.interactions.results`).

Example::

    from lit_advgame.interactions import InputGame, InteractionChangeApproximator, interaction_change
    clean = InputGame(model, x, y, grid=16)          # log p(y | x_S), mean-colour baseline
    adv = InputGame(model, x_adv, y, grid=16)        # the same labels y
    result = interaction_change(clean, adv, "reference", generator=torch.Generator().manual_seed(0))
    # the same estimate as an object with an explicit budget and random state
    estimator = InteractionChangeApproximator(orders="reference", max_forward_passes=10**8, random_state=0)
    result = estimator.approximate(clean, adv)
    logger.log_metrics(result.to_dict("interaction"))
"""

from lit_advgame.interactions.attacking_utility import (
    InteractionChangeApproximator,
    attacking_utility,
    check_paired_games,
    interaction_change,
    interaction_change_from_samples,
)
from lit_advgame.interactions.baselines import (
    BASELINE_NAMES,
    gaussian_blur,
    make_baseline,
)
from lit_advgame.interactions.budget import DEFAULT_MAX_FORWARD_PASSES, check_budget
from lit_advgame.interactions.disentanglement import (
    DisentanglementApproximator,
    disentanglement,
    disentanglement_from_samples,
)
from lit_advgame.interactions.exact import (
    MAX_EXACT_PLAYERS,
    ExactInteractions,
    all_coalitions,
    exact_from_values,
    exact_interactions,
)
from lit_advgame.interactions.game import (
    DEFAULT_BATCH_SIZE,
    InputGame,
    MaskedGame,
    PerturbationGame,
    eval_mode,
    pack_coalitions,
)
from lit_advgame.interactions.multi_order import (
    ContextSampling,
    MultiOrderApproximator,
    PairDeltaSamples,
    PairSampling,
    multi_order_from_samples,
    multi_order_interactions,
    pair_context_coalitions,
    sample_pair_deltas,
)
from lit_advgame.interactions.orders import (
    ORDER_PRESETS,
    Orders,
    resolve_orders,
    utility_weights,
)
from lit_advgame.interactions.perturbation import (
    PerturbationInteractionApproximator,
    perturbation_interaction,
    perturbation_interaction_estimate,
)
from lit_advgame.interactions.players import (
    grid_player_map,
    grid_shape,
    neighbour_pairs,
    player_adjacency,
    resolve_player_map,
    validate_player_map,
)
from lit_advgame.interactions.results import (
    DisentanglementResult,
    InteractionChangeResult,
    MultiOrderResult,
    MultiOrderShapleyResult,
    PerturbationInteractionResult,
    ShapleyResult,
)
from lit_advgame.interactions.sampling import (
    all_pairs,
    enumerate_subsets,
    sample_groups_with_replacement,
    sample_pairs,
    sample_permutations,
    sample_players,
    sample_subsets,
)
from lit_advgame.interactions.shapley import (
    MultiOrderShapleyApproximator,
    ShapleyApproximator,
    multi_order_shapley,
    shapley_values,
)
from lit_advgame.interactions.strength import InteractionStrength, StrengthEstimate, interaction_strength
from lit_advgame.interactions.values import VALUE_NAMES, ValueFunction, resolve_value
from lit_advgame.utils.seeding import make_generator

__all__ = [
    "BASELINE_NAMES",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_FORWARD_PASSES",
    "MAX_EXACT_PLAYERS",
    "ORDER_PRESETS",
    "VALUE_NAMES",
    "ContextSampling",
    "DisentanglementApproximator",
    "DisentanglementResult",
    "ExactInteractions",
    "InputGame",
    "InteractionStrength",
    "InteractionChangeApproximator",
    "InteractionChangeResult",
    "MaskedGame",
    "MultiOrderApproximator",
    "MultiOrderResult",
    "MultiOrderShapleyApproximator",
    "MultiOrderShapleyResult",
    "Orders",
    "PairDeltaSamples",
    "PairSampling",
    "PerturbationGame",
    "PerturbationInteractionApproximator",
    "PerturbationInteractionResult",
    "ShapleyApproximator",
    "ShapleyResult",
    "StrengthEstimate",
    "ValueFunction",
    "all_coalitions",
    "all_pairs",
    "attacking_utility",
    "check_budget",
    "check_paired_games",
    "disentanglement",
    "disentanglement_from_samples",
    "enumerate_subsets",
    "eval_mode",
    "exact_from_values",
    "exact_interactions",
    "gaussian_blur",
    "grid_player_map",
    "grid_shape",
    "interaction_change",
    "interaction_change_from_samples",
    "interaction_strength",
    "make_baseline",
    "make_generator",
    "multi_order_from_samples",
    "multi_order_interactions",
    "multi_order_shapley",
    "neighbour_pairs",
    "pack_coalitions",
    "pair_context_coalitions",
    "perturbation_interaction",
    "perturbation_interaction_estimate",
    "player_adjacency",
    "resolve_orders",
    "resolve_player_map",
    "resolve_value",
    "sample_groups_with_replacement",
    "sample_pair_deltas",
    "sample_pairs",
    "sample_permutations",
    "sample_players",
    "sample_subsets",
    "shapley_values",
    "utility_weights",
    "validate_player_map",
]

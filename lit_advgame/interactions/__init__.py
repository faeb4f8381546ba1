"""Game-theoretic interaction engine: games, an exact oracle and batched, seeded estimators.

Games (``game.py``): :class:`InputGame` (Ren et al., NeurIPS 2021: absent players take a
baseline) and :class:`PerturbationGame` (Wang et al., ICLR 2021: absent perturbation cells keep
the clean pixel), over an ``L x L`` grid or any player map, with a named or custom value function.

Exact oracle (``exact.py``, n <= 16): :func:`exact_interactions` -> Shapley values, SII, BII,
``I^(m)_ij``, ``φ^(m)_i``, ``J^(m)``, ``D^(m)``, the IR paper's ``E_ij[I_ij]``.

Estimators (seeded by a ``torch.Generator``, chunked by ``batch_size``, with standard errors):

* :func:`perturbation_interaction` / :func:`perturbation_interaction_estimate` -- ``E_ij[I_ij(δ)]``;
* :func:`multi_order_interactions` -- ``I^(m)``;
* :func:`interaction_change` (alias :func:`attacking_utility`) -- ``ΔI^(m)``, ``ΔJ^(m)``, shares;
* :func:`disentanglement` -- ``D^(m)``;
* :func:`shapley_values`, :func:`multi_order_shapley`.

Example::

    from lit_advgame.interactions import InputGame, interaction_change
    clean = InputGame(model, x, y, grid=16)          # log p(y | x_S), mean-colour baseline
    adv = InputGame(model, x_adv, y, grid=16)
    result = interaction_change(clean, adv, "reference", generator=torch.Generator().manual_seed(0))
    logger.log_metrics(result.to_dict("interaction"))
"""
from lit_advgame.interactions.attacking_utility import (
    attacking_utility,
    interaction_change,
)
from lit_advgame.interactions.baselines import (
    BASELINE_NAMES,
    gaussian_blur,
    make_baseline,
)
from lit_advgame.interactions.budget import DEFAULT_MAX_FORWARD_PASSES, check_budget
from lit_advgame.interactions.disentanglement import (
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
    PairDeltaSamples,
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
    perturbation_interaction,
    perturbation_interaction_estimate,
)
from lit_advgame.interactions.players import (
    grid_player_map,
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
    make_generator,
    sample_groups_with_replacement,
    sample_pairs,
    sample_permutations,
    sample_players,
    sample_subsets,
)
from lit_advgame.interactions.shapley import multi_order_shapley, shapley_values
from lit_advgame.interactions.values import VALUE_NAMES, ValueFunction, resolve_value

__all__ = [
    "BASELINE_NAMES",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_FORWARD_PASSES",
    "MAX_EXACT_PLAYERS",
    "ORDER_PRESETS",
    "VALUE_NAMES",
    "DisentanglementResult",
    "ExactInteractions",
    "InputGame",
    "InteractionChangeResult",
    "MaskedGame",
    "MultiOrderResult",
    "MultiOrderShapleyResult",
    "Orders",
    "PairDeltaSamples",
    "PerturbationGame",
    "PerturbationInteractionResult",
    "ShapleyResult",
    "ValueFunction",
    "all_coalitions",
    "all_pairs",
    "attacking_utility",
    "check_budget",
    "disentanglement",
    "disentanglement_from_samples",
    "eval_mode",
    "exact_from_values",
    "exact_interactions",
    "gaussian_blur",
    "grid_player_map",
    "interaction_change",
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

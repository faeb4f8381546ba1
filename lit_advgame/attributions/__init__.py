"""Attributions and interactions of adversarial attacks (Wang et al., ICCV 2021).

Sec. 3.2 (:mod:`.pixel_interactions`, :mod:`.components`): the perturbation-pixel game, rewards of pixels and merged
coalitions (the paper's gradient approximation, Eq. 7–9, or the engine's exact and sampled Shapley values),
interactions ``I[S]`` (Eq. 5), hierarchical extraction of perturbation components (supplement C) and their analysis.
"""

from lit_advgame.attributions.components import (
    ComponentResult,
    ComponentSettings,
    component_effects,
    component_figure,
    extract_components,
    foreground_mask_from_image,
    foreground_share,
)
from lit_advgame.attributions.pixel_interactions import (
    CoalitionInteractionResult,
    TaylorRewardApproximator,
    coalition_interactions,
    group_rewards,
    superpixel_game,
)

__all__ = [
    "CoalitionInteractionResult",
    "ComponentResult",
    "ComponentSettings",
    "TaylorRewardApproximator",
    "coalition_interactions",
    "component_effects",
    "component_figure",
    "extract_components",
    "foreground_mask_from_image",
    "foreground_share",
    "group_rewards",
    "superpixel_game",
]

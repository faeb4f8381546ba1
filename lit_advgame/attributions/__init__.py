"""Attributions and interactions of adversarial attacks (Wang et al., ICCV 2021).

Sec. 3.1, regional attributions to the attacking cost: restricted targeted attacks
(:mod:`~lit_advgame.attributions.cost`) and the cost game with its Shapley estimators
(:mod:`~lit_advgame.attributions.regional`).

Sec. 3.2 (:mod:`.pixel_interactions`, :mod:`.components`): the perturbation-pixel game, rewards of pixels and merged
coalitions (the paper's gradient approximation, Eq. 7–9, or the engine's exact and sampled Shapley values),
interactions ``I[S]`` (Eq. 5), hierarchical extraction of perturbation components (supplement C) and their analysis.

Both at scale as a ``trainer.predict`` job (:mod:`.module`, :mod:`.writer`, :mod:`.results`, :mod:`.figures`):
:class:`AttributionAnalysis` (per image and model, seeded per image) with :class:`AttributionWriter` (exactly once,
resumable; summary tables, heatmaps, TensorBoard)::

    lit-advgame predict --config configs/attributions_regional.yaml
    lit-advgame predict --config configs/attributions_components.yaml
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
from lit_advgame.attributions.cost import (
    L2CostAttack,
    LinfCostAttack,
    RestrictedAttack,
    RestrictedAttackResult,
    build_cost_attack,
)
from lit_advgame.attributions.figures import regional_figure
from lit_advgame.attributions.module import AttributionAnalysis, ComponentAnalysisSettings, RegionalSettings
from lit_advgame.attributions.pixel_interactions import (
    CoalitionInteractionResult,
    TaylorRewardApproximator,
    coalition_interactions,
    group_rewards,
    superpixel_game,
)
from lit_advgame.attributions.regional import (
    CostGame,
    ExactRegionalShapley,
    PermutationRegionalShapley,
    RegionalAttribution,
    RegionGrid,
    StratifiedRegionalShapley,
    attribution_iou,
    regional_attributions,
    regional_magnitudes,
)
from lit_advgame.attributions.results import load_attributions
from lit_advgame.attributions.writer import AttributionWriter

__all__ = [
    "AttributionAnalysis",
    "AttributionWriter",
    "ComponentAnalysisSettings",
    "RegionalSettings",
    "load_attributions",
    "regional_figure",
    "CoalitionInteractionResult",
    "ComponentResult",
    "ComponentSettings",
    "CostGame",
    "ExactRegionalShapley",
    "L2CostAttack",
    "LinfCostAttack",
    "PermutationRegionalShapley",
    "RegionGrid",
    "RegionalAttribution",
    "RestrictedAttack",
    "RestrictedAttackResult",
    "StratifiedRegionalShapley",
    "TaylorRewardApproximator",
    "attribution_iou",
    "build_cost_attack",
    "coalition_interactions",
    "component_effects",
    "component_figure",
    "extract_components",
    "foreground_mask_from_image",
    "foreground_share",
    "group_rewards",
    "regional_attributions",
    "regional_magnitudes",
    "superpixel_game",
]

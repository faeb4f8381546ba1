"""Attributions and interactions of adversarial attacks (Wang et al., ICCV 2021).

Sec. 3.1, regional attributions to the attacking cost: restricted targeted attacks
(:mod:`~lit_advgame.attributions.cost`) and the cost game with its Shapley estimators
(:mod:`~lit_advgame.attributions.regional`).
"""

from lit_advgame.attributions.cost import (
    L2CostAttack,
    LinfCostAttack,
    RestrictedAttack,
    RestrictedAttackResult,
    build_cost_attack,
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

__all__ = [
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
    "attribution_iou",
    "build_cost_attack",
    "regional_attributions",
    "regional_magnitudes",
]

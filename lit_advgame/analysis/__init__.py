"""Interaction analyses of trained models as ``trainer.predict`` jobs (Ren et al., NeurIPS 2021, §4).

* :class:`InteractionAnalysis` -- a LightningModule whose ``predict_step`` attacks each image (strength-controlled
  attack by default) on every model of a list and estimates, per image, ``I^(m)`` on the clean and the adversarial
  image, ``ΔI^(m)`` and ``ΔJ^(m)`` with standard errors (seeded per image: independent of batch size, DDP and
  resuming);
* :class:`AnalysisWriter` -- saves the per-image results exactly once (also under DDP), atomically and resumably,
  and at the end writes the per-model aggregates (JSON, CSV, Markdown) and the figures (PNG, TensorBoard);
* :func:`aggregate`, :func:`load_analysis` -- the aggregates and the saved records from Python.

    lit-advgame predict --config configs/analysis_digits.yaml
    lit-advgame predict --config configs/paper/multi_order_imagenet.yaml
"""

from lit_advgame.analysis.figures import comparison_figure, interactions_figure
from lit_advgame.analysis.module import InteractionAnalysis, image_seed, per_image_quantities
from lit_advgame.analysis.results import aggregate, load_analysis, summary_table
from lit_advgame.analysis.writer import AnalysisWriter

__all__ = [
    "AnalysisWriter",
    "InteractionAnalysis",
    "aggregate",
    "comparison_figure",
    "image_seed",
    "interactions_figure",
    "load_analysis",
    "per_image_quantities",
    "summary_table",
]

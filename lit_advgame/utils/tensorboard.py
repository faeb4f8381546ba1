"""What lit_advgame writes to TensorBoard and where: tag groups, value ± 1 SE charts, image grids.

TensorBoard's default dashboard (Time Series) groups the cards by the part of the tag before the first ``/``,
sorts the groups by name (digits and ``/`` first, then ``A-Z``, ``_``, ``a-z``) and opens only the first two. Tags may
hold letters, digits, ``_``, ``-``, ``.`` and ``/`` (PyTorch's ``SummaryWriter`` replaces anything else with
``_``), so a group whose name starts with ``zz_`` sorts after every lowercase name. Bookkeeping goes there, closed
and out of the way of the estimates:

* :data:`COST_GROUP` (``zz_cost/<prefix>/...``): the cost counters of every callback (forward passes, seconds, the
  masked inputs of an estimate), one group at the end;
* :data:`MARGIN_GROUP` (``zz_margin/<tag>/lower``, ``zz_margin/<tag>/upper``): ``value − SE`` and ``value + SE`` of
  every estimate ``<tag>`` logged with a standard error (a metric ``<tag>_stderr``). The estimate itself keeps its
  tag (``interaction/delta/r0.10``); the standard error is no card of its own but the band of a margin chart.

The **Custom Scalars** dashboard shows the estimates as margin charts, value ± 1 SE, several series per chart (one
per order of a band of orders, or one per quantity), from a layout (:class:`Chart`, :func:`write_layout`) that the
callbacks write once per run; its categories appear in the order written, the cost last.

Image grids (:func:`example_grid`): clean images, their adversarial examples and the perturbations amplified to
the full range, as one image (``torchvision.utils.make_grid``).

Writers: :func:`log_scalars` and :func:`log_figures` write to every logger of a Trainer with a given step (call
them on global rank 0): TensorBoard loggers get the scalars above (standard errors as margins), figures and
images; other loggers get ``log_metrics`` of the metrics as given (standard errors as ``<tag>_stderr``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure
from pytorch_lightning import Trainer
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
from torchvision.utils import make_grid

#: the group of the cost counters (sorts after every lowercase group: see the module docstring)
COST_GROUP = "zz_cost"
#: the group of the margins ``value ∓ SE`` of the estimates
MARGIN_GROUP = "zz_margin"
#: the suffix of a standard error in a metrics dict (``interaction/delta/r0.10_stderr``)
STDERR_SUFFIX = "_stderr"
#: images shown in an :func:`example_grid` (the first ones)
GRID_IMAGES = 8

Images = Mapping[str, Figure | torch.Tensor]


def cost_tag(prefix: str, name: str) -> str:
    """``zz_cost/<prefix>/<name>``: a cost counter of the callback with tag prefix ``prefix``."""
    return f"{COST_GROUP}/{prefix}/{name}"


def margin_tags(tag: str) -> tuple[str, str]:
    """The tags of ``value − SE`` and ``value + SE`` of the estimate logged as ``tag``."""
    return f"{MARGIN_GROUP}/{tag}/lower", f"{MARGIN_GROUP}/{tag}/upper"


def tensorboard_scalars(metrics: Mapping[str, float]) -> dict[str, float]:
    """The scalars TensorBoard gets for ``metrics``: each ``<tag>_stderr`` whose ``<tag>`` is in ``metrics`` becomes
    the two margin tags (:func:`margin_tags`) ``value − SE`` and ``value + SE``; everything else as it is.

    >>> tensorboard_scalars({"d/r0.10": 1.0, "d/r0.10_stderr": 0.25, "d/num_images": 4.0})
    {'d/r0.10': 1.0, 'zz_margin/d/r0.10/lower': 0.75, 'zz_margin/d/r0.10/upper': 1.25, 'd/num_images': 4.0}
    """
    out: dict[str, float] = {}
    for tag, value in metrics.items():
        base = tag[: -len(STDERR_SUFFIX)]
        if tag.endswith(STDERR_SUFFIX) and base in metrics:
            lower, upper = margin_tags(base)
            out[lower] = float(metrics[base]) - float(value)
            out[upper] = float(metrics[base]) + float(value)
        else:
            out[tag] = value
    return out


def tensorboard_writers(trainer: Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every TensorBoard logger of ``trainer`` (call on global rank 0)."""
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def _step(step: int | None, epoch: int | None, owner: str) -> int:
    """``step``, or the deprecated keyword ``epoch`` (the callbacks' name for it until this release)."""
    if epoch is not None:
        warnings.warn(f"{owner}(epoch=...) is deprecated; use step=...", DeprecationWarning, stacklevel=3)
        step = epoch if step is None else step
    if step is None:
        raise TypeError(f"{owner}() needs the step (the epoch, for the validation callbacks)")
    return int(step)


def log_scalars(
    trainer: Trainer, metrics: Mapping[str, float], step: int | None = None, *, epoch: int | None = None
) -> None:
    """Write ``metrics`` with ``step`` to every logger of ``trainer`` (call on rank 0): TensorBoard gets
    :func:`tensorboard_scalars`, other loggers ``log_metrics(metrics, step=step)``. ``epoch=`` is a deprecated
    alias of ``step``."""
    step = _step(step, epoch, "log_scalars")
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            experiment = logger.experiment
            for tag, value in tensorboard_scalars(metrics).items():
                experiment.add_scalar(tag, value, global_step=step)
            experiment.flush()
        else:
            logger.log_metrics(dict(metrics), step=step)


def log_figures(trainer: Trainer, figures: Images, step: int | None = None, *, epoch: int | None = None) -> None:
    """Add ``figures`` (tag -> matplotlib ``Figure``, or a ``(3, H, W)`` image in [0, 1] such as an
    :func:`example_grid`) with ``step`` to the TensorBoard loggers of ``trainer`` (rank 0 only). ``epoch=`` is a
    deprecated alias of ``step``."""
    step = _step(step, epoch, "log_figures")
    for experiment in tensorboard_writers(trainer):
        for tag, figure in figures.items():
            if isinstance(figure, Figure):
                experiment.add_figure(tag, figure, global_step=step, close=False)
            else:
                experiment.add_image(tag, figure, global_step=step, dataformats="CHW")
        experiment.flush()


# ----------------------------------------------------------------------------------------------- image grids
def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """Images as float32 in [0, 1] on the CPU (uint8 images are divided by 255)."""
    images = images.detach().cpu()
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def example_grid(x: torch.Tensor, x_adv: torch.Tensor, max_images: int = GRID_IMAGES) -> torch.Tensor:
    """One ``(3, H', W')`` image of the first ``max_images`` examples, one per column: the clean image (top row),
    the adversarial example (middle) and the perturbation ``δ = x_adv − x`` amplified to the full range
    (bottom: ``0.5 + δ / (2 max|δ|)`` per image, so grey is 0 and the largest change is black or white).

    >>> example_grid(torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.1)).shape
    torch.Size([3, 16, 11])
    """
    if x.shape != x_adv.shape or x.dim() != 4:
        raise ValueError(
            f"x and x_adv must be (B, C, H, W) images of one shape; got {tuple(x.shape)}, {tuple(x_adv.shape)}"
        )
    count = min(int(max_images), x.shape[0])
    clean, adversarial = as_float_images(x[:count]), as_float_images(x_adv[:count])
    delta = adversarial - clean
    scale = delta.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    amplified = 0.5 + 0.5 * delta / scale
    return make_grid(torch.cat([clean, adversarial, amplified]), nrow=count, padding=1, pad_value=1.0)


# ----------------------------------------------------------------------------------------------- custom scalars
@dataclass(frozen=True)
class Chart:
    """One chart of the Custom Scalars dashboard.

    Args:
        title: the chart's title.
        tags: with ``margin``: the tags of estimates, each drawn as value ± 1 SE (its :func:`margin_tags`); without:
            regular expressions, every scalar tag matching one is a line.
        margin: a margin chart (value ± 1 SE) instead of a multi-line chart.
    """

    title: str
    tags: tuple[str, ...]
    margin: bool = False

    def proto(self) -> layout_pb2.Chart:
        if not self.margin:
            return layout_pb2.Chart(title=self.title, multiline=layout_pb2.MultilineChartContent(tag=list(self.tags)))
        series = [
            layout_pb2.MarginChartContent.Series(value=t, lower=margin_tags(t)[0], upper=margin_tags(t)[1])
            for t in self.tags
        ]
        return layout_pb2.Chart(title=self.title, margin=layout_pb2.MarginChartContent(series=series))


#: a Custom Scalars layout: category title -> its charts (categories are shown in this order)
Layout = dict[str, list[Chart]]


def exact(tag: str) -> str:
    """A regular expression matching exactly ``tag`` (for multi-line charts)."""
    return f"^{re.escape(tag)}$"


#: the order bands of the margin charts: (name, lowest m/n, highest m/n)
ORDER_BANDS = (("low orders", 0.0, 1 / 3), ("middle orders", 1 / 3, 2 / 3), ("high orders", 2 / 3, 1.0))


def order_bands(labels: Sequence[str], orders: Sequence[int], num_players: int) -> list[tuple[str, list[str]]]:
    """The order labels grouped into the non-empty bands of :data:`ORDER_BANDS` by ``m / n`` (low: ``m < n/3``,
    middle: ``n/3 <= m < 2n/3``, high: ``m >= 2n/3``), each band named with its range of labels.

    >>> order_bands(["r0.10", "r0.50", "r0.90"], [6, 32, 57], 64)
    [('low orders (r0.10)', ['r0.10']), ('middle orders (r0.50)', ['r0.50']), ('high orders (r0.90)', ['r0.90'])]
    """
    out = []
    for name, low, high in ORDER_BANDS:
        band = [label for label, m in zip(labels, orders, strict=True) if low <= m / num_players < high]
        if band:
            span = band[0] if len(band) == 1 else f"{band[0]}-{band[-1]}"
            out.append((f"{name} ({span})", band))
    return out


def merge_layouts(layouts: Sequence[Layout]) -> Layout:
    """One layout of several (same-titled categories are joined, in first-seen order)."""
    merged: Layout = {}
    for layout in layouts:
        for category, charts in layout.items():
            merged.setdefault(category, []).extend(chart for chart in charts if chart not in merged[category])
    return merged


def layout_summary(layout: Layout) -> Summary:
    """The ``custom_scalars__config__`` summary of ``layout`` (what ``SummaryWriter.add_custom_scalars`` writes, with
    any number of series per margin chart)."""
    proto = layout_pb2.Layout(
        category=[
            layout_pb2.Category(title=title, chart=[c.proto() for c in charts]) for title, charts in layout.items()
        ]
    )
    tensor = TensorProto(dtype="DT_STRING", string_val=[proto.SerializeToString()], tensor_shape=TensorShapeProto())
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=custom_scalar_metadata.PLUGIN_NAME))
    return Summary(
        value=[Summary.Value(tag=custom_scalar_metadata.CONFIG_SUMMARY_TAG, tensor=tensor, metadata=metadata)]
    )


def write_layout(trainer: Trainer, layout: Layout) -> list[str]:
    """Write ``layout`` to every TensorBoard logger of ``trainer`` (once per run, on rank 0); returns their log dirs.

    ``SummaryWriter.add_custom_scalars`` takes one series per margin chart, so the summary is built here
    (:func:`layout_summary`) and added to the writer's event file as ``add_custom_scalars`` does."""
    if not layout:
        return []
    summary = layout_summary(layout)
    written = []
    for experiment in tensorboard_writers(trainer):
        experiment._get_file_writer().add_summary(summary)  # noqa: SLF001 - add_custom_scalars' own call
        experiment.flush()
        written.append(str(experiment.log_dir))
    return written

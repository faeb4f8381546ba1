"""``AttackModule``: transfer attacks with ``trainer.predict`` (CPU, one GPU or DDP).

    lit-advgame predict --config configs/attack_quickstart.yaml

``predict_step`` attacks each batch of the DataModule's predict split with a named attack preset
(:func:`lit_advgame.attacks.build_attack`: PGD, PGD+IR, MI, VR, SGM, HybridIR, ...) on one source
model or an ensemble (mean logits), and returns per-example records (see
:mod:`lit_advgame.predict.shards`) that :class:`~lit_advgame.predict.writer.AdversarialWriter`
saves as shards.

Seeding. The attack's random streams (random start, VR noise, IR's sampled coalitions) are seeded
per *batch* with ``derive_seed(seed, "batch:<first dataset index>")``: the attack API seeds a
whole batch from one base seed, so per-example seeds are not available. Results are therefore
independent of the world size, the rank order and restarts, for a fixed ``batch_size``.

DDP. With ``trainer.use_distributed_sampler: false`` (the attack configs' setting) every rank
iterates over the same batches as a single process and attacks batch ``b`` only if
``b % world_size == rank`` (the others return at once; loading a batch costs far less than
attacking it), so a DDP run writes exactly the examples, bit for bit, of a one-process run. With
Lightning's default distributed sampler each rank attacks the batches it is given; every example
is still attacked once, but the batches, and hence the random streams, depend on the world size.

Resuming. The writer tells the module which dataset indices are already saved and in which batch
(:meth:`set_finished`); a batch whose examples are all saved, from this same batch, is skipped
without attacking. A batch that an earlier run with a smaller ``predict_limit`` cut short (e.g.
indices 32-39 of a 40-example run with batch size 32) is *not* finished for a run whose limit
extends it: it is re-attacked as the whole batch (32-63, with a logged line saying so) and its
records replace the short batch's, so extending a run gives, bit for bit, the examples of a
one-shot run with the larger limit.

Checks. The data's ``mean``/``std`` (linked from the DataModule by the CLI) must equal the
normalization stored in every source and score checkpoint; an empty predict split or batch is an
error.

LOO records (``record``): ``"uint8"`` keeps the image after each of the T updates as uint8
(``candidates``, the official code's 8-bit PNGs without the files); ``"scores"`` keeps only the
margin ``max_{k≠y} z_k − z_y`` of each ``score_models`` target after each update (``step_scores``,
(B, T, K) floats), computed on the fly through the attack's per-step callback. Candidate t is the
image after t updates, t = 1..T (candidate T is the final ``x_adv``); the official code stores the
states before each update (0..T−1) instead.

Progress. With Lightning's default progress bar (``trainer.enable_progress_bar``, on by default) the
module shows an :class:`~lit_advgame.predict.progress.AttackProgressBar` instead: images attacked,
images/s and ETA (:meth:`configure_callbacks`); the writer prints what a resumed run finds saved and a
summary table at the end.

Precision. ``trainer.precision: bf16-mixed`` (or ``16-mixed``) autocasts ``predict_step``; the attack then
runs its model's forwards (and only those) in that precision, with float32 logits, gradients, projections
and outputs (:mod:`lit_advgame.utils.precision`). ``autocast`` sets it explicitly (``"none"`` keeps float32
under a mixed trainer precision); ``channels_last: true`` converts the source and score models and their
inputs to the channels_last memory format. A run's precision (when not float32) is part of its metadata,
so a folder never mixes precisions.

Predict runs under ``torch.inference_mode()`` by default; the attack needs gradients, so configs set
``trainer.inference_mode: false`` and this module refuses to run otherwise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lit_advgame.attacks import attack_from_config, preset_config
from lit_advgame.attacks.presets import canonical_name, resolve_auto
from lit_advgame.attacks.seeding import derive_seed
from lit_advgame.predict.models import describe, load_classifiers, margins
from lit_advgame.predict.sharded import ShardedPredictModule, check_normalization, inference_mode_message
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.utils.precision import (
    check_autocast,
    check_channels_last,
    forward_logits,
    lightning_autocast,
    resolve_autocast,
)
from lit_advgame.vocabulary import RECORD_MODES, Autocast

log = logging.getLogger(__name__)

#: the precision of a float32 run (not written into the run's metadata)
FLOAT32 = {"autocast": "none", "channels_last": False}
#: attack options set by the module itself, not by ``overrides``
RESERVED_OPTIONS = ("seed", "record_iterates", "record_format")
INFERENCE_MODE_MESSAGE = inference_mode_message("AttackModule")


def batch_seed(seed: int, first_index: int) -> int:
    """The attack seed of a batch whose first dataset index is ``first_index``."""
    return derive_seed(int(seed), f"batch:{int(first_index)}")


def quantize(images: torch.Tensor) -> torch.Tensor:
    """round(255·x) as uint8 (8-bit image files)."""
    return torch.round(images.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def _resolved_radius(attack: Any, input_shape: tuple[int, ...] | None) -> dict[str, float | None]:
    """ε and α in pixel units for images of ``input_shape`` (``None`` where a √n factor stays unknown)."""
    if input_shape is None:
        return {"eps": attack.resolved_eps, "step_size": attack.resolved_step_size}
    probe = torch.zeros(1, *input_shape)
    return {"eps": float(attack.effective_eps(probe)), "step_size": float(attack.effective_step_size(probe))}


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class AttackModule(ShardedPredictModule):
    """Attack the predict split with a preset attack on one or several source models.

    Args:
        source: a model spec or a list of them (several are attacked through their mean logits):
            paths of classifier files (``checkpoints/*.pt``), Lightning ``.ckpt`` files of any lit_advgame
            training module (a trained ``Ensemble``'s is attacked through its own output, the log of the mean
            member probability), or dicts ``{"arch": ..., "weights": ...}`` (see :mod:`lit_advgame.classifiers`).
        attack: preset name (``pgd``, ``pgd+ir``, ``mi``, ``mi+ir``, ``vr``, ``vr+ir``, ``sgm``,
            ``sgm+ir``, ``ti``, ``ti+ir``, ``di``, ``hybridir``).
        overrides: preset options to change (e.g. ``{steps: 20, ir_grid: 8, eps: "16/255"}``);
            ``seed``/``record_iterates``/``record_format`` are set by the module.
        seed: base seed (>= 0); each batch's attack seed is derived from it and the batch's first
            dataset index.
        record: ``"none"``, ``"uint8"`` (per-step images) or ``"scores"`` (per-step target margins).
        score_models: target model specs scored at every step when ``record="scores"``.
        quantize: round ``x_adv`` (and the per-step candidates scored) to 8 bits, like image files;
            ``x_adv`` is then stored losslessly as uint8.
        name: label of this run in reports (default ``"<sources>/<preset>"``).
        autocast: precision of the models' forwards, ``"bf16"``, ``"fp16"`` or ``"none"`` (float32); ``None``
            (default) follows ``trainer.precision`` (``bf16-mixed``/``16-mixed`` autocast the predict step).
        channels_last: run the source and score models in the channels_last memory format.
        num_classes, input_shape, mean, std: linked from the DataModule by the CLI; checked
            against the checkpoints (a checkpoint trained with another normalization than the
            data's ``mean``/``std`` is an error naming both) and used for dict specs without
            stored normalization.

    Example: one batch attacked outside a ``Trainer`` (``trainer.predict`` calls :meth:`attack_batch` through
    ``predict_step``), with an untrained registry model as the source:

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> module = AttackModule({"arch": "small_cnn", "name": "cnn"}, attack="pgd", overrides={"steps": 2},
    ...                       num_classes=10, input_shape=(1, 16, 16), mean=[0.5], std=[0.25])
    >>> module.run_name, round(module.resolved_radius["eps"] * 255, 6)
    ('cnn/pgd', 16.0)
    >>> records = module.attack_batch(torch.rand(2, 1, 16, 16), torch.tensor([3, 7]), indices=[0, 1])
    >>> records["x_adv"].shape, records["index"].tolist(), records["source_margin_adv"].shape
    (torch.Size([2, 1, 16, 16]), [0, 1], torch.Size([2]))
    """

    def __init__(
        self,
        source: str | dict[str, Any] | list[str | dict[str, Any]],
        attack: str = "pgd",
        overrides: dict[str, Any] | None = None,
        seed: int = 0,
        record: str = "none",
        score_models: list[str | dict[str, Any]] | None = None,
        quantize: bool = False,
        name: str | None = None,
        autocast: Autocast | None = None,
        channels_last: bool = False,
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_int(seed, "seed", minimum=0)
        check_choice(record, "record", RECORD_MODES)
        if not isinstance(quantize, bool):
            raise TypeError(f"quantize must be a bool; got {quantize!r}")
        check_autocast(autocast)
        check_channels_last(channels_last)
        overrides = dict(overrides or {})
        reserved = sorted(set(overrides) & set(RESERVED_OPTIONS))
        if reserved:
            raise ValueError(
                f"overrides may not set {reserved}: the seed comes from AttackModule(seed=...) and the "
                f"per-step records from AttackModule(record=...)"
            )
        if record == "scores" and not score_models:
            raise ValueError("record='scores' needs score_models (the target model specs scored at every step)")
        if score_models and record != "scores":
            raise ValueError(f"score_models are only used with record='scores'; got record={record!r}")
        self.preset = canonical_name(attack)
        config = preset_config(self.preset, **overrides)  # validates option names and values early
        self.save_hyperparameters()

        shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        data = {"num_classes": num_classes, "input_shape": shape, "mean": mean, "std": std}
        loaded = load_classifiers(source, "source models", **data)
        self.source_models = nn.ModuleList([m.model for m in loaded])
        self.source_info = describe(loaded)
        self.source_names = [m.name for m in loaded]
        scorers = load_classifiers(score_models, "score models", **data) if record == "scores" else []
        for what, models in (("source model", loaded), ("score model", scorers)):
            for m in models:
                check_normalization(f"{what} {m.name!r}", m, mean, std)
        self.score_models = nn.ModuleList([m.model for m in scorers])
        self.score_info = describe(scorers)
        self.score_names = [m.name for m in scorers]
        self.autocast = autocast
        self.channels_last = channels_last
        if channels_last:
            self.source_models.to(memory_format=torch.channels_last)
            self.score_models.to(memory_format=torch.channels_last)
        self.attack_config = resolve_auto(config, list(self.source_models))
        probe_attack = attack_from_config(self.attack_config, list(self.source_models))  # fail now on bad values
        #: the pixel-space radius and step the attack uses (√n factors resolved when the input shape is known)
        self.resolved_radius = _resolved_radius(probe_attack, shape)
        self.seed = seed
        self.record = record
        self.quantize = quantize
        self.run_name = name or f"{'+'.join(self.source_names)}/{self.preset}"

    # ------------------------------------------------------------------ bookkeeping
    def run_metadata(self) -> dict[str, Any]:
        """JSON-able description of this attack run (written next to the shards, checked on resume)."""
        return _json_safe(
            {
                "name": self.run_name,
                "sources": self.source_info,
                "source_names": self.source_names,
                "attack": self.preset,
                "overrides": dict(self.hparams.get("overrides") or {}),
                "config": self.attack_config,
                "steps": int(self.attack_config["steps"]),
                "resolved_eps": self.resolved_radius["eps"],
                "resolved_step_size": self.resolved_radius["step_size"],
                "seed": self.seed,
                "seeding": "per batch: derive_seed(seed, 'batch:<first dataset index>')",
                "record": self.record,
                "quantize": self.quantize,
                "score_models": self.score_names,
                "score_model_specs": self.score_info,
                **({"precision": self.forward_precision()} if self.forward_precision() != FLOAT32 else {}),
            }
        )

    def forward_precision(self) -> dict[str, Any]:
        """``{"autocast": ..., "channels_last": ...}`` of the attack's forwards: :attr:`autocast`, or for ``None``
        the autocast of the trainer's mixed precision (``"none"`` without a trainer)."""
        autocast = self.autocast
        if autocast is None:
            try:
                autocast = lightning_autocast(self.trainer.precision)
            except RuntimeError:  # not attached to a trainer
                autocast = "none"
        return {"autocast": autocast, "channels_last": self.channels_last}

    def build_attack(self, first_index: int):
        """The :class:`~lit_advgame.attacks.Attack` of a batch starting at dataset index ``first_index``."""
        config = {
            **self.attack_config,
            "seed": batch_seed(self.seed, first_index),
            "record_iterates": self.record == "uint8",
            "record_format": "uint8",
        }
        precision = {"autocast": self.autocast, "channels_last": self.channels_last}
        return attack_from_config(config, list(self.source_models), **precision)

    # ------------------------------------------------------------------ the attack
    def _logits(self, model: nn.Module, images: torch.Tensor, autocast: Autocast | None = None) -> torch.Tensor:
        """``model``'s logits of ``images`` in the run's precision (``autocast``: resolved, else :attr:`autocast`),
        in the images' dtype."""
        autocast = self.autocast if autocast is None else autocast
        return forward_logits(model, images, autocast=autocast, channels_last=self.channels_last)

    @torch.no_grad()
    def _source_logits(self, images: torch.Tensor, autocast: Autocast | None = None) -> torch.Tensor:
        return torch.stack([self._logits(m, images, autocast) for m in self.source_models]).mean(dim=0)

    @torch.no_grad()
    def _scores(self, images: torch.Tensor, labels: torch.Tensor, autocast: Autocast | None = None) -> torch.Tensor:
        if self.quantize:
            images = quantize(images).float() / 255.0
        return torch.stack([margins(self._logits(m, images, autocast), labels) for m in self.score_models], dim=1)

    def attack_batch(
        self, x: torch.Tensor, y: torch.Tensor, indices: Sequence[int] | torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Attack one batch; ``indices`` are the examples' dataset indices. Returns the shard records."""
        indices = torch.as_tensor(indices, dtype=torch.int64).flatten()
        if x.shape[0] == 0:
            raise ValueError(
                "AttackModule got an empty batch (0 images); the predict dataloader must not yield empty batches"
            )
        if indices.numel() != x.shape[0]:
            raise ValueError(f"got {indices.numel()} dataset indices for a batch of {x.shape[0]} images")
        y = y.long()
        attack = self.build_attack(int(indices[0]))
        autocast = resolve_autocast(self.autocast, x.device)  # e.g. the trainer's bf16-mixed, for every forward
        step_scores: list[torch.Tensor] = []

        def score_step(t: int, x_t: torch.Tensor) -> None:
            if t > 0:  # x_t is the image after t updates; t = 0 is the start
                step_scores.append(self._scores(x_t, y, autocast))

        with torch.inference_mode(False), torch.enable_grad():
            result = attack.run(x, y, callback=score_step if self.record == "scores" else None)
        x_adv = result.x_adv
        x_adv_q = quantize(x_adv)
        if self.quantize:
            x_adv = x_adv_q.float() / 255.0
        records: dict[str, torch.Tensor] = {
            "index": indices.to(x.device),
            "label": y,
            "x": x.detach().float(),
            "x_adv": x_adv_q if self.quantize else x_adv.float(),
            "source_margin_clean": margins(self._source_logits(x, autocast), y),
            "source_margin_adv": margins(self._source_logits(x_adv, autocast), y),
            "batch_first": torch.full_like(indices, int(indices[0])).to(x.device),
            "batch_len": torch.full_like(indices, indices.numel()).to(x.device),
        }
        for key, values in result.losses.items():
            records[f"loss/{key}"] = values.transpose(0, 1).float()
        if self.record == "scores":
            step_scores.append(self._scores(x_adv, y, autocast))
            records["step_scores"] = torch.stack(step_scores, dim=1).float()
        elif self.record == "uint8":
            assert result.iterates is not None
            after_updates = torch.cat([result.iterates[1:], x_adv_q.cpu().unsqueeze(0)])  # (T, B, C, H, W)
            records["candidates"] = after_updates.transpose(0, 1).contiguous()
        return records

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._source_logits(x)

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        claimed = self.claim_batch(batch, batch_idx)
        if isinstance(claimed, dict):
            return claimed
        x, y, indices = claimed
        cut_short = sorted(i for i in indices if (self._finished.get(i) or (0, len(indices)))[1] < len(indices))
        if cut_short:
            log.warning(
                f"AttackModule: dataset indices {cut_short[0]}-{cut_short[-1]} were attacked by an earlier run in a "
                "batch cut short by its predict_limit; re-attacking them as part of the whole batch "
                f"{indices[0]}-{indices[-1]} (their saved records are replaced), so the results equal a one-shot run"
            )
        return self.attack_batch(x, y, indices)

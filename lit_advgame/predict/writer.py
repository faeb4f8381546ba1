"""``AdversarialWriter``: save attacked batches as shards, resumable and exactly once under DDP.

Use it with :class:`~lit_advgame.predict.attack_module.AttackModule` in ``trainer.callbacks``:

* after every batch, the rank that attacked it writes ``shard_<first>_<last>.pt`` (its records,
  see :mod:`lit_advgame.predict.shards`) atomically: a temporary file, then a rename;
* at set-up every rank reads which dataset indices are already saved (shards and the merged file)
  and hands them to the module, which skips batches made only of them, so a restarted run
  attacks only what is missing; ``meta.json`` (the attack run's description) is written on the
  first run and compared on every later one, so a folder never mixes two different attacks;
* at the end, all ranks meet at a barrier and rank 0 merges the merged file and all shards into
  ``adversarial.pt``, sorted by dataset index, each index once (first occurrence wins), then
  deletes the shards (``keep_shards`` keeps them) and writes ``summary.json`` (and logs it to the
  trainer's logger, if any).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from lit_advgame.predict.shards import (
    MERGED_NAME,
    META_NAME,
    finished_indices,
    list_shards,
    merge_directory,
    write_shard,
)
from lit_advgame.utils.io import atomic_write_text

#: DataModule hyper-parameters that may change between a run and its resumption
RESUMABLE_DATA_KEYS = ("predict_limit", "num_workers", "pin_memory")


def _data_description(trainer: pl.Trainer) -> dict[str, Any]:
    datamodule = trainer.datamodule
    if datamodule is None:
        return {}
    hparams = {k: v for k, v in dict(getattr(datamodule, "hparams", {}) or {}).items() if not str(k).startswith("_")}
    for key in RESUMABLE_DATA_KEYS:
        hparams.pop(key, None)
    return {"class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}", "hparams": hparams}


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def summarize(records: dict[str, torch.Tensor]) -> dict[str, float]:
    """Counts and source-model rates of merged records."""
    if not records:
        return {"num_examples": 0}
    clean_correct = records["source_margin_clean"] < 0
    fooled = records["source_margin_adv"] > 0
    summary = {
        "num_examples": int(records["index"].numel()),
        "source_clean_accuracy": float(clean_correct.float().mean()),
        "whitebox_success": float(fooled.float().mean()),
        "whitebox_success_on_clean_correct": float(fooled[clean_correct].float().mean()) if clean_correct.any() else float("nan"),
    }
    if "loss/interaction" in records:
        summary["final_step_interaction"] = float(records["loss/interaction"][:, -1].mean())
    return summary


class AdversarialWriter(BasePredictionWriter):
    """Write attacked batches as shards and merge them by dataset index (see the module docstring).

    Args:
        output_dir: folder of the shards, ``meta.json``, ``adversarial.pt`` and ``summary.json``.
        merge: merge the shards at the end of the run.
        keep_shards: keep the shard files after merging.
        resume: continue a run found in ``output_dir`` (same attack); with ``False`` a folder that
            already holds results is an error.
        merged_name: file name of the merged results.
    """

    def __init__(
        self,
        output_dir: str = "runs/attacks",
        merge: bool = True,
        keep_shards: bool = False,
        resume: bool = True,
        merged_name: str = MERGED_NAME,
    ) -> None:
        super().__init__(write_interval="batch")
        if not isinstance(merged_name, str) or not merged_name.endswith(".pt") or "/" in merged_name:
            raise ValueError(f"merged_name must be a plain file name ending in .pt; got {merged_name!r}")
        if merged_name.startswith("shard_"):
            raise ValueError(f"merged_name must not start with 'shard_' (reserved for shards); got {merged_name!r}")
        self.output_dir = Path(output_dir)
        self.merge = bool(merge)
        self.keep_shards = bool(keep_shards)
        self.resume = bool(resume)
        self.merged_name = merged_name
        self.meta: dict[str, Any] = {}
        self.finished: set[int] = set()
        self.shards_written = 0
        self.merged: dict[str, torch.Tensor] | None = None
        self.summary: dict[str, float] | None = None

    @property
    def merged_path(self) -> Path:
        return self.output_dir / self.merged_name

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        if not hasattr(pl_module, "run_metadata") or not hasattr(pl_module, "set_finished"):
            raise TypeError(
                f"AdversarialWriter works with lit_advgame.predict.AttackModule; got {type(pl_module).__name__}"
            )
        self.meta = {**pl_module.run_metadata(), "data": _data_description(trainer)}
        self.meta = json.loads(json.dumps(self.meta, default=str))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.output_dir / META_NAME
        has_results = self.merged_path.is_file() or bool(list_shards(self.output_dir))
        if has_results and not self.resume:
            raise FileExistsError(
                f"{str(self.output_dir)!r} already holds adversarial examples; delete it, choose another "
                f"output_dir, or set resume=true to complete that run"
            )
        if meta_path.is_file():
            old = json.loads(meta_path.read_text())
            diff = _differences(old, self.meta)
            if diff:
                raise ValueError(
                    f"{str(self.output_dir)!r} holds a run of a different attack ({'; '.join(diff[:6])}); "
                    f"choose another output_dir (or delete that folder)"
                )
        elif trainer.is_global_zero:
            atomic_write_text(meta_path, json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
        self.finished = finished_indices(self.output_dir, self.merged_name)
        pl_module.set_finished(self.finished)
        self.shards_written = 0
        self.merged = None
        self.summary = None

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, dict):
            raise TypeError(f"AdversarialWriter needs predict_step to return a dict of records; got {type(prediction).__name__}")
        if "skipped" in prediction:
            return
        index = prediction["index"].tolist()
        if batch_indices and [int(i) for i in batch_indices] != index:
            raise RuntimeError(
                f"batch {batch_idx}: the module's dataset indices {index[:4]}... differ from Lightning's "
                f"{list(batch_indices)[:4]}..."
            )
        write_shard(self.output_dir, prediction, rank=trainer.global_rank)
        self.shards_written += 1

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_predict_epoch_end(trainer, pl_module)
        if not self.merge:
            return
        trainer.strategy.barrier("adversarial_writer_merge")
        if trainer.is_global_zero:
            self.merged = merge_directory(self.output_dir, self.meta, self.merged_name, self.keep_shards)
            self.summary = summarize(self.merged)
            atomic_write_text(self.output_dir / "summary.json", json.dumps(self.summary, indent=2) + "\n")
            if trainer.logger is not None:
                trainer.logger.log_metrics({f"attack/{k}": v for k, v in self.summary.items()}, step=0)
        trainer.strategy.barrier("adversarial_writer_merged")

"""``AdversarialWriter``: save attacked batches as shards, resumable and exactly once under DDP.

Use it with :class:`~lit_advgame.predict.attack_module.AttackModule` in ``trainer.callbacks``:

* at set-up the run takes the lock ``<output_dir>/.lock`` (:mod:`lit_advgame.predict.lock`; once per
  run, on global rank 0 under DDP) and keeps it until it ends: a second run started on the same
  folder meanwhile is refused with a message naming the running one; a stale lock left by a killed
  run on this host is taken over with a warning; one from another host is reported (delete it if
  that run is gone);
* after every batch, the rank that attacked it writes ``shard_<first>_<last>.pt`` (its records,
  see :mod:`lit_advgame.predict.shards`) atomically: a temporary file, then a rename;
* at set-up every rank reads which dataset indices are already saved (shards and the merged file)
  and hands them to the module, which skips batches made only of them, so a restarted run
  attacks only what is missing; ``meta.json`` (the attack run's description) is written on the
  first run and compared on every later one, so a folder never mixes two different attacks; a
  batch that an earlier run's smaller ``predict_limit`` cut short is re-attacked whole and its
  short shard deleted (see :class:`~lit_advgame.predict.attack_module.AttackModule`);
* when predict starts, rank 0 prints what the folder holds and what this run attacks
  (``AdversarialWriter: resuming 'runs/x': 48/128 already saved, 80 to attack``);
* at the end, all ranks meet at a barrier and rank 0 checks that every dataset index the run
  served is saved (the run fails listing the missing ones otherwise), then merges the merged file and all shards into
  ``adversarial.pt``, sorted by dataset index, each index once (the record from the longest batch
  wins, then the first occurrence; see :func:`~lit_advgame.predict.shards.dedupe_sort`), then
  deletes the shards (``keep_shards`` keeps them) and writes ``summary.json`` (the count, the
  source model's clean accuracy and white-box success, the mean ‖δ‖ in the attack's norm, this run's
  images, time and images/s; logged to the trainer's logger, if any) and the same as a Markdown table,
  ``summary.md``, which it prints; with a TensorBoard logger also the image ``attack/examples`` (the first
  examples: clean, adversarial, perturbation amplified to the full range). When the attack fooled its own
  source model on fewer than ``min_whitebox_success`` of the clean-correct examples, a warning gives the
  measured rate with the attack's loss and IR λ and suggests the margin loss or a smaller λ (the paper's λ,
  "auto": 1 for ResNets, 2 otherwise, can overwhelm the classification loss on small confident models).

A shard or ``meta.json`` that cannot be read (truncated, or a shard whose content does not match
its name) is reported by name: delete it and rerun, which resumes and re-attacks what is missing.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_warn
from typing_extensions import override

from lit_advgame.attacks.norms import build_norm
from lit_advgame.predict.lock import OutputLock
from lit_advgame.predict.progress import report
from lit_advgame.predict.shards import (
    MERGED_NAME,
    META_NAME,
    SHARD_PATTERN,
    list_shards,
    merge_directory,
    read_meta,
    saved_batches,
    write_shard,
)
from lit_advgame.utils.checks import check_positive
from lit_advgame.utils.io import atomic_write_text
from lit_advgame.utils.tensorboard import example_grid, log_figures

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


def meta_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += meta_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def format_ranges(indices: Sequence[int], limit: int = 20) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"`` (at most ``limit`` ranges, then a count)."""
    ranges: list[list[int]] = []
    for i in sorted(indices):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"... ({len(ranges) - limit} more ranges)")
    return ", ".join(parts)


def summarize(records: dict[str, torch.Tensor], norm: str | None = None) -> dict[str, float]:
    """Counts and source-model rates of merged records and, with the attack's ``norm`` (``"linf"``/``"l2"``),
    the mean norm of the perturbations ``δ = x_adv − x`` (``mean_perturbation_norm``)."""
    if not records:
        return {"num_examples": 0}
    clean_correct = records["source_margin_clean"] < 0
    fooled = records["source_margin_adv"] > 0
    summary = {
        "num_examples": int(records["index"].numel()),
        "source_clean_accuracy": float(clean_correct.float().mean()),
        "whitebox_success": float(fooled.float().mean()),
        "whitebox_success_on_clean_correct": float(fooled[clean_correct].float().mean())
        if clean_correct.any()
        else float("nan"),
    }
    if "loss/interaction" in records:
        summary["final_step_interaction"] = float(records["loss/interaction"][:, -1].mean())
    if norm is not None:
        x_adv = records["x_adv"]
        x_adv = x_adv.float() / 255.0 if x_adv.dtype == torch.uint8 else x_adv.float()
        summary["mean_perturbation_norm"] = float(build_norm(norm).norms(x_adv - records["x"].float()).mean())
    return summary


#: summary.json entries of the table: (key, column header, format)
SUMMARY_COLUMNS = (
    ("num_examples", "examples", "d"),
    ("attacked_this_run", "attacked now", "d"),
    ("source_clean_accuracy", "source clean acc. (%)", "%"),
    ("whitebox_success", "white-box success (%)", "%"),
    ("whitebox_success_on_clean_correct", "on clean-correct (%)", "%"),
    ("mean_perturbation_norm", "mean ‖δ‖", ".4g"),
    ("eps", "ε", ".4g"),
    ("seconds", "time (s)", ".1f"),
    ("images_per_second", "images/s", ".2f"),
)


def summary_table(summary: dict[str, Any], title: str | None = None) -> str:
    """The Markdown table of a run's ``summary.json`` (the columns of :data:`SUMMARY_COLUMNS` it has)."""
    norm = {"linf": "∞", "l2": "₂"}.get(str(summary.get("norm")), "")
    headers, cells = [], []
    for key, header, fmt in SUMMARY_COLUMNS:
        if key not in summary:
            continue
        value = summary[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            text = "–"
        elif fmt == "%":
            text = f"{100 * value:.1f}"
        else:
            text = format(int(value) if fmt == "d" else float(value), fmt)
        headers.append(header.replace("‖δ‖", f"‖δ‖{norm}"))
        cells.append(text)
    lines = [f"| {' | '.join(headers)} |", f"|{'|'.join('---:' for _ in headers)}|", f"| {' | '.join(cells)} |"]
    return "\n".join(([f"**{title}**", ""] if title else []) + lines) + "\n"


class AdversarialWriter(BasePredictionWriter):
    """Write attacked batches as shards and merge them by dataset index (see the module docstring).

    Args:
        output_dir: folder of the shards, ``meta.json``, ``adversarial.pt`` and ``summary.json``.
        merge: merge the shards at the end of the run.
        keep_shards: keep the shard files after merging.
        resume: continue a run found in ``output_dir`` (same attack); with ``False`` a folder that
            already holds results is an error.
        merged_name: file name of the merged results.
        min_whitebox_success: warn at the end of the run when the attack fooled its own source
            model(s) on fewer than this fraction of the clean-correct examples (0 disables the warning).
    """

    def __init__(
        self,
        output_dir: str = "runs/attacks",
        merge: bool = True,
        keep_shards: bool = False,
        resume: bool = True,
        merged_name: str = MERGED_NAME,
        min_whitebox_success: float = 0.5,
    ) -> None:
        super().__init__(write_interval="batch")
        check_positive(min_whitebox_success, "min_whitebox_success", allow_zero=True)
        if min_whitebox_success > 1:
            raise ValueError(f"min_whitebox_success must be in [0, 1]; got {min_whitebox_success!r}")
        if not isinstance(merged_name, str) or not merged_name.endswith(".pt") or "/" in merged_name:
            raise ValueError(f"merged_name must be a plain file name ending in .pt; got {merged_name!r}")
        if merged_name.startswith("shard_"):
            raise ValueError(f"merged_name must not start with 'shard_' (reserved for shards); got {merged_name!r}")
        self.output_dir = Path(output_dir)
        self.merge = bool(merge)
        self.keep_shards = bool(keep_shards)
        self.resume = bool(resume)
        self.merged_name = merged_name
        self.min_whitebox_success = float(min_whitebox_success)
        self.lock = OutputLock(self.output_dir)
        self.meta: dict[str, Any] = {}
        self.finished: set[int] = set()
        self.shards_written = 0
        self.merged: dict[str, torch.Tensor] | None = None
        self.summary: dict[str, Any] | None = None
        #: images this run attacks (known at the start of predict; ``None`` when the batches cannot be planned)
        self.to_attack: int | None = None
        self._started: float | None = None

    @property
    def merged_path(self) -> Path:
        return self.output_dir / self.merged_name

    @override
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
        error = None
        if trainer.is_global_zero:  # one lock per run: the other ranks belong to the same run
            try:
                warning = self.lock.acquire()
            except OSError as err:  # OutputLockedError, or the folder cannot be created/locked
                error = f"{type(err).__name__}: {err}"
            else:
                if warning:
                    rank_zero_warn(warning)
        error = trainer.strategy.broadcast(error, src=0)
        if error is not None:
            raise RuntimeError(error)
        try:
            self._setup_folder(trainer, pl_module)
        except BaseException:
            self.lock.release()
            raise

    def _setup_folder(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.output_dir / META_NAME
        has_results = self.merged_path.is_file() or bool(list_shards(self.output_dir))
        if has_results and not self.resume:
            raise FileExistsError(
                f"{str(self.output_dir)!r} already holds adversarial examples; delete it, choose another "
                f"output_dir, or set resume=true to complete that run"
            )
        if meta_path.is_file():
            old = read_meta(meta_path)
            diff = meta_differences(old, self.meta)
            if diff:
                raise ValueError(
                    f"{str(self.output_dir)!r} holds a run of a different attack ({'; '.join(diff[:6])}); "
                    f"choose another output_dir (or delete that folder)"
                )
        elif trainer.is_global_zero:
            atomic_write_text(meta_path, json.dumps(self.meta, indent=2, sort_keys=True) + "\n")
        saved = saved_batches(self.output_dir, self.merged_name)
        self.finished = set(saved)
        pl_module.set_finished(saved)
        self.shards_written = 0
        self.merged = None
        self.summary = None

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print (rank 0) what the folder holds already and what this run attacks: ``48/128 already saved``."""
        self._started = time.perf_counter()
        planner = getattr(pl_module, "planned_batches", None)
        batches = planner() if callable(planner) else None
        folder = repr(str(self.output_dir))
        if batches is None:
            self.to_attack = None
            line = f"{len(self.finished)} examples already saved in {folder}"
        else:
            total = sum(len(b) for b in batches)
            saved = sum(len(b) for b in batches if pl_module.batch_finished(b))
            self.to_attack = total - saved
            verb = getattr(pl_module, "work_verb", "attack")
            if saved:
                line = f"resuming {folder}: {saved}/{total} already saved, {total - saved} to {verb}"
            else:
                doing = str(getattr(pl_module, "progress_description", "Attacking")).lower()
                line = f"{doing} {total} images into {folder}"
        report(trainer, f"{type(self).__name__}: {line}")

    @override
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
            raise TypeError(
                f"AdversarialWriter needs predict_step to return a dict of records; got {type(prediction).__name__}"
            )
        if "skipped" in prediction:
            return
        index = prediction["index"].tolist()
        if batch_indices and [int(i) for i in batch_indices] != index:
            raise RuntimeError(
                f"batch {batch_idx}: the module's dataset indices {index[:4]}... differ from Lightning's "
                f"{list(batch_indices)[:4]}..."
            )
        path = write_shard(self.output_dir, prediction, rank=trainer.global_rank)
        self.shards_written += 1
        self._remove_cut_short_shards(path, index)

    def _remove_cut_short_shards(self, written, index: list[int]) -> None:
        """Delete shards of the same first index but fewer examples: a batch an earlier run's smaller
        ``predict_limit`` cut short, superseded by the whole batch just written (merging prefers the
        longest batch anyway; this keeps the folder unambiguous)."""
        for path in list_shards(self.output_dir):
            match = SHARD_PATTERN.match(path.name)
            if path != written and match and int(match[1]) == index[0] and int(match[2]) < index[-1]:
                path.unlink(missing_ok=True)

    def _served_indices(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> set[int]:
        """Dataset indices the predict loop served to any rank (a sum over ranks of 0/1 masks)."""
        seen = sorted(getattr(pl_module, "seen_indices", set()))
        loaders = trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        try:
            size = len(loader.dataset)
        except (AttributeError, TypeError):
            size = 0
        size = max(size, seen[-1] + 1 if seen else 0)
        mask = torch.zeros(size, device=pl_module.device)
        if seen:
            mask[torch.tensor(seen, device=pl_module.device)] = 1.0
        if trainer.world_size > 1:
            mask = trainer.strategy.reduce(mask, reduce_op="sum")
        return set(torch.nonzero(mask > 0).flatten().tolist())

    def _check_complete(self, served: set[int]) -> None:
        missing = sorted(served - set(saved_batches(self.output_dir, self.merged_name)))
        if missing:
            raise RuntimeError(
                f"predict run incomplete: {len(missing)} of the {len(served)} dataset indices of the predict split "
                f"are not saved in {str(self.output_dir)!r}: {format_ranges(missing)}. Were shards deleted or "
                "written elsewhere during the run? Rerun predict with the same config: it resumes and attacks the "
                "missing batches"
            )

    def _warn_low_success(self) -> None:
        summary = self.summary or {}
        rate = summary.get("whitebox_success_on_clean_correct", float("nan"))
        if math.isnan(rate):
            rate = summary.get("whitebox_success", float("nan"))
        if math.isnan(rate) or rate >= self.min_whitebox_success:
            return
        config = self.meta.get("config") or {}
        lam, loss = config.get("ir_lambda"), config.get("loss")
        if lam:
            hint = (
                f"On small confident models the IR penalty can overwhelm the classification loss: try the margin "
                f"loss (overrides: {{loss: margin}}) or a smaller IR lambda (overrides: "
                f"{{ir_lambda: {float(lam) / 4:g}}})."
            )
        else:
            hint = "Try the margin loss (overrides: {loss: margin}), more steps or a larger eps."
        rank_zero_warn(
            f"the attack fooled its own source model(s) on only {rate:.2f} of the clean-correct examples "
            f"(below min_whitebox_success={self.min_whitebox_success:g}; attack {self.meta.get('attack')!r}, loss "
            f"{loss!r}, IR lambda {lam!r}, {int(config.get('steps', 0))} steps). {hint}"
        )

    @override
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_predict_epoch_end(trainer, pl_module)
        served = self._served_indices(trainer, pl_module)
        trainer.strategy.barrier("adversarial_writer_merge")
        error = None
        if trainer.is_global_zero:
            try:
                self._check_complete(served)
                if self.merge:
                    self.merged = merge_directory(self.output_dir, self.meta, self.merged_name, self.keep_shards)
                    self._write_summary(trainer, pl_module, served)
                    if self.min_whitebox_success > 0:
                        self._warn_low_success()
            except Exception as err:  # noqa: BLE001 - re-raised on every rank below
                error = err
        message = trainer.strategy.broadcast(None if error is None else f"{type(error).__name__}: {error}", src=0)
        if error is not None:
            raise error
        if message is not None:
            raise RuntimeError(message)
        trainer.strategy.barrier("adversarial_writer_merged")

    def _write_summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule, served: set[int]) -> None:
        """``summary.json`` and ``summary.md`` of the merged records and this run's time; print the table, log the
        numbers (rank 0)."""
        config = self.meta.get("config") or {}
        seconds = time.perf_counter() - (self._started or time.perf_counter())
        attacked = self.to_attack if self.to_attack is not None else len(served - self.finished)
        self.summary = {
            **summarize(self.merged, config.get("norm")),
            "attacked_this_run": int(attacked),
            "seconds": seconds,
            "images_per_second": attacked / seconds if attacked and seconds > 0 else float("nan"),
            "norm": config.get("norm"),
            "eps": self.meta.get("resolved_eps"),
        }
        atomic_write_text(self.output_dir / "summary.json", json.dumps(self.summary, indent=2) + "\n")
        table = summary_table(self.summary, title=f"{self.meta.get('name', 'attack')} ({self.output_dir})")
        atomic_write_text(self.output_dir / "summary.md", table)
        report(trainer, table)
        if trainer.logger is not None:
            numbers = {f"attack/{k}": v for k, v in self.summary.items() if isinstance(v, (int, float))}
            trainer.logger.log_metrics(numbers, step=0)
            if self.merged:  # the first examples: clean, adversarial, amplified perturbation (TensorBoard)
                log_figures(trainer, {"attack/examples": example_grid(self.merged["x"], self.merged["x_adv"])}, 0)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.lock.release()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.lock.release()

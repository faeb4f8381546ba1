"""Shard files of adversarial examples: naming, atomic writing, scanning, merging and loading.

A *shard* holds the results of one attacked batch: a dict ``{"records": {name: tensor}, "rank": r}``
where every record tensor has the batch on its first dimension. Records written by
:class:`~lit_advgame.predict.attack_module.AttackModule`:

* ``index`` (int64): dataset indices (into the DataModule's predict split); ``label`` (int64);
* ``x`` (float32): the clean images; ``x_adv``: the adversarial images, float32, or uint8 holding
  round(255·x) when the attack quantized them (lossless then);
* ``source_margin_clean`` / ``source_margin_adv``: ``max_{k≠y} z_k − z_y`` of the source (ensemble)
  logits (> 0 ⇔ misclassified: white-box success);
* ``loss/<name>`` (B, T): the attack's per-step objective, classification loss and interaction;
* optional ``candidates`` (B, T, C, H, W) uint8: the image after each of the T updates (for LOO);
* optional ``step_scores`` (B, T, K): the margin of each of K score models after each update;
* ``batch_first`` / ``batch_len`` (int64): the first dataset index and the number of examples of the
  batch the example was attacked in (the attack's random streams depend on both). A batch cut short
  by ``predict_limit`` (``batch_len`` < the batch size) is re-attacked whole by a run with a larger
  limit, and when several records of one index exist, the one from the longest batch wins.

Shards are named by the first and last dataset index of their batch
(``shard_000000064_000000127.pt``), written atomically (temporary file, then rename), so a shard
that exists is complete; a shard whose content does not match its name, or a file that cannot be read
(truncated, corrupt), is reported by name with what to do: delete it and rerun, which re-attacks its
batch. The merged file (``adversarial.pt`` by default) holds the same records
for all examples, sorted by index and de-duplicated (see :func:`dedupe_sort`), plus the run's ``meta`` dict.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lit_advgame.utils.io import atomic_torch_save

SHARD_PATTERN = re.compile(r"^shard_(\d+)_(\d+)\.pt$")
MERGED_NAME = "adversarial.pt"
META_NAME = "meta.json"
REQUIRED_RECORDS = ("index", "label", "x", "x_adv")
RERUN_HINT = "delete it and rerun predict with the same config: the run resumes and re-attacks what is missing"


def shard_name(indices: Sequence[int]) -> str:
    """``shard_<first>_<last>.pt`` for a batch's dataset indices (in batch order)."""
    if len(indices) == 0:
        raise ValueError("a shard needs at least one example")
    return f"shard_{int(indices[0]):09d}_{int(indices[-1]):09d}.pt"


def list_shards(directory: str | os.PathLike) -> list[Path]:
    """Complete shard files in ``directory``, sorted by name (temporary files are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if SHARD_PATTERN.match(p.name) and p.is_file())


def _check_records(records: Mapping[str, torch.Tensor], source: str) -> int:
    missing = [k for k in REQUIRED_RECORDS if k not in records]
    if missing:
        raise ValueError(f"{source}: records lack {missing}; found {sorted(records)}")
    size = int(records["index"].shape[0])
    bad = [k for k, v in records.items() if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != size]
    if bad:
        raise ValueError(f"{source}: records {bad} do not have the {size} examples of 'index' on their first dimension")
    return size


def write_shard(directory: str | os.PathLike, records: Mapping[str, torch.Tensor], rank: int = 0) -> Path:
    """Atomically write one batch's records as a shard; returns its path."""
    _check_records(records, "shard")
    records = {k: v.detach().cpu().contiguous() for k, v in records.items()}
    path = Path(directory) / shard_name(records["index"].tolist())
    return atomic_torch_save({"records": records, "rank": int(rank)}, path)


def read_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a shard or merged file (``weights_only=True``, memory-mapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adversarial-example file not found: {str(path)!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - truncated files fail in many ways inside torch.load
        raise ValueError(
            f"could not read {str(path)!r} (truncated, corrupt or not an adversarial-example file: "
            f"{type(err).__name__}: {err}); {RERUN_HINT}"
        ) from err
    if not isinstance(obj, dict) or not isinstance(obj.get("records"), dict):
        # the file's content is wrong, not an argument's type: ValueError
        raise ValueError(f"{str(path)!r} is not an adversarial-example file (no 'records' dict); {RERUN_HINT}")  # noqa: TRY004
    _check_records(obj["records"], str(path))
    match = SHARD_PATTERN.match(path.name)
    index = obj["records"]["index"]
    if match and (index.numel() == 0 or (int(index[0]), int(index[-1])) != (int(match[1]), int(match[2]))):
        found = f"{int(index[0])}..{int(index[-1])}" if index.numel() else "nothing"
        raise ValueError(
            f"shard {str(path)!r} is named for dataset indices {int(match[1])}..{int(match[2])} but holds {found} "
            f"(renamed or copied by hand?); {RERUN_HINT}"
        )
    return obj


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read a run's ``meta.json``; a truncated or corrupt file is reported by name with what to do."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{str(path)!r} (the run's description) is truncated or corrupt ({err}); delete it and rerun predict with "
            f"the same config: it is written again and the saved shards are kept"
        ) from err
    if not isinstance(meta, dict):
        raise ValueError(f"{str(path)!r} is not a run description (a JSON object); delete it and rerun predict")  # noqa: TRY004
    return meta


BATCH_RECORDS = ("batch_first", "batch_len")


def concat_records(parts: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate records along the example dimension (all parts must have the same keys; the batch
    records ``batch_first``/``batch_len`` are dropped when some part, written before they existed, lacks them)."""
    parts = list(parts)
    if not parts:
        return {}
    if any(not set(BATCH_RECORDS) <= set(p) for p in parts):
        parts = [{k: v for k, v in p.items() if k not in BATCH_RECORDS} for p in parts]
    keys = set(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if set(part) != keys:
            raise ValueError(
                f"records of part {i} have keys {sorted(part)} but part 0 has {sorted(keys)}; "
                f"were they written by different attack configurations?"
            )
    return {k: torch.cat([torch.as_tensor(p[k]) for p in parts]) for k in sorted(keys)}


def dedupe_sort(records: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sort records by ``index`` keeping one record per index: the one attacked in the longest batch
    (``batch_len``, when recorded; a batch cut short by an earlier run's ``predict_limit`` loses
    against the whole batch), among equals the *first* occurrence."""
    if not records:
        return {}
    index = records["index"]
    order = torch.arange(index.numel())
    if "batch_len" in records:  # stable sorts: by batch length (longest first), then by index
        order = torch.sort(-records["batch_len"].long(), stable=True).indices
    order = order[torch.sort(index[order], stable=True).indices]
    sorted_index = index[order]
    keep = torch.ones_like(sorted_index, dtype=torch.bool)
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    order = order[keep]
    return {k: v[order] for k, v in records.items()}


def finished_indices(directory: str | os.PathLike, merged_name: str = MERGED_NAME) -> set[int]:
    """Dataset indices already attacked: those in the merged file and in every complete shard."""
    return set(saved_batches(directory, merged_name))


def saved_batches(directory: str | os.PathLike, merged_name: str = MERGED_NAME) -> dict[int, tuple[int, int] | None]:
    """For every dataset index saved in ``directory`` (merged file and shards), the batch it was
    attacked in: ``(batch_first, batch_len)`` of the longest such batch, or ``None`` for records
    written without them."""
    directory = Path(directory)
    saved: dict[int, tuple[int, int] | None] = {}
    paths = list_shards(directory)
    merged = directory / merged_name
    if merged.is_file():
        paths.insert(0, merged)
    for path in paths:
        records = read_file(path)["records"]
        index = records["index"].tolist()
        if "batch_first" in records and "batch_len" in records:
            batches = zip(records["batch_first"].tolist(), records["batch_len"].tolist())
        else:
            batches = (None for _ in index)
        for i, batch in zip(index, batches):
            old = saved.get(i)
            if i not in saved or (batch is not None and (old is None or batch[1] > old[1])):
                saved[i] = None if batch is None else (int(batch[0]), int(batch[1]))
    return saved


def merge_directory(
    directory: str | os.PathLike,
    meta: Mapping[str, Any] | None = None,
    merged_name: str = MERGED_NAME,
    keep_shards: bool = False,
) -> dict[str, torch.Tensor]:
    """Merge the merged file (if any) and all shards into ``merged_name``, sorted by index and
    de-duplicated (:func:`dedupe_sort`: the record from the longest batch wins, then the first
    occurrence: the merged file, then shards by name); delete the shards
    unless ``keep_shards``. The merged file is written atomically before any shard is removed, so an
    interruption at any point loses nothing. Returns the merged records."""
    directory = Path(directory)
    shards = list_shards(directory)
    merged_path = directory / merged_name
    parts = []
    if merged_path.is_file():
        old = read_file(merged_path)
        parts.append(old["records"])
        meta = meta if meta is not None else old.get("meta")
    parts += [read_file(p)["records"] for p in shards]
    records = dedupe_sort(concat_records(parts))  # copies: no view of the memory-mapped inputs remains
    atomic_torch_save({"records": records, "meta": dict(meta or {})}, merged_path)
    if not keep_shards:
        for path in shards:
            path.unlink(missing_ok=True)
    return records


@dataclass
class AdversarialSet:
    """Adversarial examples of one attack run, sorted by dataset index.

    Attributes:
        index, label: (N,) int64.
        x, x_adv: (N, C, H, W) float32 in [0, 1].
        meta: the run's metadata (sources, attack configuration, seed, record mode, score models).
        records: every record as stored (e.g. ``source_margin_adv``, ``loss/interaction``,
            ``candidates`` (uint8), ``step_scores``).
    """

    index: torch.Tensor
    label: torch.Tensor
    x: torch.Tensor
    x_adv: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    records: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or "adversarial")

    @property
    def num_steps(self) -> int | None:
        for key in ("step_scores", "candidates"):
            if key in self.records:
                return int(self.records[key].shape[1])
        return self.meta.get("steps")

    def candidates(self, start: int = 0, stop: int | None = None) -> torch.Tensor | None:
        """Per-step images (N', T, C, H, W) float in [0, 1] for examples ``start:stop`` (``None`` if not recorded)."""
        if "candidates" not in self.records:
            return None
        return self.records["candidates"][start:stop].float().div_(255.0)

    @property
    def step_score_names(self) -> list[str]:
        return list(self.meta.get("score_models") or [])

    def subset(self, mask: torch.Tensor) -> AdversarialSet:
        """The examples where ``mask`` (N,) is True."""
        return AdversarialSet(
            self.index[mask],
            self.label[mask],
            self.x[mask],
            self.x_adv[mask],
            dict(self.meta),
            {k: v[mask] for k, v in self.records.items()},
        )


def _from_records(records: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> AdversarialSet:
    x_adv = records["x_adv"]
    x_adv = x_adv.float().div(255.0) if x_adv.dtype == torch.uint8 else x_adv.float()
    return AdversarialSet(
        index=records["index"].long(),
        label=records["label"].long(),
        x=records["x"].float(),
        x_adv=x_adv,
        meta=dict(meta),
        records=dict(records),
    )


def read_records(
    path: str | os.PathLike, merged_name: str = MERGED_NAME, what: str = "adversarial examples"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The records of a run, sorted by dataset index and de-duplicated, and its metadata: from a merged file, or
    from an output folder (its merged file plus any shards not merged yet; the metadata from ``meta.json`` if
    present). ``what`` names the results in the errors."""
    path = Path(path)
    if path.is_file():
        obj = read_file(path)
        return dict(obj["records"]), dict(obj.get("meta") or {})
    if not path.is_dir():
        raise FileNotFoundError(f"no {what} at {str(path)!r} (give an output folder or a merged file)")
    merged = path / merged_name
    parts, meta = [], {}
    if merged.is_file():
        obj = read_file(merged)
        parts.append(obj["records"])
        meta = obj.get("meta") or {}
    parts += [read_file(p)["records"] for p in list_shards(path)]
    if not parts:
        raise FileNotFoundError(f"{str(path)!r} holds no {what} ({merged_name} or shard_*.pt)")
    if (path / META_NAME).is_file():
        meta = read_meta(path / META_NAME)
    return dedupe_sort(concat_records(parts)), dict(meta)


def load_adversarial(path: str | os.PathLike, merged_name: str = MERGED_NAME) -> AdversarialSet:
    """Load the adversarial examples of a run: a merged file, or an output folder (its merged file
    plus any shards not merged yet, de-duplicated; the metadata from ``meta.json`` if present)."""
    return _from_records(*read_records(path, merged_name))

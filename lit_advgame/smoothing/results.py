"""Per-example smoothing results keyed by dataset index, their merge across ranks, TSV I/O and summaries.

Rows follow Cohen et al.'s output files (``idx label predict radius correct``, plus ``p_lower``);
PREDICT results have no radius column. Rows are identified by their dataset index, so results
of several processes (or a padded ``DistributedSampler``) merge by index and duplicates collapse.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from lit_advgame.smoothing.statistics import ABSTAIN, certified_accuracy
from lit_advgame.utils.io import atomic_write_text

COLUMNS = ("idx", "label", "predict", "radius", "correct", "p_lower")
_INTEGER_COLUMNS = ("idx", "label", "predict", "correct")


@dataclass
class SmoothingRecords:
    """Per-example results: 1-D CPU tensors of equal length, sorted by ``index`` after :meth:`merge`.

    Attributes:
        index: int64 dataset index of each example.
        label: int64 true class (−1 when unknown).
        predict: int64 smoothed prediction, ``ABSTAIN`` (−1) when abstaining.
        radius: float64 certified radius (``None`` for PREDICT results).
        p_lower: float64 Clopper–Pearson bound ``p̲_A`` (CERTIFY) or binomial p-value (PREDICT), or ``None``.
    """

    index: torch.Tensor
    label: torch.Tensor
    predict: torch.Tensor
    radius: torch.Tensor | None = None
    p_lower: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.index = torch.as_tensor(self.index, dtype=torch.int64).cpu().reshape(-1)
        self.label = torch.as_tensor(self.label, dtype=torch.int64).cpu().reshape(-1)
        self.predict = torch.as_tensor(self.predict, dtype=torch.int64).cpu().reshape(-1)
        if self.radius is not None:
            self.radius = torch.as_tensor(self.radius, dtype=torch.float64).cpu().reshape(-1)
        if self.p_lower is not None:
            self.p_lower = torch.as_tensor(self.p_lower, dtype=torch.float64).cpu().reshape(-1)
        lengths = {len(t) for t in self._tensors().values()}
        if len(lengths) > 1:
            raise ValueError(
                f"all columns must have the same length; got { ({k: len(v) for k, v in self._tensors().items()}) }"
            )

    # ----------------------------------------------------------------- views
    def __len__(self) -> int:
        return len(self.index)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @property
    def correct(self) -> torch.Tensor:
        """Bool: the smoothed prediction equals the label (abstentions are never correct)."""
        return (self.predict == self.label) & (self.predict != ABSTAIN)

    @property
    def abstained(self) -> torch.Tensor:
        return self.predict == ABSTAIN

    def abstain_rate(self) -> float:
        return float(self.abstained.double().mean()) if len(self) else math.nan

    def accuracy(self) -> float:
        """Accuracy of the smoothed classifier (abstentions count as wrong)."""
        return float(self.correct.double().mean()) if len(self) else math.nan

    def certified_accuracy(self, radii: Sequence[float]) -> np.ndarray:
        """Certified accuracy at each radius (see :func:`~lit_advgame.smoothing.statistics.certified_accuracy`)."""
        if self.radius is None:
            raise ValueError("these are PREDICT results: no radius, hence no certified accuracy")
        return certified_accuracy(self.predict, self.label, self.radius, radii)

    # ----------------------------------------------------------------- merging
    @classmethod
    def concat(cls, parts: Iterable[SmoothingRecords]) -> SmoothingRecords:
        parts = [p for p in parts if p is not None]
        if not parts:
            return cls(index=torch.zeros(0, dtype=torch.int64), label=torch.zeros(0), predict=torch.zeros(0))
        kinds = {(p.radius is None, p.p_lower is None) for p in parts}
        if len(kinds) > 1:
            raise ValueError("cannot concatenate CERTIFY and PREDICT records")
        columns = {name: torch.cat([p._tensors()[name] for p in parts]) for name in parts[0]._tensors()}
        return cls(**columns)

    def merge(self) -> SmoothingRecords:
        """Sorted by dataset index with duplicate indices removed (they must agree)."""
        order = torch.argsort(self.index, stable=True)
        columns = {name: values[order] for name, values in self._tensors().items()}
        index = columns["index"]
        keep = torch.ones(len(index), dtype=torch.bool)
        if len(index) > 1:
            keep[1:] = index[1:] != index[:-1]
            duplicate = ~keep
            if duplicate.any():
                first = torch.cumsum(keep.long(), 0) - 1
                kept = {name: values[keep] for name, values in columns.items()}
                for name in ("label", "predict"):
                    if not torch.equal(columns[name][duplicate], kept[name][first[duplicate]]):
                        raise ValueError(f"rows with the same dataset index disagree on {name!r}")
        return type(self)(**{name: values[keep] for name, values in columns.items()})

    # ----------------------------------------------------------------- TSV
    def to_rows(self) -> list[dict[str, object]]:
        correct = self.correct.long().tolist()
        rows = []
        for i in range(len(self)):
            row: dict[str, object] = {
                "idx": int(self.index[i]),
                "label": int(self.label[i]),
                "predict": int(self.predict[i]),
            }
            if self.radius is not None:
                row["radius"] = float(self.radius[i])
            row["correct"] = correct[i]
            if self.p_lower is not None:
                row["p_lower"] = float(self.p_lower[i])
            rows.append(row)
        return rows

    def header(self) -> list[str]:
        skip = set()
        if self.radius is None:
            skip.add("radius")
        if self.p_lower is None:
            skip.add("p_lower")
        return [c for c in COLUMNS if c not in skip]

    def tsv_lines(self, with_header: bool = True) -> list[str]:
        header = self.header()
        lines = ["\t".join(header)] if with_header else []
        for row in self.to_rows():
            lines.append("\t".join(_format(row[c]) for c in header))
        return lines

    def write_tsv(self, path: str | Path) -> Path:
        """Write the rows (Cohen's column names) atomically to ``path``."""
        return atomic_write_text(path, "\n".join(self.tsv_lines()) + "\n")

    @classmethod
    def read_tsv(cls, path: str | Path) -> SmoothingRecords:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{path} is empty (expected a tab-separated header line with {', '.join(COLUMNS)})")
        header = lines[0].split("\t")
        missing = {"idx", "label", "predict"} - set(header)
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)} in header {header}")
        table = {name: [] for name in header}
        for number, line in enumerate(lines[1:], start=2):
            values = line.split("\t")
            if len(values) != len(header):
                raise ValueError(f"{path}:{number}: expected {len(header)} fields, got {len(values)}")
            for name, value in zip(header, values):
                table[name].append(int(value) if name in _INTEGER_COLUMNS else float(value))
        return cls(
            index=torch.tensor(table["idx"], dtype=torch.int64),
            label=torch.tensor(table["label"], dtype=torch.int64),
            predict=torch.tensor(table["predict"], dtype=torch.int64),
            radius=torch.tensor(table["radius"], dtype=torch.float64) if "radius" in table else None,
            p_lower=torch.tensor(table["p_lower"], dtype=torch.float64) if "p_lower" in table else None,
        )


def _format(value: object) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_radius(radius: float) -> str:
    """Compact radius label used in metric names, e.g. ``0.25`` -> ``"0.25"``, ``1.0`` -> ``"1"``."""
    return f"{float(radius):g}"


def certified_accuracy_table(rows: dict[str, Sequence[float]], radii: Sequence[float]) -> str:
    """A Markdown table with one row per name (e.g. per σ) and one column per radius."""
    header = "| | " + " | ".join(f"r={format_radius(r)}" for r in radii) + " |"
    rule = "|---|" + "---|" * len(radii)
    body = [f"| {name} | " + " | ".join(f"{float(v):.3f}" for v in values) + " |" for name, values in rows.items()]
    return "\n".join([header, rule, *body])

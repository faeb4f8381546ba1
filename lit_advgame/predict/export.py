"""Export a trained Lightning checkpoint as a small weights-only classifier file.

    python -m lit_advgame.predict.export runs/.../best.ckpt checkpoints/digits_small_cnn.pt \\
        --data-class lit_advgame.data.DigitsDataModule

The Lightning checkpoint may come from any lit_advgame training module (standard, adversarial/TRADES,
randomized smoothing: its base classifier; ensembles incl. TRS/GAL/ADP: every member; see
:mod:`lit_advgame.classifiers`); the file stores the module's class path as ``module``. The DataModule
is rebuilt from the checkpoint's ``datamodule_hyper_parameters`` (saved by ``save_hyperparameters``
in lit_advgame's DataModules) and the class given; the exported file stores that data config and
the clean accuracy on the val and test splits, measured here.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lit_advgame.classifiers import export_classifier, import_class, load_classifier
from lit_advgame.models import read_checkpoint


@torch.no_grad()
def split_accuracy(model: torch.nn.Module, datamodule: Any, split: str, batch_size: int = 256) -> float:
    """Clean accuracy of ``model`` on a split of ``datamodule``."""
    data = datamodule.dataset(split)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def export_lightning_checkpoint(ckpt: str | Path, out: str | Path, data_class: str | None = None) -> dict[str, Any]:
    """Export ``ckpt`` to ``out``; returns the metrics written (``val_acc``, ``test_acc``).

    ``data_class`` defaults to the DataModule class recorded by LightningCLI in the checkpoint
    (``_class_path``), else ``lit_advgame.data.DigitsDataModule``."""
    raw = read_checkpoint(ckpt, what="Lightning checkpoint")
    loaded = load_classifier(str(ckpt))
    stored = dict(raw.get("datamodule_hyper_parameters") or {})
    data_class = data_class or stored.get("_class_path") or "lit_advgame.data.DigitsDataModule"
    init_args = {k: v for k, v in stored.items() if not k.startswith("_")}
    datamodule = import_class(data_class)(**init_args)
    datamodule.setup("test")
    metrics = {f"{split}_acc": split_accuracy(loaded.model, datamodule, split) for split in ("val", "test")}
    extra = {"epoch": int(raw.get("epoch", -1))}
    if loaded.module is not None:
        extra["module"] = loaded.module
    export_classifier(
        loaded, out, data={"class_path": data_class, "init_args": init_args}, metrics=metrics, extra=extra
    )
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="Lightning checkpoint of a lit_advgame training module")
    parser.add_argument("out", help="output weights-only file (e.g. checkpoints/digits_small_cnn.pt)")
    parser.add_argument(
        "--data-class",
        default=None,
        help="DataModule class path (default: the one recorded in the checkpoint, else digits)",
    )
    args = parser.parse_args(argv)
    metrics = export_lightning_checkpoint(args.ckpt, args.out, args.data_class)
    size = Path(args.out).stat().st_size
    print(f"{args.out}: {size / 1024:.0f} KiB, " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":  # pragma: no cover
    main()

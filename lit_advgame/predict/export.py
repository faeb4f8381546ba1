"""Export a trained Lightning checkpoint as a small weights-only classifier file.

    python -m lit_advgame.predict.export runs/.../best.ckpt checkpoints/digits_small_cnn.pt \\
        --data-class lit_advgame.data.DigitsDataModule

The Lightning checkpoint must come from a lit_advgame classifier module (its ``hyper_parameters``
name the architecture). The DataModule is rebuilt from the checkpoint's
``datamodule_hyper_parameters`` (saved by ``save_hyperparameters`` in lit_advgame's DataModules)
and the class given; the exported file stores that data config and the clean accuracy on the
val and test splits, measured here.
"""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lit_advgame.models import read_checkpoint
from lit_advgame.predict.models import export_classifier, load_classifier


def import_class(path: str) -> type:
    """The class named by a dotted ``path`` such as ``lit_advgame.data.DigitsDataModule``."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"give a dotted class path such as 'lit_advgame.data.DigitsDataModule'; got {path!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {path!r}: {err}") from err


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
    hp = raw.get("hyper_parameters", {}) if isinstance(raw, dict) else {}
    loaded = load_classifier(str(ckpt))
    stored = dict(raw.get("datamodule_hyper_parameters") or {})
    data_class = data_class or stored.get("_class_path") or "lit_advgame.data.DigitsDataModule"
    init_args = {k: v for k, v in stored.items() if not k.startswith("_")}
    datamodule = import_class(data_class)(**init_args)
    datamodule.setup("test")
    metrics = {split: split_accuracy(loaded.model, datamodule, split) for split in ("val", "test")}
    export_classifier(
        loaded.model,
        out,
        arch=hp["arch"],
        num_classes=loaded.num_classes,
        input_shape=loaded.input_shape,
        arch_kwargs=hp.get("arch_kwargs") or {},
        data={"class_path": data_class, "init_args": init_args},
        metrics={f"{k}_acc": v for k, v in metrics.items()},
        extra={"epoch": int(raw.get("epoch", -1))},
    )
    return {f"{k}_acc": v for k, v in metrics.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="Lightning checkpoint of a lit_advgame classifier module")
    parser.add_argument("out", help="output weights-only file (e.g. checkpoints/digits_small_cnn.pt)")
    parser.add_argument("--data-class", default=None,
                        help="DataModule class path (default: the one recorded in the checkpoint, else digits)")
    args = parser.parse_args(argv)
    metrics = export_lightning_checkpoint(args.ckpt, args.out, args.data_class)
    size = Path(args.out).stat().st_size
    print(f"{args.out}: {size / 1024:.0f} KiB, " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":  # pragma: no cover
    main()

#!/usr/bin/env python
"""Interaction-regularized training on digits: strength, dropout and test accuracy against λ (issue 13).

Trains the same ``small_cnn`` (seeded, same initial weights per seed) on a fixed small training subset
(``--train-subset`` images, the over-fitting setting of ``configs/penalty_digits*.yaml``) in these variants:

* ``plain``; ``dropout`` (``arch_kwargs: {dropout: p}``);
* ``lambda=<w>``: the interaction penalty ``w · E_{i≠j}|I(i, j)|`` (:class:`lit_advgame.training.InteractionPenalty`);
* ``shapley_low=<w>`` (with ``--shapley-weights``): the low-order Shapley penalty (``target: shapley``,
  ``order_band: [0.0, --low]``).

For each run and seed, on ``--probes`` test images: test accuracy (whole test split), the interaction strength
``E|SII(i, j)|`` (:class:`lit_advgame.interactions.InteractionStrength`, Shapley weighting) and the share of
low-order strength ``E|I^(m)|, m ≤ low·(n-2)`` over low + high (``m ≥ high·(n-2)``). ``--early-epochs`` also
measures the plain model after that many epochs (the "ordinary" model of the slides' table, against the
over-fitted final one). Prints Markdown tables (mean ± standard error over seeds) and writes JSON.

Example::

    python scripts/penalty_digits.py                                  # defaults (long: see --help)
    python scripts/penalty_digits.py --epochs 2 --seeds 1 --lambdas 1 --probes 8   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from lit_advgame.data import DigitsDataModule
from lit_advgame.interactions import InputGame, InteractionStrength
from lit_advgame.training import StandardClassifier
from lit_advgame.utils.modes import eval_mode


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--train-subset", type=int, default=200)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--early-epochs", type=int, default=20, help="plain model measured after this many epochs too")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--lambdas", type=float, nargs="*", default=[0.1, 1.0, 10.0])
    p.add_argument("--shapley-weights", type=float, nargs="*", default=[1.0])
    p.add_argument("--low", type=float, default=0.3, help="low orders: ratio band [0, low] of n")
    p.add_argument("--high", type=float, default=0.7, help="high orders: ratio band [high, 1] of n")
    p.add_argument("--grid", type=int, default=4)
    p.add_argument("--num-pairs", type=int, default=2, help="penalty pairs per image and step")
    p.add_argument("--num-samples", type=int, default=8, help="penalty contexts per pair and step")
    p.add_argument("--probes", type=int, default=64, help="test images of the strength measurement")
    p.add_argument("--eval-samples", type=int, default=64, help="contexts per pair of the measurement")
    p.add_argument("--out", default="runs/penalty_digits/results.json")
    return p.parse_args(argv)


def variants(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run name -> StandardClassifier keyword arguments."""
    penalty = {"grid": args.grid, "num_pairs": args.num_pairs, "num_samples": args.num_samples}
    runs: dict[str, dict[str, Any]] = {"plain": {}, "dropout": {"arch_kwargs": {"dropout": args.dropout}}}
    for weight in args.lambdas:
        runs[f"lambda={weight:g}"] = {"penalty": {**penalty, "weight": weight}}
    for weight in args.shapley_weights:
        band = {"target": "shapley", "num_players": args.num_pairs, "order_band": [0.0, args.low]}
        runs[f"shapley_low={weight:g}"] = {"penalty": {**penalty, **band, "weight": weight}}
    return runs


def train(args: argparse.Namespace, seed: int, epochs: int, kwargs: dict[str, Any]) -> StandardClassifier:
    dm = DigitsDataModule(batch_size=50, seed=seed, train_subset=args.train_subset)
    pl.seed_everything(seed, workers=True)
    module = StandardClassifier(
        arch="small_cnn",
        num_classes=dm.num_classes,
        input_shape=dm.input_shape,
        mean=dm.mean,
        std=dm.std,
        optimizer=lambda params: torch.optim.Adam(params, lr=args.lr),
        **kwargs,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    return module


def measure(args: argparse.Namespace, model: torch.nn.Module, seed: int) -> dict[str, float]:
    """Test accuracy, E|SII| and the low-order share of ``model`` (no gradients)."""
    dm = DigitsDataModule(seed=0)
    x, y = dm.probe_set(dm.split_sizes()["test"], "test", 0)
    with eval_mode(model), torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    game = InputGame(model, x[: args.probes], y[: args.probes], grid=args.grid)
    common = {"num_pairs": 8, "num_samples": args.eval_samples, "max_forward_passes": None}
    strength = InteractionStrength(**common).estimate(game, seed, grad=False)
    low = InteractionStrength(**common, order_band=[0.0, args.low]).estimate(game, seed, grad=False)
    high = InteractionStrength(**common, order_band=[args.high, 1.0]).estimate(game, seed, grad=False)
    return {
        "test_acc": accuracy,
        "sii": float(strength.value),
        "sii_stderr": strength.stderr,
        "noise_floor": strength.noise_floor,
        "low_share": float(low.value) / (float(low.value) + float(high.value)),
    }


def summary(rows: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and standard error over seeds of every key."""
    out = {}
    for key in rows[0]:
        values = torch.tensor([row[key] for row in rows], dtype=torch.float64)
        stderr = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else math.nan
        out[key] = (float(values.mean()), stderr)
    return out


def markdown(results: dict[str, dict[str, tuple[float, float]]]) -> str:
    lines = ["| run | test acc | E\\|SII\\| | low-order share |", "|---|---|---|---|"]
    for name, stats in results.items():
        cells = [f"{stats[k][0]:.4g} ± {stats[k][1]:.2g}" for k in ("test_acc", "sii", "low_share")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    per_seed: dict[str, list[dict[str, float]]] = {}
    start = time.perf_counter()
    for seed in range(args.seeds):
        if args.early_epochs:
            model = train(args, seed, args.early_epochs, {}).classifier
            per_seed.setdefault(f"plain@{args.early_epochs}ep", []).append(measure(args, model, seed))
        for name, kwargs in variants(args).items():
            model = train(args, seed, args.epochs, kwargs).classifier
            per_seed.setdefault(name, []).append(measure(args, model, seed))
    results = {name: summary(rows) for name, rows in per_seed.items()}
    print(markdown(results))
    seconds = time.perf_counter() - start
    print(f"\n{args.seeds} seed(s), {args.epochs} epochs on {args.train_subset} images, {seconds:.0f}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "per_seed": per_seed, "summary": results}, indent=2))
    return results


if __name__ == "__main__":
    main()

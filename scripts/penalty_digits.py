#!/usr/bin/env python
"""Interaction-regularized training on digits: strength, dropout and test accuracy against λ (issue 13).

Trains the same ``small_cnn`` (seeded, same initial weights per seed) on a fixed small training subset
(``--train-subset`` images, the over-fitting setting of ``configs/penalty_digits*.yaml``) in these variants:

* ``plain``; ``dropout`` (``arch_kwargs: {dropout: p}``);
* ``lambda=<w>``: the interaction penalty ``w · E_{i≠j}|I(i, j)|`` (:class:`lit_advgame.training.InteractionPenalty`);
* ``shapley_low=<w>`` (with ``--shapley-weights``): the low-order Shapley penalty (``target: shapley``,
  ``order_band: [0.0, --low]``).

For each run and seed, on the test split of that seed's data module (disjoint from its training subset): test
accuracy (whole test split), training accuracy (the ``--train-subset`` images, eval mode: 1.0 = over-fitted), the
interaction strength ``E|SII(i, j)|`` of ``--probes`` test images
(:class:`lit_advgame.interactions.InteractionStrength`, Shapley weighting, 8 pairs x ``--eval-samples`` contexts
per image) and the share of low-order strength
``E|I^(m)|, m ≤ low·(n-2)`` over low + high (``m ≥ high·(n-2)``). ``--early-epochs`` also measures the plain model
after that many epochs (the "ordinary" model of the slides' table, against the over-fitted final one). A seed sets
the data split, the training subset, the shuffle and the initial weights (the same for every run of that seed).

Results are written to ``--out`` (JSON) after every (run, seed); a rerun with the same settings skips the finished
ones (an interrupted run loses at most the run in progress; more ``--seeds`` or ``--lambdas`` add runs), and a rerun
with other settings is refused unless ``--fresh``. Prints Markdown tables (mean ± standard error over seeds).

Defaults (the README's measured setting): 200 training images, 60 epochs (seed 0: the plain model reaches 100 % training
accuracy by epoch ~45, its validation loss is lowest near epoch 25 and rises after it), the ordinary model at 20
epochs, 3 seeds, λ ∈ {0.1, 1, 10} (the penalty's E|SII| is ~0.25-0.6 in log-probability units, so λ·penalty spans
from below to above the cross-entropy of the later epochs), the low-order Shapley penalty with weight 1 on orders
``[0, 0.3 n]``, 32 probes. On the shared 2-core CPU with 1 thread, alone: a penalized step ~0.6 s (4 steps per
epoch), a measurement ~12 s, ~10 min per seed; with the other jobs of that machine it took longer (README).

Example::

    python scripts/penalty_digits.py                                  # defaults (see above)
    python scripts/penalty_digits.py --epochs 2 --seeds 1 --lambdas 1 --probes 8 --out /tmp/smoke.json  # smoke run
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
from lit_advgame.utils.io import atomic_write_text
from lit_advgame.utils.modes import eval_mode

#: the slides' table (MNIST, ResNet-44): E|SII| of an ordinary and of an over-fitted model
SLIDES_STRENGTH = {"ordinary": 2.17e-3, "over-fitted": 3.64e-3}
#: arguments that may change between a run and its resumption (they only add or name runs)
RESUMABLE_ARGS = ("seeds", "lambdas", "shapley_weights", "out", "fresh", "report")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--train-subset", type=int, default=200)
    p.add_argument("--epochs", type=int, default=60)
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
    p.add_argument("--probes", type=int, default=32, help="test images of the strength measurement")
    p.add_argument("--eval-samples", type=int, default=64, help="contexts per pair of the measurement")
    p.add_argument("--out", default="runs/penalty_digits/results.json")
    p.add_argument("--fresh", action="store_true", help="discard the results in --out instead of resuming")
    p.add_argument("--report", action="store_true", help="only print the tables of the results in --out (no training)")
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


def data_module(args: argparse.Namespace, seed: int) -> DigitsDataModule:
    """The data of ``seed``: its split, training subset and shuffle (training and measurement use the same)."""
    return DigitsDataModule(batch_size=50, seed=seed, train_subset=args.train_subset)


def train(args: argparse.Namespace, seed: int, epochs: int, kwargs: dict[str, Any]) -> StandardClassifier:
    dm = data_module(args, seed)
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


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with eval_mode(model), torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def measure(args: argparse.Namespace, model: torch.nn.Module, seed: int) -> dict[str, float]:
    """Test and training accuracy, E|SII| and the low-order share of ``model`` (no gradients), on the test split
    of the data ``seed`` trained on (:func:`data_module`)."""
    dm = data_module(args, seed)
    x, y = dm.probe_set(dm.split_sizes()["test"], "test", 0)
    game = InputGame(model, x[: args.probes], y[: args.probes], grid=args.grid)
    common = {"num_pairs": 8, "num_samples": args.eval_samples, "max_forward_passes": None}
    strength = InteractionStrength(**common).estimate(game, seed, grad=False)
    low = InteractionStrength(**common, order_band=[0.0, args.low]).estimate(game, seed, grad=False)
    high = InteractionStrength(**common, order_band=[args.high, 1.0]).estimate(game, seed, grad=False)
    return {
        "test_acc": accuracy(model, x, y),
        "train_acc": accuracy(model, *dm.probe_set(args.train_subset, "train", 0)),
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
    keys = ("test_acc", "train_acc", "sii", "noise_floor", "low_share")
    lines = [
        "| run | seeds | test acc | train acc | E\\|SII\\| | noise floor | low-order share |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, stats in results.items():
        cells = [f"{stats[k][0]:.4g} ± {stats[k][1]:.2g}" for k in keys]
        lines.append(f"| {name} | {int(stats['seeds'][0])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slides_table(results: dict[str, dict[str, tuple[float, float]]], early: str) -> str:
    """The ordinary (early) vs over-fitted plain model, next to the slides' numbers."""
    lines = ["| model | E\\|SII\\| measured | slides (MNIST, RN-44) |", "|---|---|---|"]
    for label, name in (("ordinary", early), ("over-fitted", "plain")):
        if name in results:
            mean, stderr = results[name]["sii"]
            lines.append(f"| {label} ({name}) | {mean:.4g} ± {stderr:.2g} | {SLIDES_STRENGTH[label]:.3g} |")
    return "\n".join(lines)


def paired_table(per_seed: dict[str, dict[str, dict[str, float]]], pairs: list[tuple[str, str]]) -> str:
    """One run against another, paired per seed (mean ± standard error over the seeds both have): the ratio of
    their ``E|SII|`` and the differences of test accuracy and of the low-order share."""
    lines = [
        "| run / reference | seeds | E\\|SII\\| ratio | slides' ratio | Δ test acc | Δ low-order share |",
        "|---|---|---|---|---|---|",
    ]
    slides = SLIDES_STRENGTH["over-fitted"] / SLIDES_STRENGTH["ordinary"]
    for run, reference in pairs:
        seeds = sorted(set(per_seed.get(run, {})) & set(per_seed.get(reference, {})))
        if not seeds:
            continue
        a, b = [per_seed[run][seed] for seed in seeds], [per_seed[reference][seed] for seed in seeds]
        rows = [
            {"ratio": x["sii"] / y["sii"], "acc": x["test_acc"] - y["test_acc"], "low": x["low_share"] - y["low_share"]}
            for x, y in zip(a, b, strict=True)
        ]
        stats = summary(rows)
        cells = [f"{stats['ratio'][0]:.3g} ± {stats['ratio'][1]:.2g}"]
        cells.append(f"{slides:.3g} (over-fitted / ordinary)" if reference.startswith("plain@") else "")
        cells += [f"{stats[key][0]:+.3g} ± {stats[key][1]:.2g}" for key in ("acc", "low")]
        lines.append(f"| {run} / {reference} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments every result in ``--out`` shares (a resumed run must match them)."""
    return {key: value for key, value in vars(args).items() if key not in RESUMABLE_ARGS}


def load_finished(args: argparse.Namespace, out: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Run name -> seed (a string) -> measurements of the runs already in ``out`` (empty: none or ``--fresh``)."""
    if args.fresh or not out.is_file():
        return {}
    saved = json.loads(out.read_text())
    differ = {k: (saved["settings"].get(k), v) for k, v in settings(args).items() if saved["settings"].get(k) != v}
    if differ:
        raise SystemExit(
            f"{out} holds results of other settings (saved, now): {differ}; pass --fresh to discard them "
            "or another --out"
        )
    return saved["per_seed"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    per_seed = load_finished(args, out)
    early = f"plain@{args.early_epochs}ep"
    plan: dict[str, tuple[int, dict[str, Any]]] = {}
    if args.early_epochs:
        plan[early] = (args.early_epochs, {})
    plan.update({name: (args.epochs, kwargs) for name, kwargs in variants(args).items()})
    start = time.perf_counter()
    for seed in range(0 if args.report else args.seeds):
        for name, (epochs, kwargs) in plan.items():
            if str(seed) in per_seed.get(name, {}):
                print(f"{name} seed {seed}: done (in {out}), skipped", flush=True)
                continue
            begin = time.perf_counter()
            row = measure(args, train(args, seed, epochs, kwargs).classifier, seed)
            row["wall_s"] = time.perf_counter() - begin
            per_seed.setdefault(name, {})[str(seed)] = row
            atomic_write_text(out, json.dumps({"settings": settings(args), "per_seed": per_seed}, indent=2))
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    seeds = [str(seed) for seed in range(args.seeds)]
    results = {}
    for name in plan:
        rows = [per_seed[name][seed] for seed in seeds if seed in per_seed.get(name, {})]
        if rows:
            results[name] = {**summary(rows), "seeds": (float(len(rows)), 0.0)}
    print(markdown(results))
    print("\n" + slides_table(results, early))
    pairs = [("plain", early)] + [(name, "plain") for name in plan if name not in ("plain", early)]
    print("\n" + paired_table(per_seed, pairs))
    seconds = time.perf_counter() - start
    wall = sum(row["wall_s"] for runs in per_seed.values() for row in runs.values())
    print(
        f"\n{args.seeds} seed(s), {args.epochs} epochs on {args.train_subset} images, 1 thread: {seconds:.0f}s this "
        f"call, {wall:.0f}s of training + measurement in {out}"
    )
    if not args.report:  # --report only reads (a running job may be writing out)
        summary_json = {"settings": settings(args), "per_seed": per_seed, "summary": results}
        atomic_write_text(out, json.dumps(summary_json, indent=2))
    return results


if __name__ == "__main__":
    main()

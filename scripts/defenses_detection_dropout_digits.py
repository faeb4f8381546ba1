#!/usr/bin/env python
"""Attribution-based detection and dropout/cutout correction on digits (Ren et al., NeurIPS 2021, §4.3).

Two of the paper's explanations of defenses, measured on scikit-learn's digits (16×16) with the checkpoints
``checkpoints/digits_small_cnn.pt`` (standard) and ``checkpoints/digits_small_cnn_at.pt`` (PGD adversarial
training, L∞ ε = 0.1), and with ``--smoothed`` a randomized-smoothing model:

* **Detection** (supplement G, Figure 6 left): the test digits a model classifies correctly are attacked with
  untargeted L∞ PGD at the paper's setting (ε = 32/255, step 2/255, as its §4.1 after Xie et al.; 20 steps,
  random start); the adversarial set is the fooled ones, the normal set the same images clean (paired). Three
  detectors (:class:`lit_advgame.defenses.AttributionDetector`) score each image on the game of ML-LOO's setting
  (:func:`lit_advgame.defenses.ml_loo_game`: absent players 0, the class fixed as the unmasked prediction, since a
  detector cannot know the true label): ML-LOO's inter-quartile range of ``φ^(n−1)(i)`` over pixels (n = 256, its
  own variables) and over the 8×8 grid (n = 64), the IQR of the multi-order Shapley values ``φ^(m)(i)`` over
  players, and the mean (``I^(m)``) and the IQR of the multi-order interactions ``I^(m)_ij`` over neighbouring
  pairs (``--interaction-statistics``; the same pairs and contexts), per order (8×8 grid). The ROC-AUC
  (adversarial positive, torchmetrics via :func:`~lit_advgame.defenses.detection_auc`) with a **paired bootstrap**
  standard error over images (``scipy.stats.bootstrap``, images resampled with their clean/adversarial pair; the
  two sets are not independent, so the Hanley–McNeil formula does not apply), and the paired bootstrap difference
  of each detector's separation ``max(AUC, 1 − AUC)`` from ML-LOO's (pixels). The paper's claim: interactions
  (high orders) separate normal and adversarial samples better.
* **Dropout and cutout** (Table 1): the correctly classified digits are attacked with the same L∞ PGD started at
  δ = 0 and **stopped once it succeeds** (:class:`~lit_advgame.defenses.EarlyStoppedAttack`, at most
  ``--early-steps`` steps); :class:`~lit_advgame.defenses.PixelDropout` at α ∈ {0.1, 0.2, 0.3} (dropped pixels
  filled with the mean of their kept neighbours) and :class:`~lit_advgame.defenses.Cutout` of half the side (25 %
  of the pixels, the Normalize mean) are applied to the fooled examples; the fraction corrected back to the true
  label (:func:`~lit_advgame.defenses.correction_ratio`) ± its binomial standard error, beside the fraction of the
  CLEAN images (the same correctly classified digits) that the same transform misclassifies -- a control the paper
  does not report.

With ``--smoothed``, a third model: the base classifier of randomized smoothing (``configs/smoothing_digits.yaml``,
σ = 0.25; trained into ``--out`` when its checkpoint is missing, test/certification skipped) under its noise,
:class:`~lit_advgame.defenses.NoisyLogProbabilities` (``E_ε[log p(· | x + ε)]`` from ``--noise-draws`` seeded
draws, the same draws for every input): it is attacked through the noise average, predicts by the argmax of that
average, and its games take ``v(S) = E_ε[log p(ŷ | x_S + ε)]`` (each forward costs ``--noise-draws`` base passes,
so it scores at most ``--smoothed-images`` pairs).

Outputs (``--out``): ``results.json`` and ``tables.md`` (also printed).

Example::

    python scripts/defenses_detection_dropout_digits.py --smoothed   # ~20-25 min, 1 thread, busy shared 2-core CPU
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.stats import bootstrap, mannwhitneyu
from torch import nn

from defenses_recovery_rank_digits import load_models, seeded_test_digits
from lit_advgame.attacks import build_attack
from lit_advgame.defenses import (
    AttributionDetector,
    Cutout,
    EarlyStoppedAttack,
    NoisyLogProbabilities,
    PixelDropout,
    correction_ratio,
    detection_auc,
    ml_loo_game,
)
from lit_advgame.vocabulary import DETECTOR_STATISTICS

#: Table 1 of the paper (ImageNet, % of adversarial examples corrected): cutout, then α = 0.1, 0.2, 0.3
PAPER_TABLE1 = {
    "standard": {
        "ResNet-18": (7.12, 19.62, 35.55, 44.14),
        "ResNet-50": (10.63, 28.53, 45.53, 52.33),
        "DenseNet-161": (11.32, 27.16, 46.15, 56.35),
    },
    "adversarial": {
        "ResNet-18": (23.92, 22.46, 33.78, 39.18),
        "ResNet-50": (24.27, 23.23, 35.23, 41.54),
        "DenseNet-161": (35.65, 24.65, 39.25, 45.74),
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--candidates", type=int, default=270, help="test digits considered (seeded shuffle; 270 = all)")
    p.add_argument("--eps", default="32/255", help="L∞ radius of both attacks")
    p.add_argument("--step-size", default="2/255")
    p.add_argument("--steps", type=int, default=20, help="steps of the detection attack")
    p.add_argument("--early-steps", type=int, default=50, help="most steps of the early-stopped attack")
    p.add_argument("--detect-images", type=int, default=80, help="fooled images (pairs) per model for detection")
    p.add_argument("--smoothed-images", type=int, default=30, help="the same for the smoothed model")
    p.add_argument("--grid", type=int, default=8, help="players of the Shapley and interaction detectors: grid²")
    p.add_argument("--orders", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9], help="order ratios")
    p.add_argument("--num-contexts", type=int, default=8, help="contexts per player/pair and order")
    p.add_argument("--num-pairs", type=int, default=8, help="neighbouring pairs per image (interactions)")
    p.add_argument(
        "--interaction-statistics",
        nargs="+",
        default=["mean", "iqr"],
        choices=DETECTOR_STATISTICS,
        help="statistics over pairs of the interaction detector (mean: I^(m); iqr: as ML-LOO's)",
    )
    p.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="pixel dropout rates α")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the AUCs")
    p.add_argument("--smoothed", action="store_true", help="add the randomized-smoothing model")
    p.add_argument("--noise-draws", type=int, default=4, help="noise draws of the smoothed model's output")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="runs/defenses_detection_dropout_digits")
    return p.parse_args(argv)


def _pm(value: float, stderr: float, digits: int = 3) -> str:
    return f"{value:.{digits}f} ± {stderr:.{digits}f}"


def binomial(hits: torch.Tensor) -> dict[str, float]:
    """The fraction of true entries of ``hits`` with its binomial standard error ``sqrt(p(1 − p)/n)``."""
    n = int(hits.numel())
    p = float(hits.float().mean()) if n else math.nan
    return {"fraction": p, "stderr": math.sqrt(p * (1 - p) / n) if n else math.nan, "count": n}


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1)


# ----------------------------------------------------------------------------- detection


def detector_scores(model: nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """``{column: (B,) scores}`` of every detector and order on the ML-LOO games of ``x``."""
    value = "logit" if isinstance(model, NoisyLogProbabilities) else "log_prob"  # the noisy model returns log p
    pixels = ml_loo_game(model, x, value=value, batch_size=512)
    grid = ml_loo_game(model, x, grid=args.grid, value=value, batch_size=512)
    sampled = {"orders": list(args.orders), "num_contexts": args.num_contexts, "random_state": args.seed}
    detectors = {
        "ml_loo (pixels)": (AttributionDetector("ml_loo"), pixels),
        "ml_loo (grid)": (AttributionDetector("ml_loo"), grid),
        "shapley iqr": (AttributionDetector("shapley", **sampled), grid),
    }
    for statistic in args.interaction_statistics:  # the same pairs and contexts (random_state) for each statistic
        detector = AttributionDetector("interaction", statistic=statistic, num_pairs=args.num_pairs, **sampled)
        detectors[f"interaction {statistic}"] = (detector, grid)
    columns: dict[str, torch.Tensor] = {}
    for name, (detector, game) in detectors.items():
        result = detector.scores(game)
        if detector.kind == "ml_loo":
            columns[name] = result.scores[:, 0]
            continue
        for k, label in enumerate(result.orders.labels):
            columns[f"{name} {label}"] = result.scores[:, k]
    return columns


def paired_auc_bootstrap(
    normal: np.ndarray, adversarial: np.ndarray, resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap distribution ``(D, R)`` and standard error ``(D,)`` of the AUC of every column of the paired
    ``(B, D)`` normal and adversarial scores: images are resampled with their pair (``scipy.stats.bootstrap``) and
    the AUC of a resample is the Mann–Whitney ``U / (n₀ n₁)`` (``scipy.stats.mannwhitneyu``, ties count one half)."""
    size = normal.shape[0]

    def auc(index: np.ndarray) -> np.ndarray:
        index = index.astype(int)
        return mannwhitneyu(adversarial[index], normal[index], axis=0).statistic / (size * size)

    result = bootstrap((np.arange(size),), auc, n_resamples=resamples, method="percentile", vectorized=False, rng=seed)
    return result.bootstrap_distribution, result.standard_error


def detection(model: nn.Module, x: torch.Tensor, y: torch.Tensor, limit: int, args: argparse.Namespace) -> dict:
    """PGD, the fooled images (at most ``limit``), their detector scores clean and adversarial, AUCs ± SE."""
    attack = build_attack("pgd", model, eps=args.eps, step_size=args.step_size, steps=args.steps, seed=args.seed)
    x_adv = attack(x, y)
    fooled = (predict(model, x_adv) != y).nonzero().squeeze(1)
    used = fooled[:limit]
    out = {"attacked": int(x.shape[0]), "fooled": int(fooled.numel()), "pairs": int(used.numel())}
    if used.numel() < 3:
        print(f"  detection skipped: only {used.numel()} fooled image(s)", flush=True)
        return out
    normal = detector_scores(model, x[used], args)
    adversarial = detector_scores(model, x_adv[used], args)
    names = list(normal)
    normal_np = torch.stack([normal[k] for k in names], 1).numpy()
    adversarial_np = torch.stack([adversarial[k] for k in names], 1).numpy()
    aucs = np.array([detection_auc(normal[k], adversarial[k]) for k in names])
    check = mannwhitneyu(adversarial_np, normal_np, axis=0).statistic / used.numel() ** 2
    assert np.allclose(aucs, check), "torchmetrics' and scipy's AUC disagree"
    distribution, stderr = paired_auc_bootstrap(normal_np, adversarial_np, args.bootstrap, args.seed)
    separation = np.maximum(aucs, 1 - aucs)
    boot_separation = 0.5 + np.abs(distribution - 0.5)
    reference = names.index("ml_loo (pixels)")
    gain = boot_separation - boot_separation[reference]
    out["detectors"] = {
        name: {
            "auc": float(aucs[d]),
            "auc_stderr": float(stderr[d]),
            "separation": float(separation[d]),
            "separation_minus_ml_loo": float(separation[d] - separation[reference]),
            "separation_minus_ml_loo_stderr": float(gain[d].std(ddof=1)),
        }
        for d, name in enumerate(names)
    }
    return out


def detection_table(results: dict[str, dict]) -> list[str]:
    models = [m for m in results if "detectors" in results[m]]
    if not models:
        return ["(no model had enough fooled images)"]
    head = "| detector | " + " | ".join(f"{m}: AUC | {m}: sep − ML-LOO" for m in models) + " |"
    lines = [head, "|---|" + "---|---|" * len(models)]
    lines.append(
        "| pairs (fooled / attacked) | "
        + " | ".join(f"{results[m]['pairs']} ({results[m]['fooled']} / {results[m]['attacked']}) | " for m in models)
        + " |"
    )
    for name in results[models[0]]["detectors"]:
        row = [name]
        for m in models:
            d = results[m]["detectors"][name]
            gain = f"{d['separation_minus_ml_loo']:+.3f} ± {d['separation_minus_ml_loo_stderr']:.3f}"
            row += [_pm(d["auc"], d["auc_stderr"]), "(reference)" if name == "ml_loo (pixels)" else gain]
        lines.append("| " + " | ".join(row) + " |")
    return lines


# ----------------------------------------------------------------------------- dropout and cutout (Table 1)


def corrections(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> dict:
    """Early-stopped PGD, then per transform: adversarial examples corrected and clean images broken, ± SE."""
    attack = build_attack(
        "pgd",
        model,
        eps=args.eps,
        step_size=args.step_size,
        steps=args.early_steps,
        random_start=False,
        seed=args.seed,
    )
    stopped = EarlyStoppedAttack(attack).run(x, y)
    fooled = stopped.success.nonzero().squeeze(1)
    steps = stopped.steps[fooled].float()
    out = {
        "attacked": int(x.shape[0]),
        "fooled": int(fooled.numel()),
        "steps_mean": float(steps.mean()) if fooled.numel() else math.nan,
        "linf_mean": float((stopped.x_adv - x)[fooled].flatten(1).abs().amax(1).mean()) if fooled.numel() else 0.0,
        "transforms": {},
    }
    transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "cutout": functools.partial(Cutout(seed=args.seed), model=model)
    }
    transforms.update({f"dropout α={rate:g}": PixelDropout(rate, seed=args.seed) for rate in args.rates})
    for name, transform in transforms.items():
        row = {"broken_clean": binomial(predict(model, transform(x)) != y)}
        if fooled.numel():
            result = correction_ratio(model, stopped.x_adv[fooled], y[fooled], transform)
            row["corrected"] = binomial(result.corrected[result.counted])
        out["transforms"][name] = row
    return out


def correction_table(results: dict[str, dict]) -> list[str]:
    names = list(next(iter(results.values()))["transforms"])
    lines = [
        "| model | fooled / attacked (mean steps) | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for model, r in results.items():
        cells = [f"{model}", f"{r['fooled']} / {r['attacked']} ({r['steps_mean']:.1f})"]
        for name in names:
            t = r["transforms"][name]
            corrected = t.get("corrected")
            broken = t["broken_clean"]
            text = f"{_pm(100 * corrected['fraction'], 100 * corrected['stderr'], 1)} %" if corrected else "–"
            cells.append(f"{text} (clean broken {_pm(100 * broken['fraction'], 100 * broken['stderr'], 1)} %)")
        lines.append("| " + " | ".join(cells) + " |")
    for kind, rows in PAPER_TABLE1.items():
        for arch, values in rows.items():
            paper = [f"{v:.2f} %" for v in values]
            lines.append(f"| paper: {kind} {arch} (ImageNet) | – | " + " | ".join(paper) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = load_models(out, args.smoothed, args.noise_draws, args.seed)
    trained = time.time() - start
    x_all, y_all = seeded_test_digits(args.candidates, args.seed)

    results: dict = {"settings": vars(args), "detection": {}, "dropout": {}}
    timings: dict[str, float] = {}
    for name, model in models.items():
        model.eval()
        correct = predict(model, x_all) == y_all
        x, y = x_all[correct], y_all[correct]
        print(f"{name}: {x.shape[0]} of {x_all.shape[0]} test digits classified correctly", flush=True)
        tick = time.time()
        results["dropout"][name] = corrections(model, x, y, args)
        limit = args.smoothed_images if isinstance(model, NoisyLogProbabilities) else args.detect_images
        results["detection"][name] = detection(model, x, y, limit, args)
        timings[name] = time.time() - tick
        print(f"  {timings[name]:.0f} s", flush=True)

    tables = ["### Detection: ROC-AUC of normal vs adversarial (adversarial positive) ± paired bootstrap SE", ""]
    tables += detection_table(results["detection"])
    tables += ["", "### Dropout and cutout: adversarial examples corrected (early-stopped PGD) ± SE", ""]
    tables += correction_table(results["dropout"])
    seconds = time.time() - start
    results["seconds"] = {"total": seconds, "smoothing_training": trained, **timings}
    tables.append(
        f"\n{seconds:.0f} s with {torch.get_num_threads()} thread(s) (model loading/training {trained:.0f} s)"
    )
    print("\n".join(tables))
    (out / "tables.md").write_text("\n".join(tables) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

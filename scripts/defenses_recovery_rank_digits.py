#!/usr/bin/env python
"""Recoverability and rank reduction on digits: standard vs adversarially trained (Ren et al., NeurIPS 2021, §4.3).

Two of the paper's explanations of defenses, measured on scikit-learn's digits (16×16) with the checkpoints
``checkpoints/digits_small_cnn.pt`` (standard) and ``checkpoints/digits_small_cnn_at.pt`` (PGD adversarial
training, L∞ ε = 0.1; ``scripts/interactions_standard_vs_at.py --retrain`` rebuilds it):

* **Recoverability** (supplement I.10, Table 4): untargeted L∞ PGD (ε = 16/255, 10 steps of 2/255) to ``x_adv``,
  then a targeted PGD with the same parameters from ``x_adv`` back to the true label
  (:func:`lit_advgame.defenses.compare_recoverability`); ``E‖x − x_adv‖₂``, ``E‖x − x̂‖₂``, the fraction
  recovered closer than the attack went, with standard errors, on the same test digits for both models (those
  both classify correctly), plus the paired AT − standard difference. The paper: AT examples are more
  recoverable (``E‖x − x̂‖₂ < E‖x − x_adv‖₂`` for AT networks, ``>`` for standard ones).
* **Rank reduction** (Figure 6 right): each channel reduced to rank ``k/4`` and ``k/16`` (k = 16; clamped to
  [0, 1]); ``I^(m)`` of the clean digits and of their adversarial examples (the images the attack fooled) before
  and after reduction, all six games from one draw of pairs and contexts
  (:func:`lit_advgame.defenses.rank_reduction_interactions`), players an 8×8 grid (n = 64), ``v = log p(y | x_S)``
  of the true class. The paper: reduction changes the high-order interactions of adversarial examples much more
  than those of normal samples.

With ``--smoothed``, a third model: the base classifier of randomized smoothing (``configs/smoothing_digits.yaml``,
σ = 0.25; trained into ``--out`` when its checkpoint is missing, test/certification skipped) under its noise,
:class:`lit_advgame.defenses.NoisyLogProbabilities` (``E_ε[log p(· | x + ε)]`` from ``--noise-draws`` seeded
draws, the same draws for every input): both attacks run on it (gradients through the noise average), and its
games take ``v(S) = E_ε[log p(y | x_S + ε)]`` (supplement I, Figure 10).

Outputs (``--out``): ``results.json`` and ``tables.md`` (also printed).

Example::

    python scripts/defenses_recovery_rank_digits.py        # ~5 min (282 s) on 1 thread of a shared 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lit_advgame.data import DigitsDataModule
from lit_advgame.defenses import (
    PAPER_FRACTIONS,
    NoisyLogProbabilities,
    Recoverability,
    compare_recoverability,
    rank_reduction_interactions,
    recoverability_table,
)
from lit_advgame.interactions import InputGame
from lit_advgame.predict import load_classifier

REPO = Path(__file__).resolve().parents[1]
SMOOTHING_CONFIG = REPO / "configs" / "smoothing_digits.yaml"
CHECKPOINTS = {
    "standard": REPO / "checkpoints" / "digits_small_cnn.pt",
    "adversarial": REPO / "checkpoints" / "digits_small_cnn_at.pt",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--candidates", type=int, default=200, help="test digits considered (seeded shuffle)")
    p.add_argument("--eps", default="16/255", help="L∞ radius of the attack and of the recovery")
    p.add_argument("--step-size", default="2/255")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rank-images", type=int, default=24, help="fooled images per model for the rank analysis")
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--num-pairs", type=int, default=6)
    p.add_argument("--num-contexts", type=int, default=10)
    p.add_argument("--smoothed", action="store_true", help="add the randomized-smoothing base classifier")
    p.add_argument("--noise-draws", type=int, default=8, help="noise draws of the smoothed model's value")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="runs/defenses_recovery_rank_digits")
    return p.parse_args(argv)


def smoothed_model(out: Path, num_draws: int, seed: int) -> NoisyLogProbabilities:
    """The smoothing base classifier under its noise; ``configs/smoothing_digits.yaml`` is trained when missing."""
    ckpt = out / "smoothing_digits.ckpt"
    if not ckpt.is_file():
        with tempfile.TemporaryDirectory(prefix="smoothing_digits_") as work:
            cmd = [sys.executable, "-m", "lit_advgame", "fit", "--config", str(SMOOTHING_CONFIG)]
            cmd += [
                "--trainer.accelerator",
                "cpu",
                "--trainer.enable_progress_bar",
                "false",
                "--test_after_fit",
                "false",
            ]
            print("training:", " ".join(cmd), flush=True)
            subprocess.run(cmd, cwd=work, check=True)
            best = sorted((Path(work) / "runs" / "smoothing_digits").glob("version_*/checkpoints/epoch*.ckpt"))
            if not best:
                raise RuntimeError("randomized-smoothing training wrote no epoch*.ckpt checkpoint")
            shutil.copy(best[-1], ckpt)
    sigma = float(torch.load(ckpt, weights_only=False, map_location="cpu")["hyper_parameters"]["sigma"])
    return NoisyLogProbabilities(load_classifier(str(ckpt)).model, sigma, num_draws, seed)


def load_models(out: Path, smoothed: bool, noise_draws: int, seed: int) -> dict[str, torch.nn.Module]:
    """The standard and AT classifiers of :data:`CHECKPOINTS`, and with ``smoothed`` :func:`smoothed_model`."""
    models = {name: load_classifier(str(path)).model for name, path in CHECKPOINTS.items()}
    if smoothed:
        models["smoothed"] = smoothed_model(out, noise_draws, seed)
    return models


def seeded_test_digits(candidates: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``candidates`` test digits (images in [0, 1] and labels) of the checkpoints' split, in a seeded order."""
    data_cfg = torch.load(CHECKPOINTS["standard"], weights_only=True)["data"]["init_args"]
    data = DigitsDataModule(**data_cfg).dataset("test")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:candidates]
    return torch.stack([data[int(i)][0] for i in order]), torch.tensor([int(data[int(i)][1]) for i in order])


def _fmt(value: float, stderr: float) -> str:
    return f"{value:+.3f} ± {stderr:.3f}"


def rank_table(name: str, result) -> list[str]:
    """Per order: I^(m) of normal and adversarial images and the paired changes under each reduction."""
    head = ["order", "I(x)", "I(x_adv)"]
    for fraction in result.fractions:
        label = f"k/{round(1 / fraction)}"
        head += [f"ΔI(x) {label}", f"ΔI(x_adv) {label}", f"adv − normal {label}"]
    lines = [f"**{name}** (n = {result.normal.num_players}, ranks {result.ranks} of {result.full_rank})", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for o, label in enumerate(result.labels):
        row = [label, _fmt(result.normal.values[o], result.normal.stderr[o])]
        row.append(_fmt(result.adversarial.values[o], result.adversarial.stderr[o]))
        for f in range(len(result.fractions)):
            for part in (result.normal_change[f], result.adversarial_change[f], result.difference[f]):
                row.append(_fmt(part.values[o], part.stderr[o]))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = load_models(out, args.smoothed, args.noise_draws, args.seed)
    x, y = seeded_test_digits(args.candidates, args.seed)
    with torch.no_grad():
        keep = torch.stack([m(x).argmax(1) == y for m in models.values()]).all(dim=0)
    x, y = x[keep], y[keep]
    print(f"{x.shape[0]} test digits classified correctly by every model", flush=True)

    settings = {"eps": args.eps, "step_size": args.step_size, "steps": args.steps, "seed": args.seed}
    cost = Recoverability(**settings).num_forward_passes(x.shape[0])
    print(f"recoverability: {cost:,} forward-backward passes per model", flush=True)
    recovery = compare_recoverability(models, x, y, **settings)
    tables = ["### Recoverability (all images)", "", recoverability_table(recovery), ""]
    tables += ["### Recoverability (images the attack fooled)", "", recoverability_table(recovery, "fooled"), ""]
    differences = {name: recovery[name].difference(recovery["standard"]) for name in models if name != "standard"}
    for name, diff in differences.items():
        tables.append(
            f"Paired {name} − standard on the same images: "
            f"closer {_fmt(diff['closer'], diff['closer_stderr'])}, "
            f"E‖x − x̂‖₂ {_fmt(diff['recovered_distance'], diff['recovered_distance_stderr'])}, "
            f"gain {_fmt(diff['gain'], diff['gain_stderr'])}"
        )
    print("\n".join(tables), flush=True)

    results = {
        "settings": vars(args),
        "recovery": {k: r.summary() for k, r in recovery.items()},
        "recovery_fooled": {k: r.summary("fooled") for k, r in recovery.items()},
        "recovery_difference": differences,
        "rank_reduction": {},
    }
    for name, model in models.items():
        fooled = recovery[name].fooled.nonzero().squeeze(1)[: args.rank_images]
        if fooled.numel() < 2:
            print(f"rank reduction, {name}: skipped, only {fooled.numel()} fooled image(s)", flush=True)
            continue
        games = 2 * (1 + len(PAPER_FRACTIONS))
        planned = games * fooled.numel() * (11 * args.num_pairs * args.num_contexts * 4 + 1)
        noisy = isinstance(model, NoisyLogProbabilities)  # its outputs are E_ε[log p]: v(S) is the "logit" of y
        if noisy:
            planned *= model.forward_multiplier
        print(f"rank reduction, {name}: at most {planned:,} forward passes ({games} paired games)", flush=True)
        game = {"grid": args.grid, "batch_size": 512, "value": "logit" if noisy else "log_prob"}
        normal = InputGame(model, x[fooled], y[fooled], **game)
        adversarial = InputGame(model, recovery[name].x_adv[fooled], y[fooled], **game)
        result = rank_reduction_interactions(
            normal,
            adversarial,
            "reference",
            num_pairs=args.num_pairs,
            num_contexts=args.num_contexts,
            generator=torch.Generator().manual_seed(args.seed),
        )
        lines = ["", f"### Rank reduction, {name} model ({fooled.numel()} fooled images)", ""]
        lines += rank_table(name, result)
        tables += lines
        print("\n".join(lines), flush=True)
        results["rank_reduction"][name] = {"num_images": int(fooled.numel()), **result.to_dict("rank")}
    seconds = time.time() - start
    tables.append(f"\n{seconds:.0f} s with {torch.get_num_threads()} thread(s)")
    print(tables[-1])
    (out / "tables.md").write_text("\n".join(tables) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Multi-order interactions of a standard and an adversarially trained small CNN on digits (Ren et al., NeurIPS 2021).

Checks two claims of "A Unified Game-Theoretic Interpretation of Adversarial Robustness"
(Ren et al., NeurIPS 2021, §4.1-4.2, supplement I.2 / Table 2) on scikit-learn's digits (16×16):

(2) attacks change high-order interactions more than low-order ones, and less so for the
    adversarially trained (AT) model: the normalized share ``|ΔI^(m)| / Σ_m' |ΔI^(m')|`` is
    concentrated in high orders, less so for the AT model (Table 2);
(3) the AT model has a higher low-order disentanglement ``D^(m)`` than the standard one (Fig. 5).

Models: ``checkpoints/digits_small_cnn.pt`` (standard, ``configs/standard_digits.yaml``) and
``checkpoints/digits_small_cnn_at.pt`` (PGD adversarial training, ``configs/adversarial_digits.yaml``,
L∞ ε = 0.1). The AT file is trained and exported when missing or with ``--retrain`` (a few minutes).

Protocol (as the reference code of Ren et al., NeurIPS 2021, Sec. 4.1):

* probes: test digits that **both** models classify correctly;
* each model attacks its own probes with the strength-controlled attack
  (:class:`~lit_advgame.attacks.strength.StrengthControlledAttack`): L∞ sign-gradient
  steps that stop once the true-class logit has dropped by ``--threshold`` (window
  ``(threshold, threshold + 0.5]``, misclassified); the **same** drop for both models, so the
  attacks have the same attacking utility. Only probes that reached the window for **both**
  models are kept (the same images for both), the first ``--num-images`` of them;
* players: an ``--grid`` × ``--grid`` grid of cells (n = grid²), absent cells set to the data
  mean, ``v(S) = log p(y | x_S)``; the paper's 11 orders ``m = int((n - 2) r)``,
  ``r = 0.1 ... 0.95``; ``--num-pairs`` neighbouring pairs per image, ``--num-contexts`` contexts
  per pair and order, the same pairs and contexts on clean and adversarial images
  (:func:`lit_advgame.interactions.interaction_change`);
* ``D^(m)`` on the clean probes (:func:`lit_advgame.interactions.disentanglement`, ratio of means,
  with the same seed so the same pairs and contexts).

Outputs (``--out``): ``results.json``, ``figure.png`` (share vs order; D^(m) vs order), and the
Markdown tables printed to stdout (also saved as ``tables.md``).

Example::

    python scripts/interactions_standard_vs_at.py                   # defaults, ~4-5 min on 1 busy core
    python scripts/interactions_standard_vs_at.py --retrain         # re-train the AT checkpoint first
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lit_advgame.attacks.strength import StrengthControlledAttack
from lit_advgame.data import DigitsDataModule
from lit_advgame.interactions import InputGame, disentanglement, interaction_change
from lit_advgame.interactions.stats import combine_stderr
from lit_advgame.predict import load_classifier

REPO = Path(__file__).resolve().parents[1]
STANDARD_CKPT = REPO / "checkpoints" / "digits_small_cnn.pt"
AT_CKPT = REPO / "checkpoints" / "digits_small_cnn_at.pt"
AT_CONFIG = REPO / "configs" / "adversarial_digits.yaml"
LOW_MAX_RATIO = 0.3
HIGH_MIN_RATIO = 0.7


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--standard", default=str(STANDARD_CKPT), help="standard classifier file")
    p.add_argument("--adversarial", default=str(AT_CKPT), help="adversarially trained classifier file")
    p.add_argument("--retrain", action="store_true", help="(re)train and export the AT checkpoint first")
    p.add_argument("--split", choices=["val", "test"], default="test", help="probe split")
    p.add_argument("--candidates", type=int, default=160, help="split images considered (seeded shuffle)")
    p.add_argument(
        "--num-images", type=int, default=64, help="probes kept (correct and attacked to the window by both)"
    )
    p.add_argument("--threshold", type=float, default=6.0, help="logit drop of the strength-controlled attack")
    p.add_argument(
        "--eps",
        type=float,
        default=0.5,
        help="L∞ cap of the strength-controlled attack; large so that it does not bind: at 64/255 only 40%% "
        "of the AT model's probes reach the drop (at L∞ ≈ ε), a biased subset, while the standard "
        "model reaches it at L∞ ≈ 0.1 either way",
    )
    p.add_argument(
        "--bootstrap", type=int, default=2000, help="image bootstrap resamples for the share's standard errors"
    )
    p.add_argument("--grid", type=int, default=8, help="players: grid x grid cells (n = grid²)")
    p.add_argument("--num-pairs", type=int, default=6, help="neighbouring pairs per image")
    p.add_argument("--num-contexts", type=int, default=10, help="contexts per pair and order")
    p.add_argument("--batch-size", type=int, default=512, help="masked inputs per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="runs/interactions_standard_vs_at")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- models
def train_adversarial(out: Path) -> dict[str, Any]:
    """Train ``configs/adversarial_digits.yaml`` in a temporary folder and export its best checkpoint to ``out``."""
    from lit_advgame.predict.export import export_lightning_checkpoint

    with tempfile.TemporaryDirectory(prefix="at_digits_") as work:
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        cmd = [
            sys.executable,
            "-m",
            "lit_advgame",
            "fit",
            "--config",
            str(AT_CONFIG),
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
        print("training:", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=work, env=env, check=True)
        best = sorted((Path(work) / "runs" / "adversarial_digits" / "version_0" / "checkpoints").glob("epoch*.ckpt"))
        if not best:
            raise RuntimeError("adversarial training wrote no epoch*.ckpt checkpoint")
        out.parent.mkdir(parents=True, exist_ok=True)
        metrics = export_lightning_checkpoint(best[0], out)
        print(f"exported {best[0].name} -> {out}: {metrics}", flush=True)
        return metrics


# ---------------------------------------------------------------------------------------------- probes
def probe_candidates(
    datamodule: DigitsDataModule, split: str, count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images of ``split`` in a seeded random order."""
    data = datamodule.dataset(split)
    xs, ys = zip(*[data[i] for i in range(len(data))])
    x, y = torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:count]
    return x[order], y[order]


def attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """Strength-controlled attack of ``(x, y)`` on ``model`` (same threshold for every model)."""
    result = StrengthControlledAttack(model, args.threshold, eps=args.eps, seed=args.seed).run(x, y)
    return {
        "x_adv": result.x_adv,
        "reached": result.reached,
        "drop": result.drop,
        "linf": (result.x_adv - x).flatten(1).abs().amax(dim=1),
        "misclassified": result.misclassified,
    }


# ---------------------------------------------------------------------------------------------- analysis
def analyse(
    model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    """``I^(m)`` clean/adv, ``ΔI^(m)`` with shares, and ``D^(m)`` (same pairs and contexts, seeded)."""
    kwargs = {
        "orders": "reference",
        "num_pairs": args.num_pairs,
        "num_contexts": args.num_contexts,
        "pairs": "neighbour",
    }
    clean = InputGame(model, x, y, grid=args.grid, batch_size=args.batch_size)
    adv = InputGame(model, x_adv, y, grid=args.grid, batch_size=args.batch_size)
    change = interaction_change(clean, adv, generator=torch.Generator().manual_seed(args.seed), **kwargs)
    clean_d = InputGame(model, x, y, grid=args.grid, batch_size=args.batch_size)
    dis = disentanglement(clean_d, generator=torch.Generator().manual_seed(args.seed), **kwargs)
    ratios = list(change.ratios)
    share = change.share
    low = [k for k, r in enumerate(ratios) if r <= LOW_MAX_RATIO + 1e-9]
    high = [k for k, r in enumerate(ratios) if r >= HIGH_MIN_RATIO - 1e-9]
    return {
        "per_image_delta": change.per_image,  # (B, O), removed before saving
        "orders": list(change.orders),
        "ratios": ratios,
        "I_clean": change.clean.values.tolist(),
        "I_clean_stderr": change.clean.stderr.tolist(),
        "I_adv": change.adversarial.values.tolist(),
        "I_adv_stderr": change.adversarial.stderr.tolist(),
        "delta_I": change.values.tolist(),
        "delta_I_stderr": change.stderr.tolist(),
        "delta_J": change.utility.tolist(),
        "delta_J_stderr": change.utility_stderr.tolist(),
        "share": share.tolist(),
        "share_low": float(share[low].sum()),
        "share_high": float(share[high].sum()),
        "D": dis.values.tolist(),
        "D_stderr": dis.stderr.tolist(),
        "D_per_pair_form": dis.per_pair_form.tolist(),
        "D_low_mean": float(dis.values[low].mean()),
        "forward_passes": change.num_forward_passes + dis.num_forward_passes,
    }


# ---------------------------------------------------------------------------------------------- report
def bootstrap_shares(
    per_image: dict[str, torch.Tensor], ratios: list[float], resamples: int, seed: int
) -> dict[str, Any]:
    """Standard errors of the shares by resampling images (the same resample for both models: paired)."""
    names = list(per_image)
    num_images = per_image[names[0]].shape[0]
    idx = torch.randint(num_images, (resamples, num_images), generator=torch.Generator().manual_seed(seed))
    low = torch.tensor([r <= LOW_MAX_RATIO + 1e-9 for r in ratios])
    high = torch.tensor([r >= HIGH_MIN_RATIO - 1e-9 for r in ratios])
    out: dict[str, Any] = {}
    draws = {}
    for name in names:
        delta = per_image[name][idx].mean(dim=1).abs()  # (R, O)
        share = delta / delta.sum(dim=1, keepdim=True)
        draws[name] = (share[:, low].sum(1), share[:, high].sum(1))
        out[name] = {
            "share_stderr": share.std(dim=0).tolist(),
            "share_low_stderr": float(draws[name][0].std()),
            "share_high_stderr": float(draws[name][1].std()),
        }
    if len(names) == 2:
        a, b = names
        diff = draws[b][1] - draws[a][1]
        out["share_high_difference"] = {
            "of": f"{b} - {a}",
            "stderr": float(diff.std()),
            "fraction_of_resamples_below_zero": float((diff < 0).float().mean()),
        }
    return out


def table(name: str, r: dict[str, Any]) -> str:
    lines = [
        f"### {name}",
        "",
        "| r | m | I^(m) clean | I^(m) adv | ΔI^(m) ± se | share \\|ΔI\\|/Σ\\|ΔI\\| | D^(m) ± se |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, ratio in enumerate(r["ratios"]):
        lines.append(
            f"| {ratio:.2f} | {r['orders'][k]} | {r['I_clean'][k]:+.4f} | {r['I_adv'][k]:+.4f} | "
            f"{r['delta_I'][k]:+.4f} ± {r['delta_I_stderr'][k]:.4f} | {r['share'][k]:.3f} ± "
            f"{r['share_stderr'][k]:.3f} | "
            f"{r['D'][k]:.3f} ± {r['D_stderr'][k]:.3f} |"
        )
    return "\n".join(lines)


def figure(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in results.items():
        axes[0].plot(r["ratios"], r["share"], marker="o", label=name)
        axes[1].errorbar(r["ratios"], r["D"], yerr=r["D_stderr"], marker="o", capsize=3, label=name)
    axes[0].set(
        xlabel="order ratio r = m / (n-2)", ylabel="|ΔI^(m)| / Σ|ΔI^(m')|", title="share of the interaction change"
    )
    axes[1].set(xlabel="order ratio r = m / (n-2)", ylabel="D^(m)", title="disentanglement (clean probes)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    at_path = Path(args.adversarial)
    if args.retrain or not at_path.is_file():
        train_adversarial(at_path)

    models = {"standard": load_classifier(args.standard), "adversarial": load_classifier(str(at_path))}
    data_cfg = torch.load(args.standard, weights_only=True)["data"]["init_args"]
    datamodule = DigitsDataModule(**data_cfg)
    x, y = probe_candidates(datamodule, args.split, args.candidates, args.seed)

    with torch.no_grad():
        correct = {k: m.model(x).argmax(1) == y for k, m in models.items()}
    keep = correct["standard"] & correct["adversarial"]
    x, y = x[keep], y[keep]
    attacks = {k: attack(m.model, x, y, args) for k, m in models.items()}
    both = attacks["standard"]["reached"] & attacks["adversarial"]["reached"]
    idx = both.nonzero().squeeze(1)[: args.num_images]
    if idx.numel() < 2:
        raise RuntimeError(
            f"only {idx.numel()} probes reached the logit-drop window for both models; raise --candidates or --eps"
        )
    attack_stats = {
        k: {
            "clean_accuracy_on_candidates": float(correct[k].float().mean()),
            "reached_fraction": float(a["reached"].float().mean()),
            "kept_logit_drop": float(a["drop"][idx].mean()),
            "kept_linf_mean": float(a["linf"][idx].mean()),
            "kept_linf_median": float(a["linf"][idx].median()),
        }
        for k, a in attacks.items()
    }
    print(
        f"{args.candidates} candidates, {int(keep.sum())} correct for both, {int(both.sum())} reached by both; "
        f"using {idx.numel()}",
        flush=True,
    )

    results = {}
    for k, m in models.items():
        t0 = time.time()
        results[k] = analyse(m.model, x[idx], attacks[k]["x_adv"][idx], y[idx], args)
        results[k]["attack"] = attack_stats[k]
        results[k]["seconds"] = time.time() - t0
        print(f"{k}: {results[k]['forward_passes']:,} masked passes in {results[k]['seconds']:.1f} s", flush=True)

    boot = bootstrap_shares(
        {k: r.pop("per_image_delta") for k, r in results.items()},
        results["standard"]["ratios"],
        args.bootstrap,
        args.seed,
    )
    for k, r in results.items():
        r.update(boot[k])
        low_se = [se for se, ratio in zip(r["D_stderr"], r["ratios"]) if ratio <= LOW_MAX_RATIO + 1e-9]
        r["D_low_mean_stderr_indep"] = float(combine_stderr(torch.tensor(low_se, dtype=torch.float64)))
    s, a = results["standard"], results["adversarial"]
    low_ratios = [r for r in s["ratios"] if r <= LOW_MAX_RATIO + 1e-9]
    summary = {
        "num_images": int(idx.numel()),
        "share_low": {k: r["share_low"] for k, r in results.items()},
        "share_high": {k: r["share_high"] for k, r in results.items()},
        "D_low_mean": {k: r["D_low_mean"] for k, r in results.items()},
        "share_high_difference": boot.get("share_high_difference"),
        "claim2_high_dominates_standard": s["share_high"] > s["share_low"],
        "claim2_high_dominates_adversarial": a["share_high"] > a["share_low"],
        "claim2_less_for_adversarial": a["share_high"] < s["share_high"],
        "claim3_D_low_higher_for_adversarial": a["D_low_mean"] > s["D_low_mean"],
    }
    md = [
        table(f"standard ({args.standard})", s),
        "",
        table(f"adversarially trained ({at_path})", a),
        "",
        "### Summary",
        "",
        f"- probes: {idx.numel()} test digits correct for both models and attacked to a logit drop in "
        f"({args.threshold:g}, {args.threshold + 0.5:g}] for both; grid {args.grid}x{args.grid} (n={args.grid**2}), "
        f"{args.num_pairs} pairs x {args.num_contexts} contexts per order, seed {args.seed}",
        *(
            f"- attack on {k}: reached {v['reached_fraction']:.2f} of correct candidates; kept L∞ mean "
            f"{v['kept_linf_mean']:.3f} (median {v['kept_linf_median']:.3f}), logit drop {v['kept_logit_drop']:.2f}"
            for k, v in attack_stats.items()
        ),
        f"- share of Σ|ΔI| in low orders (r ≤ {LOW_MAX_RATIO}): standard {s['share_low']:.3f} ± "
        f"{s['share_low_stderr']:.3f}, AT {a['share_low']:.3f} ± {a['share_low_stderr']:.3f} (± image-bootstrap se)",
        f"- share of Σ|ΔI| in high orders (r ≥ {HIGH_MIN_RATIO}): standard {s['share_high']:.3f} ± "
        f"{s['share_high_stderr']:.3f}, AT {a['share_high']:.3f} ± {a['share_high_stderr']:.3f}; AT − standard: "
        f"{a['share_high'] - s['share_high']:+.3f} ± {summary['share_high_difference']['stderr']:.3f} "
        "(paired bootstrap)",
        f"- mean D^(m) over low orders r ∈ {low_ratios}: standard {s['D_low_mean']:.3f} ± "
        f"{s['D_low_mean_stderr_indep']:.3f}, AT {a['D_low_mean']:.3f} ± {a['D_low_mean_stderr_indep']:.3f} "
        "(se combines the per-order se as if independent)",
        f"- claim 2a (high > low, standard): {summary['claim2_high_dominates_standard']}; "
        f"(high > low, AT): {summary['claim2_high_dominates_adversarial']}; "
        f"claim 2b (AT high-order share smaller): {summary['claim2_less_for_adversarial']}",
        f"- claim 3 (AT low-order D higher): {summary['claim3_D_low_higher_for_adversarial']}",
        f"- total time {time.time() - start:.0f} s",
    ]
    text = "\n".join(md)
    print(text)
    (out / "tables.md").write_text(text + "\n")
    payload = {"args": vars(args), "summary": summary, "results": results}
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    figure(results, out / "figure.png")
    print(f"wrote {out / 'results.json'}, {out / 'tables.md'}, {out / 'figure.png'}")
    return payload


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Multi-order interactions of a standard and an adversarially trained small CNN (Ren et al., NeurIPS 2021).

Checks two claims of "A Unified Game-Theoretic Interpretation of Adversarial Robustness"
(Ren et al., NeurIPS 2021, §4.1-4.2, supplement I.2 / Table 2) in two settings (``--setting``):

(2) attacks change high-order interactions more than low-order ones, and less so for the
    adversarially trained (AT) model: the normalized share ``|ΔI^(m)| / Σ_m' |ΔI^(m')|`` is
    concentrated in high orders, less so for the AT model (Table 2);
(3) the AT model has a higher low-order disentanglement ``D^(m)`` than the standard one (Fig. 5).

Settings:

* ``digits``: scikit-learn's digits (16×16), 8×8 grid (n = 64). Models ``checkpoints/digits_small_cnn.pt``
  (standard, ``configs/standard_digits.yaml``) and ``checkpoints/digits_small_cnn_at.pt`` (PGD-AT L∞ ε = 0.1,
  ``configs/adversarial_digits.yaml``; trained and exported when missing or with ``--retrain``, a few minutes).
* ``mnist``: MNIST 28×28 in the test-set-only mode (the 10000 t10k images split 70/10/20 % train/val/test
  with seed 0; ``--mnist-data-dir``, default ``../shared/data/mnist-t10k``), 14×14 grid of 2×2-pixel cells
  (n = 196). Both models are trained by config on the CPU the first time (or with ``--retrain``) and cached
  outside git in ``runs/checkpoints/``: ``mnist_small_cnn.pt`` (``configs/standard_mnist.yaml``, 2.5 min) and
  ``mnist_small_cnn_at.pt`` (``configs/adversarial_mnist_small.yaml``: strong PGD-AT, Madry's L∞ ε = 0.3 with
  10 steps; 31 min), both measured with 1 thread on a 2-core CPU machine shared with other jobs (load ≈ 6).
  The strength-controlled attack has no L∞ cap here (``eps=1``): the AT model needs L∞ ≈ 0.5-0.6 to lose
  6 logits.

``--setting all`` (the default) runs both and writes them into the same output. Times measured with 1 thread on a
2-core CPU machine shared with other jobs: digits 10 min (64 images, 6 pairs x 10 contexts), MNIST 18.5 min
(96 images, 6 pairs x 16 contexts), plus 34 min to train the two MNIST models the first time.

Protocol (as the reference code of Ren et al., NeurIPS 2021, Sec. 4.1), per setting:

* probes: test images that **both** models classify correctly;
* each model attacks its own probes with the strength-controlled attack
  (:class:`~lit_advgame.attacks.strength.StrengthControlledAttack`): L∞ sign-gradient
  steps that stop once the true-class logit has dropped by ``--threshold`` (window
  ``(threshold, threshold + 0.5]``, misclassified); the **same** drop for both models, so the
  attacks have the same attacking utility. Only probes that reached the window for **both**
  models are kept (the same images for both), the first ``--num-images`` of them;
* players: a ``--grid`` × ``--grid`` grid of cells (n = grid²), absent cells set to the data
  mean; the paper's 11 orders ``m = int((n - 2) r)``, ``r = 0.1 ... 0.95``; ``--num-pairs``
  neighbouring pairs per image, ``--num-contexts`` contexts per pair and order, the same pairs and
  contexts on clean and adversarial images (:func:`lit_advgame.interactions.interaction_change_from_samples`);
* ``D^(m)`` on the clean probes from the same samples
  (:func:`lit_advgame.interactions.disentanglement_from_samples`, ratio of means);
* value functions ``--values``: ``log_prob`` (``v(S) = log p(y | x_S)``, the paper's) and ``logit``
  (``v(S) = h_y(x_S)``, a contrast), both from the same masked forward passes (:class:`LogitTape`);
* the models' clean and PGD accuracy (L∞ at the setting's training ε, 20 steps) on the first
  ``--robust-images`` test images.

Outputs (``--out``): ``results.json`` and ``tables.md`` (rewritten after each setting), ``figure_<setting>.png``
(share vs order; D^(m) vs order; one row per value function); the tables are printed too.

Example::

    python scripts/interactions_standard_vs_at.py                      # both settings, ~28 min (+ MNIST training once)
    python scripts/interactions_standard_vs_at.py --setting digits     # the digits setting only, ~10 min
    python scripts/interactions_standard_vs_at.py --setting mnist --retrain   # re-train the MNIST models first
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_advgame.attacks.strength import StrengthControlledAttack
from lit_advgame.classifiers import import_class
from lit_advgame.evaluation.robustness import robust_accuracy
from lit_advgame.interactions import (
    InputGame,
    PairSampling,
    check_paired_games,
    disentanglement_from_samples,
    interaction_change_from_samples,
)
from lit_advgame.interactions.stats import combine_stderr
from lit_advgame.predict import load_classifier

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "runs" / "checkpoints"
LOW_MAX_RATIO = 0.3
HIGH_MIN_RATIO = 0.7
VALUES = ("log_prob", "logit")
VALUE_LABELS = {"log_prob": "v = log p(y|x_S)", "logit": "v = h_y(x_S) (logit)"}


@dataclass(frozen=True)
class Setting:
    """One data set with its standard and AT models and the analysis budget (each field a CLI default)."""

    name: str
    title: str
    standard: Path
    adversarial: Path
    adversarial_config: Path
    standard_config: Path | None  # None: the shipped checkpoint, never re-trained here
    data_dir: Path | None  # passed to the configs' and the checkpoint's DataModule (MNIST)
    eps_train: float  # the AT model's L∞ ε: the PGD evaluation's radius
    grid: int
    threshold: float
    eps: float
    candidates: int
    num_images: int
    num_pairs: int
    num_contexts: int


SETTINGS = {
    "digits": Setting(
        name="digits",
        title="digits 16×16, 8×8 grid (n = 64)",
        standard=REPO / "checkpoints" / "digits_small_cnn.pt",
        adversarial=REPO / "checkpoints" / "digits_small_cnn_at.pt",
        adversarial_config=REPO / "configs" / "adversarial_digits.yaml",
        standard_config=None,
        data_dir=None,
        eps_train=0.1,
        grid=8,
        threshold=6.0,
        eps=0.5,
        candidates=160,
        num_images=64,
        num_pairs=6,
        num_contexts=10,
    ),
    "mnist": Setting(
        name="mnist",
        title="MNIST 28×28, 14×14 grid (n = 196)",
        standard=CACHE / "mnist_small_cnn.pt",
        adversarial=CACHE / "mnist_small_cnn_at.pt",
        adversarial_config=REPO / "configs" / "adversarial_mnist_small.yaml",
        standard_config=REPO / "configs" / "standard_mnist.yaml",
        data_dir=REPO.parent / "shared" / "data" / "mnist-t10k",
        eps_train=0.3,
        grid=14,
        threshold=6.0,
        eps=1.0,  # no cap: the AT model loses 6 logits at a median L∞ ≈ 0.56 (at 0.5, half its probes bind)
        candidates=240,
        num_images=96,
        num_pairs=6,
        num_contexts=16,
    ),
}
OVERRIDABLE = ("standard", "adversarial", "grid", "threshold", "eps", "candidates", "num_images", "num_pairs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--setting", choices=[*SETTINGS, "all"], default="all", help="which setting(s) to run")
    p.add_argument(
        "--values", nargs="+", choices=VALUES, default=list(VALUES), help="value functions (one forward pass for all)"
    )
    p.add_argument("--mnist-data-dir", default=None, help="MNIST IDX folder (default: ../shared/data/mnist-t10k)")
    p.add_argument("--retrain", action="store_true", help="(re)train and export the setting's trainable models first")
    p.add_argument("--split", choices=["val", "test"], default="test", help="probe split")
    # per-setting numbers: unset = the setting's default (SETTINGS); set = used for every setting run
    p.add_argument("--standard", default=None, help="standard classifier file")
    p.add_argument("--adversarial", default=None, help="adversarially trained classifier file")
    p.add_argument("--candidates", type=int, default=None, help="split images considered (seeded shuffle)")
    p.add_argument("--num-images", type=int, default=None, help="probes kept (correct and attacked to the window)")
    p.add_argument("--threshold", type=float, default=None, help="logit drop of the strength-controlled attack")
    p.add_argument(
        "--eps",
        type=float,
        default=None,
        help="L∞ cap of the strength-controlled attack (defaults: digits 0.5, MNIST 1.0, large so that it does not "
        "bind: on digits at 64/255 only 40%% of the AT model's probes reach the drop, a biased subset)",
    )
    p.add_argument("--grid", type=int, default=None, help="players: grid x grid cells (n = grid²)")
    p.add_argument("--num-pairs", type=int, default=None, help="neighbouring pairs per image")
    p.add_argument("--num-contexts", type=int, default=None, help="contexts per pair and order")
    p.add_argument(
        "--bootstrap", type=int, default=2000, help="image bootstrap resamples for the share's standard errors"
    )
    p.add_argument("--robust-images", type=int, default=500, help="test images for the clean/PGD accuracy")
    p.add_argument("--batch-size", type=int, default=512, help="masked inputs per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="runs/interactions_standard_vs_at")
    return p.parse_args(argv)


def resolve_setting(name: str, args: argparse.Namespace) -> Setting:
    """The setting ``name`` with the numbers given on the command line."""
    setting = SETTINGS[name]
    changes: dict[str, Any] = {
        key: getattr(args, key) for key in (*OVERRIDABLE, "num_contexts") if getattr(args, key) is not None
    }
    for key in ("standard", "adversarial"):
        if key in changes:
            changes[key] = Path(changes[key])
    if name == "mnist" and args.mnist_data_dir is not None:
        changes["data_dir"] = Path(args.mnist_data_dir)
    return dataclasses.replace(setting, **changes)


# ---------------------------------------------------------------------------------------------- models
def train_and_export(config: Path, out: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Train ``config`` on the CPU in a temporary folder and export its best checkpoint to ``out``.

    The run uses this tree's package (``PYTHONPATH``) and ``OMP_NUM_THREADS`` (default 1).
    """
    from lit_advgame.predict.export import export_lightning_checkpoint

    with tempfile.TemporaryDirectory(prefix=f"{config.stem}_") as work:
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "lit_advgame", "fit", "--config", str(config), "--trainer.accelerator", "cpu"]
        cmd += ["--trainer.devices", "1", "--trainer.enable_progress_bar", "false"]
        cmd += ["--trainer.enable_model_summary", "false"]
        if data_dir is not None:
            cmd += ["--data.init_args.data_dir", str(data_dir)]
        print("training:", " ".join(cmd), flush=True)
        start = time.time()
        subprocess.run(cmd, cwd=work, env=env, check=True)
        best = sorted((Path(work) / "runs").glob("*/version_0/checkpoints/epoch*.ckpt"))
        if not best:
            raise RuntimeError(f"training {config.name} wrote no epoch*.ckpt checkpoint")
        out.parent.mkdir(parents=True, exist_ok=True)
        metrics = export_lightning_checkpoint(best[0], out)
        print(f"exported {best[0].name} -> {out} after {time.time() - start:.0f} s: {metrics}", flush=True)
        return metrics


def ensure_models(setting: Setting, retrain: bool) -> None:
    """Train the setting's missing (or, with ``retrain``, all trainable) models."""
    if setting.standard_config is not None and (retrain or not setting.standard.is_file()):
        train_and_export(setting.standard_config, setting.standard, setting.data_dir)
    if retrain or not setting.adversarial.is_file():
        train_and_export(setting.adversarial_config, setting.adversarial, setting.data_dir)
    if not setting.standard.is_file():
        raise FileNotFoundError(f"standard classifier {setting.standard} not found")


class LogitTape(nn.Module):
    """Records the logits of every forward pass, then replays them for the next value function.

    The games of several value functions on the same images, pairs and contexts (the same seed) feed
    the model the same masked inputs in the same order; the first (``record``) runs the model, the
    others (``replay``) get its logits back, so each extra value function costs no forward pass.
    A replayed input must match the recorded one (shape and two checksums) or it is an error.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.tape: list[tuple[tuple[Any, ...], torch.Tensor]] = []
        self.position: int | None = None  # None: recording
        self.forward_passes = 0

    @staticmethod
    def _key(x: torch.Tensor) -> tuple[Any, ...]:
        flat = x.detach().double().flatten()
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64) % 97
        return (tuple(x.shape), float(flat.sum()), float((flat * weights).sum()))

    def replay(self) -> None:
        """Replay the recorded logits from the start."""
        self.position = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.position is None:
            logits = self.model(x)
            self.forward_passes += x.shape[0]
            self.tape.append((self._key(x), logits.detach()))
            return logits
        if self.position >= len(self.tape) or self.tape[self.position][0] != self._key(x):
            raise RuntimeError("LogitTape: the replayed masked input differs from the recorded one")
        logits = self.tape[self.position][1]
        self.position += 1
        return logits


def probe_candidates(
    setting: Setting, split: str, count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``count`` images of ``split`` (of the standard checkpoint's DataModule) in a seeded random order, and the
    whole split in that order."""
    data_cfg = dict(torch.load(setting.standard, weights_only=True)["data"])
    init_args = dict(data_cfg["init_args"])
    if setting.data_dir is not None:
        init_args["data_dir"] = str(setting.data_dir)
    datamodule = import_class(data_cfg["class_path"])(**init_args)
    data = datamodule.dataset(split)
    xs, ys = zip(*[data[i] for i in range(len(data))])
    x, y = torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    return x[order[:count]], y[order[:count]], (x[order], y[order])


def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, setting: Setting, seed: int) -> dict[str, Any]:
    """Strength-controlled attack of ``(x, y)`` on ``model`` (same threshold for every model)."""
    result = StrengthControlledAttack(model, setting.threshold, eps=setting.eps, seed=seed).run(x, y)
    return {
        "x_adv": result.x_adv,
        "reached": result.reached,
        "drop": result.drop,
        "linf": (result.x_adv - x).flatten(1).abs().amax(dim=1),
        "misclassified": result.misclassified,
    }


# ---------------------------------------------------------------------------------------------- analysis
def analyse(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    setting: Setting,
    values: list[str],
    args: argparse.Namespace,
) -> dict[str, dict[str, Any]]:
    """Per value function: ``I^(m)`` clean/adv, ``ΔI^(m)`` with shares, and ``D^(m)`` (same pairs and contexts)."""
    tape = LogitTape(model)
    out = {}
    for k, value in enumerate(values):
        if k:
            tape.replay()
        sampler = PairSampling(
            orders="reference",
            num_pairs=setting.num_pairs,
            num_contexts=setting.num_contexts,
            pairs="neighbour",
            random_state=args.seed,
        )
        games = [
            InputGame(tape, image, y, grid=setting.grid, value=value, batch_size=args.batch_size)
            for image in (x, x_adv)
        ]
        check_paired_games(*games)
        samples = sampler.sample(games)
        change = interaction_change_from_samples(samples)
        dis = disentanglement_from_samples(samples, 0)
        ratios = list(change.ratios)
        share = change.share
        low = [i for i, r in enumerate(ratios) if r <= LOW_MAX_RATIO + 1e-9]
        high = [i for i, r in enumerate(ratios) if r >= HIGH_MIN_RATIO - 1e-9]
        out[value] = {
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
            # the bands hold 3 and 5 of the 11 orders: a flat share gives 3/11 and 5/11, so compare per order
            "share_low_per_order": float(share[low].mean()),
            "share_high_per_order": float(share[high].mean()),
            "D": dis.values.tolist(),
            "D_stderr": dis.stderr.tolist(),
            "D_per_pair_form": dis.per_pair_form.tolist(),
            "D_low_mean": float(dis.values[low].mean()),
            "masked_inputs": int(sum(samples.num_forward_passes)),
        }
    for r in out.values():
        r["forward_passes"] = tape.forward_passes  # the model's forward passes for all value functions together
    return out


def model_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int) -> dict[str, float]:
    """Clean and PGD-20 (L∞, ``eps``, step 2.5·ε/20, random start) accuracy on ``(x, y)``."""
    result = robust_accuracy(model, (x, y), eps=eps, norm="linf", attacks=["pgd"], pgd={"steps": 20}, seed=seed)
    return {"images": result.num_images, "eps": eps, "clean": result.accuracy["clean"], "pgd20": result.accuracy["pgd"]}


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
        f"#### {name}",
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


def summarize(results: dict[str, dict[str, Any]], bootstrap: dict[str, Any]) -> dict[str, Any]:
    """Low/high-order shares and low-order D^(m) of one value function, and the claims' outcomes."""
    s, a = results["standard"], results["adversarial"]
    return {
        "share_low": {k: r["share_low"] for k, r in results.items()},
        "share_high": {k: r["share_high"] for k, r in results.items()},
        "D_low_mean": {k: r["D_low_mean"] for k, r in results.items()},
        "share_high_difference": bootstrap.get("share_high_difference"),
        "share_low_per_order": {k: r["share_low_per_order"] for k, r in results.items()},
        "share_high_per_order": {k: r["share_high_per_order"] for k, r in results.items()},
        "claim2_high_dominates_standard": s["share_high_per_order"] > s["share_low_per_order"],
        "claim2_high_dominates_adversarial": a["share_high_per_order"] > a["share_low_per_order"],
        "claim2_less_for_adversarial": a["share_high"] < s["share_high"],
        "claim3_D_low_higher_for_adversarial": a["D_low_mean"] > s["D_low_mean"],
    }


def summary_lines(value: str, results: dict[str, dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    s, a = results["standard"], results["adversarial"]
    low_ratios = [r for r in s["ratios"] if r <= LOW_MAX_RATIO + 1e-9]
    return [
        f"- {VALUE_LABELS[value]}: share of Σ|ΔI| in low orders (r ≤ {LOW_MAX_RATIO}): standard "
        f"{s['share_low']:.3f} ± {s['share_low_stderr']:.3f}, AT {a['share_low']:.3f} ± {a['share_low_stderr']:.3f}; "
        f"in high orders (r ≥ {HIGH_MIN_RATIO}): standard {s['share_high']:.3f} ± {s['share_high_stderr']:.3f}, "
        f"AT {a['share_high']:.3f} ± {a['share_high_stderr']:.3f}; AT − standard high: "
        f"{a['share_high'] - s['share_high']:+.3f} ± {summary['share_high_difference']['stderr']:.3f} "
        "(± image bootstrap, paired)",
        f"- {VALUE_LABELS[value]}: mean share per order, low / high band (a flat share gives 1/11 = 0.091 each): "
        f"standard {s['share_low_per_order']:.3f} / {s['share_high_per_order']:.3f}, AT "
        f"{a['share_low_per_order']:.3f} / {a['share_high_per_order']:.3f}",
        f"- {VALUE_LABELS[value]}: mean D^(m) over r ∈ {low_ratios}: standard {s['D_low_mean']:.3f} ± "
        f"{s['D_low_mean_stderr_indep']:.3f}, AT {a['D_low_mean']:.3f} ± {a['D_low_mean_stderr_indep']:.3f} "
        "(se combines the per-order se as if independent)",
        f"- {VALUE_LABELS[value]}: claim 2a (high > low, per order): standard "
        f"{summary['claim2_high_dominates_standard']}, AT {summary['claim2_high_dominates_adversarial']}; "
        f"claim 2b (AT high-order share smaller): {summary['claim2_less_for_adversarial']}; "
        f"claim 3 (AT low-order D higher): {summary['claim3_D_low_higher_for_adversarial']}",
    ]


def figure(setting: Setting, results: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(10, 4 * len(results)), squeeze=False)
    for row, (value, by_model) in zip(axes, results.items()):
        for name, r in by_model.items():
            row[0].errorbar(r["ratios"], r["share"], yerr=r["share_stderr"], marker="o", capsize=3, label=name)
            row[1].errorbar(r["ratios"], r["D"], yerr=r["D_stderr"], marker="o", capsize=3, label=name)
        row[0].set(xlabel="order ratio r = m / (n-2)", ylabel="|ΔI^(m)| / Σ|ΔI^(m')|")
        row[0].set_title(f"{setting.title}: share of the change, {VALUE_LABELS[value]}", fontsize=9)
        row[1].set(xlabel="order ratio r = m / (n-2)", ylabel="D^(m)")
        row[1].set_title(f"disentanglement (clean probes), {VALUE_LABELS[value]}", fontsize=9)
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- one setting
def run_setting(setting: Setting, args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """Models, probes, attacks and analyses of one setting; returns its results and Markdown lines."""
    start = time.time()
    ensure_models(setting, args.retrain)
    paths = {"standard": setting.standard, "adversarial": setting.adversarial}
    models = {k: load_classifier(str(p)).model for k, p in paths.items()}
    x, y, (x_all, y_all) = probe_candidates(setting, args.split, setting.candidates, args.seed)
    accuracy = {
        k: model_accuracy(m, x_all[: args.robust_images], y_all[: args.robust_images], setting.eps_train, args.seed)
        for k, m in models.items()
    }
    with torch.no_grad():
        correct = {k: m(x).argmax(1) == y for k, m in models.items()}
    keep = correct["standard"] & correct["adversarial"]
    x, y = x[keep], y[keep]
    attacks = {k: attack(m, x, y, setting, args.seed) for k, m in models.items()}
    both = attacks["standard"]["reached"] & attacks["adversarial"]["reached"]
    idx = both.nonzero().squeeze(1)[: setting.num_images]
    if idx.numel() < 2:
        raise RuntimeError(
            f"{setting.name}: only {idx.numel()} probes reached the logit-drop window for both models; raise "
            "--candidates or --eps"
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
        f"{setting.name}: {setting.candidates} candidates, {int(keep.sum())} correct for both, {int(both.sum())} "
        f"reached by both; using {idx.numel()}",
        flush=True,
    )
    by_value: dict[str, dict[str, Any]] = {value: {} for value in args.values}
    seconds = {}
    for k, m in models.items():
        t0 = time.time()
        analysed = analyse(m, x[idx], attacks[k]["x_adv"][idx], y[idx], setting, args.values, args)
        seconds[k] = time.time() - t0
        for value, r in analysed.items():
            r["attack"] = attack_stats[k]
            r["accuracy"] = accuracy[k]
            by_value[value][k] = r
        first = analysed[args.values[0]]
        print(
            f"{setting.name}/{k}: {first['forward_passes']:,} masked forward passes for {len(args.values)} value "
            f"function(s) in {seconds[k]:.1f} s",
            flush=True,
        )
    summaries = {}
    for value, results in by_value.items():
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
        summaries[value] = summarize(results, boot)
    n = setting.grid**2
    md = [f"## {setting.title}", ""]
    for value, results in by_value.items():
        md += [f"### {VALUE_LABELS[value]}", ""]
        md += [table(f"standard ({paths['standard'].name})", results["standard"]), ""]
        md += [table(f"adversarially trained ({paths['adversarial'].name})", results["adversarial"]), ""]
    md += [
        "### Summary",
        "",
        f"- probes: {idx.numel()} {args.split} images correct for both models and attacked to a logit drop in "
        f"({setting.threshold:g}, {setting.threshold + 0.5:g}] (L∞ cap {setting.eps:g}) for both; grid "
        f"{setting.grid}x{setting.grid} (n={n}), {setting.num_pairs} neighbour pairs x {setting.num_contexts} "
        f"contexts per order, seed {args.seed}",
        *(
            f"- {k}: clean accuracy {v['clean']:.3f}, PGD-20 (L∞ ε = {v['eps']:g}) accuracy {v['pgd20']:.3f} on "
            f"{v['images']} {args.split} images"
            for k, v in accuracy.items()
        ),
        *(
            f"- attack on {k}: reached {v['reached_fraction']:.2f} of correct candidates; kept L∞ mean "
            f"{v['kept_linf_mean']:.3f} (median {v['kept_linf_median']:.3f}), logit drop {v['kept_logit_drop']:.2f}"
            for k, v in attack_stats.items()
        ),
        *(line for value, results in by_value.items() for line in summary_lines(value, results, summaries[value])),
        f"- time {time.time() - start:.0f} s (analysis: "
        + ", ".join(f"{k} {s:.0f} s" for k, s in seconds.items())
        + f"; torch threads {torch.get_num_threads()})",
    ]
    payload = {
        "setting": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(setting).items()},
        "num_images": int(idx.numel()),
        "accuracy": accuracy,
        "attack": attack_stats,
        "summary": summaries,
        "results": by_value,
        "seconds": time.time() - start,
    }
    figure(setting, by_value, Path(args.out) / f"figure_{setting.name}.png")
    return payload, md


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(SETTINGS) if args.setting == "all" else [args.setting]
    payload: dict[str, Any] = {"args": vars(args), "settings": {}}
    text: list[str] = []
    for name in names:
        result, md = run_setting(resolve_setting(name, args), args)
        payload["settings"][name] = result
        text += [*md, ""]
        print("\n".join(md), flush=True)
        # written after each setting, so a long run keeps what it has measured
        (out / "tables.md").write_text("\n".join(text))
        (out / "results.json").write_text(json.dumps(payload, indent=2))
    payload["seconds"] = time.time() - start
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    print(f"total time {payload['seconds']:.0f} s; wrote {out / 'results.json'}, {out / 'tables.md'}, figures")
    return payload


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Reproduction on digits of the IR paper's transfer experiments (Wang et al., ICLR 2021, Table 1, Table 4,
Figure 1, Figure 3a), at CPU scale, with ``trainer.predict`` and the transfer evaluation.

Sources (checkpoints/): ``small_cnn``, ``resnet8`` (a ResNet: λ=1, SGM γ=0.2), ``densenet_small``
(SGM γ=0.5); targets: ``lenet``, ``mlp``, ``vgg_small``. For every source the attacks PGD, PGD+IR,
MI, MI+IR, VR, VR+IR, DI, and (skip-connection sources only) SGM, SGM+IR and HybridIR run on the
first ``--limit`` test digits (L∞, ε = ``--eps``, step ``--step-size``, ``--steps`` steps), each
recording the margin of every target after every step, so the success rate is reported both at
the last step and at the step chosen by leave-one-out over images (App. K). The λ sweep runs
PGD+IR for λ in ``--lambdas`` with the cross-entropy and the margin classification loss (λ = 0 is
PGD from the same zero start), reporting white-box success next to transfer.

Outputs in ``--out`` (default ``runs/transfer_digits``): one attack folder per run (resumable: a
rerun skips finished work), ``main/`` and ``lambda/`` transfer reports (``report.md`` in the shape of
Table 1, CSV, JSON, TensorBoard, ``utility_vs_interaction.png`` = Figure 1), ``lambda_sweep.md`` and
``lambda_sweep.png``.

    python scripts/transfer_digits.py                       # about 20-40 CPU-minutes
    python scripts/transfer_digits.py --limit 64 --steps 10 --sources small_cnn   # smoke run

The IR estimate uses a coarser grid than the paper (8×8 cells of 2×2 pixels on 16×16 digits) and
fewer coalitions (``--ir-samples`` of ``--ir-group-size`` cells) to fit a CPU budget; the
interaction *measured* in the reports is the paper's Eq. 4 on the same 8×8 grid, exactly (every
player, value margin_max, 1/(n−1) factor).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from lit_advgame.data import DigitsDataModule
from lit_advgame.evaluation import evaluate_transfer
from lit_advgame.predict import AdversarialWriter, AttackModule
from lit_advgame.utils.io import atomic_write, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("small_cnn", "resnet8", "densenet_small")
TARGETS = ("lenet", "mlp", "vgg_small")
METHODS = ("pgd", "pgd+ir", "mi", "mi+ir", "vr", "vr+ir", "di", "sgm", "sgm+ir", "hybridir")
SKIP_ONLY = ("sgm", "sgm+ir", "hybridir")  # need skip connections (ResNet/DenseNet sources)
LABELS = {
    "pgd": "PGD",
    "pgd+ir": "PGD+IR",
    "mi": "MI",
    "mi+ir": "MI+IR",
    "vr": "VR",
    "vr+ir": "VR+IR",
    "di": "DI",
    "sgm": "SGM",
    "sgm+ir": "SGM+IR",
    "hybridir": "HybridIR",
}


def uses_ir(method: str) -> bool:
    """Whether the preset ``method`` has the interaction-reduction term (``*+ir`` and HybridIR)."""
    return method.endswith("+ir") or method == "hybridir"


def checkpoint(arch: str) -> dict:
    """The model spec of checkpoints/digits_<arch>.pt, named by its architecture."""
    path = ROOT / "checkpoints" / f"digits_{arch}.pt"
    if not path.is_file():
        raise SystemExit(f"missing {path}; build it with scripts/make_checkpoints.sh")
    return {"path": str(path), "name": arch}


def run_attack(out: Path, source: str, preset: str, overrides: dict, name: str, args) -> Path:
    """One attack run with trainer.predict (resumes, or returns at once, if ``out`` holds it)."""
    module = AttackModule(
        checkpoint(source),
        preset,
        overrides=overrides,
        seed=args.seed,
        record="scores",
        score_models=[checkpoint(t) for t in args.targets],
        name=name,
        num_classes=10,
        input_shape=(1, 16, 16),
    )
    data = DigitsDataModule(image_size=16, channels=1, batch_size=args.batch_size, seed=0, predict_limit=args.limit)
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=1,
        inference_mode=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[AdversarialWriter(str(out))],
    )
    start = time.perf_counter()
    trainer.predict(module, datamodule=data, return_predictions=False)
    summary = json.loads((out / "summary.json").read_text())
    print(
        f"  {name:40s} white-box {100 * summary['whitebox_success']:5.1f}%  ({time.perf_counter() - start:6.1f} s)",
        flush=True,
    )
    return out


def sweep_table(report, args) -> str:
    lines = [
        "| source | loss | λ | white-box | mean LOO transfer | mean last-step transfer | interaction | ‖δ‖₂ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        meta = row.meta.get("config", {})
        loo = [c.success_loo for c in row.targets.values()]
        last = [c.success for c in row.targets.values()]
        lam = meta.get("ir_lambda") or 0.0
        lines.append(
            f"| {row.source} | {meta.get('loss')} | {lam:g} | {100 * row.whitebox_success:.1f} | "
            f"{100 * sum(loo) / len(loo):.1f} | {100 * sum(last) / len(last):.1f} | {row.interaction:.3g} | "
            f"{row.perturbation_l2:.2f} |"
        )
    return "\n".join(lines)


def sweep_figure(report, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = list(dict.fromkeys(r.source for r in report.rows))
    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 3.2), squeeze=False)
    for ax, source in zip(axes[0], sources):
        for loss, style in (("ce", "-"), ("margin", "--")):
            rows = [r for r in report.rows if r.source == source and r.meta["config"]["loss"] == loss]
            rows.sort(key=lambda r: r.meta["config"]["ir_lambda"] or 0.0)
            lams = [max(r.meta["config"]["ir_lambda"] or 0.0, 1e-3) for r in rows]
            transfer = [100 * sum(c.success_loo for c in r.targets.values()) / len(r.targets) for r in rows]
            whitebox = [100 * r.whitebox_success for r in rows]
            ax.plot(lams, transfer, style + "o", label=f"transfer (LOO), {loss}", ms=3)
            ax.plot(lams, whitebox, style + "s", label=f"white-box, {loss}", ms=3, alpha=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("λ (0 plotted at 1e-3)")
        ax.set_ylabel("success rate (%)")
        ax.set_title(f"PGD+IR λ sweep, source {source}", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    atomic_write(out, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "transfer_digits"))
    parser.add_argument("--sources", nargs="+", default=list(SOURCES))
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--limit", type=int, default=100, help="test digits attacked (the split has 270)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eps", default="32/255")
    parser.add_argument("--step-size", default="4/255")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--ir-grid", type=int, default=8)
    parser.add_argument("--ir-samples", type=int, default=8)
    parser.add_argument("--ir-group-size", type=int, default=8)
    parser.add_argument("--lambdas", nargs="+", type=float, default=[0.0, 0.001, 0.01, 0.1, 1.0, 10.0])
    parser.add_argument("--sweep-sources", nargs="+", default=["small_cnn", "resnet8"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    base = {"eps": args.eps, "step_size": args.step_size, "steps": args.steps}
    # the IR estimator's options go only to presets with the IR term (the others reject them as having no effect)
    ir_options = {"ir_grid": args.ir_grid, "ir_num_samples": args.ir_samples, "ir_group_size": args.ir_group_size}
    # VR+IR keeps the paper's halving of steps relative to the others (App. M.1: 50 instead of 100)
    vr_ir = {"steps": max(1, args.steps // 2)}
    interaction = {"grid": args.ir_grid, "form": "single", "num_samples": args.ir_grid**2}
    targets = [checkpoint(t) for t in args.targets]
    started = time.perf_counter()

    print("main table runs:", flush=True)
    main_runs = []
    for source in args.sources:
        for method in args.methods:
            if method in SKIP_ONLY and source == "small_cnn":
                continue
            overrides = {**base, **(ir_options if uses_ir(method) else {}), **(vr_ir if method == "vr+ir" else {})}
            name = f"{source}/{LABELS[method]}"
            main_runs.append(
                run_attack(out / "attacks" / source / method.replace("+", "_"), source, method, overrides, name, args)
            )

    print("λ sweep runs:", flush=True)
    sweep_runs = []
    for source in args.sweep_sources:
        for loss in ("ce", "margin"):
            for lam in args.lambdas:
                # λ = 0 is PGD from the same zero start (the IR term would be computed and multiplied by 0)
                preset = "pgd" if lam == 0 else "pgd+ir"
                ir = {**ir_options, "ir_lambda": lam} if lam else {}
                overrides = {**base, "loss": loss, "random_start": False, **ir}
                name = f"{source}/PGD+IR λ={lam:g} {loss}"
                folder = out / "attacks" / source / f"sweep_{loss}_lambda{lam:g}"
                sweep_runs.append(run_attack(folder, source, preset, overrides, name, args))
    print(f"attacks done in {time.perf_counter() - started:.0f} s; evaluating", flush=True)

    report = evaluate_transfer(
        main_runs,
        targets,
        interaction=interaction,
        device="cpu",
        output_dir=out / "main",
        title=f"Digits transfer success rates (%), L∞ ε={args.eps}, {args.steps} steps",
    )
    sweep = evaluate_transfer(
        sweep_runs,
        targets,
        interaction=interaction,
        device="cpu",
        output_dir=out / "lambda",
        title=f"Digits PGD+IR λ sweep, L∞ ε={args.eps}, {args.steps} steps",
    )
    table = sweep_table(sweep, args)
    atomic_write_text(
        out / "lambda_sweep.md", f"# PGD+IR λ sweep (ε={args.eps}, {args.steps} steps, zero start)\n\n{table}\n"
    )
    sweep_figure(sweep, out / "lambda_sweep.png")
    print(report.markdown())
    print(table)
    print(f"\nall done in {time.perf_counter() - started:.0f} s; reports in {out}")


if __name__ == "__main__":
    main()

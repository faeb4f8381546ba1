"""Certified accuracy against L2 radius for randomized smoothing at several noise levels σ.

Reproduces, at small scale, the σ-comparison of Cohen, Rosenfeld & Kolter (ICML 2019, Fig. 7/Table):
for each σ (default 0.12, 0.25, 0.5) train a base classifier with Gaussian noise augmentation
(:class:`lit_advgame.training.smoothing.RandomizedSmoothing`; noise in [0, 1] pixel space, unclamped) or
load it from ``<out-dir>/sigma_<σ>.ckpt``, run CERTIFY (n0, n, α) on test points spread evenly over the
test split, and print the certified accuracy at each radius as a Markdown table; also writes the table
(``certified_accuracy.md``), a figure (``certified_accuracy.png``) and per-example TSVs.

The default run (scikit-learn digits at 8×8, small CNN, 100 test points, n = 1000) takes a few
minutes on 2 CPU cores. With n samples and level α no radius above σ·Φ⁻¹(α^{1/n}) can be certified
(2.46σ for n = 1000, α = 0.001), which is printed too. ``--dataset mnist`` uses the MNIST test set
(``--data-dir``, default ../shared/data/mnist-t10k, split into train/val/test).

Examples::

    python scripts/smoothing_certify.py
    python scripts/smoothing_certify.py --dataset mnist --epochs 3 --n 10000 --num-test 200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lit_advgame.data import DigitsDataModule, MNISTDataModule
from lit_advgame.smoothing.plots import certified_accuracy_figure
from lit_advgame.smoothing.results import certified_accuracy_table
from lit_advgame.smoothing.statistics import radius_cap
from lit_advgame.training.smoothing import RandomizedSmoothing
from lit_advgame.utils.io import atomic_write_text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--dataset", choices=("digits", "mnist"), default="digits")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "mnist-t10k"), help="MNIST folder")
    parser.add_argument("--image-size", type=int, default=None, help="image side (default: 8 for digits, 28 for MNIST)")
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.12, 0.25, 0.5])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument("--n0", type=int, default=100, help="CERTIFY selection samples")
    parser.add_argument("--n", type=int, default=1000, help="CERTIFY estimation samples")
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--num-test", type=int, default=100, help="test points, spread evenly over the test split")
    parser.add_argument("--certify-batch-size", type=int, default=1000, help="noisy images per forward pass")
    parser.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="runs/smoothing_certify")
    parser.add_argument("--retrain", action="store_true", help="train even if a checkpoint exists")
    parser.add_argument("--accelerator", default="auto")
    return parser.parse_args(argv)


def build_datamodule(args: argparse.Namespace) -> pl.LightningDataModule:
    if args.dataset == "digits":
        return DigitsDataModule(image_size=args.image_size or 8, batch_size=args.batch_size, seed=args.seed)
    return MNISTDataModule(
        data_dir=args.data_dir, image_size=args.image_size or 28, batch_size=args.batch_size, seed=args.seed
    )


def trainer(args: argparse.Namespace, out_dir: Path, name: str, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator=args.accelerator,
        devices=1,
        logger=pl.loggers.TensorBoardLogger(str(out_dir), name=name, default_hp_metric=False),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        **kwargs,
    )


def train_or_load(
    args: argparse.Namespace, dm, sigma: float, out_dir: Path, certify_kwargs: dict
) -> RandomizedSmoothing:
    ckpt = out_dir / f"sigma_{sigma:g}.ckpt"
    if ckpt.is_file() and not args.retrain:
        module = RandomizedSmoothing.load_from_checkpoint(ckpt, map_location="cpu", **certify_kwargs)
        if abs(module.sigma - sigma) > 1e-12:
            raise ValueError(f"{ckpt} was trained with sigma={module.sigma}, not {sigma}; pass --retrain")
        print(f"σ={sigma:g}: loaded {ckpt}", flush=True)
        return module
    pl.seed_everything(args.seed, verbose=False)
    epochs = args.epochs
    module = RandomizedSmoothing(
        arch=args.arch,
        num_classes=dm.num_classes,
        input_shape=dm.input_shape,
        mean=dm.mean,
        std=dm.std,
        sigma=sigma,
        optimizer=lambda params: torch.optim.Adam(params, lr=args.lr, weight_decay=1e-4),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
        **certify_kwargs,
    )
    start = time.time()
    fit_trainer = trainer(args, out_dir, f"sigma_{sigma:g}", max_epochs=epochs)
    fit_trainer.fit(module, datamodule=dm)
    fit_trainer.save_checkpoint(ckpt)
    print(f"σ={sigma:g}: trained {epochs} epochs in {time.time() - start:.0f} s -> {ckpt}", flush=True)
    return module


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dm = build_datamodule(args)
    test_size = dm.split_sizes()["test"]
    num_test = min(args.num_test, test_size)
    skip = max(1, test_size // num_test)
    certify_kwargs = {
        "certify": True,
        "n0": args.n0,
        "n": args.n,
        "alpha": args.alpha,
        "certify_batch_size": args.certify_batch_size,
        "radii": args.radii,
        "certify_skip": skip,
        "certify_limit": num_test,
        "seed": args.seed,
    }
    print(
        f"{args.dataset}: {test_size} test images, certifying {num_test} (every {skip}th) with "
        f"n0={args.n0}, n={args.n}, α={args.alpha}",
        flush=True,
    )

    rows, records, extra = {}, {}, []
    for sigma in args.sigmas:
        module = train_or_load(args, dm, sigma, out_dir, certify_kwargs)
        start = time.time()
        metrics = trainer(args, out_dir, f"sigma_{sigma:g}").test(module, datamodule=dm, verbose=False)[0]
        result = module.certified
        assert result is not None
        name = f"σ={sigma:g}"
        rows[name] = result.certified_accuracy(args.radii).tolist()
        records[name] = result
        result.write_tsv(out_dir / f"sigma_{sigma:g}_certify.tsv")
        extra.append(
            f"| {name} | {metrics['test/acc_clean']:.3f} | {metrics['test/acc']:.3f} | {result.accuracy():.3f} | "
            f"{result.abstain_rate():.3f} | {radius_cap(args.n, args.alpha, sigma):.3f} |"
        )
        print(f"{name}: certified {len(result)} points in {time.time() - start:.0f} s", flush=True)

    table = certified_accuracy_table(rows, args.radii)
    summary = "\n".join(
        [
            "| | base acc (clean) | base acc (noisy) | smoothed acc | abstain rate | radius cap |",
            "|---|---|---|---|---|---|",
            *extra,
        ]
    )
    text = (
        f"## Certified accuracy vs L2 radius ({args.dataset}, {args.arch}, {num_test} test points, "
        f"n0={args.n0}, n={args.n}, α={args.alpha})\n\n{table}\n\n{summary}\n"
    )
    print("\n" + text)
    atomic_write_text(out_dir / "certified_accuracy.md", text)
    figure = certified_accuracy_figure(
        records, args.radii, title=f"Randomized smoothing on {args.dataset} (n={args.n})"
    )
    figure.savefig(out_dir / "certified_accuracy.png")
    print(f"wrote {out_dir / 'certified_accuracy.md'} and {out_dir / 'certified_accuracy.png'}")
    return rows


if __name__ == "__main__":
    main()

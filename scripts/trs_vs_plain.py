#!/usr/bin/env python
"""TRS versus a plain ensemble: intra-ensemble transferability and white-box PGD robustness.

Trains two ensembles of the same members from the same initial weights (seeded) — a plain one
(sum of the members' cross-entropies, ``regularizer="none"``) and a TRS one (Yang et al. 2021,
``regularizer="trs"``) — then, on the test split:

* clean accuracy of each ensemble and of its members;
* the intra-ensemble transfer matrix (:func:`lit_advgame.ensembles.transfer_report`, DVERGE
  protocol): L∞ PGD on each member (and on the ensemble output), success rate on every model,
  over probe points that all members and the ensemble classify correctly;
* white-box L∞ PGD accuracy of the ensemble output at a few ε (denominator: all probe points).

Prints Markdown tables and saves everything as JSON. Defaults take a few minutes on 2 CPU cores
(scikit-learn digits at 16×16, small CNNs); ``--dataset mnist`` uses the MNIST test set at
``../shared/data/mnist-t10k`` (split train/val/test) and ``--epochs``/``--width`` buy more.

Example::

    python scripts/trs_vs_plain.py                                  # digits, defaults
    python scripts/trs_vs_plain.py --dataset mnist --epochs 4 --limit-train-batches 40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from lit_advgame.attacks import Attack
from lit_advgame.attacks.model_mode import eval_mode
from lit_advgame.ensembles import transfer_report
from lit_advgame.training.ensemble import Ensemble

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist-t10k"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--dataset",
        choices=["digits", "mnist", "auto"],
        default="digits",
        help="auto: MNIST when --data-dir holds it, else digits",
    )
    p.add_argument("--data-dir", default=str(MNIST_DIR))
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--arch", default="small_cnn")
    p.add_argument("--width", type=int, default=16, help="small_cnn width (ignored for other archs)")
    p.add_argument("--epochs", type=int, default=8, help="epochs of each ensemble")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--limit-train-batches", type=float, default=1.0)
    p.add_argument("--scaling", choices=["reference", "mean"], default="reference")
    p.add_argument("--variant", choices=["plus", "vanilla"], default="plus")
    p.add_argument("--lambda-sim", type=float, default=10.0, help="λ_a (reference MNIST: 10, CIFAR-10: 40)")
    p.add_argument(
        "--lambda-smooth",
        type=float,
        default=100.0,
        help="λ_b (reference MNIST: 10, CIFAR-10: 2.5, both at batch 128; with reference scaling the "
        "smoothness weight falls as 1/B², and 10 gave a smaller white-box gain on digits)",
    )
    p.add_argument("--eps-start", type=float, default=0.1, help="δ0 (reference MNIST: 0.1)")
    p.add_argument("--eps-end", type=float, default=0.2, help="δM (reference MNIST: 0.2)")
    p.add_argument("--inner-steps", type=int, default=6)
    p.add_argument("--probe", type=int, default=200, help="test points for the attacks")
    p.add_argument("--transfer-eps", type=float, default=0.1)
    p.add_argument("--attack-steps", type=int, default=20)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--whitebox-eps", default="0.02,0.05,0.1", help="comma-separated ε of the white-box PGD")
    p.add_argument("--whitebox-steps", type=int, default=None, help="white-box PGD steps (default: --attack-steps)")
    p.add_argument(
        "--whitebox-loss",
        choices=["ce", "margin"],
        default="ce",
        help="loss maximised by the white-box PGD on the ensemble output (log mean probability)",
    )
    p.add_argument(
        "--whitebox-restarts",
        type=int,
        default=1,
        help="white-box random restarts; a point is robust only if it survives all of them",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default); 1 is fastest for these small models on a busy machine",
    )
    p.add_argument("--out", default="runs/trs_vs_plain/results.json")
    return p.parse_args(argv)


def make_datamodule(args: argparse.Namespace) -> tuple[pl.LightningDataModule, str]:
    use_mnist = args.dataset == "mnist" or (args.dataset == "auto" and Path(args.data_dir).is_dir())
    if use_mnist:
        from lit_advgame.data import MNISTDataModule

        return MNISTDataModule(data_dir=args.data_dir, batch_size=args.batch_size, seed=args.seed), "mnist-t10k"
    from lit_advgame.data import DigitsDataModule

    return DigitsDataModule(image_size=16, batch_size=args.batch_size, seed=args.seed), "digits16"


def train(args: argparse.Namespace, dm, regularizer: str, kwargs: dict[str, Any]) -> tuple[Ensemble, float]:
    pl.seed_everything(args.seed, workers=True)  # same initial members for both methods
    module = Ensemble(
        arch=args.arch,
        num_members=args.members,
        regularizer=regularizer,
        regularizer_kwargs=kwargs,
        scaling=args.scaling,
        seed=args.seed,
        num_classes=dm.num_classes,
        input_shape=dm.input_shape,
        mean=dm.mean,
        std=dm.std,
        arch_kwargs={"width": args.width} if args.arch == "small_cnn" else None,
        optimizer=lambda params: torch.optim.Adam(params, lr=args.lr, weight_decay=1e-4),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=args.limit_train_batches,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return module.eval(), time.perf_counter() - start


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with eval_mode([model]), torch.no_grad():
        return float((torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)]) == y).float().mean())


def evaluate(args: argparse.Namespace, module: Ensemble, dm, test: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    x_test, y_test = test
    ensemble, members = module.model, list(module.model.members)
    x, y = dm.probe_set(min(args.probe, len(y_test)), split="test", seed=args.seed)
    result: dict[str, Any] = {
        "clean_acc": accuracy(ensemble, x_test, y_test),
        "member_clean_acc": [accuracy(m, x_test, y_test) for m in members],
    }
    eps = args.transfer_eps
    generator = torch.Generator().manual_seed(args.seed)
    factory = lambda model: Attack(
        model, "linf", eps=eps, step_size=eps / 4, steps=args.attack_steps, random_start=True, generator=generator
    )
    report = transfer_report(members, x, y, factory, ensemble=ensemble, restarts=args.restarts)
    result["transfer"] = report.to_dict()
    result["transfer_markdown"] = report.to_markdown()
    whitebox = {}
    steps = args.whitebox_steps or args.attack_steps
    for e in [float(v) for v in args.whitebox_eps.split(",") if v.strip()]:
        attack = Attack(
            ensemble,
            "linf",
            eps=e,
            step_size=e / 4,
            steps=steps,
            loss=args.whitebox_loss,
            random_start=True,
            generator=torch.Generator().manual_seed(args.seed),
        )
        robust = torch.ones_like(y, dtype=torch.bool)
        for _ in range(args.whitebox_restarts):
            with eval_mode([ensemble]), torch.no_grad():
                robust &= ensemble(attack(x, y)).argmax(1) == y
        whitebox[str(e)] = float(robust.float().mean())
    result["whitebox_acc"] = whitebox
    result["probe_clean_acc"] = accuracy(ensemble, x, y)
    return result


def markdown_summary(results: dict[str, dict[str, Any]], eps_list: list[str]) -> str:
    header = (
        "| ensemble | clean acc | member acc | transfer between members (mean off-diag.) | "
        "member → ensemble (mean) | " + " | ".join(f"PGD ε={e}" for e in eps_list) + " |"
    )
    lines = [header, "|" + "---|" * (5 + len(eps_list))]
    for name, r in results.items():
        t = r["transfer"]
        n = len(r["member_clean_acc"])
        to_ensemble = sum(row[n] for row in t["matrix"][:n]) / n
        members = ", ".join(f"{100 * a:.1f}" for a in r["member_clean_acc"])
        wb = " | ".join(f"{100 * r['whitebox_acc'][e]:.1f}" for e in eps_list)
        lines.append(
            f"| {name} | {100 * r['clean_acc']:.1f} | {members} | {100 * t['off_diagonal_mean']:.1f} | "
            f"{100 * to_ensemble:.1f} | {wb} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dm, data_name = make_datamodule(args)
    dm.setup()
    test = dm.probe_set(len(dm.dataset("test")), split="test", seed=args.seed)
    trs_kwargs = {
        "lambda_sim": args.lambda_sim,
        "lambda_smooth": args.lambda_smooth,
        "variant": args.variant,
        "eps_start": args.eps_start,
        "eps_end": args.eps_end,
        "inner_steps": args.inner_steps,
    }
    results, timings = {}, {}
    for name, reg, kwargs in (("plain", "none", {}), ("trs", "trs", trs_kwargs)):
        module, seconds = train(args, dm, reg, kwargs)
        timings[name] = seconds
        results[name] = evaluate(args, module, dm, test)
        results[name]["train_seconds"] = seconds
        print(f"[{name}] trained in {seconds:.0f} s; clean acc {100 * results[name]['clean_acc']:.1f}%", flush=True)

    eps_list = list(results["plain"]["whitebox_acc"])
    summary = markdown_summary(results, eps_list)
    print(f"\n## TRS vs plain ensemble on {data_name} ({args.members}× {args.arch}, {args.epochs} epochs)\n")
    print(
        f"Transfer attack: L∞ PGD ε={args.transfer_eps}, {args.attack_steps} steps of ε/4, random start, "
        f"{args.restarts} restart(s); success rates in % over the probe points all models classify correctly. "
        f"White-box: PGD ({args.whitebox_loss} loss) on the ensemble output "
        f"({args.whitebox_steps or args.attack_steps} steps of ε/4, "
        f"{args.whitebox_restarts} restart(s)), accuracy in % over {args.probe} test points.\n"
    )
    print(summary)
    for name, r in results.items():
        print(
            f"\n### {name}: transfer success (%), rows = attacked model, columns = evaluated model "
            f"({r['transfer']['num_points']} points)\n"
        )
        print(r["transfer_markdown"])
    payload = {
        "dataset": data_name,
        "args": vars(args),
        "trs_kwargs": trs_kwargs,
        "results": results,
        "summary_markdown": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nSaved {out}")
    return payload


if __name__ == "__main__":
    main()

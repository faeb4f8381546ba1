#!/usr/bin/env python
"""Scaling of the PGD+IR attack (CPU by default; not a timed test).

One parameter at a time varies around a base setting (``--size``, ``--grid``, ``--groups``,
``--batch-size``, ``--images``); each point runs ``--steps`` steps of PGD+IR on random images with a
randomly initialised source and reports:

* seconds per image and step (wall clock and process CPU time, the median over ``--repeats`` runs);
* the peak of autograd memory of the attack batch (and per image), measured as the bytes of tensors
  saved for backward alive at once (:class:`lit_advgame.utils.memory.SavedTensorMeter`:
  deterministic, device-independent; on CUDA also ``torch.cuda.max_memory_allocated``).

For each sweep it fits the scaling exponent ``b`` of ``cost ∝ parameter^b`` (least squares on the
logarithms, ``scipy.stats.linregress``). All points come from one run, so the ratios between them are
what to read. The IR engine back-propagates its masked inputs chunk by chunk, so memory must grow with
the masked-input batch size (``--batch-size``, ``ir_batch_size``) and the image size, and not with the
groups nor the images beyond the attack's own batch. Finally the fitted exponents extrapolate the
time per image of 100 steps for the paper's recipes (32 groups of 32 cells on a 16×16 grid; CIFAR 32²,
ImageNet 224²) with this source: a rough guide, the source architecture is not the paper's.

Example::

    python scripts/bench_scale.py                          # ResNet-20 (CIFAR) on 1 thread, ~1 min
    python scripts/bench_scale.py --threads 2 --sizes 32 64 128 224
    python scripts/bench_scale.py --arch torchvision:resnet18 --size 64 --device cuda
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from scipy.stats import linregress

from lit_advgame.attacks import build_attack
from lit_advgame.utils.memory import SavedTensorMeter

#: the paper recipes to extrapolate to: image size, grid, groups (of 32 cells)
RECIPES = {
    "CIFAR-10 (32², 16×16 grid, 32 groups)": (32, 16, 32),
    "ImageNet (224², 16×16 grid, 32 groups)": (224, 16, 32),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet20", help="a registered model name or torchvision:<arch>")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="base image size (pixels per side)")
    parser.add_argument("--grid", type=int, default=8, help="base grid L (L×L cells)")
    parser.add_argument("--groups", type=int, default=8, help="base groups per step (ir_num_samples)")
    parser.add_argument("--group-size", type=int, default=8, help="cells per group (ir_group_size)")
    parser.add_argument("--batch-size", type=int, default=32, help="base masked inputs per forward (ir_batch_size)")
    parser.add_argument("--images", type=int, default=2, help="base images per attack batch")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--grids", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--groups-sweep", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--images-sweep", type=int, nargs="+", default=[1, 2, 4])
    return parser.parse_args()


def build_source(args: argparse.Namespace) -> torch.nn.Module:
    from lit_advgame.models import build_model

    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=args.classes, in_channels=3)
    return model.to(args.device).eval()


def measure(model: torch.nn.Module, args: argparse.Namespace, setting: dict[str, int]) -> dict[str, float]:
    """Seconds (wall, CPU) and peak saved bytes per image and step of PGD+IR at ``setting``."""
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    size, images = setting["size"], setting["images"]
    x = torch.rand(images, 3, size, size, generator=generator).to(device)
    y = torch.randint(0, args.classes, (images,), generator=generator).to(device)
    attack = build_attack(
        "pgd+ir",
        model,
        steps=args.steps,
        seed=0,
        random_start=True,  # δ = 0 makes step 1 pure CE (the IR gradient vanishes there); same cost either way
        ir_grid=setting["grid"],
        ir_num_samples=setting["groups"],
        ir_group_size=args.group_size,
        ir_batch_size=setting["batch_size"],
    )
    walls, cpus, meter = [], [], SavedTensorMeter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        with meter:
            attack(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    per = images * args.steps
    result = {
        "wall_s": statistics.median(walls) / per,
        "cpu_s": statistics.median(cpus) / per,
        "saved_mb": meter.peak / 2**20,
        "saved_mb_per_image": meter.peak / 2**20 / images,
    }
    if device.type == "cuda":
        result["cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def exponent(values: list[int], costs: list[float]) -> float:
    """Fitted ``b`` of ``cost ∝ value^b`` (least squares on the logarithms)."""
    if len(values) < 2:
        return math.nan
    return float(linregress([math.log(v) for v in values], [math.log(max(c, 1e-12)) for c in costs]).slope)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = build_source(args)
    base = {"size": args.size, "grid": args.grid, "groups": args.groups, "batch_size": args.batch_size}
    base["images"] = args.images
    sweeps = {
        "size": args.sizes,
        "grid": args.grids,
        "groups": args.groups_sweep,
        "batch_size": args.batch_sizes,
        "images": args.images_sweep,
    }
    print(
        f"PGD+IR scaling: source {args.arch} on {args.device}, torch threads {torch.get_num_threads()}, "
        f"{args.steps} steps, groups of {args.group_size} cells, median of {args.repeats}; "
        f"base {base}; costs per image and step"
    )
    measure(model, args, base)  # warm-up
    fitted: dict[str, dict[str, float]] = {}
    for name, values in sweeps.items():
        rows = [(value, measure(model, args, {**base, name: value})) for value in values]
        cuda = "cuda_mb" in rows[0][1]
        print(f"\n{name:>10} | wall s  | CPU s   | saved MB | per image" + (" | CUDA MB" if cuda else ""))
        for value, row in rows:
            line = f"{value:>10} | {row['wall_s']:.4f}  | {row['cpu_s']:.4f}  | {row['saved_mb']:8.2f}"
            line += f" | {row['saved_mb_per_image']:9.2f}"
            print(line + (f" | {row['cuda_mb']:8.2f}" if "cuda_mb" in row else ""))
        fitted[name] = {key: exponent(values, [row[key] for _, row in rows]) for key in rows[0][1]}
        print(f"{'exponent':>10} | " + " | ".join(f"{key} {b:+.2f}" for key, b in fitted[name].items()))

    reference = measure(model, args, base)["cpu_s"]
    print(f"\nextrapolated CPU seconds per image for 100 steps with {args.arch} (exponents above):")
    for label, (size, grid, groups) in RECIPES.items():
        scale = 1.0
        for name, value in (("size", size), ("grid", grid), ("groups", groups)):
            scale *= (value / base[name]) ** fitted[name]["cpu_s"]
        print(f"  {label}: {100 * reference * scale:.1f} s")


if __name__ == "__main__":
    main()

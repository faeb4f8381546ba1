#!/usr/bin/env python
"""Benchmark of the interaction engine (CPU by default; not a timed test).

For each model it measures, in the same run and at the same batch size:

* the raw batched forward throughput of the model (images / s, inputs already built);
* the masked evaluations per second of the multi-order estimator
  (``multi_order_interactions``: sampling pairs and contexts, building the masked inputs,
  deduplication, forward passes, value function), i.e. its ``num_forward_passes`` / wall time;

and prints their ratio (target >= 0.9), from wall-clock and from process CPU time (the latter is
steadier on a shared machine), and the share of the estimator's CPU time spent inside the model's
forward pass (everything else -- sampling, masks, bookkeeping -- is the engine's overhead). Raw and estimator
timings alternate over the same number of images, and the median over ``--repeats`` rounds is reported. It also
prints the forward passes per image of the reference recipe (16x16 grid, 200 pairs, 100 contexts), per order
and for the order presets, for one input and for clean + adversarial, so that users can budget.

Example::

    python scripts/bench_interactions.py                       # small CNN 28x28 and ResNet-20 32x32
    python scripts/bench_interactions.py --models small_cnn --batch-size 512 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lit_advgame.interactions import (
    ORDER_PRESETS,
    InputGame,
    MultiOrderApproximator,
    resolve_orders,
)
from lit_advgame.interactions.multi_order import context_counts

MODEL_SPECS = {
    "small_cnn": {"name": "small_cnn", "num_classes": 10, "in_channels": 1, "input_size": (28, 28)},
    "resnet20": {"name": "resnet20", "num_classes": 10, "in_channels": 3, "input_size": (32, 32)},
}


def build(spec: dict) -> torch.nn.Module:
    from lit_advgame.models import build_model

    model = build_model(
        spec["name"], num_classes=spec["num_classes"], in_channels=spec["in_channels"], input_size=spec["input_size"]
    )
    return model.eval()


def _timed(fn) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def raw_throughput(
    model: torch.nn.Module, shape: tuple[int, ...], batch_size: int, num_batches: int
) -> tuple[float, float]:
    """Images per second (wall clock, CPU time) of ``model`` on ready-made batches of ``batch_size``."""
    batch = torch.rand(batch_size, *shape)

    def forward_all() -> None:
        for _ in range(num_batches):
            model(batch)

    with torch.no_grad():
        model(batch)  # warm-up
        wall, cpu, _ = _timed(forward_all)
    images = num_batches * batch_size
    return images / wall, images / cpu


class TimedModel(torch.nn.Module):
    """Wraps a model and accumulates the CPU time spent inside its forward pass."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.cpu_seconds = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.process_time()
        out = self.model(x)
        self.cpu_seconds += time.process_time() - start
        return out


def estimator_throughput(model, shape, args, seed: int) -> tuple[float, float, float, int]:
    """Masked evaluations per second (wall clock, CPU time) of the multi-order estimator on one image,
    and the share of its CPU time spent inside the model's forward pass."""
    x = torch.rand(1, *shape)
    timed = TimedModel(model)
    game = InputGame(timed, x, torch.tensor([0]), grid=args.grid, batch_size=args.batch_size)
    estimator = MultiOrderApproximator(
        orders=args.orders, num_pairs=args.pairs, num_contexts=args.contexts, pairs="neighbour", random_state=seed
    )
    wall, cpu, _ = _timed(lambda: estimator.approximate(game))
    # every masked evaluation counts, including any forward pass that resolves the classes
    evaluations = game.forward_passes
    return evaluations / wall, evaluations / cpu, timed.cpu_seconds / cpu, evaluations


def print_budget(grid: int, pairs: int, contexts: int) -> None:
    n = grid * grid
    per_order = pairs * contexts * 4
    print(
        f"\nReference recipe budget ({grid}x{grid} grid, n={n}, {pairs} pairs, {contexts} contexts, 4 inputs per "
        "context):"
    )
    print(f"  per order and image: {per_order:,} forward passes per input, {2 * per_order:,} for clean + adversarial")
    for preset in ORDER_PRESETS:
        orders = resolve_orders(preset, n)
        # an order with at most `contexts` possible contexts (m = 0, m = n-2) enumerates them: C(n-2, m) each
        _, used = context_counts(n, 2, orders.orders, contexts, enumerate_contexts=True)
        total = sum(pairs * t * 4 for t in used)
        print(
            f"  preset {preset!r:17} ({len(orders):2d} orders, m = {list(orders.orders)}): "
            f"{total:,} per input, {2 * total:,} clean + adversarial"
        )
    print("  (before deduplication of identical coalitions, e.g. the sets shared by pairs at m = 0 or m = n-2)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODEL_SPECS), choices=list(MODEL_SPECS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--pairs", type=int, default=8, help="pairs per image for the timed estimator run")
    parser.add_argument("--contexts", type=int, default=16, help="contexts per pair and order")
    parser.add_argument(
        "--orders", type=float, nargs="+", default=[0.2, 0.5, 0.8], help="order ratios of the timed run"
    )
    parser.add_argument("--repeats", type=int, default=3, help="alternating raw/estimator rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--recipe-pairs", type=int, default=200)
    parser.add_argument("--recipe-contexts", type=int, default=100)
    parser.add_argument("--recipe-grid", type=int, default=16)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, batch_size={args.batch_size}")
    for key in args.models:
        spec = MODEL_SPECS[key]
        model = build(spec)
        shape = (spec["in_channels"], *spec["input_size"])
        estimator_throughput(model, shape, args, seed=12345)  # warm-up
        rounds = []
        for r in range(args.repeats):
            # alternate raw and estimator timings with the same number of images, so load changes hit both
            est_wall, est_cpu, in_model, passes = estimator_throughput(model, shape, args, seed=r)
            raw_wall, raw_cpu = raw_throughput(model, shape, args.batch_size, max(2, round(passes / args.batch_size)))
            rounds.append((raw_wall, est_wall, est_wall / raw_wall, est_cpu / raw_cpu, in_model))
        raw = statistics.median(r[0] for r in rounds)
        est = statistics.median(r[1] for r in rounds)
        ratio = statistics.median(r[2] for r in rounds)
        ratio_cpu = statistics.median(r[3] for r in rounds)
        in_model = statistics.median(r[4] for r in rounds)
        print(
            f"{key:10s} {shape}: raw forward {raw:8.0f} img/s | multi-order estimator {est:8.0f} masked evals/s "
            f"({passes:,} per run)\n{'':12s}ratio {ratio:.3f} wall-clock, {ratio_cpu:.3f} CPU-time (target >= 0.9); "
            f"{100 * in_model:.1f}% of the estimator's CPU time is inside the model forward"
        )
    print_budget(args.recipe_grid, args.recipe_pairs, args.recipe_contexts)


if __name__ == "__main__":
    main()

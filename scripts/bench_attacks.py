#!/usr/bin/env python
"""Benchmark of the attack stack (CPU by default; not a timed test). In one run it measures:

1. **IR step vs PGD step.** The forward/backward passes one step must do are counted with forward
   hooks on the source model (image-forwards with and without gradient; every image-forward with
   gradient is also back-propagated). The *pass ratio* is (IR passes) / (PGD passes), counting a
   forward and a backward as one pass each. The measured *time ratio* t(IR step) / t(PGD step) is
   compared with it, and with a *replay*: the same forward calls (same batch sizes, same grad mode)
   on ready-made inputs plus one backward, i.e. the bare cost of the passes. ``overhead`` =
   t(IR step) / t(replay) − 1 is everything else the IR step does (sampling coalitions, building
   masked inputs, value functions); the target is <= 10 %.
2. **Batched vs one image at a time.** Images per second of the batched attack against a loop
   attacking one image at a time (the reference code's way: its dataloader has batch size 1), for
   PGD and PGD+IR.

Timings are the median over ``--repeats`` alternating rounds, from wall clock and from process CPU
time (steadier on a shared machine).

Example::

    python scripts/bench_attacks.py                                   # digits small CNN (checkpoints/)
    python scripts/bench_attacks.py --arch resnet20 --size 32 --channels 3 --batch-size 32
    python scripts/bench_attacks.py --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from lit_advgame.attacks import build_attack

ROOT = Path(__file__).resolve().parents[1]


class PassCounter:
    """Forward hook on the source model recording each call's batch size and grad mode."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.calls.append((int(inputs[0].shape[0]), torch.is_grad_enabled() and inputs[0].requires_grad))

    def reset(self) -> None:
        self.calls = []

    def passes(self) -> dict[str, int]:
        grad = sum(b for b, g in self.calls if g)
        nograd = sum(b for b, g in self.calls if not g)
        return {"forward_grad": grad, "forward_nograd": nograd, "backward": grad, "total": 2 * grad + nograd}

    def remove(self) -> None:
        self.handle.remove()


def timed(fn) -> tuple[float, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def load_source(args) -> nn.Module:
    from lit_advgame.models import build_model

    checkpoint = ROOT / "checkpoints" / f"digits_{args.arch}.pt"
    if args.size == 16 and args.channels == 1 and checkpoint.is_file():
        from lit_advgame.predict import load_classifier

        print(f"source: {checkpoint.relative_to(ROOT)}")
        return load_classifier(str(checkpoint)).model
    print(f"source: {args.arch} (random weights), inputs {args.channels}x{args.size}x{args.size}")
    return build_model(args.arch, 10, args.channels, args.size).eval()


def _step_calls(one: list[tuple[int, bool]], two: list[tuple[int, bool]]) -> list[tuple[int, bool]]:
    """The calls of one step: those a 2-step run makes beyond a 1-step run (a multiset difference)."""
    rest = list(two)
    for call in one:
        rest.remove(call)
    return rest


def replay(model: nn.Module, calls: list[tuple[int, bool]], pool: torch.Tensor) -> None:
    """The forward calls of one step on ready-made inputs (rows of ``pool``, cycled), then one backward."""
    inputs = {b: pool.repeat((b + len(pool) - 1) // len(pool), 1, 1, 1)[:b] for b in {b for b, _ in calls}}
    outputs, leaves = [], []
    for batch, grad in calls:
        if grad:
            x = inputs[batch].clone().requires_grad_(True)
            leaves.append(x)
            outputs.append(model(x).sum())
        else:
            with torch.no_grad():
                model(inputs[batch])
    if outputs:
        torch.autograd.grad(torch.stack(outputs).sum(), leaves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="attack steps per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-images", type=int, default=8, help="images of the one-at-a-time loop")
    parser.add_argument("--ir-grid", type=int, default=16)
    parser.add_argument("--ir-samples", type=int, default=32)
    parser.add_argument("--ir-group-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = load_source(args).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    shape = (args.channels, args.size, args.size)
    if args.size == 16 and args.channels == 1:  # digits: real test images
        from lit_advgame.data import DigitsDataModule

        x, y = DigitsDataModule().probe_set(min(args.batch_size, 270), "test", seed=0)
        x, y = (
            x.repeat((args.batch_size + 269) // 270, 1, 1, 1)[: args.batch_size],
            y.repeat((args.batch_size + 269) // 270)[: args.batch_size],
        )
        x, y = x.to(device), y.to(device)
    else:
        x = torch.rand(args.batch_size, *shape, device=device)
        y = torch.randint(0, 10, (args.batch_size,), device=device)
    ir_options = {
        "ir_grid": min(args.ir_grid, args.size),
        "ir_num_samples": args.ir_samples,
        "ir_group_size": args.ir_group_size,
    }
    attacks = {
        "pgd": lambda steps: build_attack("pgd", model, steps=steps, seed=0),
        "pgd+ir": lambda steps: build_attack("pgd+ir", model, steps=steps, seed=0, random_start=True, **ir_options),
    }
    print(
        f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}, {args.steps} steps per run, "
        f"IR: grid {ir_options['ir_grid']}, {args.ir_samples} samples of {args.ir_group_size} cells"
    )

    # ---- 1. passes of one step
    counter = PassCounter(model)
    passes, calls = {}, {}
    for name, make in attacks.items():
        counted = []
        for steps in (1, 2):  # the second step's calls: per-run work (the label check, random start) excluded
            counter.reset()
            make(steps)(x, y)
            counted.append(list(counter.calls))
        calls[name] = _step_calls(*counted)
        counter.calls = calls[name]
        passes[name] = counter.passes()
    counter.remove()
    pass_ratio = passes["pgd+ir"]["total"] / passes["pgd"]["total"]
    for name in attacks:
        p = passes[name]
        print(
            f"  {name:7s} one step: {p['forward_grad']} image-forwards with grad (+ as many backwards), "
            f"{p['forward_nograd']} without; {p['total'] / args.batch_size:.1f} passes per image"
        )

    # ---- timings (alternating rounds)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in ("pgd", "pgd+ir", "replay_pgd", "replay_ir")}
    built = {name: make(args.steps) for name, make in attacks.items()}
    for attack in built.values():  # warm-up
        attack(x, y)
    for _ in range(args.repeats):
        for name, attack in built.items():
            wall, cpu = timed(lambda attack=attack: attack(x, y))
            times[name].append((wall / args.steps, cpu / args.steps))
        for key, name in (("replay_pgd", "pgd"), ("replay_ir", "pgd+ir")):
            wall, cpu = timed(lambda name=name: replay(model, calls[name], x))
            times[key].append((wall, cpu))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    print("\n1. IR step vs PGD step (median per step; wall / CPU time)")
    print(f"  PGD step           {1000 * med['pgd'][0]:9.2f} ms / {1000 * med['pgd'][1]:9.2f} ms")
    print(f"  IR step            {1000 * med['pgd+ir'][0]:9.2f} ms / {1000 * med['pgd+ir'][1]:9.2f} ms")
    print(f"  IR passes replayed {1000 * med['replay_ir'][0]:9.2f} ms / {1000 * med['replay_ir'][1]:9.2f} ms")
    for i, clock in enumerate(("wall", "CPU")):
        time_ratio = med["pgd+ir"][i] / med["pgd"][i]
        overhead = med["pgd+ir"][i] / med["replay_ir"][i] - 1
        print(
            f"  [{clock:4s}] time ratio IR/PGD = {time_ratio:6.1f}   pass ratio = {pass_ratio:6.1f}   "
            f"time/pass ratio = {time_ratio / pass_ratio:5.2f}   IR overhead beyond its passes = "
            f"{100 * overhead:+.1f} %"
        )

    # ---- 2. batched vs one image at a time
    print(
        f"\n2. images per second, {args.steps} steps (batched: {args.batch_size} images; loop: "
        f"{args.loop_images} images one at a time)"
    )
    for name, attack in built.items():
        batched = statistics.median(
            timed(lambda attack=attack: attack(x, y))[0] for _ in range(max(1, args.repeats // 2))
        )
        n = min(args.loop_images, args.batch_size)
        loop = timed(lambda attack=attack, n=n: [attack(x[i : i + 1], y[i : i + 1]) for i in range(n)])[0]
        print(
            f"  {name:7s} batched {args.batch_size / batched:9.1f} img/s   loop {n / loop:8.1f} img/s   "
            f"speed-up x{(args.batch_size / batched) / (n / loop):.1f}"
        )


if __name__ == "__main__":
    main()

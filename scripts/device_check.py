#!/usr/bin/env python
"""The GPU check: what a maintainer measures when a GPU machine is available, printed as one table.

Run through ``scripts/device_check.sh`` (which installs what is missing first). Steps, each a group of rows
(a step that fails is reported in the table and the others still run; the exit status is 1 then):

1. ``tests``: ``pytest -m cuda`` -- the tests that need CUDA (skipped on machines without one).
2. ``IR attack``: PGD+IR with the IR paper's settings (L∞ ε = 16/255, step 2/255, 16×16 grid, 32 groups of
   32 cells, λ = 1) on torchvision ResNet-34 (random init) at 224×224, ``--images`` images × ``--steps``
   steps, in fp32, bf16 and bf16 + channels_last: seconds per image per 100 steps against the IR paper's
   12.9 s (one Titan RTX, fp32), peak CUDA memory, and the bf16 perturbations against the fp32 ones (share of
   pixels whose sign of δ agrees, relative difference of ‖δ‖₂; both stay in [0, 1] and the ε-ball).
3. ``multi-order``: the multi-order estimator (Ren et al., NeurIPS 2021; the reference orders on a 16×16
   grid) -- masked evaluations per second against the raw forward throughput of the same model at the same
   batch size (the engine's overhead: masking, deduplication, values).
4. ``predict``: ``lit-advgame predict`` of ``configs/attack_quickstart.yaml`` with DDP on every device, and on
   one device: images per second, and whether both runs wrote the same adversarial examples.

``--device cpu --tiny`` runs the same steps on the CPU at tiny sizes (ResNet-34 at 32×32, a 4×4 grid,
2 steps, 8 images to predict); ``tests/test_precision.py`` runs it so that the script cannot rot.

Example::

    bash scripts/device_check.sh                       # on the GPU machine (< 8 minutes on one GPU)
    python scripts/device_check.py --device cpu --tiny --no-tests
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_advgame.attacks import build_attack
from lit_advgame.interactions import InputGame, MultiOrderApproximator
from lit_advgame.models import build_model
from lit_advgame.utils.precision import forward_logits

#: the IR paper's time per image for 100 steps of PGD+IR on ResNet-34 (one Titan RTX, fp32)
PAPER_SECONDS_PER_IMAGE = 12.9
#: (label, autocast, channels_last) of the precisions compared
PRECISIONS = (("fp32", "none", False), ("bf16", "bf16", False), ("bf16+channels_last", "bf16", True))
EPS = 16 / 255


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU smoke run)")
    parser.add_argument("--no-tests", action="store_true", help="skip `pytest -m cuda`")
    parser.add_argument("--no-predict", action="store_true", help="skip the predict runs")
    parser.add_argument("--arch", default="torchvision:resnet34")
    parser.add_argument("--size", type=int, default=None, help="image size (default 224; tiny: 32)")
    parser.add_argument("--images", type=int, default=None, help="images attacked (default 4; tiny: 2)")
    parser.add_argument("--steps", type=int, default=None, help="attack steps (default 10; tiny: 2)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="masked inputs per forward (default 256; tiny: 16)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--out", default=str(ROOT / "runs" / "device_check"), help="folder of logs and results")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cpu", "cuda"):
        parser.error(f"--device must be auto, cuda or cpu; got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch finds no CUDA device (torch.cuda.is_available() is False)")
    tiny = args.tiny
    args.size = args.size or (32 if tiny else 224)
    args.images = args.images or (2 if tiny else 4)
    args.steps = args.steps or (2 if tiny else 10)
    # the paper's 16×16 grid and 32 groups of 32 cells; tiny: 4×4 cells, 4 groups of 4
    args.grid, args.groups, args.group_size = (4, 4, 4) if tiny else (16, 32, 32)
    args.batch_size = args.batch_size or (16 if tiny else 256)
    # multi-order: the reference orders (11) with a few pairs and contexts; tiny: one order
    args.orders, args.pairs, args.contexts = ([0.5], 2, 2) if tiny else ("reference", 8, 10)
    args.repeats = 1 if tiny else 3  # timed raw forward passes of one batch
    args.predict_images = 8 if tiny else 64
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def peak_memory(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    return f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"


def precision_model(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    return copy.deepcopy(model).to(memory_format=torch.channels_last) if channels_last else model


# ----------------------------------------------------------------------------- steps
def run_tests(args: argparse.Namespace, out: Path) -> list[dict[str, str]]:
    log = out / "pytest_cuda.log"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env())
    log.write_text(proc.stdout + proc.stderr)
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    ok = proc.returncode in (0, 5)  # 5: no test collected
    return [row("tests", "pytest -m cuda", summary.strip("= "), "" if ok else f"FAILED, see {log}", ok)]


def ir_attack(args: argparse.Namespace, model: torch.nn.Module, device: torch.device) -> list[dict[str, str]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(args.images, 3, args.size, args.size, generator=generator).to(device)
    y = torch.randint(0, 1000, (args.images,), generator=generator).to(device)
    ir = {"ir_grid": args.grid, "ir_num_samples": args.groups, "ir_group_size": args.group_size}
    ir.update(ir_lambda=1.0, ir_batch_size=args.batch_size, random_start=True, seed=0)
    rows, deltas = [], {}
    setting = f"RN-34 {args.size}², {args.images} img × {args.steps} steps"
    for label, autocast, channels_last in PRECISIONS:
        net = precision_model(model, channels_last)
        options = {"autocast": autocast, "channels_last": channels_last, **ir}
        build_attack("pgd+ir", net, steps=1, **options)(x[:1], y[:1])  # warm-up (kernel selection)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        attack = build_attack("pgd+ir", net, steps=args.steps, **options)
        x_adv, seconds = timed(lambda a=attack: a(x, y), device)
        delta = x_adv - x
        ok = bool(x_adv.min() >= 0 and x_adv.max() <= 1 and delta.abs().max() <= EPS + 1e-6)
        deltas[label] = delta
        per_image = seconds / args.images / args.steps * 100
        compare = f"paper {PAPER_SECONDS_PER_IMAGE} s (Titan RTX, fp32): ×{PAPER_SECONDS_PER_IMAGE / per_image:.1f}"
        if label != "fp32":
            ref = deltas["fp32"]
            agree = (torch.sign(delta) == torch.sign(ref)).float().mean().item()
            l2 = (delta.flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1) - 1).abs().max().item()
            compare += f"; vs fp32: sign(δ) agrees {100 * agree:.1f}%, ‖δ‖₂ within {100 * l2:.1f}%"
        result = f"{per_image:.2f} s / image / 100 steps{peak_memory(device)}" + ("" if ok else "; OUT OF BALL")
        rows.append(row(f"IR attack {label}", setting, result, compare, ok))
    return rows


def multi_order(args: argparse.Namespace, model: torch.nn.Module, device: torch.device) -> list[dict[str, str]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, args.size, args.size, generator=generator).to(device)
    batch = torch.rand(args.batch_size, 3, args.size, args.size, generator=generator).to(device)
    rows = []
    orders = "11 reference orders" if args.orders == "reference" else f"orders {args.orders}"
    setting = f"{args.grid}×{args.grid} grid, {orders}, {args.pairs} pairs × {args.contexts} contexts"
    setting += f", batch {args.batch_size}"
    for label, autocast, channels_last in PRECISIONS:
        net = precision_model(model, channels_last).eval()
        precision = {"autocast": autocast, "channels_last": channels_last}
        game = InputGame(net, x, grid=args.grid, batch_size=args.batch_size, **precision)
        estimator = MultiOrderApproximator(args.orders, args.contexts, num_pairs=args.pairs, random_state=0)
        MultiOrderApproximator(orders=[0.5], num_pairs=1, num_contexts=1, random_state=0).approximate(game)  # warm-up
        before = game.forward_passes
        _, seconds = timed(lambda g=game, e=estimator: e.approximate(g), device)
        evaluations = (game.forward_passes - before) / seconds
        with torch.no_grad():
            forward_logits(net, batch, **precision)  # warm-up
            _, raw_seconds = timed(
                lambda n=net, p=precision: [forward_logits(n, batch, **p) for _ in range(args.repeats)], device
            )
        raw = args.repeats * args.batch_size / raw_seconds
        result = f"{evaluations:,.0f} masked evaluations/s"
        rows.append(
            row(f"multi-order {label}", setting, result, f"raw forward {raw:,.0f} images/s: {evaluations / raw:.0%}")
        )
    return rows


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def predict_run(args: argparse.Namespace, out: Path, name: str, devices: int, strategy: str) -> tuple[float, Path]:
    """One ``lit-advgame predict`` of the quickstart attack config; returns its seconds and output folder."""
    cfg = yaml.safe_load((ROOT / "configs" / "attack_quickstart.yaml").read_text())
    folder = out / f"predict_{name}"
    cfg["trainer"].update(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=devices,
        strategy=strategy,
        enable_progress_bar=False,
        default_root_dir=str(folder),
    )
    cfg["trainer"]["callbacks"][0]["init_args"].update(output_dir=str(folder / "adversarial"), resume=False)
    cfg["data"]["init_args"]["predict_limit"] = args.predict_images
    model = cfg["model"]["init_args"]  # checkpoint paths relative to the repository
    model["source"] = str(ROOT / model["source"])
    model["score_models"] = [str(ROOT / path) for path in model["score_models"]]
    if args.tiny:
        cfg["model"]["init_args"]["overrides"]["steps"] = 2
    config = out / f"predict_{name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "lit_advgame", "predict", "--config", str(config)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True, env=child_env())
    seconds = time.perf_counter() - start
    (out / f"predict_{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"predict ({name}) failed: {proc.stderr.strip().splitlines()[-1:]} (log in {out})")
    return seconds, folder / "adversarial"


def predict(args: argparse.Namespace, out: Path) -> list[dict[str, str]]:
    from lit_advgame.predict import load_adversarial

    devices = torch.cuda.device_count() if args.device == "cuda" else 1
    ddp_seconds, ddp_folder = predict_run(args, out, "ddp", devices, "ddp")
    ddp = load_adversarial(ddp_folder)
    count = len(ddp.index)
    ok = count == args.predict_images
    setting = f"attack_quickstart.yaml, {args.predict_images} images"
    rows = [
        row(f"predict DDP ×{devices}", setting, f"{count / ddp_seconds:.1f} images/s ({ddp_seconds:.0f} s)", "", ok)
    ]
    if not args.tiny:  # a one-device run to compare with
        seconds, folder = predict_run(args, out, "single", 1, "auto")
        single = load_adversarial(folder)
        same = torch.equal(single.index, ddp.index)
        diff = (single.x_adv.float() - ddp.x_adv.float()).abs().max().item() if same else float("nan")
        rows.append(
            row(
                "predict 1 device",
                setting,
                f"{count / seconds:.1f} images/s ({seconds:.0f} s)",
                f"max |Δx_adv| vs DDP {diff:.2g}",
                same,
            )
        )
    return rows


# ----------------------------------------------------------------------------- the table
def row(check: str, setting: str, result: str, compare: str = "", ok: bool = True) -> dict[str, str]:
    return {"check": check, "setting": setting, "result": result, "compare": compare, "ok": "ok" if ok else "FAIL"}


def table(rows: list[dict[str, str]]) -> str:
    keys = ("check", "setting", "result", "compare", "ok")
    widths = {key: max(len(key), *(len(r[key]) for r in rows)) for key in keys}
    lines = ["| " + " | ".join(key.ljust(widths[key]) for key in keys) + " |"]
    lines.append("|" + "|".join("-" * (widths[key] + 2) for key in keys) + "|")
    lines += ["| " + " | ".join(r[key].ljust(widths[key]) for key in keys) + " |" for r in rows]
    return "\n".join(lines)


def environment(args: argparse.Namespace, device: torch.device) -> dict[str, str]:
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} × {torch.cuda.device_count()}, CUDA {torch.version.cuda}"
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    return row("environment", f"torch {torch.__version__}", name, "tiny sizes (smoke run)" if args.tiny else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = [environment(args, device)]
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=1000, in_channels=3).to(device).eval()
    steps: list[tuple[str, Callable[[], list[dict[str, str]]]]] = [
        ("tests", lambda: run_tests(args, out)),
        ("IR attack", lambda: ir_attack(args, model, device)),
        ("multi-order", lambda: multi_order(args, model, device)),
        ("predict", lambda: predict(args, out)),
    ]
    skipped = {"tests"} if args.no_tests else set()
    skipped |= {"predict"} if args.no_predict else set()
    for name, step in steps:
        if name in skipped:
            continue
        print(f"device check: {name} ...", flush=True)
        try:
            rows += step()
        except Exception as err:  # report the failure in the table, run the other steps
            log = out / (re.sub(r"\W+", "_", name) + "_error.log")
            log.write_text(traceback.format_exc())
            rows.append(row(name, "", f"{type(err).__name__}: {err}"[:200], f"see {log}", False))
    text = table(rows)
    print(text)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["ok"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

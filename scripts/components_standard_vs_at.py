#!/usr/bin/env python
"""Perturbation components of a standard and an adversarially trained small CNN on digits (Wang et al., ICCV 2021).

Checks the two claims of "Interpreting Attributions and Interactions of Adversarial Attacks" (Sec. 4.2, Tables 2-3)
on scikit-learn's digits (16×16): compared with the standard model, the adversarially trained (AT) model has (1) a
larger share of perturbation components in the foreground and (2) a larger share of components that mainly
decrease the true-class logit (``Δy_ℓ > Δy_t``) rather than increase the target logit.

Protocol:

* models: ``checkpoints/digits_small_cnn.pt`` (standard) and ``checkpoints/digits_small_cnn_at.pt`` (PGD-AT,
  L∞ ε = 0.1);
* probes: seeded test digits that both models classify correctly; target ``t = (ℓ + 1) mod 10`` (the paper fixes
  one target class per dataset);
* perturbation: a targeted L2 PGD attack (margin loss, ``--eps``, 100 steps; the paper uses C&W L2) on each model;
  only probes attacked successfully on both models are kept (the first ``--num-images``);
* players: single pixels (``superpixel=1``, 256 players), components by :func:`extract_components` with
  ``q = 4``, ``4×4`` patches of players, the reference's keep shares (0.2, then 0.5) and coverage (0.9), up to
  16 pixels per component, the Taylor rewards with ``K = 10`` sub-players (``--rule``, ``--singleton``);
* foreground: pixels of the clean digit above 0.5; a component is in the foreground when more than half of its
  pixels are.

Outputs (``--out``): ``results.json``, the Markdown table printed to stdout (also ``table.md``) and
``components_<model>_<i>.png`` (image, |δ|, components coloured by their effect) for the first 4 probes.

Example::

    python scripts/components_standard_vs_at.py --num-images 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lit_advgame.attacks import Attack
from lit_advgame.attributions import (
    ComponentSettings,
    TaylorRewardApproximator,
    component_effects,
    component_figure,
    extract_components,
    foreground_mask_from_image,
    foreground_share,
    superpixel_game,
)
from lit_advgame.data import DigitsDataModule
from lit_advgame.predict import load_classifier

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = {
    "standard": REPO / "checkpoints/digits_small_cnn.pt",
    "adversarial": REPO / "checkpoints/digits_small_cnn_at.pt",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=8, help="probes analysed (successful on both models)")
    p.add_argument("--candidates", type=int, default=64, help="test digits considered (seeded shuffle)")
    p.add_argument("--eps", type=float, default=3.0, help="L2 radius of the targeted attack (pixels in [0, 1])")
    p.add_argument("--rule", default="reference", choices=["reference", "trapezoid", "removal"])
    p.add_argument("--singleton", default="full_game", choices=["full_game", "members_absent"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="runs/components_standard_vs_at")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.time()
    models = {name: load_classifier(str(path)).model for name, path in CHECKPOINTS.items()}
    data_cfg = torch.load(CHECKPOINTS["standard"], weights_only=True)["data"]["init_args"]
    data = DigitsDataModule(**data_cfg).dataset("test")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[: args.candidates]
    x = torch.stack([data[int(i)][0] for i in order])
    y = torch.tensor([int(data[int(i)][1]) for i in order])
    target = (y + 1) % 10
    with torch.no_grad():
        keep = torch.ones_like(y, dtype=torch.bool)
        for model in models.values():
            keep &= model(x).argmax(1) == y
    x, y, target = x[keep], y[keep], target[keep]
    deltas = {}
    for name, model in models.items():
        attack = Attack(
            model, "l2", eps=args.eps, step_size=args.eps / 20, steps=100, loss="margin", targeted=True, seed=args.seed
        )
        x_adv = attack(x, y, target)
        with torch.no_grad():
            success = model(x_adv).argmax(1) == target
        deltas[name] = (x_adv - x, success)
    both = deltas["standard"][1] & deltas["adversarial"][1]
    index = both.nonzero().flatten()[: args.num_images]
    print(f"{int(both.sum())}/{len(y)} probes attacked successfully on both models; analysing {index.numel()}")
    settings = ComponentSettings(
        q=4,
        patch_grid=4,
        max_size=16,
        singleton=args.singleton,
        estimator=TaylorRewardApproximator(num_subplayers=10, rule=args.rule),
        random_state=args.seed,
    )
    foreground = foreground_mask_from_image(x[index])
    results = {"settings": vars(args), "num_images": int(index.numel()), "models": {}}
    for name, model in models.items():
        began = time.time()
        game = superpixel_game(model, x[index], deltas[name][0][index], y[index], target[index], superpixel=1)
        components = extract_components(game, settings)
        effects = component_effects(game, components.component_map)
        shares = foreground_share(components.component_map, game.player_map, foreground)
        fore = torch.cat(shares)
        results["models"][name] = {
            "components": int(fore.numel()),
            "components_per_image": fore.numel() / index.numel(),
            "share_foreground": float((fore > 0.5).double().mean()) if fore.numel() else float("nan"),
            "share_decreasing_true": effects.share_decreasing_true(),
            "l2_perturbation": float(deltas[name][0][index].flatten(1).norm(dim=1).mean()),
            "forward_passes": components.num_forward_passes,
            "seconds": round(time.time() - began, 1),
        }
        print(name, results["models"][name], flush=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for b in range(min(4, index.numel())):
            figure = component_figure(
                x[index][b],
                deltas[name][0][index][b],
                game.player_map,
                components.component_map[b],
                effects.decreases_true[b],
            )
            figure.savefig(out / f"components_{name}_{b}.png")
    table = [
        "| model | components / image | share in foreground | share mainly decreasing the true class | mean L2 of δ |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        table.append(
            f"| {name} | {r['components_per_image']:.2f} | {r['share_foreground']:.3f} | "
            f"{r['share_decreasing_true']:.3f} | {r['l2_perturbation']:.2f} |"
        )
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

"""Command line of the transfer evaluation.

    python -m lit_advgame.evaluation RUN [RUN ...] --targets T [T ...] --output DIR [options]

``RUN`` is an attack run folder written by ``lit-advgame predict`` with an ``AdversarialWriter``
(or a merged ``adversarial.pt``); targets are classifier files, Lightning checkpoints of any
lit_advgame training module (``--members`` scores an ensemble's members too), or JSON dicts such as
``'{"arch": "lenet", "weights": "w.pt"}'`` (see :mod:`lit_advgame.classifiers`). Each target is evaluated at its
own input size (its stored input shape, or ``input_size`` in a JSON spec: ``'{"path": "inc_v3.pt", "input_size":
299}'``); the images are resized to it where it differs (bilinear, antialiased; see
:mod:`lit_advgame.evaluation.transfer`).
Prints a progress line per run and target with its time to stderr (``--quiet``: none), writes
``report.{json,csv,md}``, ``utility_vs_interaction.png`` and TensorBoard events to ``DIR`` and prints
the Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from lit_advgame.evaluation.transfer import (
    INTERACTION_DEFAULTS,
    SUBSETS,
    evaluate_transfer,
)


def parse_spec(text: str) -> Any:
    """A target given on the command line: a path, or a JSON object for a dict spec."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"invalid JSON model spec {text!r}: {err}") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lit_advgame.evaluation", description="Transfer evaluation of saved adversarial examples."
    )
    parser.add_argument("runs", nargs="+", help="attack run folders (or merged adversarial.pt files)")
    parser.add_argument(
        "--targets",
        nargs="+",
        required=True,
        type=parse_spec,
        help="target model specs: paths or JSON dicts; a dict may give its input_size (int or [H, W]), else a "
        "target's stored input shape is used, and the images are resized to it where it differs",
    )
    parser.add_argument("--output", required=True, help="output folder of the report")
    parser.add_argument(
        "--members", action="store_true", help="also score each member of an ensemble target (as <name>_member<i>)"
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        default=None,
        help="row labels (default: each run's name); runs sharing a label must be the same run "
        "(same examples and settings), runs of different sizes or settings under one label are refused",
    )
    parser.add_argument("--subset", choices=SUBSETS, default="source_correct", help="examples evaluated")
    parser.add_argument("--no-loo", action="store_true", help="skip the leave-one-out step selection")
    parser.add_argument("--no-interaction", action="store_true", help="skip the interaction measurement")
    parser.add_argument("--interaction-grid", type=int, default=INTERACTION_DEFAULTS["grid"])
    parser.add_argument("--interaction-form", choices=("single", "coalition"), default=INTERACTION_DEFAULTS["form"])
    parser.add_argument("--interaction-samples", type=int, default=INTERACTION_DEFAULTS["num_samples"])
    parser.add_argument("--interaction-max-images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--no-tensorboard", action="store_true")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress lines (by default one per run and target, to stderr)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status.

    A user error (bad run folder, target, option or file) prints ``error: <message>`` to stderr and returns 2;
    with ``LIT_ADVGAME_DEBUG=1`` the exception propagates with its traceback (see :mod:`lit_advgame.utils.errors`).
    """
    from lit_advgame.utils.errors import USER_ERROR_EXIT_CODE, USER_ERRORS, debug_enabled, error_message

    args = build_parser().parse_args(argv)
    interaction = (
        None
        if args.no_interaction
        else {
            "grid": args.interaction_grid,
            "form": args.interaction_form,
            "num_samples": args.interaction_samples,
            "max_images": args.interaction_max_images,
        }
    )
    try:
        report = evaluate_transfer(
            args.runs,
            args.targets,
            members=args.members,
            labels=args.labels,
            subset=args.subset,
            loo=not args.no_loo,
            interaction=interaction,
            batch_size=args.batch_size,
            device=args.device,
            output_dir=args.output,
            tensorboard=not args.no_tensorboard,
            progress=not args.quiet,
        )
    except USER_ERRORS as err:
        if debug_enabled():
            raise
        print(f"error: {error_message(err)}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    print(report.markdown())
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

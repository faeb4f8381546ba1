"""The ``lit-advgame`` command line: LightningCLI with the fit/validate/test/predict subcommands.

Examples::

    lit-advgame fit --config configs/quickstart.yaml
    lit-advgame fit --config configs/quickstart.yaml --print_config
    lit-advgame fit --config configs/quickstart.yaml --ckpt_path last        # resume
    lit-advgame test --config configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/last.ckpt

Models and data are chosen with ``class_path``/``init_args`` in YAML (subclass mode). The
DataModule's ``num_classes``, ``input_shape``, ``mean`` and ``std`` are linked into the model when
both are instantiated, so configs never repeat them. The resolved config is saved next to the run
(``config.yaml`` in the logger's version folder; overwritten on a resumed run instead of failing).
"""
from __future__ import annotations

from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

# Linked from the instantiated DataModule into the instantiated model, when the model takes them.
DATA_TO_MODEL_LINKS = ("num_classes", "input_shape", "mean", "std")


class AdvGameCLI(LightningCLI):
    """LightningCLI with data→model links and an optional test run after ``fit``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After `fit`, run `test` on the best checkpoint (or the final weights if none was saved).",
        )
        parser.add_argument(
            "--num_threads",
            type=Optional[int],
            default=None,
            help="torch intra-op CPU threads (torch.set_num_threads); null keeps torch's default. The small "
            "digits models run fastest with 1: extra threads gain little on them and slow down badly when "
            "other processes share the cores.",
        )
        for name in DATA_TO_MODEL_LINKS:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        num_threads = config.get("num_threads")
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be >= 1 (or null for torch's default); got {num_threads}")
            torch.set_num_threads(num_threads)

    def after_fit(self) -> None:
        if not self.config.get(self.subcommand, {}).get("test_after_fit", False):
            return
        ckpt = "best" if self.trainer.checkpoint_callback is not None and self.trainer.checkpoint_callback.best_model_path else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


def build_cli(args: Any = None, run: bool = True) -> AdvGameCLI:
    """Build (and by default run) the CLI; ``args`` parses from a list/dict instead of ``sys.argv``."""
    return AdvGameCLI(
        model_class=pl.LightningModule,
        datamodule_class=pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: Any = None) -> None:
    """Console entry point of ``lit-advgame`` and ``python -m lit_advgame``."""
    build_cli(args)


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``lit-advgame`` command line: LightningCLI with the fit/validate/test/predict subcommands.

Examples::

    lit-advgame fit --config configs/quickstart.yaml
    lit-advgame fit --config configs/quickstart.yaml --print_config
    lit-advgame fit --config configs/quickstart.yaml --ckpt_path last        # resume the newest run
    lit-advgame test --config configs/quickstart.yaml --ckpt_path last       # test its last checkpoint
    lit-advgame test --config configs/quickstart.yaml --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt

Models and data are chosen with ``class_path``/``init_args`` in YAML (subclass mode). The
DataModule's ``num_classes``, ``input_shape``, ``mean`` and ``std`` are linked into the model when
both are instantiated, so configs never repeat them.

Run folders. Every run has its own folder: the logger's version folder ``<save_dir>/<name>/version_<N>``
or, with ``--trainer.logger false``, ``<default_root_dir>/version_<N>`` (the CLI points
``trainer.default_root_dir`` there). Checkpoints are written to ``<run folder>/checkpoints`` (the configs'
``ModelCheckpoint`` callbacks have no ``dirpath``) and the resolved config to ``<run folder>/config.yaml``;
``predict`` with a prediction writer that has an ``output_dir`` saves its config there instead. No run
overwrites another run's files, nor a ``config.yaml`` of the current directory.

``--ckpt_path last`` resolves to ``checkpoints/last.ckpt`` of the newest (highest-numbered) version
folder of the config's logger (or of ``default_root_dir`` without a logger) that has one; ``last.ckpt``
is written after every epoch (the configs' second ``ModelCheckpoint``), so this is the last finished
epoch, not the last best one. ``fit`` resumes that run in place: it logs into the same version folder
(TensorBoard run, with ``purge_step`` set to the checkpoint's global step so steps that the interrupted run
logged after its checkpoint are not shown twice) and writes its checkpoints there. The model, optimizer, LR
schedule, callbacks (e.g. the validation callbacks' history) and the data module's training shuffle are
restored, so an interrupted and resumed run ends like an uninterrupted one. With no such checkpoint, ``fit``
warns and starts a new run; the other subcommands stop with an error.

``--ckpt_path`` with model arguments that differ from the checkpoint's hyper-parameters stops with an
error listing each conflicting argument (checkpoint value and this run's value; ``num_classes`` and
``input_shape`` linked from the data included); the checkpoint's hyper-parameters are never swapped in
silently. The normalization ``mean``/``std`` and ``weights`` are not compared: the checkpoint's state
restores them. Evaluation options kept out of the hyper-parameters (e.g. RandomizedSmoothing's ``certify_sigma``,
``n``, ``alpha``) are taken from the config and command line.

Errors: a bad config, argument, file or checkpoint prints one ``error: <message>`` line and exits with
status 2; ``LIT_ADVGAME_DEBUG=1`` shows the full traceback (see :mod:`lit_advgame.utils.errors`).

``lit-advgame export`` (not a Lightning subcommand) writes a classifier file from any checkpoint or model spec, or
with ``--adversarial`` a predict run's adversarial examples as 8-bit PNGs (:mod:`lit_advgame.predict.export`;
``lit-advgame export --help``).
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from jsonargparse import Namespace
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities import rank_zero_warn
from typing_extensions import override

from lit_advgame.models.torchvision_models import allow_downloads_by_default
from lit_advgame.models.weights import read_checkpoint
from lit_advgame.utils.errors import (
    DEBUG_ENV,
    USER_ERROR_EXIT_CODE,
    debug_enabled,
    run_reporting_user_errors,
    unwrap_union_error,
)

# Linked from the instantiated DataModule into the instantiated model, when the model takes them.
DATA_TO_MODEL_LINKS = ("num_classes", "input_shape", "mean", "std")

SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
"""``--ckpt_path`` keywords of Lightning; ``last`` is resolved by this CLI (see the module docstring)."""

IGNORED_CKPT_HPARAMS = ("_instantiator", "_class_path", "weights", "mean", "std")
"""Checkpoint hyper-parameters not compared with the run's, because the checkpoint's own values win: ``weights``
only initialises a network that the checkpoint's state then replaces, and the normalization ``mean``/``std``
(linked from the data, which may be split differently at test time) are buffers of the model's first layer,
restored from the checkpoint's state."""

EXPORT_SUBCOMMAND = "export"
"""``lit-advgame export ...``: handled by :mod:`lit_advgame.predict.export`, not by LightningCLI."""

VERSION_PATTERN = re.compile(r"^version_(\d+)$")

RUN_HELP = (
    "Run folders: each run writes checkpoints/ and config.yaml into its own folder, the logger's version "
    "folder <save_dir>/<name>/version_<N> (with --trainer.logger false: <default_root_dir>/version_<N>). "
    "--ckpt_path last: checkpoints/last.ckpt (written after every epoch) of the newest version folder that "
    "has one; `fit` resumes that run in place (same version folder and TensorBoard run) or starts a new run "
    "if there is none. --ckpt_path with model arguments that differ from the checkpoint's hyper-parameters "
    "is an error listing them (never a silent swap). Errors print one 'error: ...' line and exit with "
    f"status 2; {DEBUG_ENV}=1 shows the traceback."
)
EXPORT_HELP = (
    "Also: `lit-advgame export MODEL OUT.pt` writes a classifier file (weights and metadata) from any checkpoint "
    "or model spec; `lit-advgame export --adversarial RUN FOLDER` writes a predict run's adversarial examples as "
    "8-bit PNGs (see `lit-advgame export --help`)."
)


class Trainer(pl.Trainer):
    """Lightning's ``Trainer`` whose ``limit_*_batches`` read ``1`` as one batch, as Lightning means it.

    Lightning annotates them ``float | int | None``; jsonargparse tries the types in that order, so ``1`` on the
    command line or in YAML became ``1.0`` (every batch). Here ``int`` comes first: an integer is a number of
    batches, a float with a decimal point (``0.5``, ``1.0``) a fraction. Everything else is Lightning's.
    """

    def __init__(
        self,
        *,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        limit_test_batches: int | float | None = None,
        limit_predict_batches: int | float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            limit_train_batches=limit_train_batches,
            limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches,
            limit_predict_batches=limit_predict_batches,
            **kwargs,
        )


class RunConfigCallback(SaveConfigCallback):
    """Save the resolved config into the run's own folder, never elsewhere.

    The folder is ``trainer.log_dir`` (the logger's version folder, or ``<default_root_dir>/version_<N>``
    that :class:`AdvGameCLI` assigns without a logger); for ``predict``, the ``output_dir`` of the first
    prediction writer that has one. A resumed ``fit`` overwrites the ``config.yaml`` of its own run.
    """

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        folder = trainer.log_dir  # a collective call under DDP: every rank makes it
        if stage == "predict":
            writers = [
                cb
                for cb in trainer.callbacks
                if isinstance(cb, BasePredictionWriter) and getattr(cb, "output_dir", None)
            ]
            if writers:
                folder = str(writers[0].output_dir)
        if folder is None:
            raise ValueError("cannot save the run's config.yaml: the trainer has no log_dir")
        if trainer.is_global_zero:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, self.config_filename)
            self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=self.multifile)
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


def check_config_files(args: Any) -> None:
    """Raise ValueError naming the file, line and column of a YAML syntax error in a ``--config`` file.

    (jsonargparse reports such errors without the file name.)"""
    if not isinstance(args, (list, tuple)):
        return
    args = [str(a) for a in args]
    paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for path in paths:
        if not os.path.isfile(path):
            continue  # jsonargparse reports missing files and inline YAML strings itself
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ValueError(f"--config {path}{where}: YAML syntax error: {problem}") from None


def _version_number(path: Path) -> int | None:
    match = VERSION_PATTERN.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def newest_last_checkpoint(root: Path) -> tuple[int, Path] | None:
    """``(N, <root>/version_<N>/checkpoints/last.ckpt)`` with the largest ``N`` that has one, else ``None``."""
    found = []
    if root.is_dir():
        for child in root.iterdir():
            number = _version_number(child)
            if number is not None and (child / "checkpoints" / "last.ckpt").is_file():
                found.append((number, child / "checkpoints" / "last.ckpt"))
    return max(found) if found else None


def next_version(root: Path) -> int:
    """The first unused ``version_<N>`` number in ``root`` (0 for a new folder)."""
    numbers = [n for n in (_version_number(c) for c in root.iterdir()) if n is not None] if root.is_dir() else []
    return max(numbers) + 1 if numbers else 0


def _as_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_tuple(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return _as_tuple(value.tolist())
    return value


def _same(a: Any, b: Any) -> bool:
    a, b = _as_tuple(a), _as_tuple(b)
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def checkpoint_conflicts(model: pl.LightningModule, hparams: dict[str, Any]) -> list[str]:
    """One line per hyper-parameter of the checkpoint that differs from ``model``'s.

    Each line reads ``name: checkpoint X, this run Y``.

    Compares the model class (the checkpoint's ``_class_path``) and every hyper-parameter both have,
    except :data:`IGNORED_CKPT_HPARAMS`. A module may explain a conflict with a ``checkpoint_conflict_hints``
    dict (argument -> hint)."""
    lines = []
    class_path = hparams.get("_class_path")
    if class_path:
        module_name, _, name = str(class_path).rpartition(".")
        try:
            cls = getattr(__import__(module_name, fromlist=[name]), name)
        except (ImportError, AttributeError):
            cls = None
        if cls is not type(model):
            lines.append(
                f"model class: checkpoint {class_path}, this run {type(model).__module__}.{type(model).__qualname__}"
            )
    hints = getattr(model, "checkpoint_conflict_hints", {})
    own = dict(model.hparams)
    for key, value in hparams.items():
        if key in IGNORED_CKPT_HPARAMS or key not in own or _same(value, own[key]):
            continue
        origin = " (linked from the data module)" if key in DATA_TO_MODEL_LINKS else ""
        line = f"{key}: checkpoint {_as_tuple(value)!r}, this run {_as_tuple(own[key])!r}{origin}"
        if key in hints:
            line += f" - {hints[key]}"
        lines.append(line)
    return lines


class AdvGameArgumentParser(LightningArgumentParser):
    """The CLI's parser: a bad argument or config value is one ``error: <message>`` line (exit status 2), as the
    errors raised while building the objects (:mod:`lit_advgame.utils.errors`), instead of jsonargparse's usage
    dump and its list of union alternatives. ``LIT_ADVGAME_DEBUG=1`` keeps jsonargparse's report."""

    @override
    def error(self, message: str, ex: Exception | None = None) -> Any:
        message = unwrap_union_error(message)
        if not self.exit_on_error or debug_enabled():  # jsonargparse catches it (or the user asked for all of it)
            return super().error(message, ex)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_CODE)


class AdvGameCLI(LightningCLI):
    """LightningCLI with data→model links, per-run folders, ``--ckpt_path last`` resolution, checkpoint
    hyper-parameter checks and an optional test run after ``fit`` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.ckpt_hparams: dict[str, Any] | None = None
        self.ckpt_file: str | None = None
        super().__init__(*args, **kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After `fit`, run `test` on the best checkpoint (or the final weights if none was saved).",
        )
        parser.add_argument(
            "--num_threads",
            type=int | None,
            default=None,
            help="torch intra-op CPU threads (torch.set_num_threads); null keeps torch's default. The small "
            "digits models run fastest with 1: extra threads gain little on them and slow down badly when "
            "other processes share the cores.",
        )
        for name in DATA_TO_MODEL_LINKS:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")

    # ------------------------------------------------------------------------- parsing
    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        check_config_files(sys.argv[1:] if args is None else args)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._prepare_run_folder(subcommand, self.config[subcommand])

    def _prepare_run_folder(self, subcommand: str, config: Namespace) -> None:
        """Resolve ``--ckpt_path last`` and give a logger-less run its own ``version_<N>`` folder."""
        trainer = config.get("trainer") or Namespace()
        logger = trainer.get("logger")
        root_dir = Path(trainer.get("default_root_dir") or os.getcwd())
        fixed_run = False  # the logger's version is given: `last` is that run's
        if logger is False:
            runs_root, set_version = root_dir, self._version_setter_without_logger(config, root_dir)
        elif (
            isinstance(logger, Namespace)
            and isinstance(logger.get("init_args"), Namespace)
            and "save_dir" in logger.init_args
        ):
            init_args = logger.init_args
            runs_root = Path(init_args.save_dir or root_dir) / str(init_args.get("name") or "")
            explicit = init_args.get("version")
            fixed_run = explicit is not None
            if fixed_run:
                runs_root = runs_root / (explicit if isinstance(explicit, str) else f"version_{explicit}")
            set_version = None if fixed_run else (lambda n: setattr(init_args, "version", n))
        else:  # Lightning's default logger (or several): version folders under default_root_dir/lightning_logs
            runs_root, set_version = root_dir / "lightning_logs", None

        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            if fixed_run:
                last = runs_root / "checkpoints" / "last.ckpt"
                found: tuple[int, Path] | None = (-1, last) if last.is_file() else None
                where = str(last)
            else:
                found = newest_last_checkpoint(runs_root)
                where = f"{runs_root}/version_<N>/checkpoints/last.ckpt"
            if found is None:
                if subcommand != "fit":
                    raise FileNotFoundError(f"--ckpt_path last: no checkpoint found ({where})")
                rank_zero_warn(f"--ckpt_path last: no checkpoint found ({where}); starting a new run")
                config.ckpt_path = None
            else:
                number, path = found
                config.ckpt_path = str(path)
                if subcommand == "fit":
                    self._continue_tensorboard_run(logger, path)
                if subcommand == "fit" and set_version is not None:
                    set_version(number)  # resume in place: same version folder, same TensorBoard run
                    return
        if logger is False:
            set_version(next_version(runs_root))

    def _continue_tensorboard_run(self, logger: Any, ckpt_path: Path) -> None:
        """A resumed fit writes into the TensorBoard run of its checkpoint: ``purge_step`` (the checkpoint's
        global step) hides what the interrupted run logged after the checkpoint, so no step appears twice."""
        if not (isinstance(logger, Namespace) and str(logger.get("class_path", "")).endswith("TensorBoardLogger")):
            return
        global_step = self._read_checkpoint(str(ckpt_path)).get("global_step")
        if isinstance(global_step, int) and global_step > 0:
            logger["dict_kwargs"] = {**(logger.get("dict_kwargs") or {}), "purge_step": global_step}

    def _read_checkpoint(self, ckpt_path: str) -> dict[str, Any]:
        """The checkpoint at ``ckpt_path`` (read once), with one clear error for a missing or corrupt file."""
        cached = getattr(self, "_checkpoint_cache", None)
        if cached is not None and cached[0] == ckpt_path:
            return cached[1]
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"--ckpt_path: checkpoint file not found: {ckpt_path}")
        try:
            ckpt = read_checkpoint(ckpt_path, what="checkpoint")
        except ValueError as err:
            cause = err.__cause__ or err
            detail = (str(cause).strip().splitlines() or [""])[0].split(". ")[0]
            raise ValueError(
                f"--ckpt_path {ckpt_path}: truncated or corrupt checkpoint file ({type(cause).__name__}: {detail})"
            ) from err
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ValueError(f"--ckpt_path {ckpt_path}: not a Lightning checkpoint (no 'state_dict' entry)")
        self._checkpoint_cache = (ckpt_path, ckpt)
        return ckpt

    @staticmethod
    def _version_setter_without_logger(config: Namespace, root_dir: Path) -> Any:
        def set_version(number: int) -> None:
            config.trainer.default_root_dir = str(root_dir / f"version_{number}")

        return set_version

    @override
    def _parse_ckpt_path(self) -> None:
        """Read the checkpoint's hyper-parameters for :meth:`after_instantiate_classes` to compare; unlike
        LightningCLI's, never replace the config's model arguments by them (a silent swap)."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or ckpt_path in SPECIAL_CKPT_PATHS or "://" in str(ckpt_path):
            return
        ckpt = self._read_checkpoint(str(ckpt_path))
        self._checkpoint_cache = None  # only the hyper-parameters are kept; Lightning loads the file itself
        self.ckpt_file = str(ckpt_path)
        self.ckpt_hparams = dict(ckpt.get("hyper_parameters") or {})

    # ------------------------------------------------------------------------- instantiation
    @override
    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        num_threads = config.get("num_threads")
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be >= 1 (or null for torch's default); got {num_threads}")
            torch.set_num_threads(num_threads)

    @override
    def after_instantiate_classes(self) -> None:
        if self.ckpt_hparams and self.model is not None:
            conflicts = checkpoint_conflicts(self.model, self.ckpt_hparams)
            if conflicts:
                listed = "; ".join(conflicts)
                raise ValueError(
                    f"--ckpt_path {self.ckpt_file}: the checkpoint was trained with other model arguments than this "
                    f"run's config and command line: {listed}. Use the checkpoint's values (its run's config.yaml) "
                    "or another checkpoint; a checkpoint's hyper-parameters are never swapped in silently."
                )

    @override
    def after_fit(self) -> None:
        """With ``--test_after_fit true``: test the best checkpoint by the monitored metric (else the final weights)."""
        if not self.config.get(self.subcommand, {}).get("test_after_fit", False):
            return
        # The best checkpoint of the monitoring ModelCheckpoint (the configs also have an unmonitored one for
        # last.ckpt), by path: Lightning's "best" would warn about several checkpoint callbacks.
        best = [cb.best_model_path for cb in self.trainer.checkpoint_callbacks if cb.monitor and cb.best_model_path]
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best[0] if best else None)


def build_cli(args: Any = None, run: bool = True) -> AdvGameCLI:
    """Build (and by default run) the CLI; ``args`` parses from a list/dict instead of ``sys.argv``.

    Errors propagate as exceptions (use :func:`main` for the command line's one-line error reports)."""
    subcommand_help = {"description": RUN_HELP}
    return AdvGameCLI(
        model_class=pl.LightningModule,
        datamodule_class=pl.LightningDataModule,
        trainer_class=Trainer,
        parser_class=AdvGameArgumentParser,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "description": f"lit-advgame: game-theoretic adversarial robustness. {RUN_HELP} {EXPORT_HELP}",
            **{sub: subcommand_help for sub in ("fit", "validate", "test", "predict")},
        }
        if run
        else {},
        args=args,
        run=run,
    )


def main(args: Any = None) -> None:
    """Console entry point of ``lit-advgame`` and ``python -m lit_advgame``.

    A user error (bad config, argument, file or checkpoint) prints ``error: <message>`` to stderr and
    exits with status 2; ``LIT_ADVGAME_DEBUG=1`` lets the exception propagate with its traceback.
    Pretrained torchvision weights missing from torchvision's cache are downloaded unless
    ``LIT_ADVGAME_ALLOW_DOWNLOAD=0`` (:func:`~lit_advgame.models.torchvision_models.downloads_allowed`)."""
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, (list, tuple)) and argv and argv[0] == EXPORT_SUBCOMMAND:
        from lit_advgame.predict.export import main as export_main

        with allow_downloads_by_default():
            export_main([str(a) for a in argv[1:]])
        return
    with allow_downloads_by_default():
        run_reporting_user_errors(lambda: build_cli(args))


if __name__ == "__main__":  # pragma: no cover
    main()

"""``InteractionAnalysis``: multi-order interactions of clean and adversarial images as a ``trainer.predict`` job.

The analysis of Ren et al. (NeurIPS 2021, §4.1, Figures 3-4, supplement Table 2) at scale: ``predict_step`` takes a
batch of images and labels and, for each model of a list of model specs (anything
:func:`lit_advgame.classifiers.load_classifier` loads: MadryLab ``robustness`` checkpoints, exported classifier
files, ``torchvision:`` specs, Lightning ``.ckpt`` files of any training module), per image:

1. classifies the clean image; as the reference code, only correctly classified images are attacked and analysed;
2. attacks it -- by default with the strength-controlled attack (:mod:`lit_advgame.attacks.strength`: L∞ PGD that
   stops once the true-class logit dropped by ``threshold``, so every adversarial example has about the same
   attacking utility), or any attack preset;
3. estimates, on the **same** pairs and contexts for ``x`` and ``x_adv``
   (:class:`~lit_advgame.interactions.InteractionChangeApproximator`, with the
   :class:`~lit_advgame.callbacks.game_settings.GameSettings` ``game``: grid, orders, pairs, contexts, value,
   baseline, budget), ``I^(m)`` on the clean and on the adversarial image (Eq. 2), ``ΔI^(m)`` and the attacking
   utility ``ΔJ^(m) = (n-1-m)/(n(n-1)) · ΔI^(m)`` (Eq. 3), each with its standard error.

Seeding: each image is processed alone, its random streams derived from the base ``seed`` and its dataset index
(``derive_seed(seed, "attack", index)`` for the attack's random start, ``derive_seed(seed, "game", index)`` for the
pairs and contexts -- the same for every model, so models are compared on the same pairs and contexts). The results
of an image therefore do not depend on the batch size, the DDP rank or world size, or on resuming; a batch whose
images were partly saved by an earlier run analyses only the others.

Records (one shard per batch, see :class:`~lit_advgame.analysis.writer.AnalysisWriter`), ``K`` models, ``O`` orders:
``index``, ``label``, ``x`` (clean images), ``x_adv`` ``(B, K, C, H, W)``; per image and model ``clean_correct``,
``reached`` (the strength attack's window was reached; always true for presets), ``adv_misclassified``,
``logit_drop`` (``h_y(x) - h_y(x_adv)``), ``linf`` (``‖x_adv - x‖∞``), ``analyzed`` (correct, and reached unless
``only_reached=False``), ``num_forward_passes`` (masked inputs); per image, model and order (float64, NaN where not
analysed) ``clean``, ``adversarial``, ``delta``, ``utility`` and their ``*_stderr``. Subclasses add quantities by
extending :meth:`InteractionAnalysis.analyze_image`: any ``(B, K, O)`` record with a ``<name>_stderr`` partner is
aggregated by :func:`~lit_advgame.analysis.results.aggregate` like these. Further extension points:
:meth:`~InteractionAnalysis.selects` (which images are analysed), :meth:`~InteractionAnalysis.model_game` (the game
of a model), :meth:`~InteractionAnalysis.analyze_correct_image` with :meth:`~InteractionAnalysis.extra_records`
(records of any shape of every correctly classified image; :class:`lit_advgame.defenses.DefenseAnalysis` uses them).

The attack needs gradients: configs set ``trainer.inference_mode: false``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lit_advgame.callbacks.game_settings import DEFAULT_GAME, GameSettings, settings_argument
from lit_advgame.callbacks.probe_attack import STRENGTH, ProbeAttack
from lit_advgame.interactions import DEFAULT_BATCH_SIZE, InputGame, InteractionChangeResult, interaction_change
from lit_advgame.predict.models import describe
from lit_advgame.predict.sharded import ShardedPredictModule, image_indices, load_checked_models
from lit_advgame.utils.checks import check_choice, check_int
from lit_advgame.utils.io import json_safe
from lit_advgame.utils.seeding import derive_seed
from lit_advgame.vocabulary import PROBE_ATTACKS, ProbeAttackName

#: the per-order quantities of an interaction change, as :meth:`InteractionChangeResult.to_dict` names them
ORDER_QUANTITIES = ("clean", "adversarial", "delta", "utility")
#: per image and model: the record's dtype
IMAGE_RECORDS = {
    "clean_correct": torch.bool,
    "reached": torch.bool,
    "adv_misclassified": torch.bool,
    "analyzed": torch.bool,
    "logit_drop": torch.float32,
    "linf": torch.float32,
    "num_forward_passes": torch.int64,
}


def image_seed(seed: int, stream: str, index: int) -> int:
    """The seed of random stream ``stream`` (``"attack"``, ``"game"``) of the image with dataset index ``index``."""
    return derive_seed(int(seed), stream, int(index))


def per_image_quantities(result: InteractionChangeResult) -> dict[str, torch.Tensor]:
    """The ``(B, O)`` per-image values of a :class:`~lit_advgame.interactions.InteractionChangeResult` and their
    standard errors: ``I^(m)`` clean and adversarial (Eq. 2), ``ΔI^(m)`` and ``ΔJ^(m) = w(m) · ΔI^(m)`` (Eq. 3 of
    Ren et al., NeurIPS 2021)."""
    weights = result.weights.view(1, -1)
    return {
        "clean": result.clean.per_image,
        "clean_stderr": result.clean.per_image_stderr,
        "adversarial": result.adversarial.per_image,
        "adversarial_stderr": result.adversarial.per_image_stderr,
        "delta": result.per_image,
        "delta_stderr": result.per_image_stderr,
        "utility": weights * result.per_image,
        "utility_stderr": weights * result.per_image_stderr,
    }


class InteractionAnalysis(ShardedPredictModule):
    """Per-image multi-order interactions of clean and adversarial images for several models (module docstring).

    Subclasses that add per-order quantities extend :meth:`analyze_image` and :attr:`order_records`.

    Args:
        models: a model spec or a list of them (paths of classifier files or Lightning checkpoints, dicts such as
            ``{arch: "torchvision:resnet18", weights: resnet18_l2_eps0.ckpt, name: standard}``); each is analysed
            separately, under its ``name``.
        game: the game and estimator settings, a :class:`~lit_advgame.callbacks.game_settings.GameSettings` (in
            YAML a mapping such as ``{grid: 16, orders: reference, num_pairs: 200, num_contexts: 100}``).
        attack: ``"strength"`` (default) or an attack preset name.
        attack_kwargs: the attack's options (for ``"strength"``: ``threshold``, ``tolerance``, ``eps``,
            ``step_size``, ``steps``, ...; fractions such as ``"32/255"`` allowed; the seed is set per image).
        only_reached: analyse only the images whose strength attack ended in its window (the reference keeps only
            those); otherwise every correctly classified image.
        seed: base seed of the per-image random streams (>= 0).
        masked_batch_size: masked inputs per forward pass of the interaction estimates (their memory is set by
            it; ``batch_size`` is the DataModule's images per batch).
        name: label of this run in reports.
        num_classes, input_shape, mean, std: linked from the DataModule by the CLI; checked against the models
            (a model normalizing with another mean/std than the data's is an error naming both).
    """

    writer_class_path = "lit_advgame.analysis.AnalysisWriter"
    per_image_results = True  # each image seeded by its dataset index: any batch that held it will do
    progress_description = "Analysing"
    work_verb = "analyse"
    #: the per-order records (``(B, K, O)`` float64, NaN where not analysed), each quantity with its ``_stderr``
    order_records: tuple[str, ...] = tuple(name for q in ORDER_QUANTITIES for name in (q, f"{q}_stderr"))

    def __init__(
        self,
        models: str | dict[str, Any] | list[str | dict[str, Any]],
        game: GameSettings = DEFAULT_GAME,
        attack: ProbeAttackName = STRENGTH,
        attack_kwargs: dict[str, Any] | None = None,
        only_reached: bool = True,
        seed: int = 0,
        masked_batch_size: int = DEFAULT_BATCH_SIZE,
        name: str | None = None,
        num_classes: int | None = None,
        input_shape: Sequence[int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_int(seed, "seed", minimum=0)
        check_int(masked_batch_size, "masked_batch_size", minimum=1)
        check_choice(attack, "attack", PROBE_ATTACKS)
        if not isinstance(only_reached, bool):
            raise TypeError(f"only_reached must be a bool; got {only_reached!r}")
        attack_kwargs = dict(attack_kwargs or {})
        if "seed" in attack_kwargs:
            raise ValueError(
                "attack_kwargs may not set 'seed': each image's attack seed comes from seed= and its index"
            )
        # the seed is in run_metadata (meta.json); as a hyper-parameter it would clash with a DataModule seed when
        # a logger merges both (Lightning refuses keys with different values)
        self.save_hyperparameters(ignore=["seed"])
        self.settings = settings_argument(GameSettings, game, {}, type(self).__name__, "game")
        self.attack = ProbeAttack(attack, attack_kwargs, seed=0)  # validates the attack's options now
        loaded = load_checked_models(
            models, "models", num_classes=num_classes, input_shape=input_shape, mean=mean, std=std
        )
        self.models = nn.ModuleList([m.model for m in loaded])
        self.model_names = [m.name for m in loaded]
        self.model_specs = describe(loaded)
        self.seed = int(seed)
        self.only_reached = only_reached
        self.masked_batch_size = int(masked_batch_size)
        self.run_name = name or f"{' vs '.join(self.model_names)}/{attack}"
        self._checked_setup = False

    # ------------------------------------------------------------------ bookkeeping
    @override
    def run_metadata(self) -> dict[str, Any]:
        """JSON-able description of this analysis (written next to the shards, checked on resume)."""
        orders = self.settings.resolved
        return json_safe(
            {
                "name": self.run_name,
                "kind": "interaction_analysis",
                "models": self.model_names,
                "model_specs": self.model_specs,
                "game": self.settings,
                "orders": list(orders.orders),
                "ratios": None if orders.ratios is None else list(orders.ratios),
                "num_players": self.settings.num_players,
                "attack": self.attack.name,
                "attack_kwargs": {k: v for k, v in self.attack.options.items() if k != "seed"},
                "only_reached": self.only_reached,
                "seed": self.seed,
                "seeding": "per image: derive_seed(seed, 'attack' | 'game', <dataset index>)",
                "masked_batch_size": self.masked_batch_size,
            }
        )

    # ------------------------------------------------------------------ the analysis
    def attack_image(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int) -> dict[str, torch.Tensor]:
        """Attack one correctly classified image ``x`` ``(1, C, H, W)``: ``x_adv`` and whether the strength attack's
        window was ``reached`` (always true for a preset)."""
        attack = self.attack.build(model, seed=image_seed(self.seed, "attack", index))
        with torch.inference_mode(False), torch.enable_grad():
            if self.attack.name == STRENGTH:
                result = attack.run(x, y)
                return {"x_adv": result.x_adv, "reached": result.reached}
            x_adv = attack(x, y).detach()
        return {"x_adv": x_adv, "reached": torch.ones(1, dtype=torch.bool, device=x.device)}

    def analyze_image(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, index: int
    ) -> dict[str, torch.Tensor]:
        """The per-order quantities of one analysed image (``(1, O)`` each, see :func:`per_image_quantities`) and
        ``num_forward_passes`` (an int); the pairs and contexts are seeded by the image's dataset ``index``."""
        clean, adversarial = self.model_game(model, x, y), self.model_game(model, x_adv, y)
        result = interaction_change(
            clean, adversarial, **self.settings.estimator_kwargs(image_seed(self.seed, "game", index))
        )
        out = per_image_quantities(result)
        out["num_forward_passes"] = result.num_forward_passes
        return out

    def model_game(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> InputGame:
        """The input game of ``model`` on images ``x`` with true classes ``y`` (the ``game`` settings)."""
        return self.settings.game(model, x, y, self.masked_batch_size)

    def selects(self, record: Mapping[str, Any]) -> bool:
        """Whether an image is analysed, from its record (``clean_correct``, ``reached``, ``adv_misclassified``):
        correctly classified, and its strength attack reached its window unless ``only_reached=False``."""
        return record["clean_correct"] and (record["reached"] or not self.only_reached)

    def analyze_correct_image(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int
    ) -> dict[str, torch.Tensor]:
        """Records of every correctly classified image, whether analysed or not (none here; subclasses add their
        own attacks' results); their fill values come from :meth:`extra_records`."""
        return {}

    def extra_records(self) -> dict[str, torch.Tensor]:
        """A subclass's further per-image, per-model records: name -> the value of an image without it (its
        shape and dtype: NaN, False, 0)."""
        return {}

    def _image_records(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int) -> dict[str, Any]:
        with torch.no_grad():
            clean_logits = model(x)
        correct = bool(clean_logits.argmax(dim=1) == y)
        if correct:
            attacked = self.attack_image(model, x, y, index)
            x_adv, reached = attacked["x_adv"], bool(attacked["reached"].all())
        else:  # as the reference: only correctly classified images are attacked
            x_adv, reached = x, False
        with torch.no_grad():
            adv_logits = model(x_adv)
        record: dict[str, Any] = {
            "x_adv": x_adv[0],
            "clean_correct": correct,
            "reached": reached,
            "adv_misclassified": bool(adv_logits.argmax(dim=1) != y),
            "logit_drop": float(clean_logits[0, y] - adv_logits[0, y]),
            "linf": float((x_adv - x).abs().max()),
        }
        record["analyzed"] = self.selects(record)
        if record["analyzed"]:
            analysis = self.analyze_image(model, x, y, x_adv, index)
            record.update({k: v[0] if isinstance(v, torch.Tensor) else v for k, v in analysis.items()})
        if correct:
            record.update(self.analyze_correct_image(model, x, y, index))
        return record

    def analyze_batch(
        self, x: torch.Tensor, y: torch.Tensor, indices: Sequence[int] | torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Analyse images ``x`` with labels ``y`` and dataset ``indices`` with every model; returns the records."""
        indices = image_indices(x, indices)
        y = y.long()
        if not self._checked_setup:
            for model in self.models:
                self.settings.check_setup(type(self).__name__, model, x[:1], num_games=2)
            self._checked_setup = True
        rows = [
            [self._image_records(model, x[b : b + 1], y[b : b + 1], index) for model in self.models]
            for b, index in enumerate(indices)
        ]
        return self._stack(x, y, indices, rows)

    def _stack(self, x: torch.Tensor, y: torch.Tensor, indices: list[int], rows: list[list[dict]]) -> dict:
        """Records ``(B, K, ...)`` from the per-image, per-model dicts; NaN where an image was not analysed."""
        nan = torch.full((len(self.settings.resolved),), math.nan, dtype=torch.float64)
        records: dict[str, torch.Tensor] = {
            "index": torch.tensor(indices, dtype=torch.int64),
            "label": y.detach().cpu(),
            "x": x.detach().float().cpu(),
            "x_adv": torch.stack([torch.stack([rec["x_adv"] for rec in row]) for row in rows]).float().cpu(),
        }
        for key, dtype in IMAGE_RECORDS.items():
            records[key] = torch.tensor([[rec.get(key, 0) for rec in row] for row in rows], dtype=dtype)
        for key in self.order_records:
            records[key] = torch.stack(
                [torch.stack([rec[key].detach().double().cpu() if key in rec else nan for rec in row]) for row in rows]
            )
        for key, fill in self.extra_records().items():
            records[key] = torch.stack(
                [
                    torch.stack([rec[key].detach().to(fill.dtype).cpu() if key in rec else fill for rec in row])
                    for row in rows
                ]
            )
        return records

    # ------------------------------------------------------------------ Lightning hooks
    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The first model's logits (the analysis itself runs in ``predict_step``)."""
        return self.models[0](x)

    @override
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        claimed = self.claim_images(batch, batch_idx)  # per image: the saved ones are skipped
        if isinstance(claimed, dict):
            return claimed
        return self.analyze_batch(*claimed)

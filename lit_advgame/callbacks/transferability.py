"""Intra-ensemble transferability over training (TRS, Yang et al., NeurIPS 2021, §4; the DVERGE protocol).

Each run keeps the probes that every model classifies correctly, attacks each source model on
them and reports, for every (source, target) pair, the fraction of those probes on which the
source's adversarial example fools the target in at least one of ``restarts`` runs
(:func:`lit_advgame.ensembles.transfer_report`). Models: the ensemble's members
(``pl_module.model.members``), optional external models (model specs, see
:func:`lit_advgame.predict.load_classifier`: a classifier file, a Lightning checkpoint or
``{arch, weights}``) and, with ``include_ensemble``, the ensemble output itself (last row and
column). The diagonal is the white-box success rate. A single (non-ensemble) classifier is
allowed: with external models its row/column are the transfer to/from them; alone, only its
white-box rate is logged.

Defaults for digits: L∞ PGD with ``eps=0.05``, step ``0.0125`` (eps/4), 10 steps, random
start, 1 restart, 64 probes. On two standard digits CNNs this gives white-box rates of about
0.3-0.5 and transfer rates of about 0.3-0.4 (``eps=0.1``: about 0.9 and 0.85; ``eps=0.15``
saturates), so the matrix stays informative; the DVERGE CIFAR setting is ``eps=0.03``, 50
steps, step eps/5, 5 restarts.

Scalars (epoch as step): ``transfer/<source>_to_<target>`` for every pair (names ``member0``, ...,
the external models' names, ``ensemble``; ``model`` for a single classifier),
``transfer/member_off_diagonal_mean`` (mean transfer between distinct members, with at least two
members), ``transfer/member_whitebox_mean``, ``transfer/num_points`` and the cost
(``zz_cost/transfer/{forward_passes,seconds}``). Figure: ``transfer/matrix`` (heatmap, rows = source,
columns = target).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from lit_advgame.callbacks.base import Figures, Metrics, ProbeCallback
from lit_advgame.callbacks.figures import transfer_figure
from lit_advgame.callbacks.probe_attack import ProbeAttack
from lit_advgame.callbacks.probes import batched_logits, members_of, module_device
from lit_advgame.ensembles.transferability import transfer_report
from lit_advgame.interactions import eval_mode
from lit_advgame.models import find_normalizer
from lit_advgame.predict.models import load_classifiers
from lit_advgame.utils.checks import check_int
from lit_advgame.utils.tensorboard import Chart, Layout

#: attack options used when ``attack_kwargs`` is not given (see the module docstring)
DEFAULT_ATTACK_KWARGS = {"eps": 0.05, "step_size": 0.0125, "steps": 10}


class TransferabilityCallback(ProbeCallback):
    """Log the transfer-success matrix between ensemble members (and external models) as scalars and a heatmap.

    Args:
        probe_size: probe examples (default 64); only those every model classifies correctly count.
        attack: attack preset (default ``"pgd"``) or ``"strength"``.
        attack_kwargs: its options (default ``{eps: 0.05, step_size: 0.0125, steps: 10}``).
        restarts: attack runs per source (different seeds); a probe counts as fooled if any run fools.
        include_ensemble: add the ensemble output as a source and target (ensembles only).
        external_models: optional list of model specs evaluated as extra sources and targets.
        prefix: tag prefix (default ``"transfer"``).
        **kwargs: the other probe settings of :class:`~lit_advgame.callbacks.base.ProbeCallback` (``log_figure``:
            the heatmap, ...).
    """

    def __init__(
        self,
        *,
        probe_size: int = 64,
        attack: str = "pgd",
        attack_kwargs: dict[str, Any] | None = None,
        restarts: int = 1,
        include_ensemble: bool = True,
        external_models: list[Any] | None = None,
        prefix: str = "transfer",
        **kwargs: Any,
    ) -> None:
        super().__init__(probe_size=probe_size, prefix=prefix, **kwargs)
        options = DEFAULT_ATTACK_KWARGS if attack_kwargs is None else attack_kwargs
        self.attack = ProbeAttack(attack, options, seed=self.seed)
        check_int(restarts, "restarts", minimum=1)
        if external_models is not None and not isinstance(external_models, (list, tuple)):
            raise TypeError(f"external_models must be a list of model specs; got {type(external_models).__name__}")
        self.restarts = restarts
        self.include_ensemble = bool(include_ensemble)
        self.external_specs = list(external_models or [])
        self._externals: list[tuple[str, nn.Module]] = []

    # ------------------------------------------------------------------------------------------
    @override
    def check_setup(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self._externals = self._load_externals(model, x)
        members = members_of(model)
        count = (len(members) if members else 1) + len(self._externals)
        if count < 2 and not (members and self.include_ensemble):
            rank_zero_warn(
                f"{self.name}: the model is a single classifier and no external_models are given, so only its "
                "white-box success rate is logged (train an ensemble or add external_models for transfer rates)"
            )

    def _load_externals(self, model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
        if not self.external_specs:
            return []
        normalizer = find_normalizer(model)
        stats = {}
        if normalizer is not None:
            stats = {"mean": normalizer.mean.flatten().tolist(), "std": normalizer.std.flatten().tolist()}
        with torch.no_grad(), eval_mode(model):
            num_classes = int(model(x[:1].to(module_device(model))).shape[1])
        try:
            loaded = load_classifiers(
                self.external_specs, "external_models", num_classes=num_classes, input_shape=tuple(x.shape[1:]), **stats
            )
        except (TypeError, ValueError, OSError) as err:
            raise ValueError(f"{self.name}: cannot load external_models ({err})") from err
        reserved = [
            item.name for item in loaded if item.name in ("model", "ensemble") or item.name.startswith("member")
        ]
        if reserved:
            raise ValueError(
                f"{self.name}: external model names {reserved} clash with the names of the trained models "
                "('model', 'member<i>', 'ensemble'); give each spec another 'name'"
            )
        return [(item.name, item.model) for item in loaded]

    def _models(self, model: nn.Module) -> tuple[list[str], list[nn.Module], nn.Module | None]:
        members = members_of(model)
        device = module_device(model)
        externals = [(name, ext.to(device)) for name, ext in self._externals]
        if members:
            names = [f"member{i}" for i in range(len(members))]
            sources = list(members)
        else:
            names, sources = ["model"], [model]
        names += [name for name, _ in externals]
        sources += [ext for _, ext in externals]
        ensemble = model if members and self.include_ensemble else None
        if ensemble is not None:
            names.append("ensemble")
        return names, sources, ensemble

    @override
    def planned_forward_passes(self, model: nn.Module, x: torch.Tensor) -> tuple[int, str]:
        """About ``P · (2T + R · (steps · A + S · T))`` forward passes for ``P`` probes (fewer when some are
        misclassified), ``R`` restarts, ``S`` sources whose attacks pass ``A`` networks in all, each adversarial set
        scored on every model (``T`` networks; the ensemble counts its members), the clean probes twice."""
        members = len(members_of(model) or [model])
        ensemble = members if self.include_ensemble and members_of(model) else 0
        sources = members + len(self._externals) + (1 if ensemble else 0)
        networks = members + len(self._externals) + ensemble  # A = T here: every model is a source and a target
        steps, probes = self.attack.steps, x.shape[0]
        passes = probes * (2 * networks + self.restarts * (steps * networks + sources * networks))
        detail = f"{self.attack.describe()} on {probes} probes x {sources} source(s) x {self.restarts} restart(s)"
        return passes, f"about; {detail}, each scored on every model"

    @override
    def counted_modules(self, model: nn.Module) -> list[nn.Module]:
        return super().counted_modules(model) + [ext for _, ext in self._externals]

    def _factory(self) -> Callable[[nn.Module], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """``source -> attack``: each source and each call (restart, chunk) gets its own seed."""
        base = int(self.attack.options["seed"])
        sources = itertools.count()

        def factory(source: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
            index = next(sources)
            calls = itertools.count()

            def attack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                seed = base + 1000 * index + next(calls)
                return self.attack.build(source, seed=seed)(x, y)

            return attack

        return factory

    @override
    def charts(self) -> Layout:
        """The members' mean white-box and off-diagonal transfer rates, and every (source, target) rate, as lines."""
        means = Chart("members: mean white-box and off-diagonal transfer", (self.pattern(then="/member_.+_mean$"),))
        return {
            f"{self.prefix}: transfer success": [
                means,
                Chart("every source -> target", (self.pattern(then="/.+_to_"),)),
            ]
        }

    # ------------------------------------------------------------------------------------------
    @override
    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[Metrics, Figures]:
        names, sources, ensemble = self._models(model)
        everyone = sources + ([ensemble] if ensemble is not None else [])
        correct = torch.ones_like(y, dtype=torch.bool)
        for m in everyone:
            correct &= batched_logits(m, x, self.batch_size).argmax(dim=1) == y
        metrics: Metrics = {self.tag("num_points"): float(correct.sum())}
        if not bool(correct.any()):
            rank_zero_warn(f"{self.name}: no probe is classified correctly by every model at epoch {epoch}; skipped")
            return metrics, {}
        report = transfer_report(
            sources,
            x[correct],
            y[correct],
            self._factory(),
            ensemble,
            restarts=self.restarts,
            batch_size=self.batch_size,
        )
        matrix = report.matrix
        for i, source in enumerate(names):
            for j, target in enumerate(names):
                metrics[self.tag(f"{source}_to_{target}")] = float(matrix[i, j])
        members = members_of(model)
        if members:
            block = matrix[: len(members), : len(members)]
            metrics[self.tag("member_whitebox_mean")] = float(block.diagonal().mean())
            if len(members) >= 2:
                off = ~torch.eye(len(members), dtype=torch.bool)
                metrics[self.tag("member_off_diagonal_mean")] = float(block[off].mean())
        figures = (
            {self.tag("matrix"): transfer_figure(matrix, names, report.num_points, epoch)} if self.log_figure else {}
        )
        return metrics, figures

"""Interaction callbacks: strength-controlled attack, short fits read back from TensorBoard, clear errors, DDP."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_advgame.attacks import StrengthControlledAttack
from lit_advgame.callbacks import (
    DisentanglementCallback,
    GameSettings,
    MultiOrderInteractionCallback,
    PerturbationInteractionCallback,
    ProbeAttack,
    TransferabilityCallback,
)
from lit_advgame.cli import build_cli, main
from lit_advgame.data import DigitsDataModule
from lit_advgame.interactions import (
    DEFAULT_MAX_FORWARD_PASSES,
    interaction_change,
    perturbation_interaction_estimate,
)
from lit_advgame.interactions.game import DEFAULT_GRID
from lit_advgame.interactions.perturbation_spec import PerturbationInteraction
from lit_advgame.models import build_model
from lit_advgame.predict import export_classifier
from lit_advgame.training import StandardClassifier
from lit_advgame.training.ensemble import Ensemble
from tests.conftest import CONFIGS, DDP_CPU_ARGS
from tests.tb_utils import read_image_tags, read_scalars

MLP = {"hidden_sizes": [32]}
# tiny game budgets: a 4x4 grid (n = 16), three orders m = int(14 r) = 2, 7, 12
TINY = {"grid": 4, "orders": [0.2, 0.5, 0.9], "num_pairs": 2, "num_contexts": 4}
LABELS = ("r0.20", "r0.50", "r0.90")
ORDERS = (2, 7, 12)


pytestmark = pytest.mark.usefixtures("one_thread_module")  # one intra-op thread (tests/conftest.py)


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup()
    return dm


def _train_mlp(dm: DigitsDataModule, seed: int, steps: int = 100) -> dict[str, torch.Tensor]:
    """A small MLP trained full-batch on the digits training split (about 97% validation accuracy)."""
    torch.manual_seed(seed)
    net = build_model("mlp", num_classes=10, in_channels=1, input_size=(16, 16), mean=dm.mean, std=dm.std, **MLP)
    x, y = dm.probe_set(dm.split_sizes()["train"], "train", 0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def trained(digits) -> list[dict[str, torch.Tensor]]:
    return [_train_mlp(digits, seed) for seed in (0, 1)]


def _net(dm: DigitsDataModule, state: dict[str, torch.Tensor]) -> nn.Module:
    net = build_model("mlp", num_classes=10, in_channels=1, input_size=(16, 16), mean=dm.mean, std=dm.std, **MLP)
    net.load_state_dict(state)
    return net.eval()


def _slow_sgd(params):
    return torch.optim.SGD(params, lr=1e-4)


def _standard(dm: DigitsDataModule, state: dict[str, torch.Tensor]) -> StandardClassifier:
    module = StandardClassifier(
        arch="mlp",
        arch_kwargs=MLP,
        num_classes=10,
        input_shape=dm.input_shape,
        mean=dm.mean,
        std=dm.std,
        optimizer=_slow_sgd,
    )
    module.model.load_state_dict(state)
    return module


def _trainer(tmp_path: Path, callbacks: list, loggers=None, **kwargs) -> pl.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "limit_train_batches": 2,
        "limit_val_batches": 1,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": loggers if loggers is not None else TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False),
        "callbacks": callbacks,
        "default_root_dir": tmp_path,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


# ------------------------------------------------------------------------------------------ strength attack
def test_strength_attack_follows_the_reference_rule_on_a_linear_model():
    """z_0 = c·Σx, z_1 = 0: every sign step lowers z_0 by c·(pixels that can move)·α, so stops are exact."""

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Parameter(torch.tensor(1.0 / 64))

        def forward(self, x):
            z0 = self.c * x.flatten(1).sum(dim=1)
            return torch.stack([z0, torch.zeros_like(z0)], dim=1)

    model = Linear()
    alpha = 1 / 64  # with 64 movable pixels a full step lowers z_0 by exactly 64 * (1/64) * (1/64) = 1/64
    x = torch.full((2, 1, 8, 8), 0.5)
    x[1, :, :4] = 0.0  # image 1: half its pixels sit at 0 and cannot go down, so its steps drop half as much
    attack = StrengthControlledAttack(
        model,
        threshold=2.2 / 64,
        tolerance=0.5 / 64,
        eps=1.0,
        step_size=alpha,
        steps=50,
        init_std=0.0,
        require_misclassification=False,
    )
    result = attack.run(x, torch.zeros(2, dtype=torch.long))
    unit = 1 / 64
    # image 0: drops 1, 2 (accepted), 3 overshoots (> 2.7) -> halved step gives 2.5, inside (2.2, 2.7]: stop
    # image 1: drops 0.5, 1, 1.5, 2, then 2.5 inside the window after 5 steps, no halving
    assert result.steps.tolist() == [3, 5]
    assert result.drop / unit == pytest.approx(torch.tensor([2.5, 2.5]), abs=1e-4)
    assert result.reached.tolist() == [True, True]
    assert torch.allclose(result.x_adv[0], torch.full_like(x[0], 0.5 - 2.5 * alpha), atol=1e-6)
    assert torch.allclose(result.x_adv[1, :, 4:], torch.full_like(x[1, :, 4:], 0.5 - 5 * alpha), atol=1e-6)
    assert model.c.grad is None
    # forward passes: 2 clean + 8 gradient steps + 9 tentative steps (one retry) + 2 final
    assert result.forward_passes == 2 + 8 + 9 + 2


def test_strength_attack_reaches_the_logit_drop_window_on_a_trained_model(digits, trained):
    model = _net(digits, trained[0]).train()  # the attack must use eval mode and restore train mode
    x, y = digits.probe_set(32, "val", 0)
    attack = StrengthControlledAttack(model, threshold=6.0, seed=3)
    result = attack.run(x, y)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert result.reached.float().mean() >= 0.5
    model.eval()
    with torch.no_grad():
        drop = model(x).gather(1, y[:, None]).squeeze(1) - model(result.x_adv).gather(1, y[:, None]).squeeze(1)
        misclassified = model(result.x_adv).argmax(dim=1) != y
    assert torch.allclose(drop, result.drop, atol=1e-5)
    reached = result.reached
    assert bool(((drop[reached] > 6.0) & (drop[reached] <= 6.5)).all())
    assert bool(misclassified[reached].all())
    assert (result.x_adv - x).abs().amax() <= attack.eps + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    # seeded: the same seed gives the same examples, inside inference mode too (as in Lightning's validation)
    with torch.inference_mode():
        x_inf = x.clone()
        again = StrengthControlledAttack(model, threshold=6.0, seed=3).run(x_inf, y)
    assert torch.equal(again.x_adv, result.x_adv)


def test_strength_attack_bad_arguments():
    model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="threshold"):
        StrengthControlledAttack(model, threshold=-1.0)
    with pytest.raises(ValueError, match="steps"):
        StrengthControlledAttack(model, steps=0)
    with pytest.raises(TypeError, match="model"):
        StrengthControlledAttack("resnet", threshold=1.0)
    with pytest.raises(ValueError, match="bogus"):
        ProbeAttack("strength", {"bogus": 1})
    with pytest.raises(ValueError, match="no_such_attack"):
        ProbeAttack("no_such_attack")
    with pytest.raises(ValueError, match="eps"):
        ProbeAttack("strength", {"eps": "one/255"})
    assert ProbeAttack("strength", {"eps": "64/255"}).options["eps"] == pytest.approx(64 / 255)


# ------------------------------------------------------------------------------------------ fits
def _fit_single_model(tmp_path, digits, trained):
    external = export_classifier(
        _net(digits, trained[1]),
        tmp_path / "external.pt",
        arch="mlp",
        num_classes=10,
        input_shape=digits.input_shape,
        arch_kwargs=MLP,
    )
    callbacks = [
        MultiOrderInteractionCallback(probe_size=8, game=TINY),
        DisentanglementCallback(probe_size=8, game=TINY),
        PerturbationInteractionCallback(
            probe_size=8,
            interaction={"grid": 4, "num_samples": 16},
            every_n_epochs=2,
            attack_kwargs={"eps": 16 / 255, "steps": 5},
        ),
        TransferabilityCallback(probe_size=16, external_models=[{"path": str(external), "name": "ext"}]),
    ]
    loggers = [TensorBoardLogger(tmp_path, name="tb", default_hp_metric=False), CSVLogger(tmp_path, name="csv")]
    module = _standard(digits, trained[0])
    trainer = _trainer(tmp_path, callbacks, loggers)  # default inference_mode=True
    trainer.fit(module, datamodule=digits)
    return trainer, module, callbacks


def test_fit_logs_every_callback_per_epoch(tmp_path, digits, trained, capfd, caplog):
    trainer, module, (multi, dis, pert, transfer) = _fit_single_model(tmp_path, digits, trained)
    log_dir = trainer.loggers[0].log_dir
    scalars = read_scalars(log_dir)

    def steps(tag):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
        return [step for step, _ in scalars[tag]]

    last = {tag: values[-1][1] for tag, values in scalars.items()}
    for label in LABELS:
        for kind in ("clean", "adversarial", "delta", "utility", "share"):
            assert steps(f"interaction/{kind}/{label}") == [0, 1]
        assert steps(f"disentanglement/{label}") == [0, 1]
        assert 0.0 <= last[f"disentanglement/{label}"] <= 1.0 + 1e-6
    for prefix in ("interaction", "disentanglement", "transfer"):
        assert steps(f"zz_cost/{prefix}/forward_passes") == [0, 1]
        assert last[f"zz_cost/{prefix}/forward_passes"] > 0
    # every_n_epochs=2: only epoch 1
    assert steps("perturbation_interaction/value") == [1]
    value = last["perturbation_interaction/value"]  # single form over all n = 16 players: exact (stderr 0)
    assert (
        last["zz_margin/perturbation_interaction/value/lower"]
        == value
        == last["zz_margin/perturbation_interaction/value/upper"]
    )
    assert pert.last_metrics["perturbation_interaction/value_stderr"] == 0.0
    for pair in ("model_to_model", "model_to_ext", "ext_to_model", "ext_to_ext"):
        assert steps(f"transfer/{pair}") == [0, 1]
        assert 0.0 <= last[f"transfer/{pair}"] <= 1.0
    assert {
        "interaction/clean_vs_adversarial",
        "interaction/delta",
        "interaction/utility",
        "interaction/share",
        "interaction/examples",
        "disentanglement/curve",
        "transfer/matrix",
    } <= read_image_tags(log_dir)

    # formulas between the logged per-order scalars (n = 16 players)
    n = 16
    share = [last[f"interaction/share/{label}"] for label in LABELS]
    assert sum(share) == pytest.approx(1.0, abs=1e-5)
    for label, m in zip(LABELS, ORDERS):
        delta = last[f"interaction/delta/{label}"]
        assert delta == pytest.approx(
            last[f"interaction/clean/{label}"] - last[f"interaction/adversarial/{label}"], abs=1e-5
        )
        assert last[f"interaction/utility/{label}"] == pytest.approx(
            (n - 1 - m) / (n * (n - 1)) * delta, rel=1e-4, abs=1e-9
        )

    # the logged numbers are the engine's: recompute epoch 1 by hand with the same seeds
    model = module.model.eval()
    x, y = digits.probe_set(8, "val", 0)
    outcome = multi.attack.run(model, x, y, 256)
    keep = outcome.reached
    assert last["interaction/num_images"] == float(keep.sum()) > 0
    games = [multi.settings.game(model, xs[keep], outcome.y[keep], 256) for xs in (outcome.x, outcome.x_adv)]
    expected = interaction_change(*games, **multi.settings.estimator_kwargs(0))
    for k, label in enumerate(LABELS):
        assert last[f"interaction/delta/{label}"] == pytest.approx(float(expected.values[k]), rel=1e-4, abs=1e-7)
    outcome = pert.attack.run(model, x, y, 256)
    expected = perturbation_interaction_estimate(
        model,
        outcome.x,
        outcome.x_adv - outcome.x,
        outcome.y,
        grid=4,
        form="single",
        num_samples=16,
        value="margin_max",
        scale="paper",
    )
    assert last["perturbation_interaction/value"] == pytest.approx(float(expected.values), rel=1e-4, abs=1e-7)

    # other loggers get log_metrics(step=epoch)
    with open(Path(trainer.loggers[1].log_dir) / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    logged = [(int(r["step"]), float(r["interaction/delta/r0.50"])) for r in rows if r.get("interaction/delta/r0.50")]
    assert [step for step, _ in logged] == [0, 1]
    # the cost line names the callback, its forward passes and time
    printed = capfd.readouterr().err + caplog.text
    for cb in (multi, dis, pert, transfer):
        assert f"{cb.name}: {int(cb.last_metrics[cb.cost_tag('forward_passes')])} forward passes" in printed
    # before they start, each announces the forward passes it plans (TINY: 3 orders x 2 pairs x 4 contexts x 4 + 1)
    per_image = 3 * 2 * 4 * 4 + 1
    announced = {
        multi: f"plans {8 * per_image * 2:,} forward passes per run (at most; masked: 8 probes x 3 orders x 2 pairs "
        f"x 4 contexts x 2 game(s); plus the 'strength' attack (up to 100 steps per probe)); every 1 epoch(s): "
        f"~{8 * per_image * 2:,} per epoch, {2 * 8 * per_image * 2:,} over max_epochs=2",
        dis: f"plans {8 * per_image} forward passes per run (at most; masked: 8 probes x 3 orders x 2 pairs x 4 "
        f"contexts x 1 game(s)); every 1 epoch(s): ~{8 * per_image} per epoch, {2 * 8 * per_image:,} over max_epochs=2",
        pert: "plans 272 forward passes per run (at most; masked: 8 probes x (2 + 2 x 16 single-form samples); plus "
        "the 'pgd' attack (5 steps per probe)); every 2 epoch(s): ~136 per epoch, 272 over max_epochs=2",
        transfer: "forward passes per run (about; the 'pgd' attack (10 steps per probe) on 16 probes x 2 source(s) x 1 "
        "restart(s), each scored on every model); every 1 epoch(s)",
    }
    for cb, text in announced.items():
        assert printed.count(f"{cb.name}: plans ") == 1 and f"{cb.name}: " in printed
        line = next(line for line in printed.splitlines() if f"{cb.name}: plans " in line)
        assert text in line, line
        assert printed.index(f"{cb.name}: plans ") < printed.index(
            f"{cb.name}: {int(cb.history[0][1][cb.cost_tag('forward_passes')])} forward passes"
        )
    assert dis.last_metrics["zz_cost/disentanglement/forward_passes"] <= 8 * per_image + 8  # masked + accuracy check
    assert last["zz_cost/perturbation_interaction/masked_forward_passes"] <= 272

    # trainer.validate runs them too (at the current epoch), still under inference mode
    before = len(multi.history)
    trainer.validate(module, datamodule=digits, verbose=False)
    assert len(multi.history) == before + 1 and multi.history[-1][0] == trainer.current_epoch


def test_ensemble_transfer_matrix(tmp_path, digits, trained):
    module = Ensemble(
        arch="mlp",
        num_members=2,
        arch_kwargs=MLP,
        num_classes=10,
        input_shape=digits.input_shape,
        mean=digits.mean,
        std=digits.std,
        optimizer=_slow_sgd,
    )
    for member, state in zip(module.model.members, trained):
        member.load_state_dict(state)
    callback = TransferabilityCallback(probe_size=32, attack_kwargs={"eps": 0.1, "step_size": 0.025, "steps": 5})
    trainer = _trainer(tmp_path, [callback], inference_mode=False)
    trainer.fit(module, datamodule=digits)
    scalars = read_scalars(trainer.logger.log_dir)
    names = ("member0", "member1", "ensemble")
    last = {}
    for source in names:
        for target in names:
            tag = f"transfer/{source}_to_{target}"
            assert [step for step, _ in scalars[tag]] == [0, 1]
            last[(source, target)] = scalars[tag][-1][1]
    points = scalars["transfer/num_points"][-1][1]
    assert 0 < points <= 32
    for value in last.values():  # success rates are fractions of the probe points
        assert value * points == pytest.approx(round(value * points), abs=1e-3)
    assert scalars["transfer/member_off_diagonal_mean"][-1][1] == pytest.approx(
        (last[("member0", "member1")] + last[("member1", "member0")]) / 2, abs=1e-6
    )
    assert scalars["transfer/member_whitebox_mean"][-1][1] == pytest.approx(
        (last[("member0", "member0")] + last[("member1", "member1")]) / 2, abs=1e-6
    )
    assert "transfer/matrix" in read_image_tags(trainer.logger.log_dir)


def test_probe_tensors_without_a_datamodule(tmp_path, digits, trained):
    x, y = digits.probe_set(64, "train", 0)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    px, py = digits.probe_set(8, "val", 1)
    callback = DisentanglementCallback(probe_size=6, probe_x=px, probe_y=py, game=TINY)
    trainer = _trainer(tmp_path, [callback], max_epochs=1, logger=False)
    trainer.fit(_standard(digits, trained[0]), train_dataloaders=loader, val_dataloaders=loader)
    assert "disentanglement/r0.50" in callback.last_metrics
    assert callback.last_metrics["disentanglement/num_images"] <= 6
    with pytest.raises(ValueError, match="probe examples"):
        _trainer(tmp_path, [DisentanglementCallback(game=TINY)], max_epochs=1, logger=False).fit(
            _standard(digits, trained[0]), train_dataloaders=loader, val_dataloaders=loader
        )


# ------------------------------------------------------------------------------------------ errors
def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown order preset"):
        MultiOrderInteractionCallback(game={"orders": "no_such_orders"})
    with pytest.raises(ValueError, match="ratio"):
        DisentanglementCallback(game={"orders": [0.1, 2.0]})
    with pytest.raises(ValueError, match="every_n_epochs"):
        MultiOrderInteractionCallback(every_n_epochs=0)
    with pytest.raises(ValueError, match="probe_size"):
        TransferabilityCallback(probe_size=0)
    with pytest.raises(ValueError, match="num_pairs"):
        DisentanglementCallback(game={"grid": 2, "num_pairs": 10})
    with pytest.raises(ValueError, match="value"):
        MultiOrderInteractionCallback(game={"value": "no_such_value"})
    with pytest.raises(ValueError, match="probe_split"):
        DisentanglementCallback(probe_split="validation")
    with pytest.raises(ValueError, match="form"):
        PerturbationInteractionCallback(interaction={"form": "pairs"})
    with pytest.raises(ValueError, match="no_such_attack"):
        MultiOrderInteractionCallback(attack="no_such_attack")
    with pytest.raises(ValueError, match="probe_y"):
        DisentanglementCallback(probe_x=torch.rand(4, 1, 16, 16))
    with pytest.raises(ValueError, match="probe_size=8 is larger than the 4 given"):
        DisentanglementCallback(
            probe_size=8, probe_x=torch.rand(4, 1, 16, 16), probe_y=torch.zeros(4, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="restarts"):
        TransferabilityCallback(restarts=0)


def test_settings_objects_are_defined_once_and_flat_keywords_are_deprecated_aliases():
    game = GameSettings(**TINY)
    assert MultiOrderInteractionCallback(game=game).settings is game
    assert DisentanglementCallback(game=TINY).settings == game  # a mapping of the fields
    flat = r"\(grid=\.\.\., orders=\.\.\., num_pairs=\.\.\., num_contexts=\.\.\.\) .*game="
    with pytest.warns(DeprecationWarning, match=flat):
        old = MultiOrderInteractionCallback(probe_size=8, **TINY)
    assert old.settings == game and old.probe_size == 8
    with pytest.warns(DeprecationWarning, match="interaction="):
        pert = PerturbationInteractionCallback(grid=4, num_samples=16)
    assert pert.interaction == PerturbationInteraction(grid=4, num_samples=16)
    # one default per concept: the package's grid and forward-pass cap, the shared specification's defaults
    assert GameSettings().grid == DEFAULT_GRID and GameSettings().max_forward_passes == DEFAULT_MAX_FORWARD_PASSES
    assert PerturbationInteractionCallback().interaction == PerturbationInteraction()
    # probe settings: defined once in ProbeCallback, forwarded by every subclass (only the defaults differ)
    assert [
        cb().probe_size
        for cb in (
            MultiOrderInteractionCallback,
            DisentanglementCallback,
            PerturbationInteractionCallback,
            TransferabilityCallback,
        )
    ] == [16, 16, 16, 64]
    with pytest.raises(ValueError, match="unknown game option"):
        DisentanglementCallback(game={"grids": 4})
    with pytest.raises(TypeError, match="game must be a GameSettings"):
        DisentanglementCallback(game=4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        DisentanglementCallback(bogus=1)


@pytest.mark.parametrize(
    ("callback", "match"),
    [
        (lambda: DisentanglementCallback(probe_size=10_000), "probe_size=10000.*exceeds the 270"),
        (lambda: MultiOrderInteractionCallback(probe_size=4, game={"grid": 32}), "grid 32x32 is larger than the image"),
        (lambda: PerturbationInteractionCallback(probe_size=4, interaction={"grid": 17}), "larger than the image"),
        (lambda: MultiOrderInteractionCallback(probe_size=64, game={"max_forward_passes": 1000}), "max_forward_passes"),
        (lambda: TransferabilityCallback(probe_size=4, external_models=["/no/such/model.pt"]), "external_models"),
    ],
)
def test_setup_errors_stop_the_fit_before_training(tmp_path, digits, trained, callback, match):
    module = _standard(digits, trained[0])
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        _trainer(tmp_path, [callback()], logger=False).fit(module, datamodule=digits)
    assert all(torch.equal(before[k], v) for k, v in module.model.state_dict().items())  # no training step ran


def test_module_without_a_classifier_is_a_clear_error(tmp_path, digits):
    class Bare(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(256, 10)

    with pytest.raises(TypeError, match="pl_module.model"):
        DisentanglementCallback(game=TINY).setup(pl.Trainer(logger=False), Bare(), "fit")


# ------------------------------------------------------------------------------------------ config and DDP
def test_callbacks_config_fragment_appends_the_four_callbacks(capsys):
    args = [
        "fit",
        "--config",
        str(CONFIGS / "standard_digits.yaml"),
        "--config",
        str(CONFIGS / "callbacks_digits.yaml"),
    ]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--print_config"])
    assert exc.value.code == 0
    callbacks = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]
    paths = [c["class_path"] for c in callbacks]
    assert paths[0] == "pytorch_lightning.callbacks.ModelCheckpoint"  # kept: the fragment appends
    assert paths[-4:] == [
        f"lit_advgame.callbacks.{name}"
        for name in (
            "MultiOrderInteractionCallback",
            "DisentanglementCallback",
            "PerturbationInteractionCallback",
            "TransferabilityCallback",
        )
    ]
    cli = build_cli(args[1:], run=False)
    built = [cb for cb in cli.trainer.callbacks if type(cb).__module__.startswith("lit_advgame.callbacks")]
    assert [type(cb).__name__ for cb in built] == [p.rsplit(".", 1)[1] for p in paths[-4:]]
    assert built[0].attack.options["eps"] == pytest.approx(64 / 255)
    # the nested settings keep the configs' meaning: 8x8 grid, reference orders, 4 pairs x 8 contexts; exact Eq. 4
    digits_game = GameSettings(grid=8, orders="reference", num_pairs=4, num_contexts=8)
    assert built[0].settings == built[1].settings == digits_game
    assert built[2].interaction == PerturbationInteraction(
        grid=8, form="single", num_samples=64, value="margin_max", scale="paper"
    )
    # a bad choice inside a settings object fails when the config is parsed
    with pytest.raises(SystemExit):
        build_cli(
            [
                *args[1:],
                "--trainer.callbacks+=lit_advgame.callbacks.DisentanglementCallback",
                "--trainer.callbacks.game.pairs=diagonal",
            ],
            run=False,
        )
    assert "diagonal" in capsys.readouterr().err


def test_callbacks_under_ddp_on_two_cpu_processes(tmp_path):
    """DDP (gloo, 2 CPU processes): rank 0 computes and logs with the epoch as step, no rank hangs."""
    fragment = tmp_path / "tiny_callbacks.yaml"
    fragment.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "callbacks+": [
                        {
                            "class_path": "lit_advgame.callbacks.MultiOrderInteractionCallback",
                            "init_args": {"probe_size": 4, "game": TINY},
                        },
                        {"class_path": "lit_advgame.callbacks.TransferabilityCallback", "init_args": {"probe_size": 8}},
                    ]
                }
            }
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "lit_advgame",
        "fit",
        "--config",
        str(CONFIGS / "standard_digits.yaml"),
        "--config",
        str(fragment),
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--test_after_fit",
        "false",
        "--model.init_args.arch",
        "mlp",
        *DDP_CPU_ARGS,
    ]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "GLOBAL_RANK: 1" in text or "world_size: 2" in text
    for name in ("MultiOrderInteractionCallback", "TransferabilityCallback"):
        assert len(re.findall(rf"{name}: \d+ forward passes, [0-9.]+s \(epoch 0\)", text)) == 1, text[-3000:]
        assert len(re.findall(rf"{name}: plans [0-9,]+ forward passes per run", text)) == 1, text[-3000:]  # rank 0
    scalars = read_scalars(tmp_path / "runs/standard_digits/version_0")
    for tag in ("interaction/attack/clean_accuracy", "zz_cost/interaction/seconds", "transfer/num_points"):
        assert [step for step, _ in scalars[tag]] == [0], tag

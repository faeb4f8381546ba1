"""AdversarialTraining (PGD-AT, TRADES): inner attacks, objectives against formulas, robust validation,
TensorBoard scalars of CLI fits, DDP, argument errors and the configs."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml

from lit_advgame.attacks.pgd_settings import PGDSettings
from lit_advgame.cli import main
from lit_advgame.data import DigitsDataModule
from lit_advgame.training.adversarial import AdversarialTraining
from tests.conftest import CONFIGS, DDP_CPU_ARGS
from tests.tb_utils import read_scalars

EPS = 0.1
# batch limits >= 2: jsonargparse reads "1" as the float 1.0, which Lightning takes as 100% of the batches
FAST = [
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.limit_test_batches",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.log_every_n_steps",
    "1",
    "--model.init_args.attack.steps",
    "2",
    "--model.init_args.eval_attack.steps",
    "2",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread (tests/conftest.py)


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def batch(digits) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = next(iter(digits.val_dataloader()))
    return x[:48], y[:48]


def _module(dm: DigitsDataModule, attack: dict | None = None, **kwargs) -> AdversarialTraining:
    """A module on digits; the small CNN is made narrow (width 8) to keep the tests fast."""
    if kwargs.get("arch", "small_cnn") == "small_cnn":
        kwargs.setdefault("arch_kwargs", {"width": 8})
    attack = {"eps": EPS, "step_size": EPS / 4, **(attack or {})}
    return AdversarialTraining(
        num_classes=dm.num_classes, input_shape=dm.input_shape, mean=dm.mean, std=dm.std, attack=attack, **kwargs
    )


def _pretrain(module: AdversarialTraining, dm: DigitsDataModule, steps: int = 40) -> AdversarialTraining:
    """A few clean Adam steps, so attacks work against a model that classifies."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    loader = iter(dm.train_dataloader())
    for _ in range(steps):
        try:
            x, y = next(loader)
        except StopIteration:
            loader = iter(dm.train_dataloader())
            x, y = next(loader)
        opt.zero_grad()
        F.cross_entropy(module(x), y).backward()
        opt.step()
    return module


@pytest.fixture(scope="module")
def trained_state(digits) -> dict:
    return _pretrain(_module(digits), digits).model.state_dict()


def _trained(dm, state, **kwargs) -> AdversarialTraining:
    module = _module(dm, **kwargs)
    module.model.load_state_dict(state)
    return module


def _kl(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    p = clean_logits.softmax(dim=1)
    return (p * (p.log() - adv_logits.log_softmax(dim=1))).sum(dim=1)


# ------------------------------------------------------------------------------ inner attacks
def test_pgd_inner_attack_raises_the_loss_inside_the_ball(digits, trained_state, batch):
    x, y = batch
    module = _trained(digits, trained_state, attack={"steps": 5}).train()
    x_adv = module.adversarial_examples(x, y, seed=0)
    assert module.training and all(m.training for m in module.modules())  # modes restored
    assert all(p.grad is None for p in module.parameters())  # only the input got gradients
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean = F.cross_entropy(module(x), y, reduction="none")
        adv = F.cross_entropy(module(x_adv), y, reduction="none")
    assert adv.mean() > clean.mean() + 0.5
    assert (adv > clean).float().mean() > 0.95
    # same seed, same examples; another seed, another random start
    assert torch.equal(module.adversarial_examples(x, y, seed=0), x_adv)
    assert not torch.equal(module.adversarial_examples(x, y, seed=1), x_adv)


def test_l2_inner_attack_stays_in_the_l2_ball(digits, trained_state, batch):
    x, y = batch
    module = _trained(digits, trained_state, attack={"norm": "l2", "eps": 1.0, "step_size": 0.25, "steps": 5})
    x_adv = module.adversarial_examples(x, y, seed=0)
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 1.0 + 1e-5
    with torch.no_grad():
        assert F.cross_entropy(module(x_adv), y) > F.cross_entropy(module(x), y)


def test_trades_inner_attack_maximises_the_kl(digits, trained_state, batch):
    x, y = batch
    module = _trained(digits, trained_state, method="trades", attack={"steps": 5}).eval()
    x_adv = module.adversarial_examples(x, y, seed=0)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    gen = torch.Generator().manual_seed(0)
    x_rand = (x + EPS * (2 * torch.rand(x.shape, generator=gen) - 1)).clamp(0, 1)
    with torch.no_grad():
        clean_logits = module(x)
        kl_adv = _kl(clean_logits, module(x_adv))
        kl_rand = _kl(clean_logits, module(x_rand))
    assert kl_adv.mean() > 10 * kl_rand.mean()
    assert (kl_adv > kl_rand).float().mean() > 0.95


@pytest.mark.parametrize("start, expected_std", [("gaussian", 1e-3), ("uniform", EPS / math.sqrt(3))])
def test_trades_random_start(digits, batch, start, expected_std):
    """TRADES' start is x + 0.001·N(0, I) (reference) or uniform in the ε-box (option)."""
    x, y = batch
    x = x.clamp(0.2, 0.8)  # away from the image box, so clipping does not change the start
    attack = _module(digits, method="trades", trades_start=start).training_attack(seed=0)
    delta0 = attack.run(x, y, record_iterates=True).iterates[0]
    assert abs(delta0.std().item() / expected_std - 1) < 0.05
    assert abs(delta0.mean().item()) < 0.1 * expected_std


def test_attack_in_train_mode_uses_batch_statistics_and_keeps_running_statistics(digits, batch):
    x, y = batch
    modes_seen: list[bool] = []
    for in_train in (False, True):
        module = _module(digits, arch="vgg_small", attack={"steps": 2}, attack_in_train_mode=in_train).train()
        bn = next(m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d))
        handle = bn.register_forward_pre_hook(lambda mod, inp: modes_seen.append(mod.training))
        before = {k: v.clone() for k, v in module.model.state_dict().items()}
        module.adversarial_examples(x, y, seed=0)
        handle.remove()
        assert module.training and bn.training
        after = module.model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched
        assert modes_seen and all(seen == in_train for seen in modes_seen)
        modes_seen.clear()


# --------------------------------------------------------------------------------- objectives
def test_trades_loss_matches_the_direct_formula(digits, trained_state, batch):
    x, y = batch
    beta = 2.5
    module = _trained(digits, trained_state, method="trades", beta=beta, attack={"steps": 3})
    x_adv = module.adversarial_examples(x, y, seed=3)
    loss, parts = module.trades_loss(x, x_adv, y)
    grads = torch.autograd.grad(loss, list(module.parameters()))

    clean_logits, adv_logits = module.model(x), module.model(x_adv)
    direct = F.cross_entropy(clean_logits, y) + beta * _kl(clean_logits, adv_logits).mean()
    direct_grads = torch.autograd.grad(direct, list(module.parameters()))
    assert torch.allclose(loss, direct, rtol=1e-5, atol=1e-6)
    assert parts["kl"] > 0
    # gradients flow through both distributions of the KL, as in trades.py
    for g, d in zip(grads, direct_grads):
        assert torch.allclose(g, d, rtol=1e-4, atol=1e-6)
    # the objective is the loss at the inner attack's x'
    objective, _ = module.adversarial_objective(x, y, seed=3)
    assert torch.allclose(objective, loss)


def test_pgd_loss_and_mixed_fraction(digits, trained_state, batch):
    x, y = batch
    for alpha in (0.0, 0.3):
        module = _trained(digits, trained_state, attack={"steps": 3}, mixed_fraction=alpha)
        x_adv = module.adversarial_examples(x, y, seed=1)
        loss, parts = module.pgd_loss(x, x_adv, y)
        expected = (1 - alpha) * F.cross_entropy(module(x_adv), y) + alpha * F.cross_entropy(module(x), y)
        assert torch.allclose(loss, expected, rtol=1e-6)
        assert ("clean_logits" in parts) == (alpha > 0)
        assert torch.allclose(module.adversarial_objective(x, y, seed=1)[0], loss)


def test_zero_eps_is_standard_training(digits, trained_state, batch):
    x, y = batch
    module = _trained(digits, trained_state, attack={"eps": 0.0})
    assert torch.equal(module.adversarial_examples(x, y), x)
    assert torch.allclose(module.training_loss(x, y)[0], F.cross_entropy(module(x), y))


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_a_few_training_steps_lower_the_adversarial_loss(digits, method):
    torch.manual_seed(0)
    module = _module(
        digits, method=method, attack={"steps": 2, "step_size": EPS / 2}, beta=1.0, eval_attack={"steps": 5}
    ).train()
    x_eval, y_eval = next(iter(digits.val_dataloader()))

    def adversarial_loss() -> float:
        module.eval()
        x_adv = module.robust_eval_attack(seed=0)(x_eval, y_eval)
        with torch.no_grad():
            value = F.cross_entropy(module(x_adv), y_eval).item()
        module.train()
        return value

    before = adversarial_loss()
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    batches = [b for _, b in zip(range(4), digits.train_dataloader())]
    for step in range(40):
        x, y = batches[step % len(batches)]
        loss, _ = module.adversarial_objective(x, y, seed=step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = adversarial_loss()
    assert after < 0.8 * before, (before, after)


# ------------------------------------------------------------------------- robust validation
def test_robust_validation_is_below_clean_and_needs_gradients(tmp_path, digits, trained_state):
    module = _trained(digits, trained_state, eval_attack={"steps": 5})
    kwargs = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        "limit_val_batches": 2,
    }
    first = pl.Trainer(inference_mode=False, **kwargs).validate(module, datamodule=digits, verbose=False)[0]
    assert 0.0 <= first["val/adv_acc"] <= first["val/acc"]
    assert first["val/adv_acc"] < first["val/acc"] - 0.1  # a standard-trained model is not robust at ε = 0.1
    assert first["val/adv_loss"] > first["val/loss"]
    # the validation attack is seeded: the same numbers every time
    again = pl.Trainer(inference_mode=False, **kwargs).validate(module, datamodule=digits, verbose=False)[0]
    assert again == first
    with pytest.raises(RuntimeError, match="inference_mode=False"):
        pl.Trainer(inference_mode=True, **kwargs).validate(module, datamodule=digits, verbose=False)
    # without the robust metrics, inference mode is fine
    no_attack = _trained(digits, trained_state, eval_attack={"steps": 0})
    clean_only = pl.Trainer(inference_mode=True, **kwargs).validate(no_attack, datamodule=digits, verbose=False)[0]
    assert "val/adv_acc" not in clean_only and clean_only["val/acc"] == first["val/acc"]


def test_robust_eval_attack_defaults(digits):
    module = _module(digits, attack={"eps": 0.2}, eval_attack={"steps": 8})
    assert module.robust_eval_eps == 0.2 and module.robust_eval_step_size == pytest.approx(2.5 * 0.2 / 8)
    module = _module(digits, attack={"eps": 0.2}, eval_attack={"eps": 0.1, "step_size": 0.01})
    assert module.robust_eval_eps == 0.1 and module.robust_eval_step_size == 0.01
    # the eval attack inherits the training norm too; the training step defaults to 2.5·ε/steps (Madry et al.)
    module = AdversarialTraining(attack={"norm": "l2", "eps": 0.5, "steps": 5})
    assert module.eval_attack_settings.norm == "l2" and module.attack_settings.step_size == pytest.approx(0.25)
    # one default ε for every training attack: 8/255 (as the ensembles' adversarial training)
    assert AdversarialTraining().attack_settings.eps == pytest.approx(8 / 255)


# ------------------------------------------------------------------------------------ the CLI
def test_cli_fit_logs_adversarial_scalars_and_warms_up_eps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "adversarial_digits.yaml"),
            *FAST,
            "--trainer.max_epochs",
            "2",
            "--model.init_args.eps_warmup_epochs",
            "1.5",
            "--model.init_args.mixed_fraction",
            "0.5",
        ]
    )
    scalars = read_scalars(tmp_path / "runs" / "adversarial_digits" / "version_0")
    for tag in (
        "train/loss_step",
        "train/loss_epoch",
        "train/adv_loss_step",
        "train/clean_loss_step",
        "train/adv_acc",
        "train/clean_acc",
        "train/eps",
        "val/acc",
        "val/adv_acc",
        "val/adv_loss",
        "test/acc",
        "test/adv_acc",
    ):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    # ε_t = ε·min(1, (epoch + (batch + 1)/2)/1.5) for 2 batches per epoch
    eps = [value for _, value in sorted(scalars["train/eps"])]
    expected = [EPS * min(1.0, (e + (b + 1) / 2) / 1.5) for e in range(2) for b in range(2)]
    assert eps == pytest.approx(expected, rel=1e-6)
    for tag in ("train/adv_acc", "val/acc", "val/adv_acc", "test/adv_acc"):
        assert all(0.0 <= v <= 1.0 for _, v in scalars[tag])
    ckpt = tmp_path / "runs" / "adversarial_digits" / "version_0" / "checkpoints" / "last.ckpt"
    restored = AdversarialTraining.load_from_checkpoint(ckpt, map_location="cpu")
    assert restored.hparams.method == "pgd" and restored.hparams.eps_warmup_epochs == 1.5
    assert restored.hparams.attack["steps"] == 2 and restored.hparams.mixed_fraction == 0.5
    assert restored.attack_settings == AdversarialTraining(attack=restored.hparams.attack).attack_settings


def test_cli_fit_trades_logs_its_terms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "trades_digits.yaml"),
            *FAST,
            "--trainer.max_epochs",
            "1",
            "--test_after_fit",
            "false",
        ]
    )
    scalars = read_scalars(tmp_path / "runs" / "trades_digits" / "version_0")
    for tag in (
        "train/loss_step",
        "train/kl_step",
        "train/clean_loss_step",
        "train/adv_loss_step",
        "train/clean_acc",
        "train/adv_acc",
        "train/eps",
        "val/acc",
        "val/adv_acc",
    ):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    # loss = CE(clean) + β·KL at every logged step
    beta = yaml.safe_load((CONFIGS / "trades_digits.yaml").read_text())["model"]["init_args"]["beta"]
    for (s1, loss), (s2, clean), (s3, kl) in zip(
        scalars["train/loss_step"], scalars["train/clean_loss_step"], scalars["train/kl_step"]
    ):
        assert s1 == s2 == s3 and kl >= 0
        assert loss == pytest.approx(clean + beta * kl, rel=1e-5)


def test_fit_with_ddp_on_two_cpu_processes(tmp_path):
    """DDP (gloo, 2 CPU processes) through the CLI: the attacks run on both ranks, rank 0 writes logs."""
    cmd = [
        sys.executable,
        "-m",
        "lit_advgame",
        "fit",
        "--config",
        str(CONFIGS / "adversarial_digits.yaml"),
        *FAST,
        "--trainer.max_epochs",
        "1",
        *DDP_CPU_ARGS,
    ]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = torch.load(
        tmp_path / "runs/adversarial_digits/version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=False
    )
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 2
    scalars = read_scalars(tmp_path / "runs/adversarial_digits/version_0")
    for tag in ("train/adv_acc", "val/adv_acc", "test/adv_acc"):
        assert tag in scalars


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"attack": {"eps": -0.1}}, ValueError, "attack: eps"),
        ({"attack": {"steps": 0}}, ValueError, "attack.steps"),
        ({"attack": {"steps": 2.5}}, TypeError, "attack: steps"),
        ({"attack": {"step_size": 0.0}}, ValueError, "attack: step_size"),
        ({"attack": {"epsilon": 0.1}}, TypeError, "attack: unknown PGD setting.*epsilon"),
        ({"method": "fgsm"}, ValueError, "method"),
        ({"beta": -1.0}, ValueError, "beta"),
        ({"attack": {"norm": "l1"}}, ValueError, "attack: unknown norm"),
        ({"mixed_fraction": 1.5}, ValueError, "mixed_fraction"),
        ({"method": "trades", "mixed_fraction": 0.5}, ValueError, "mixed_fraction"),
        ({"eps_warmup_epochs": -1}, ValueError, "eps_warmup_epochs"),
        ({"eval_attack": {"steps": -1}}, ValueError, "eval_attack: steps"),
        ({"eval_attack": {"eps": -0.1}}, ValueError, "eval_attack: eps"),
        ({"trades_start": "zero"}, ValueError, "trades_start"),
        ({"attack_in_train_mode": "yes"}, TypeError, "attack_in_train_mode"),
        ({"attack_seed": -1}, ValueError, "attack_seed"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdversarialTraining(**kwargs)


def test_deprecated_flat_keywords_still_work(digits):
    """The flat keywords of the previous release set the injected settings, with a DeprecationWarning naming the
    new argument and their old defaults (ε = 0.1, α = 0.025), so old calls train exactly as before."""
    data = {
        "num_classes": digits.num_classes,
        "input_shape": digits.input_shape,
        "mean": digits.mean,
        "std": digits.std,
    }
    with pytest.warns(DeprecationWarning, match=r"steps is deprecated; use attack\.steps"):
        old = AdversarialTraining(**data, eps=EPS, step_size=EPS / 4, steps=3, norm="linf", random_start=True)
    new = _module(digits, attack={"steps": 3})
    assert old.attack_settings == new.attack_settings
    with pytest.warns(DeprecationWarning, match=r"val_steps is deprecated; use eval_attack\.steps"):
        old = AdversarialTraining(**data, val_steps=5, val_eps=0.05, val_step_size=0.01, val_random_start=False)
    assert old.eval_attack_settings == PGDSettings(norm="linf", eps=0.05, steps=5, step_size=0.01, random_start=False)
    with pytest.warns(DeprecationWarning):
        legacy = AdversarialTraining(steps=5)
    assert (legacy.attack_settings.eps, legacy.attack_settings.step_size) == (0.1, 0.025)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="either attack or the deprecated eps"):
        AdversarialTraining(attack={"eps": 0.2}, eps=0.1)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="val_steps"):
        AdversarialTraining(val_steps=-1)


def test_trades_pieces_live_in_attacks():
    """TRADES' loss term and start moved to lit_advgame.attacks.trades; the old import path still works."""
    from lit_advgame.attacks import trades
    from lit_advgame.training import adversarial

    assert adversarial.TradesKL is trades.TradesKL and adversarial.GaussianStart is trades.GaussianStart
    assert adversarial.kl_per_example is trades.kl_per_example


def test_bad_batches_are_clear_errors(digits, batch):
    x, y = batch
    module = _module(digits, attack={"steps": 1})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        module.adversarial_examples(x * 255, y)
    with pytest.raises(ValueError, match="y"):
        module.adversarial_examples(x, y[:-1])


# ------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize(
    "name, method",
    [
        ("adversarial_digits.yaml", "pgd"),
        ("trades_digits.yaml", "trades"),
        ("adversarial_mnist.yaml", "pgd"),
        ("adversarial_cifar10.yaml", "pgd"),
    ],
)
def test_configs_parse(name, method, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["class_path"] == "lit_advgame.training.adversarial.AdversarialTraining"
    assert cfg["model"]["init_args"]["method"] == method
    assert cfg["trainer"]["inference_mode"] is False


def test_reference_hyperparameters_in_configs():
    def args(name):
        return yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"]

    mnist, cifar = args("adversarial_mnist.yaml"), args("adversarial_cifar10.yaml")
    m_attack, c_attack = mnist["attack"], cifar["attack"]
    assert (m_attack["eps"], m_attack["step_size"], m_attack["steps"]) == (0.3, 0.01, 40)  # Madry et al., MNIST
    assert c_attack["eps"] == pytest.approx(8 / 255) and c_attack["step_size"] == pytest.approx(2 / 255)
    assert c_attack["steps"] == 10 and cifar["optimizer"]["init_args"]["lr"] == 0.1


def test_mnist_config_runs_on_the_shared_test_set(tmp_path, monkeypatch, repo_root):
    data = repo_root.parent / "shared" / "data" / "mnist-t10k"
    if not data.is_dir():
        pytest.skip("../shared/data/mnist-t10k not present")
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(CONFIGS / "adversarial_mnist.yaml"),
            *FAST,
            "--trainer.max_epochs",
            "1",
            "--data.init_args.data_dir",
            str(data),
            "--data.init_args.batch_size",
            "32",
            "--trainer.accelerator",
            "cpu",
        ]
    )
    scalars = read_scalars(tmp_path / "runs/adversarial_mnist/version_0")
    assert "val/adv_acc" in scalars and "test/adv_acc" in scalars
    assert scalars["train/eps"][0][1] == pytest.approx(0.3)

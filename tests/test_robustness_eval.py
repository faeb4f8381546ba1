"""Robust accuracy under PGD-k and AutoAttack (lit_advgame.evaluation.robustness) and its test-time callback."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from lit_advgame.attacks.pgd_settings import PGDSettings
from lit_advgame.callbacks import RobustAccuracy
from lit_advgame.cli import main
from lit_advgame.evaluation import RobustnessSettings, robust_accuracy
from lit_advgame.evaluation import robustness as rb
from lit_advgame.utils.errors import USER_ERRORS, MissingExtraError
from lit_advgame.utils.seeding import derive_seed
from tests.conftest import CONFIGS
from tests.tb_utils import read_scalars

torchattacks = pytest.importorskip("torchattacks")  # the [eval] extra; the [test] extra installs it

EPS = 0.05  # APGD-CE breaks some images of the tiny model, APGD-T the rest


def _tiny_problem(num_images: int = 6) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A linear 4-class model on 1x6x6 images; labels are its predictions except the first (misclassified)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 4)).eval()
    x = torch.rand(num_images, 1, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[0] = (y[0] + 1) % 4
    return model, x, y


@pytest.fixture(scope="module")
def evaluated():
    model, x, y = _tiny_problem()
    result = robust_accuracy(model, (x, y), eps=EPS, return_adversarial=True)
    return model, x, y, result


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(dim=1) == y


# ------------------------------------------------------------------------------------------------ agreement
def test_autoattack_agrees_with_torchattacks_run_directly(evaluated):
    """The same four torchattacks attacks with the official settings, chained by torchattacks' own MultiAttack
    (AutoAttack's cascade), give the same adversarial images and accuracies."""
    model, x, y, result = evaluated
    seed = derive_seed(0, "autoattack", 0)  # the first batch's seed
    common = {"norm": "Linf", "eps": EPS, "seed": seed}
    components = [
        torchattacks.APGD(model, steps=100, n_restarts=1, loss="ce", rho=0.75, **common),
        torchattacks.APGDT(model, steps=100, n_restarts=1, n_classes=4, rho=0.75, **common),
        torchattacks.FAB(model, steps=100, n_restarts=1, multi_targeted=True, n_classes=4, **common),
        torchattacks.Square(model, n_queries=5000, n_restarts=1, p_init=0.8, resc_schedule=False, **common),
    ]
    x_adv = torchattacks.MultiAttack(components)(x, y)
    direct = _correct(model, x_adv, y)
    assert torch.equal(result.x_adv["autoattack"], x_adv)
    assert torch.equal(result.correct["autoattack"], direct)
    assert result.accuracy["autoattack"] == direct.sum().item() / direct.numel()
    # the cascade broke images in both white-box stages: the comparison covers APGD-CE and APGD-T
    after = result.accuracy
    assert after["clean"] > after["autoattack/apgd-ce"] > after["autoattack/apgd-t"] == after["autoattack"]


def test_pgd_agrees_with_the_package_attack_run_directly(evaluated):
    model, x, y, result = evaluated
    clean = _correct(model, x, y)
    attack = PGDSettings(norm="linf", eps=EPS, steps=20).build(model, seed=derive_seed(0, "pgd", 0, 0))
    x_adv = attack(x[clean], y[clean])
    direct = clean.clone()
    direct[clean] = _correct(model, x_adv, y[clean])
    assert torch.equal(result.correct["pgd"], direct)
    assert result.accuracy["pgd"] == direct.sum().item() / direct.numel()
    assert result.settings.pgd_attack().step_size == pytest.approx(2.5 * EPS / 20)


# ------------------------------------------------------------------------------------------------ invariants
def test_robust_accuracy_never_exceeds_clean_accuracy(evaluated):
    _, _, _, result = evaluated
    acc = result.accuracy
    assert acc["clean"] == pytest.approx(5 / 6)  # the first image is misclassified on purpose
    for attack in ("pgd", "autoattack"):
        assert acc[attack] <= acc["clean"]
        assert torch.all(result.correct[attack] <= result.correct["clean"])  # robust implies clean-correct
    assert acc["worst_case"] <= min(acc["pgd"], acc["autoattack"])
    assert torch.equal(result.correct["worst_case"], result.correct["pgd"] & result.correct["autoattack"])
    # AutoAttack's accuracy after each component only falls, and the last is AutoAttack's
    steps = [acc[f"autoattack/{name}"] for name in ("apgd-ce", "apgd-t", "fab-t", "square")]
    assert steps == sorted(steps, reverse=True) and steps[-1] == acc["autoattack"]


@pytest.mark.parametrize("attack", ["pgd", "autoattack"])
def test_adversarial_images_lie_in_the_eps_ball_and_pixel_space(evaluated, attack):
    model, x, y, result = evaluated
    x_adv = result.x_adv[attack]
    delta = (x_adv - x).flatten(1).abs().amax(dim=1)
    assert torch.all(delta <= EPS + 1e-6)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    fooled = result.correct["clean"] & ~result.correct[attack]
    assert fooled.any() and torch.all(delta[fooled] > 0)
    assert torch.all(~_correct(model, x_adv[fooled], y[fooled]))  # the saved images do fool the model
    assert torch.equal(x_adv[~fooled], x[~fooled])  # where the attack failed: the clean image


def test_l2_adversarial_images_lie_in_the_l2_ball():
    model, x, y = _tiny_problem()
    result = robust_accuracy(model, (x, y), norm="l2", eps=0.3, return_adversarial=True)
    for attack in ("pgd", "autoattack"):
        norms = (result.x_adv[attack] - x).flatten(1).norm(dim=1)
        assert torch.all(norms <= 0.3 + 1e-5)
        assert result.accuracy[attack] <= result.accuracy["clean"]
    assert result.to_dict()["norm"] == "l2"


def test_every_autoattack_component_runs_on_the_images_still_robust(monkeypatch):
    """With a small ε some images survive APGD: FAB-T and Square then attack exactly those survivors."""
    model, x, y = _tiny_problem()
    calls: list[tuple[str, int]] = []
    build = rb.build_autoattack_component

    def spy(torchattacks_module, name, *args, **kwargs):
        attack = build(torchattacks_module, name, *args, **kwargs)

        def run(images, labels):
            calls.append((name, images.shape[0]))
            return attack(images, labels)

        return run

    monkeypatch.setattr(rb, "build_autoattack_component", spy)
    result = robust_accuracy(model, (x, y), eps=0.02, attacks=["autoattack"])
    acc, n = result.accuracy, result.num_images
    assert [name for name, _ in calls] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    before = [acc["clean"], acc["autoattack/apgd-ce"], acc["autoattack/apgd-t"], acc["autoattack/fab-t"]]
    assert [count for _, count in calls] == [round(a * n) for a in before]
    assert 0 < acc["autoattack"] < acc["clean"]


def test_runs_are_seeded_and_leave_the_global_generator_alone():
    model, x, y = _tiny_problem()
    state = torch.random.get_rng_state()
    one = robust_accuracy(model, (x, y), eps=EPS, return_adversarial=True)
    assert torch.equal(torch.random.get_rng_state(), state)  # torchattacks' reseeding does not leak out
    again = robust_accuracy(model, (x, y), eps=EPS, return_adversarial=True)
    for attack in ("pgd", "autoattack"):
        assert torch.equal(one.x_adv[attack], again.x_adv[attack])


def test_pgd_restarts_only_lower_the_accuracy():
    """Restart 0 is the same attack with or without restarts; later ones attack only the survivors."""
    model, x, y = _tiny_problem(16)
    one = robust_accuracy(model, (x, y), eps=0.03, attacks=["pgd"], return_adversarial=True)
    three = robust_accuracy(model, (x, y), eps=0.03, attacks=["pgd"], restarts=3, return_adversarial=True)
    assert torch.all(three.correct["pgd"] <= one.correct["pgd"])
    assert three.settings.describe("pgd") == "PGD-20 (α = 0.00375, 3 restarts)"


def test_batches_and_max_images_and_model_specs():
    """A loader of batches and a model spec: the first ``max_images`` images are evaluated, batch by batch."""
    from lit_advgame.classifiers import load_classifier

    loaded = load_classifier({"arch": "mlp", "num_classes": 4, "normalization": "none"}, input_shape=(1, 6, 6))
    _, x, y = _tiny_problem(10)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    result = robust_accuracy(loaded, loader, eps=0.05, attacks=["pgd"], max_images=7, return_adversarial=True)
    assert result.num_images == 7 and result.model == loaded.name
    assert result.x_adv["pgd"].shape == (7, 1, 6, 6)
    whole = robust_accuracy(loaded.model, (x[:7], y[:7]), eps=0.05, attacks=["pgd"], batch_size=3)
    assert whole.accuracy["clean"] == result.accuracy["clean"]


@pytest.mark.parametrize(
    "name, kwargs",
    [("Ensemble", {"num_members": 2}), ("AdversarialTraining", {"method": "trades"}), ("RandomizedSmoothing", {})],
)
def test_a_training_module_is_attacked_through_its_classifier(name, kwargs):
    """The classifier contract: an ensemble through its output, TRADES' network, smoothing's base classifier."""
    from lit_advgame import training

    module = getattr(training, name)(arch="mlp", num_classes=4, input_shape=(1, 6, 6), **kwargs)
    assert RobustAccuracy.classifier(module) is module.classifier
    _, x, y = _tiny_problem()
    result = robust_accuracy(module, (x, y), eps=0.05, attacks=["pgd"], return_adversarial=True)
    assert result.model == name and result.accuracy["pgd"] <= result.accuracy["clean"]
    with torch.no_grad():
        expected = module.classifier(x).argmax(dim=1) == y
    assert torch.equal(result.correct["clean"], expected)


# ------------------------------------------------------------------------------------------------ reporting
def test_result_table_json_and_scalars(evaluated, tmp_path):
    _, _, _, result = evaluated
    json_path, md_path = result.save(tmp_path)
    saved = json.loads(json_path.read_text())
    assert saved["num_images"] == 6 and saved["eps"] == EPS
    assert saved["accuracy"] == pytest.approx(result.accuracy)
    assert saved["attacks"]["autoattack"] == "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square)"
    assert saved["versions"]["torchattacks"] == torchattacks.__version__
    table = md_path.read_text()
    assert "| PGD-20 (α = 0.00625, 1 restart) |" in table and "| ↳ after Square |" in table
    seconds = result.seconds
    assert seconds["total"] == seconds["pgd"] + seconds["autoattack"]
    parts = [seconds[f"autoattack/{name}"] for name in ("apgd-ce", "apgd-t", "fab-t", "square")]
    assert all(part >= 0 for part in parts) and sum(parts) <= seconds["autoattack"]
    assert f"| clean | {100 * 5 / 6:.1f} ± " in table
    metrics = result.metrics()
    assert metrics["robustness/autoattack_acc"] == result.accuracy["autoattack"]
    assert metrics["robustness/autoattack/fab-t_acc"] == result.accuracy["autoattack/fab-t"]
    assert metrics["robustness/num_images"] == 6.0 and "robustness/cost/seconds" in metrics


def _test_with_the_fragment(*args: str) -> None:
    """`lit-advgame test` of the (untrained) standard digits model with configs/robustness_digits.yaml."""
    configs = [str(CONFIGS / "standard_digits.yaml"), str(CONFIGS / "robustness_digits.yaml")]
    main(["test", "--config", configs[0], "--config", configs[1], *args])


# ------------------------------------------------------------------------------------------------ errors
def test_a_missing_extra_names_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # import torchattacks -> ImportError
    model, x, y = _tiny_problem()
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[eval\]"'):
        robust_accuracy(model, (x, y), eps=EPS)
    with pytest.raises(MissingExtraError):
        RobustAccuracy().setup(None, None, "test")
    RobustAccuracy().setup(None, None, "fit")  # only a test run attacks
    assert robust_accuracy(model, (x, y), eps=EPS, attacks=["pgd"]).num_images == 6  # PGD needs no extra
    assert MissingExtraError in USER_ERRORS
    with pytest.raises(SystemExit) as exc:
        _test_with_the_fragment()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: AutoAttack needs") and '".[eval]"' in err[0]


@pytest.mark.parametrize(
    "options, match",
    [
        ({"attacks": ["pgd", "cw"]}, "unknown attacks 'cw'"),
        ({"attacks": []}, "at least one attack"),
        ({"attacks": ["pgd", "pgd"]}, "each attack once"),
        ({"eps": 0}, "eps must be > 0"),
        ({"eps": 8}, "larger than 1"),
        ({"pgd": {"eps": 0.1}}, "pgd.eps = 0.1 differs"),
        ({"pgd": {"steps": 0}}, "pgd.steps must be >= 1"),
        ({"restarts": 0}, "restarts must be >= 1"),
        ({"autoattack_version": "fast"}, "unknown autoattack_version"),
    ],
)
def test_bad_settings_are_clear_errors(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        RobustnessSettings(**{"eps": EPS, **options})


def test_bad_arguments_are_clear_errors():
    model, x, y = _tiny_problem()
    with pytest.raises(TypeError, match="unknown option"):
        robust_accuracy(model, (x, y), epsilon=0.1)
    with pytest.raises(ValueError, match="pixel space"):
        robust_accuracy(model, (x * 255, y), attacks=["pgd"])
    with pytest.raises(ValueError, match="at least 4 classes"):
        robust_accuracy(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), (x, y % 3), eps=EPS)
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        RobustAccuracy(evaluation={"attacks": ["pgd"]}, max_images=0)


# ------------------------------------------------------------------------------------------------ the CLI
def test_lit_advgame_test_writes_json_markdown_and_scalars(tmp_path, monkeypatch):
    """`lit-advgame test` with the config fragment, under the default inference mode (the callback leaves it)."""
    monkeypatch.chdir(tmp_path)
    _test_with_the_fragment(
        *("--trainer.inference_mode", "true", "--trainer.limit_test_batches", "1"),
        *("--trainer.callbacks.max_images", "6", "--trainer.enable_progress_bar", "false"),
    )
    run = tmp_path / "runs" / "standard_digits" / "version_0"
    saved = json.loads((run / "robustness.json").read_text())
    assert saved["num_images"] == 6 and saved["eps"] == 0.1 and saved["settings"]["pgd"]["steps"] == 20
    assert "AutoAttack standard" in (run / "robustness.md").read_text()
    scalars = read_scalars(run)
    for key, value in saved["accuracy"].items():
        assert scalars[f"robustness/{key}_acc"][-1][1] == pytest.approx(value)
    assert scalars["robustness/num_images"][-1][1] == 6 and "test/acc" in scalars

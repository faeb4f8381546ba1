"""scripts/penalty_digits.py (issue 13's results): measured on held-out data, written per run, resumable."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from lit_advgame.data import DigitsDataModule
from lit_advgame.training import StandardClassifier
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_thread_module")

TINY = ["--epochs", "1", "--early-epochs", "1", "--lambdas", "--shapley-weights", "--probes", "2"]
TINY += ["--eval-samples", "2", "--train-subset", "20"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("penalty_digits", REPO_ROOT / "scripts" / "penalty_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Probed(Exception):
    """Raised by the stand-in InputGame with the images the measurement probes."""


def test_measure_probes_test_images_the_seed_did_not_train_on(script, monkeypatch):
    # the data split depends on the seed: seed 1's test images, not seed 0's (a third of which seed 1 trains on)
    args = script.parse_args(["--probes", "100000"])  # every test image

    def probed(model, x, y, **kwargs):
        raise Probed(x)

    monkeypatch.setattr(script, "InputGame", probed)
    dm = DigitsDataModule(seed=1, train_subset=args.train_subset)
    model = StandardClassifier(
        arch="small_cnn", num_classes=10, input_shape=dm.input_shape, mean=dm.mean, std=dm.std
    ).classifier
    with pytest.raises(Probed) as info:
        script.measure(args, model, seed=1)
    probes = info.value.args[0].flatten(1)
    train = dm.probe_set(args.train_subset, "train", 0)[0].flatten(1)
    assert len(probes) == dm.split_sizes()["test"]
    same = (probes[:, None, :] == train[None, :, :]).all(-1)
    assert not same.any(), f"{int(same.any(1).sum())} probed test images are training images of the seed"


def test_results_are_written_per_run_and_a_rerun_resumes(script, tmp_path, monkeypatch, capsys):
    out = tmp_path / "results.json"
    first = script.main([*TINY, "--seeds", "1", "--out", str(out)])
    assert set(first) == {"plain@1ep", "plain", "dropout"}
    saved = json.loads(out.read_text())
    assert set(saved["per_seed"]["plain"]) == {"0"} and 0 <= saved["per_seed"]["plain"]["0"]["train_acc"] <= 1
    assert saved["per_seed"]["plain"]["0"]["sii"] == pytest.approx(first["plain"]["sii"][0])

    trained = []
    train = script.train
    monkeypatch.setattr(script, "train", lambda args, seed, *rest: trained.append(seed) or train(args, seed, *rest))
    second = script.main([*TINY, "--seeds", "2", "--out", str(out)])
    assert trained == [1, 1, 1]  # seed 0's runs are skipped, seed 1's added
    assert second["plain"]["seeds"][0] == 2 and second["plain"]["sii"][1] > 0
    assert "plain seed 0: done" in capsys.readouterr().out
    per_seed = json.loads(out.read_text())["per_seed"]
    assert per_seed["plain"]["0"] == saved["per_seed"]["plain"]["0"]

    trained.clear()
    before = out.read_text()
    report = script.main([*TINY, "--seeds", "3", "--out", str(out), "--report"])  # tables only: no training
    assert trained == [] and out.read_text() == before and report["plain"]["seeds"][0] == 2
    assert "| plain / plain@1ep | 2 | " in capsys.readouterr().out

    with pytest.raises(SystemExit, match="other settings .*'epochs': \\(1, 2\\).*--fresh"):
        script.main([*TINY, "--seeds", "2", "--out", str(out), "--epochs", "2"])
    trained.clear()
    script.main([*TINY, "--seeds", "1", "--out", str(out), "--epochs", "2", "--fresh"])
    assert trained == [0, 0, 0] and set(json.loads(out.read_text())["per_seed"]["plain"]) == {"0"}


def test_training_is_deterministic_per_seed(script):
    # every run of a seed starts from the same data and weights (the early model is the plain run stopped early)
    args = script.parse_args(TINY)
    early = script.train(args, 0, 1, {}).classifier
    again = script.train(args, 0, 1, {}).classifier
    for a, b in zip(early.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)

"""scripts/interactions_standard_vs_at.py: the digits setting at a tiny size, the logit tape, the MNIST setting."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import pytest
import torch

from lit_advgame.data.mnist import find_mnist_files
from tests.conftest import REPO_ROOT
from tests.interactions.helpers import make_images, make_tiny_cnn

pytestmark = pytest.mark.usefixtures("one_thread_module")

TINY = ["--candidates", "16", "--num-images", "2", "--num-pairs", "1", "--num-contexts", "2"]
TINY += ["--robust-images", "16", "--bootstrap", "20"]


@pytest.fixture(scope="module")
def script():
    path = REPO_ROOT / "scripts" / "interactions_standard_vs_at.py"
    spec = importlib.util.spec_from_file_location("interactions_standard_vs_at", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def check_payload(payload: dict, setting: str, num_players: int) -> None:
    result = payload["settings"][setting]
    assert result["num_images"] == 2
    assert set(result["results"]) == {"log_prob", "logit"}
    for value, by_model in result["results"].items():
        assert set(by_model) == {"standard", "adversarial"}
        for r in by_model.values():
            assert len(r["share"]) == len(r["D"]) == len(r["delta_I_stderr"]) == 11
            assert sum(r["share"]) == pytest.approx(1.0)
            assert all(0.0 <= d <= 1.0 + 1e-9 for d in r["D"])
            assert r["orders"][-1] == int((num_players - 2) * 0.95)
            assert 0.0 <= r["accuracy"]["pgd20"] <= r["accuracy"]["clean"] <= 1.0
        assert set(result["summary"][value]["share_high"]) == {"standard", "adversarial"}


@pytest.mark.skipif(
    not (REPO_ROOT / "checkpoints" / "digits_small_cnn_at.pt").is_file(),
    reason="checkpoints/ not built (scripts/make_checkpoints.sh)",
)
def test_the_digits_setting_runs_at_a_tiny_size(script, tmp_path, capsys):
    payload = script.main(["--setting", "digits", *TINY, "--out", str(tmp_path)])
    check_payload(payload, "digits", 64)
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["digits"]["num_images"] == 2
    assert (tmp_path / "figure_digits.png").is_file()
    tables = (tmp_path / "tables.md").read_text()
    assert "digits 16×16, 8×8 grid (n = 64)" in tables and "v = h_y(x_S) (logit)" in tables
    assert "v = log p(y|x_S)" in capsys.readouterr().out


def test_the_logit_tape_gives_every_value_function_from_one_set_of_forward_passes(script):
    model, x = make_tiny_cnn(), make_images()
    y = torch.tensor([1, 3])
    x_adv = (x + 0.2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    setting = script.Setting(**{**vars(script.SETTINGS["digits"]), "grid": 3, "num_pairs": 2, "num_contexts": 3})
    args = argparse.Namespace(seed=0, batch_size=64)
    both = script.analyse(model, x, x_adv, y, setting, ["log_prob", "logit"], args)
    for value in ("log_prob", "logit"):
        alone = script.analyse(model, x, x_adv, y, setting, [value], args)[value]
        for key in ("delta_I", "delta_I_stderr", "share", "D", "I_clean", "I_adv"):
            assert both[value][key] == alone[key], (value, key)
        # the tape counts the model's passes: the second value function adds none
        assert both[value]["forward_passes"] == alone["forward_passes"] == alone["masked_inputs"]
    tape = script.LogitTape(model)
    tape(x)
    tape.replay()
    with pytest.raises(RuntimeError, match="replayed masked input differs"):
        tape(x_adv)


def test_settings_take_the_command_line_numbers(script):
    args = script.parse_args(["--setting", "mnist", "--num-images", "5", "--mnist-data-dir", "/data/m"])
    setting = script.resolve_setting("mnist", args)
    assert (setting.num_images, setting.grid, str(setting.data_dir)) == (5, 14, "/data/m")
    assert script.resolve_setting("digits", args).grid == 8
    with pytest.raises(SystemExit):
        script.parse_args(["--setting", "cifar"])


MNIST_READY = bool(find_mnist_files(REPO_ROOT.parent / "shared" / "data" / "mnist-t10k")) and all(
    (REPO_ROOT / "runs" / "checkpoints" / name).is_file() for name in ("mnist_small_cnn.pt", "mnist_small_cnn_at.pt")
)


@pytest.mark.skipif(not MNIST_READY, reason="MNIST files or the cached MNIST models (runs/checkpoints/) missing")
def test_the_mnist_setting_runs_at_a_tiny_size(script, tmp_path):
    payload = script.main(["--setting", "mnist", *TINY, "--out", str(tmp_path)])
    check_payload(payload, "mnist", 196)

"""scripts/defenses_detection_dropout_digits.py: its statistics and a tiny end-to-end run (in-process)."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_thread_module")

CHECKPOINTS = [REPO_ROOT / "checkpoints" / name for name in ("digits_small_cnn.pt", "digits_small_cnn_at.pt")]


@pytest.fixture(scope="module")
def script():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO_ROOT / "scripts"))  # as `python scripts/...` runs it: its sibling imports
        yield importlib.import_module("defenses_detection_dropout_digits")


def test_binomial_fraction_and_stderr(script):
    import torch

    result = script.binomial(torch.tensor([True, False, False, True, True]))
    assert result["fraction"] == pytest.approx(0.6)
    assert result["stderr"] == pytest.approx(math.sqrt(0.6 * 0.4 / 5))
    assert result["count"] == 5
    assert math.isnan(script.binomial(torch.zeros(0, dtype=torch.bool))["fraction"])


def test_paired_auc_bootstrap_matches_sklearn_and_hanley_mcneil(script):
    rng = np.random.default_rng(0)
    size = 60
    normal = rng.normal(size=(size, 2))
    adversarial = np.stack([rng.normal(0.8, 1.0, size), rng.normal(size=size)], axis=1)
    distribution, stderr = script.paired_auc_bootstrap(normal, adversarial, resamples=400, seed=0)
    assert distribution.shape == (2, 400) and stderr.shape == (2,)
    labels = np.r_[np.zeros(size), np.ones(size)]
    for d in range(2):
        auc = roc_auc_score(labels, np.r_[normal[:, d], adversarial[:, d]])
        assert distribution[d].mean() == pytest.approx(auc, abs=0.02)
        # independent draws: the paired bootstrap SE is close to Hanley & McNeil's (1982) for independent sets
        q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
        hanley = math.sqrt((auc * (1 - auc) + (size - 1) * (q1 - auc**2) + (size - 1) * (q2 - auc**2)) / size**2)
        assert 0.7 * hanley < stderr[d] < 1.4 * hanley
    separated, zero = script.paired_auc_bootstrap(normal, normal + 100.0, resamples=50, seed=0)
    assert np.all(separated == 1.0) and np.all(zero == 0.0)


@pytest.mark.skipif(not all(p.is_file() for p in CHECKPOINTS), reason="checkpoints/ not built")
def test_script_tiny_run_writes_both_tables(script, tmp_path):
    argv = ["--candidates", "30", "--detect-images", "4", "--num-contexts", "1", "--num-pairs", "1"]
    argv += ["--orders", "0.2", "0.9", "--bootstrap", "20", "--early-steps", "15", "--threads", "0"]
    script.main([*argv, "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    tables = (tmp_path / "tables.md").read_text()
    assert "paper: standard ResNet-18 (ImageNet)" in tables and "dropout α=0.3" in tables
    for model in ("standard", "adversarial"):
        detection = results["detection"][model]
        assert detection["pairs"] == min(4, detection["fooled"]) and detection["fooled"] <= detection["attacked"]
        columns = ["ml_loo (pixels)", "ml_loo (grid)", "shapley iqr r0.20", "shapley iqr r0.90"]
        columns += [
            "interaction mean r0.20",
            "interaction mean r0.90",
            "interaction iqr r0.20",
            "interaction iqr r0.90",
        ]
        assert list(detection["detectors"]) == columns
        for row in detection["detectors"].values():
            assert 0.0 <= row["auc"] <= 1.0 and row["auc_stderr"] >= 0.0
            assert row["separation"] == pytest.approx(max(row["auc"], 1 - row["auc"]))
        assert detection["detectors"]["ml_loo (pixels)"]["separation_minus_ml_loo_stderr"] == 0.0
        dropout = results["dropout"][model]
        assert list(dropout["transforms"]) == ["cutout", "dropout α=0.1", "dropout α=0.2", "dropout α=0.3"]
        assert 0 < dropout["fooled"] <= dropout["attacked"] <= 30
        assert 0.0 < dropout["linf_mean"] <= 32 / 255 + 1e-6
        for row in dropout["transforms"].values():
            assert row["corrected"]["count"] == dropout["fooled"]
            assert row["broken_clean"]["count"] == dropout["attacked"]
            assert 0.0 <= row["corrected"]["fraction"] <= 1.0

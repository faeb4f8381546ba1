"""``lit-advgame export``: classifier files from any model spec, and a predict run's adversarial examples as 8-bit
PNGs in an image-folder layout (read back by ImageFolderDataModule, checked against the ε-ball, resumable)."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
import yaml
from PIL import Image

import lit_advgame.predict.export as export_module
from lit_advgame.cli import main as cli_main
from lit_advgame.data import ImageFolderDataModule
from lit_advgame.evaluation import evaluate_transfer
from lit_advgame.models import build_model
from lit_advgame.predict import AdversarialSet, AdversarialWriter, AttackModule, export_classifier, load_classifier
from lit_advgame.predict.export import (
    CLASS_INDEX_NAME,
    MANIFEST_CSV_NAME,
    MANIFEST_NAME,
    export_adversarial_pngs,
    quantize_within_ball,
)
from lit_advgame.predict.export import main as export_main
from tests.conftest import predict_into

CLASSES = ("n01440764", "n01443537", "n01484850")  # WordNet ids as class folders
EPS = 16 / 255


pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread (tests/conftest.py)


def _attack_run(tmp_path, quantize: bool):
    """A tiny RGB image folder (3 classes x 3 PNGs, 16x16), a source and a target model, and a PGD run on it."""
    g = torch.Generator().manual_seed(0)
    root = tmp_path / "images"
    for c, wnid in enumerate(CLASSES):
        (root / "val" / wnid).mkdir(parents=True)
        for k in range(3):
            pixels = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / "val" / wnid / f"{wnid}_{10 * c + k}.png")
    models = {}
    for name, arch in (("src", "small_cnn"), ("tgt", "lenet")):
        torch.manual_seed(len(name))
        net = build_model(arch, 3, 3, 16, mean=[0.5] * 3, std=[0.25] * 3)
        models[name] = export_classifier(
            net, tmp_path / f"{name}.pt", arch=arch, num_classes=3, input_shape=(3, 16, 16)
        )
    data = ImageFolderDataModule(
        str(root), image_size=16, eval_resize="resize", mean=[0.5] * 3, std=[0.25] * 3, batch_size=9, augment=False
    )
    module = AttackModule(
        str(models["src"]),
        "pgd",
        overrides={"steps": 2, "eps": "16/255"},
        seed=0,
        quantize=quantize,
        input_shape=(3, 16, 16),
        num_classes=3,
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    out = tmp_path / f"run_q{int(quantize)}"
    predict_into(module, data, AdversarialWriter(str(out)))
    return out, models


def _read_back(folder):
    """The exported PNGs through ImageFolderDataModule (the manifest's recipe), keyed by dataset index."""
    rows = list(csv.DictReader((folder / MANIFEST_CSV_NAME).open()))
    index_of = {row["file"]: int(row["index"]) for row in rows}
    data = ImageFolderDataModule(
        str(folder), val_dir=".", class_index=str(folder / CLASS_INDEX_NAME), image_size=16, eval_resize="resize"
    )
    val = data.dataset("val")
    found = {}
    for i, (path, _) in enumerate(val.base.samples):
        x, y = val[i]
        found[index_of[os.path.relpath(path, folder)]] = (x, int(y))
    order = sorted(found)
    return torch.tensor(order), torch.stack([found[i][0] for i in order]), torch.tensor([found[i][1] for i in order])


def test_pngs_read_back_equal_the_run_and_transfer_the_same(tmp_path, capsys):
    run, models = _attack_run(tmp_path, quantize=True)  # x_adv stored as 8-bit levels: the PNGs hold them exactly
    folder = tmp_path / "pngs"
    export_main(["--adversarial", str(run), str(folder)])
    assert "9 PNGs (9 written now) in 3 class folders" in capsys.readouterr().out
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["complete"] and manifest["preset"] == "pgd" and manifest["source"] == "src"
    assert manifest["eps"] == pytest.approx(EPS) and manifest["norm"] == "linf" and manifest["num_images"] == 9
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == list(CLASSES)  # the data's class names
    assert json.loads((folder / CLASS_INDEX_NAME).read_text()) == {w: i for i, w in enumerate(CLASSES)}
    assert (folder / CLASSES[1] / f"{CLASSES[1]}_10.png").is_file()  # the source image's name
    # 8-bit clean images and ε = 16/255: rounding keeps every δ in the ball
    assert manifest["quantization"]["num_outside_eps"] == 0
    assert manifest["quantization"]["max_delta_norm_png"] <= EPS + 1e-6

    from lit_advgame.predict import load_adversarial

    adv = load_adversarial(run)
    index, x_back, label_back = _read_back(folder)
    assert torch.equal(index, adv.index) and torch.equal(label_back, adv.label)
    assert torch.equal(x_back, adv.x_adv)  # exactly the saved 8-bit levels
    back = AdversarialSet(adv.index, adv.label, adv.x, x_back, adv.meta, adv.records)
    reports = [
        evaluate_transfer(s, str(models["tgt"]), subset="all", loo=False, interaction=False, device="cpu")
        for s in (adv, back)
    ]
    cells = [r.rows[0].targets["tgt"] for r in reports]
    for key in ("num_images", "success", "utility", "clean_accuracy"):
        assert getattr(cells[0], key) == getattr(cells[1], key), key


def test_float_runs_are_rounded_to_within_half_a_level_and_resume(tmp_path, monkeypatch):
    run, _ = _attack_run(tmp_path, quantize=False)
    folder = tmp_path / "pngs"
    export_adversarial_pngs(run, folder)
    from lit_advgame.predict import load_adversarial

    adv = load_adversarial(run)
    _, x_back, _ = _read_back(folder)
    assert (x_back - adv.x_adv).abs().max() <= 0.5 / 255 + 1e-6  # round(255·x): nearest level
    assert torch.equal(x_back, torch.round(adv.x_adv * 255) / 255)
    # resumable: an export killed after 3 images leaves 3 complete PNGs (no partial one); the next one writes the rest
    pngs = sorted(folder.rglob("*.png"))
    contents = {p: p.read_bytes() for p in pngs}
    again = tmp_path / "again"
    saved = export_module._save_png
    calls = []

    def dies_after_three(image, fh):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        saved(image, fh)

    monkeypatch.setattr(export_module, "_save_png", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        export_adversarial_pngs(run, again)
    monkeypatch.setattr(export_module, "_save_png", saved)
    assert len(list(again.rglob("*.png"))) == 3 and not list(again.rglob(".*.tmp"))
    assert json.loads((again / MANIFEST_NAME).read_text())["complete"] is False
    stamps = {p: p.stat().st_mtime_ns for p in again.rglob("*.png")}
    manifest = export_adversarial_pngs(run, again)
    assert manifest["written_this_export"] == 6 and manifest["complete"]
    assert {p.relative_to(again): p.read_bytes() for p in again.rglob("*.png")} == {
        p.relative_to(folder): b for p, b in contents.items()
    }
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())  # kept as they were
    with pytest.raises(FileExistsError, match="another attack run or with other options"):
        export_adversarial_pngs(run, folder, within_eps=True)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_adversarial_pngs(run, tmp_path / "busy")


def _synthetic(n_classes: int, offset: float) -> AdversarialSet:
    """Clean pixels off the 8-bit grid by ``offset`` levels, perturbed by +ε: rounding may leave the ball."""
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 200, (4, 3, 4, 4), generator=g).float()
    x = (levels + offset) / 255
    x_adv = (x + EPS).clamp(0, 1)
    label = torch.tensor([0, 1, n_classes - 1, 1])
    meta = {"name": "s/pgd", "attack": "pgd", "config": {"norm": "linf"}, "resolved_eps": EPS}
    return AdversarialSet(torch.arange(4), label, x, x_adv, meta, {})


def test_rounding_can_leave_the_ball_by_under_half_a_level_and_within_eps_keeps_it(tmp_path):
    adv = _synthetic(12, offset=0.6)  # x_adv = (k + 16.6)/255 rounds to k + 17: 0.4 levels outside
    manifest = export_adversarial_pngs(adv, tmp_path / "round")
    q = manifest["quantization"]
    assert q["num_outside_eps"] == 4 and 0 < q["max_excess"] <= 0.5 / 255
    assert q["max_delta_norm_png"] == pytest.approx(16.4 / 255, abs=1e-5)
    rows = list(csv.DictReader((tmp_path / "round" / MANIFEST_CSV_NAME).open()))
    assert [r["outside_eps"] for r in rows] == ["1"] * 4 and rows[0]["file"] == "00/000000.png"  # index names
    assert sorted(p.name for p in (tmp_path / "round").iterdir() if p.is_dir()) == ["00", "01", "11"]
    assert len(json.loads((tmp_path / "round" / CLASS_INDEX_NAME).read_text())) == 12  # every class
    manifest = export_adversarial_pngs(adv, tmp_path / "inside", within_eps=True)
    assert manifest["quantization"]["num_outside_eps"] == 0
    levels = quantize_within_ball(adv.x, adv.x_adv, EPS)
    assert ((levels.float() / 255 - adv.x).abs() <= EPS + 1e-6).all()
    assert ((levels.float() - adv.x_adv * 255).abs() <= 1.0 + 1e-4).all()  # one level from the rounded one at most
    assert manifest["num_classes"] == 12 and manifest["num_class_folders"] == 3
    digits = _synthetic(3, offset=0.4)  # x_adv = (k + 16.4)/255 rounds to k + 16: inside
    digits.meta["data"] = {"class": "lit_advgame.data.DigitsDataModule", "hparams": {}}
    manifest = export_adversarial_pngs(digits, tmp_path / "in")
    assert manifest["quantization"]["num_outside_eps"] == 0 and manifest["quantization"]["max_excess"] == 0
    assert manifest["num_classes"] == 10 and manifest["class_folders"] == "label index"  # the data's count, no names
    named = export_adversarial_pngs(_synthetic(3, 0.0), tmp_path / "named", class_names=["cat", "dog", "eel"])
    assert named["class_folders"] == "class_names given" and (tmp_path / "named" / "eel" / "000002.png").is_file()
    with pytest.raises(FileExistsError, match="other options"):  # other folder names: not the same export
        export_adversarial_pngs(_synthetic(3, 0.0), tmp_path / "named", class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="class_names lists 2 classes but the run has label 2"):
        export_adversarial_pngs(_synthetic(3, 0.0), tmp_path / "few", class_names=["cat", "dog"])
    with pytest.raises(ValueError, match="within_eps keeps δ in an L∞ ball; the run's norm is 'l2'"):
        l2 = _synthetic(3, 0.0)
        l2.meta["config"] = {"norm": "l2"}
        export_adversarial_pngs(l2, tmp_path / "l2", within_eps=True)


def _lightning_checkpoint(tmp_path):
    """A Lightning checkpoint as a Trainer outside the CLI writes it (no class path; digits data by default)."""
    torch.manual_seed(0)
    model = build_model("lenet", 10, 1, 16, mean=[0.5], std=[0.25])
    ckpt = {
        "hyper_parameters": {"arch": "lenet", "num_classes": 10, "input_shape": (1, 16, 16), "arch_kwargs": None},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "epoch": 3,
    }
    torch.save(ckpt, tmp_path / "run.ckpt")
    return tmp_path / "run.ckpt", model.eval()


def test_export_subcommand_writes_a_classifier_file_with_metadata(tmp_path, capsys):
    ckpt, model = _lightning_checkpoint(tmp_path)
    out = tmp_path / "exported.pt"
    cli_main(["export", str(ckpt), str(out)])
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: ") and "val_acc=" in printed and "test_acc=" in printed
    stored = torch.load(out, map_location="cpu", weights_only=True)
    assert stored["source"] == str(ckpt) and stored["epoch"] == 3 and set(stored["metrics"]) == {"val_acc", "test_acc"}
    assert stored["data"]["class_path"] == "lit_advgame.data.DigitsDataModule"
    x = torch.rand(4, 1, 16, 16)
    loaded = load_classifier(str(out))
    torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)
    assert (loaded.arch, loaded.input_shape, loaded.mean, loaded.std) == ("lenet", (1, 16, 16), [0.5], [0.25])
    # a spec as a YAML file, with its input shape; re-exporting a classifier file keeps its data and metrics
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"arch": "lenet", "weights": str(out), "name": "again"}))
    export_main([str(spec), str(tmp_path / "spec.pt"), "--input-shape", "1", "16", "16", "--num-classes", "10"])
    again = torch.load(tmp_path / "spec.pt", map_location="cpu", weights_only=True)
    assert again["source"]["weights"] == str(out) and again["metrics"] == {} and again["input_shape"] == [1, 16, 16]
    torch.testing.assert_close(load_classifier(str(tmp_path / "spec.pt")).model(x), model(x), rtol=0, atol=0)
    moved = tmp_path / "moved.ckpt"  # a checkpoint whose data is gone exports with --no-metrics
    raw = torch.load(ckpt, weights_only=True)
    raw["datamodule_hyper_parameters"] = {"_class_path": "lit_advgame.data.ImageFolderDataModule", "root": "/no/data"}
    torch.save(raw, moved)
    export_main([str(moved), str(tmp_path / "moved.pt"), "--no-metrics"])
    assert torch.load(tmp_path / "moved.pt", weights_only=True)["data"]["init_args"] == {"root": "/no/data"}
    export_main([str(out), str(tmp_path / "copy.pt"), "--no-metrics"])
    copy = torch.load(tmp_path / "copy.pt", map_location="cpu", weights_only=True)
    assert copy["metrics"] == stored["metrics"] and copy["data"] == stored["data"]


def test_export_errors_are_one_clear_line(tmp_path, capsys):
    for argv, message in (
        (["{arch: lenet, num_classes: 10}", str(tmp_path / "x.pt")], "give input_shape (--input-shape C H W)"),
        ([str(tmp_path / "missing.ckpt"), str(tmp_path / "x.pt")], "not found"),
        (["{arch: [", str(tmp_path / "x.pt")], "invalid JSON/YAML mapping"),
        (["--adversarial", str(tmp_path / "no_run"), str(tmp_path / "pngs")], "no adversarial examples"),
        (["--within-eps", str(tmp_path / "m.pt"), str(tmp_path / "x.pt")], "apply to --adversarial"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["export", *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--help"])
    assert exit_info.value.code == 0 and "--adversarial" in capsys.readouterr().out


def test_export_takes_robustness_files_and_torchvision_specs(tmp_path):
    torch.manual_seed(0)
    net = build_model("lenet", 10, 1, 16).net
    mean, std = torch.tensor([0.4]).view(1, 1, 1), torch.tensor([0.25]).view(1, 1, 1)
    state = {  # DataParallel(AttackerModel(net)) as MadryLab robustness saves it
        **{f"module.model.{k}": v for k, v in net.state_dict().items()},
        **{f"module.attacker.model.{k}": v for k, v in net.state_dict().items()},
        "module.normalizer.new_mean": mean,
        "module.normalizer.new_std": std,
    }
    torch.save({"model": state, "epoch": 3}, tmp_path / "robust.pt")
    spec = json.dumps({"arch": "lenet", "weights": str(tmp_path / "robust.pt")})
    cli_main(
        ["export", spec, str(tmp_path / "robust_lenet.pt"), "--input-shape", "1", "16", "16", "--num-classes", "10"]
    )
    exported = load_classifier(str(tmp_path / "robust_lenet.pt"))
    x = torch.rand(3, 1, 16, 16)
    torch.testing.assert_close(exported.model(x), net.eval()((x - 0.4) / 0.25))
    assert (exported.mean, exported.std) == ([pytest.approx(0.4)], [pytest.approx(0.25)])
    tv = {"arch": "torchvision:squeezenet1_1", "num_classes": 4, "mean": [0.5] * 3, "std": [0.2] * 3}
    torch.manual_seed(5)  # random init (no weights): the same seed builds the same network below
    cli_main(
        [
            "export",
            yaml.safe_dump(tv, default_flow_style=True),
            str(tmp_path / "sq.pt"),
            "--input-shape",
            "3",
            "32",
            "32",
        ]
    )
    torch.manual_seed(5)
    original = load_classifier(tv, input_shape=(3, 32, 32))
    again = load_classifier(str(tmp_path / "sq.pt"))
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(again.model(images), original.model(images), rtol=0, atol=0)
    assert again.metadata()["arch"] == "torchvision:squeezenet1_1" and again.input_shape == (3, 32, 32)

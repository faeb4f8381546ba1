"""torchvision's pretrained weights by name, from a temporary TORCH_HOME and never downloaded; weights without
normalization metadata."""

from __future__ import annotations

import pytest
import torch
import torchvision

from lit_advgame.classifiers import load_classifier
from lit_advgame.models import build_model
from lit_advgame.models.torchvision_models import (
    ALLOW_DOWNLOAD_ENV,
    PretrainedWeightsNotFoundError,
    allow_downloads_by_default,
    downloads_allowed,
    torchvision_weights,
)
from lit_advgame.training import StandardClassifier

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
ARCH = "squeezenet1_1"  # the smallest torchvision classifier with ImageNet weights (1.2 M parameters)


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """An empty torchvision cache; any download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_download(url, *args, **kwargs):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch_home"


def place_weights(arch: str = ARCH, name: str = "IMAGENET1K_V1") -> dict[str, torch.Tensor]:
    """A random-init model's state dict saved where torchvision's cache has the enum's file."""
    pretrained = torchvision_weights(arch, name)
    torch.manual_seed(3)
    extra = {"init_weights": True} if arch == "inception_v3" else {}
    state = torchvision.models.get_model(arch, weights=None, num_classes=len(pretrained.categories), **extra)
    state = state.state_dict()
    pretrained.file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, pretrained.file)
    return state


def assert_same_weights(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = net.state_dict()
    assert set(own) == set(state)
    assert all(torch.equal(own[k], state[k]) for k in state)


def test_weights_by_name_come_from_the_torch_home_cache(torch_home):
    state = place_weights()
    pretrained = torchvision_weights(ARCH, "IMAGENET1K_V1")
    assert pretrained.file == torch_home / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    for name in ("IMAGENET1K_V1", "DEFAULT", "SqueezeNet1_1_Weights.IMAGENET1K_V1"):
        model = build_model(f"torchvision:{ARCH}", 1000, weights=name)
        assert_same_weights(model.net, state)
        assert model.normalize.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
        assert model.normalize.std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    x = torch.rand(2, 3, 64, 64)
    standardised = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(model.eval()(x), model.net(standardised))
    assert pretrained.input_size == 224 and len(pretrained.categories) == 1000


def test_missing_weights_with_downloads_disallowed_say_where_and_how(torch_home, monkeypatch):
    expected = torch_home / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth"
    with pytest.raises(PretrainedWeightsNotFoundError) as info:
        build_model(f"torchvision:{ARCH}", 1000, weights="IMAGENET1K_V1")  # LIT_ADVGAME_ALLOW_DOWNLOAD=0 in tests
    message = str(info.value)
    assert str(expected) in message and "SqueezeNet1_1_Weights.IMAGENET1K_V1" in message
    assert f"{ALLOW_DOWNLOAD_ENV}=1" in message and "https://download.pytorch.org/models/" in message
    assert "TORCH_HOME" in message and not expected.exists()
    monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "1")  # an explicit option wins over the environment
    with pytest.raises(PretrainedWeightsNotFoundError, match="downloads are not allowed"):
        build_model(f"torchvision:{ARCH}", 1000, weights="DEFAULT", allow_download=False)
    with pytest.raises(PretrainedWeightsNotFoundError, match="not in torchvision.s cache"):
        load_classifier(
            {"arch": f"torchvision:{ARCH}", "weights": "DEFAULT", "allow_download": False}, input_shape=(3, 64, 64)
        )


def test_download_permission_explicit_then_environment_then_the_command_line_default(monkeypatch):
    assert downloads_allowed() is False  # the test session's LIT_ADVGAME_ALLOW_DOWNLOAD=0
    assert downloads_allowed(True) is True
    monkeypatch.delenv(ALLOW_DOWNLOAD_ENV)
    assert downloads_allowed() is False  # a library call
    with allow_downloads_by_default():  # what `lit-advgame` runs in
        assert downloads_allowed() is True
        assert downloads_allowed(False) is False
        monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "no")
        assert downloads_allowed() is False
    assert downloads_allowed() is False
    monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "maybe")
    with pytest.raises(ValueError, match="LIT_ADVGAME_ALLOW_DOWNLOAD='maybe'"):
        downloads_allowed()


def test_the_command_line_allows_downloads_by_default(monkeypatch):
    import lit_advgame.cli as cli

    seen = []
    monkeypatch.setattr(cli, "build_cli", lambda args: seen.append(downloads_allowed()))
    monkeypatch.delenv(ALLOW_DOWNLOAD_ENV)
    cli.main(["fit"])
    monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "0")
    cli.main(["fit"])
    assert seen == [True, False]


def test_weights_name_errors():
    with pytest.raises(ValueError, match="has no pretrained weights named 'IMAGENET1K_V9'; its weights are: "):
        build_model(f"torchvision:{ARCH}", 1000, weights="IMAGENET1K_V9")
    with pytest.raises(ValueError, match="no pretrained weights named 'ResNet18_Weights.IMAGENET1K_V1'"):
        build_model(f"torchvision:{ARCH}", 1000, weights="ResNet18_Weights.IMAGENET1K_V1")
    place_weights()
    with pytest.raises(ValueError, match="have 1000 classes .* but num_classes=10"):
        build_model(f"torchvision:{ARCH}", 10, weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="differ from those stored"):
        build_model(f"torchvision:{ARCH}", 1000, mean=[0.5] * 3, std=[0.5] * 3, weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="nothing is downloaded through architecture options"):
        build_model(f"torchvision:{ARCH}", 1000, weights="IMAGENET1K_V1", pretrained=True)
    assert torchvision_weights(ARCH, "weights/squeezenet.pt") is None  # a path, not a name


def test_model_spec_with_weights_by_name_has_categories_and_normalization():
    state = place_weights()
    spec = {"arch": f"torchvision:{ARCH}", "weights": "IMAGENET1K_V1"}
    loaded = load_classifier(spec, input_shape=(3, 64, 64), mean=[0.5] * 3, std=[0.5] * 3)  # data's: unused
    assert_same_weights(loaded.model.net, state)
    assert loaded.name == "squeezenet1_1_IMAGENET1K_V1" and loaded.num_classes == 1000
    assert loaded.mean == pytest.approx(IMAGENET_MEAN) and loaded.std == pytest.approx(IMAGENET_STD)
    assert loaded.categories[:2] == ["tench", "goldfish"] and loaded.metadata()["categories"] == loaded.categories
    again = load_classifier(loaded.spec, input_shape=(3, 64, 64))
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(again.model(x), loaded.model(x))


def test_classifier_module_with_weights_by_name():
    state = place_weights()
    module = StandardClassifier(
        arch=f"torchvision:{ARCH}", num_classes=1000, input_shape=(3, 64, 64), weights="IMAGENET1K_V1"
    )
    assert_same_weights(module.classifier.net, state)
    assert module.classifier_metadata()["mean"] == pytest.approx(IMAGENET_MEAN)
    linked = StandardClassifier(  # the CLI links the data's mean/std: ImageNet's agree with the weights'
        arch=f"torchvision:{ARCH}",
        num_classes=1000,
        input_shape=(3, 64, 64),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights="DEFAULT",
    )
    assert_same_weights(linked.classifier.net, state)


def test_inception_v3_weights_give_plain_logits_without_the_aux_head():
    place_weights("inception_v3")
    model = build_model("torchvision:inception_v3", 1000, weights="IMAGENET1K_V1")
    assert model.net.AuxLogits is None and model.net.transform_input
    out = model.train()(torch.rand(2, 3, 75, 75))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1000)


def test_weights_file_without_normalization_needs_mean_std_or_none(tmp_path):
    net = torchvision.models.get_model(ARCH, weights=None, num_classes=4)
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    spec = {"arch": f"torchvision:{ARCH}", "weights": str(tmp_path / "plain.pt"), "num_classes": 4}
    with pytest.raises(ValueError, match="store no normalization .* normalization='none'"):
        load_classifier(spec, input_shape=(3, 32, 32))
    identity = load_classifier({**spec, "normalization": "none"}, input_shape=(3, 32, 32))
    assert identity.mean == [0.0] * 3 and identity.std == [1.0] * 3
    again = load_classifier(identity.spec, input_shape=(3, 32, 32))
    assert again.mean == [0.0] * 3
    given = load_classifier({**spec, "mean": [0.5] * 3, "std": [0.25] * 3}, input_shape=(3, 32, 32))
    assert given.std == [0.25] * 3
    from_data = load_classifier(spec, input_shape=(3, 32, 32), mean=[0.4] * 3, std=[0.2] * 3)
    assert from_data.mean == pytest.approx([0.4] * 3)
    with pytest.raises(ValueError, match="unknown normalization 'raw'"):
        load_classifier({**spec, "normalization": "raw"}, input_shape=(3, 32, 32))
    with pytest.raises(FileNotFoundError, match="weights file of model spec .* not found"):
        load_classifier({**spec, "weights": str(tmp_path / "missing.pt")}, input_shape=(3, 32, 32))


def test_cli_validates_torchvision_weights_by_name_on_an_imagenet_folder(tmp_path, monkeypatch, capsys):
    from lit_advgame.cli import main
    from tests.conftest import CONFIGS
    from tests.test_imagefolder import make_flat_folder

    monkeypatch.chdir(tmp_path)
    wnids = [f"n{i:08d}" for i in range(1000)]
    (tmp_path / "class_index.txt").write_text("\n".join(wnids))
    make_flat_folder(tmp_path / "images_1000", wnids=wnids[:2], per_class=1)
    args = [
        "validate",
        "--config",
        str(CONFIGS / "standard_digits.yaml"),
        "--model.init_args.arch",
        f"torchvision:{ARCH}",
        "--model.init_args.weights",
        "IMAGENET1K_V1",
        "--data",
        "lit_advgame.data.ImageFolderDataModule",
        "--data.root",
        str(tmp_path / "images_1000"),
        "--data.val_dir",
        ".",
        "--data.layout",
        "flat",
        "--data.class_index",
        str(tmp_path / "class_index.txt"),
        "--data.eval_resize",
        "resize",
        "--data.image_size",
        "64",
        "--trainer.enable_progress_bar",
        "false",
    ]
    with pytest.raises(SystemExit) as exc:  # not in the cache, downloads off: one error line
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "torchvision weights SqueezeNet1_1_Weights.IMAGENET1K_V1 for" in err
    assert "squeezenet1_1-b8a52dc0.pth" in err and "LIT_ADVGAME_ALLOW_DOWNLOAD=1" in err
    place_weights()
    main(args)
    assert (tmp_path / "runs" / "standard_digits" / "version_0" / "hparams.yaml").is_file()

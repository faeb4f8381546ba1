"""Tests of the model layer: registry, in-model normalization, weight files, robustness loader."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lit_advgame.models import (
    SKIP_BLOCK_TYPES,
    CifarBasicBlock,
    DenseLayer,
    NormalizedModel,
    PreActBlock,
    UnsafeCheckpointError,
    available_models,
    build_model,
    build_net,
    find_normalizer,
    is_skip_block,
    load_robustness_checkpoint,
    register_model,
)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# Small configurations of every built-in architecture (name, options, channels to try).
SMALL_CONFIGS = [
    ("small_cnn", {"width": 8}, (1, 3)),
    ("mlp", {"hidden_sizes": (32, 16)}, (1, 3)),
    ("lenet", {}, (1, 3)),
    ("vgg_small", {"width": 4}, (1, 3)),
    ("resnet8", {}, (1, 3)),
    ("resnet20", {"width": 4}, (1, 3)),
    ("cifar_resnet", {"depth": 14, "width": 4, "shortcut": "A"}, (1, 3)),
    ("preact_resnet18", {"width": 4}, (1, 3)),
    ("densenet_small", {"growth_rate": 4, "block_layers": (2, 2)}, (1, 3)),
    ("robustness_cifar:resnet18", {"wm": 0.0625}, (1, 3)),
    ("robustness_cifar:resnet50", {"wm": 0.0625}, (3,)),
    ("torchvision:resnet18", {}, (3,)),
    ("torchvision:mobilenet_v3_small", {}, (3,)),
]


def _rand_images(batch: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, size, size, generator=gen)


@pytest.mark.parametrize("name,options,channels", SMALL_CONFIGS, ids=[c[0] for c in SMALL_CONFIGS])
def test_small_models_build_and_forward(name, options, channels):
    torch.manual_seed(0)
    for c in channels:
        for size in (16, 28) if c == 1 else (32,):
            model = build_model(name, num_classes=7, in_channels=c, input_size=(size, size), **options)
            assert isinstance(model, NormalizedModel)
            model.eval()
            out = model(_rand_images(3, c, size))
            assert out.shape == (3, 7)
            assert torch.isfinite(out).all()


def test_every_registered_name_builds_with_the_right_head():
    # Build on the meta device: no memory, no compute, even for the wide ResNets.
    covered = {c[0] for c in SMALL_CONFIGS}
    for name in available_models():
        with torch.device("meta"):
            net = build_net(name, num_classes=5, in_channels=3, input_size=(32, 32))
        heads = [m for m in net.modules() if isinstance(m, nn.Linear)]
        assert heads and heads[-1].out_features == 5, name
        covered.add(name)
    assert covered >= set(available_models())


def test_torchvision_names_are_listed_and_built_with_random_weights():
    names = available_models(include_torchvision=True)
    assert "torchvision:resnet34" in names and "torchvision:vgg11_bn" in names
    a = build_model("torchvision:resnet18", 10)
    torch.manual_seed(1)
    b = build_model("torchvision:resnet18", 10)
    assert not torch.equal(a.net.conv1.weight, b.net.conv1.weight)  # weights=None: fresh init, no download


def test_normalization_is_the_first_layer():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, in_channels=3, mean=CIFAR_MEAN, std=CIFAR_STD, width=8).eval()
    x = _rand_images(4, 3, 16)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), model.net((x - mean) / std), rtol=0, atol=0)
    assert find_normalizer(model) is model.normalize
    assert not model.normalize.clamp


def test_identity_normalization_by_default_and_clamp_option():
    torch.manual_seed(0)
    model = build_model("lenet", 10, in_channels=1).eval()
    assert model.normalize.mean.flatten().tolist() == [0.0]
    assert model.normalize.std.flatten().tolist() == [1.0]
    x = _rand_images(2, 1, 16) * 3 - 1  # outside [0, 1], e.g. noisy inputs
    torch.testing.assert_close(model(x), model.net(x), rtol=0, atol=0)
    clamped = build_model("lenet", 10, in_channels=1, clamp=True)
    clamped.load_state_dict(model.state_dict())
    clamped.eval()
    torch.testing.assert_close(clamped(x), model.net(x.clamp(0, 1)), rtol=0, atol=0)


def test_normalization_buffers_move_and_are_saved():
    model = build_model("resnet8", 10, in_channels=3, mean=CIFAR_MEAN, std=CIFAR_STD)
    state = model.state_dict()
    assert "normalize.mean" in state and "normalize.std" in state
    assert state["normalize.mean"].shape == (1, 3, 1, 1)
    assert "normalize.mean" not in dict(model.named_parameters())
    model = model.to(torch.float64)
    assert model.normalize.mean.dtype == torch.float64 and model.normalize.std.dtype == torch.float64
    if torch.cuda.is_available():
        model = model.to("cuda")
        assert model.normalize.mean.device.type == "cuda"
        assert model(torch.rand(2, 3, 16, 16, device="cuda", dtype=torch.float64)).device.type == "cuda"


def _cifar_resnet_param_count(depth: int, in_channels: int, num_classes: int, width: int, option: str) -> int:
    """Parameters of He et al.'s CIFAR ResNet counted layer by layer (conv weights, BN affine)."""
    n = (depth - 2) // 6
    total = in_channels * width * 9 + 2 * width  # stem conv + BN
    c_in = width
    for planes in (width, 2 * width, 4 * width):
        for _ in range(n):
            total += c_in * planes * 9 + planes * planes * 9 + 4 * planes  # two convs + two BNs
            if c_in != planes and option == "B":
                total += c_in * planes + 2 * planes  # 1x1 projection + BN
            c_in = planes
    return total + 4 * width * num_classes + num_classes


@pytest.mark.parametrize("option", ["A", "B"])
def test_resnet20_parameter_count(option):
    model = build_model("resnet20", 10, shortcut=option)
    count = sum(p.numel() for p in model.parameters())
    assert count == _cifar_resnet_param_count(20, 3, 10, 16, option)
    assert 0.26e6 < count < 0.28e6  # "0.27M" (He et al. 2016, Table 6)
    depth_56 = build_net("cifar_resnet", 10, depth=56)
    assert sum(p.numel() for p in depth_56.parameters()) == _cifar_resnet_param_count(56, 3, 10, 16, "B")


def test_resnet20_uses_trs_layout():
    net = build_net("resnet20", 10)
    names = set(net.state_dict())
    # bearpaw/TRS parameter names, option-B projection in the first block of stages 2 and 3.
    assert {
        "conv1.weight",
        "bn1.weight",
        "fc.weight",
        "layer2.0.downsample.0.weight",
        "layer3.0.downsample.1.running_mean",
    } <= names
    assert "layer1.0.downsample.0.weight" not in names
    assert len(net.layer1) == len(net.layer2) == len(net.layer3) == 3


def test_skip_blocks_are_marked_and_hookable():
    for cls in SKIP_BLOCK_TYPES:
        assert cls.is_skip_block is True
    torch.manual_seed(0)
    for name, options, block_type in [
        ("resnet8", {}, CifarBasicBlock),
        ("preact_resnet18", {"width": 4}, PreActBlock),
        ("densenet_small", {"growth_rate": 4, "block_layers": (2, 2)}, DenseLayer),
    ]:
        model = build_model(name, 10, in_channels=1, **options)
        blocks = [m for m in model.modules() if isinstance(m, block_type)]
        assert blocks and all(is_skip_block(b) for b in blocks)
        calls = []
        for block in blocks:
            for relu_name in block.branch_relus:
                relu = getattr(block, relu_name)
                assert isinstance(relu, nn.ReLU) and not relu.inplace
                relu.register_full_backward_hook(lambda m, gi, go, calls=calls: calls.append(1))
        x = _rand_images(2, 1, 16).requires_grad_(True)
        model(x).sum().backward()
        assert len(calls) == sum(len(b.branch_relus) for b in blocks)
    tv = build_net("torchvision:resnet18", 10)
    assert sum(is_skip_block(m) for m in tv.modules()) == 8


# ----------------------------------------------------------------------------- registry errors


def test_unknown_name_lists_available_and_torchvision_form():
    with pytest.raises(ValueError) as err:
        build_model("resnet_twenty", 10)
    msg = str(err.value)
    assert "resnet_twenty" in msg and "small_cnn" in msg and "torchvision:<arch>" in msg
    with pytest.raises(ValueError, match="unknown torchvision architecture 'resnet999'"):
        build_model("torchvision:resnet999", 10)


@pytest.mark.parametrize("num_classes", [1, 0, -3])
def test_too_few_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_model("small_cnn", num_classes)


def test_argument_errors():
    with pytest.raises(TypeError, match="num_classes must be an integer"):
        build_model("small_cnn", 10.0)
    with pytest.raises(ValueError, match="in_channels=1"):
        build_model("torchvision:resnet18", 10, in_channels=1)
    with pytest.raises(ValueError, match="needs input_size"):
        build_model("mlp", 10, in_channels=1)
    with pytest.raises(ValueError, match="one value per input channel"):
        build_model("small_cnn", 10, in_channels=1, mean=CIFAR_MEAN, std=CIFAR_STD)
    with pytest.raises(ValueError, match="both mean and std"):
        build_model("small_cnn", 10, mean=CIFAR_MEAN)
    with pytest.raises(TypeError, match="unexpected option"):
        build_model("lenet", 10, width=3)
    with pytest.raises(ValueError, match="6n\\+2"):
        build_model("cifar_resnet", 10, depth=21)
    with pytest.raises(ValueError, match="nothing is downloaded"):
        build_model("torchvision:resnet18", 10, pretrained=True)
    with pytest.raises(ValueError, match="at least 8x8"):
        build_model("small_cnn", 10, input_size=(4, 4))
    with pytest.raises(ValueError, match="already registered"):
        register_model("small_cnn")(lambda num_classes, in_channels, input_size: nn.Identity())
    mlp = build_model("mlp", 10, in_channels=1, input_size=16)
    with pytest.raises(ValueError, match="MLP built for inputs"):
        mlp(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="expected input of shape"):
        build_model("small_cnn", 10, in_channels=3)(torch.rand(2, 1, 16, 16))


# ----------------------------------------------------------------------------- weight files


def _assert_same_outputs(a: nn.Module, b: nn.Module, channels: int = 3, size: int = 16) -> None:
    a.eval()
    b.eval()
    x = _rand_images(4, channels, size, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_weights_round_trip_plain_normalized_and_lightning(tmp_path):
    torch.manual_seed(0)
    src = build_model("resnet8", 10, in_channels=3, mean=CIFAR_MEAN, std=CIFAR_STD)
    with torch.no_grad():  # non-trivial BN statistics
        src.train()(_rand_images(8, 3, 16))

    plain = tmp_path / "plain.pt"
    torch.save(src.net.state_dict(), plain)
    loaded = build_model("resnet8", 10, mean=CIFAR_MEAN, std=CIFAR_STD, weights=plain)
    _assert_same_outputs(src, loaded)
    # A plain state dict has no normalization constants: an error unless given or explicitly none (issue 10).
    with pytest.raises(ValueError, match="store no normalization.*give the mean and std.*normalization='none'"):
        build_model("resnet8", 10, weights=plain)
    identity = build_model("resnet8", 10, weights=plain, normalization="none")
    assert identity.normalize.std.flatten().tolist() == [1.0] * 3
    with pytest.raises(ValueError, match="normalization='none'.*but mean/std were given"):
        build_model("resnet8", 10, mean=CIFAR_MEAN, std=CIFAR_STD, weights=plain, normalization="none")
    with pytest.raises(ValueError, match="unknown normalization 'identity'"):
        build_model("resnet8", 10, weights=plain, normalization="identity")

    wrapped = tmp_path / "wrapped.pt"
    torch.save(src.state_dict(), wrapped)
    loaded = build_model("resnet8", 10, weights=wrapped)  # mean/std come from the file
    _assert_same_outputs(src, loaded)
    torch.testing.assert_close(loaded.normalize.mean, src.normalize.mean)

    lightning = tmp_path / "epoch=3.ckpt"
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": {f"model.{k}": v for k, v in src.state_dict().items()},
            "hyper_parameters": {"lr": 0.1, "arch": "resnet8"},
            "optimizer_states": [],
        },
        lightning,
    )
    loaded = build_model("resnet8", 10, weights=lightning)
    _assert_same_outputs(src, loaded)
    torch.testing.assert_close(loaded.normalize.std, src.normalize.std)

    with pytest.raises(ValueError, match="differ from those stored"):
        build_model("resnet8", 10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), weights=wrapped)


def test_weights_errors(tmp_path):
    torch.manual_seed(0)
    src = build_model("small_cnn", 10, in_channels=1, width=8)
    path = tmp_path / "ten.pt"
    torch.save(src.state_dict(), path)
    with pytest.raises(ValueError) as err:
        build_model("small_cnn", 5, in_channels=1, width=8, weights=path)
    msg = str(err.value)
    assert "num_classes=5" in msg and "classifier.weight" in msg and "(10, 64)" in msg

    with pytest.raises(ValueError, match="shape"):
        build_model("small_cnn", 10, in_channels=1, width=16, weights=path)
    with pytest.raises(ValueError, match="do not match the architecture"):
        build_model("lenet", 10, in_channels=1, weights=path)
    with pytest.raises(ValueError, match="unknown layout"):
        build_model("resnet8", 10, in_channels=1, weights=path)
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model("small_cnn", 10, in_channels=1, weights=tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        build_model("small_cnn", 10, in_channels=1, width=8, weights=garbage)
    extra = tmp_path / "extra.pt"
    torch.save({**src.net.state_dict(), "extra.weight": torch.zeros(1)}, extra)
    with pytest.raises(ValueError, match="unexpected key"):
        build_model("small_cnn", 10, in_channels=1, width=8, weights=extra)


# ----------------------------------------------------------------------------- robustness checkpoints


class OpaqueConfig:
    """A custom class: not on torch's weights_only allowlist."""

    def __init__(self) -> None:
        self.lr = 0.1


def _robustness_state(net: nn.Module, mean, std, dummy: bool = False, normalizer: bool = True) -> dict:
    """State dict of DataParallel(AttackerModel(net)) as MadryLab robustness saves it."""
    inner = "model." if dummy else ""
    state = {}
    if normalizer:
        m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        state["module.normalizer.new_mean"], state["module.normalizer.new_std"] = m, s
        state["module.attacker.normalize.new_mean"], state["module.attacker.normalize.new_std"] = m.clone(), s.clone()
    for k, v in net.state_dict().items():
        state[f"module.model.{inner}{k}"] = v
        state[f"module.attacker.model.{inner}{k}"] = v.clone()
    return state


def _save_robustness(path, state, key="model", **extra):
    ckpt = {key: state, "optimizer": {"state": {}, "param_groups": []}, "schedule": None, "epoch": 151}
    ckpt.update(extra)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def tv_resnet18():
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", 10, mean=CIFAR_MEAN, std=CIFAR_STD, clamp=True)
    with torch.no_grad():
        model.train()(_rand_images(8, 3, 32))
    return model.eval()


def test_robustness_checkpoint_torchvision_resnet18(tmp_path, tv_resnet18):
    path = _save_robustness(
        tmp_path / "cifar_nat.pt", _robustness_state(tv_resnet18.net, CIFAR_MEAN, CIFAR_STD), nat_prec1=91.5
    )
    loaded = load_robustness_checkpoint(path, "torchvision:resnet18")
    assert isinstance(loaded, NormalizedModel) and not loaded.training and loaded.normalize.clamp
    torch.testing.assert_close(loaded.normalize.mean.flatten(), torch.tensor(CIFAR_MEAN))
    _assert_same_outputs(tv_resnet18, loaded, size=32)
    # num_classes given explicitly, bare torchvision name, caller's (equal) constants.
    again = load_robustness_checkpoint(path, "resnet18", num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD)
    _assert_same_outputs(tv_resnet18, again, size=32)
    # The same file through the registry.
    via_registry = build_model("torchvision:resnet18", 10, weights=path, clamp=True)
    _assert_same_outputs(tv_resnet18, via_registry, size=32)
    with pytest.raises(ValueError, match="num_classes=1000"):
        load_robustness_checkpoint(path, "torchvision:resnet18", num_classes=1000)
    with pytest.raises(ValueError, match="differ from those stored"):
        load_robustness_checkpoint(path, "torchvision:resnet18", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.mark.parametrize("key,dummy", [("model", False), ("state_dict", False), ("model", True), ("state_dict", True)])
def test_robustness_checkpoint_layouts(tmp_path, key, dummy):
    torch.manual_seed(0)
    src = build_model("robustness_cifar:resnet18", 10, mean=CIFAR_MEAN, std=CIFAR_STD, clamp=True, wm=0.125)
    with torch.no_grad():
        src.train()(_rand_images(8, 3, 32))
    path = _save_robustness(tmp_path / "ckpt.pt", _robustness_state(src.net, CIFAR_MEAN, CIFAR_STD, dummy=dummy), key)
    loaded = load_robustness_checkpoint(path, "robustness_cifar:resnet18", wm=0.125)
    _assert_same_outputs(src, loaded, size=32)


def test_robustness_cifar_names_match_the_library_layout():
    names = set(build_net("robustness_cifar:resnet50", 10).state_dict())
    assert {
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv3.weight",
        "layer1.0.shortcut.0.weight",
        "layer1.0.shortcut.1.weight",
        "layer4.2.bn3.bias",
        "linear.weight",
        "linear.bias",
    } <= names
    assert "layer1.1.shortcut.0.weight" not in names and not any(k.startswith("fc.") for k in names)


def test_robustness_normalizer_missing_and_copies_differing(tmp_path):
    torch.manual_seed(0)
    src = build_model("robustness_cifar:resnet18", 10, mean=CIFAR_MEAN, std=CIFAR_STD, wm=0.125)
    bare = _save_robustness(tmp_path / "bare.pt", _robustness_state(src.net, CIFAR_MEAN, CIFAR_STD, normalizer=False))
    with pytest.raises(ValueError, match="no normalizer"):
        load_robustness_checkpoint(bare, "robustness_cifar:resnet18", wm=0.125)
    with pytest.raises(ValueError, match="missing key"):  # wrong architecture
        load_robustness_checkpoint(bare, "robustness_cifar:resnet34", mean=CIFAR_MEAN, std=CIFAR_STD, wm=0.125)
    loaded = load_robustness_checkpoint(bare, "robustness_cifar:resnet18", mean=CIFAR_MEAN, std=CIFAR_STD, wm=0.125)
    _assert_same_outputs(src, loaded, size=32)

    state = _robustness_state(src.net, CIFAR_MEAN, CIFAR_STD)
    state["module.attacker.model.linear.bias"] = state["module.attacker.model.linear.bias"] + 1
    differ = _save_robustness(tmp_path / "differ.pt", state)
    with pytest.warns(UserWarning, match="copies of the classifier differ"):
        loaded = load_robustness_checkpoint(differ, "robustness_cifar:resnet18", wm=0.125)
    _assert_same_outputs(src, loaded, size=32)  # the module.model. copy is used


def test_robustness_unknown_layout(tmp_path):
    net = build_net("robustness_cifar:resnet18", 10, wm=0.125)
    path = tmp_path / "plain.pt"
    torch.save({"model": {f"backbone.{k}": v for k, v in net.state_dict().items()}}, path)
    with pytest.raises(ValueError) as err:
        load_robustness_checkpoint(path, "robustness_cifar:resnet18", wm=0.125)
    assert "unknown layout" in str(err.value) and "backbone.conv1" in str(err.value)
    other = tmp_path / "other.pt"
    torch.save({"weights": [1, 2, 3]}, other)
    with pytest.raises(ValueError, match="top-level keys \\['weights'\\]"):
        load_robustness_checkpoint(other, "robustness_cifar:resnet18")


def test_robustness_unsafe_pickle_needs_trust(tmp_path):
    torch.manual_seed(0)
    src = build_model("robustness_cifar:resnet18", 10, mean=CIFAR_MEAN, std=CIFAR_STD, clamp=True, wm=0.125)
    path = _save_robustness(
        tmp_path / "unsafe.pt", _robustness_state(src.net, CIFAR_MEAN, CIFAR_STD), args=OpaqueConfig()
    )
    with pytest.raises(UnsafeCheckpointError) as err:
        load_robustness_checkpoint(path, "robustness_cifar:resnet18", wm=0.125)
    msg = str(err.value)
    assert "weights_only=True" in msg and "trusted=True" in msg and "OpaqueConfig" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unexpected warnings on the trusted path
        loaded = load_robustness_checkpoint(path, "robustness_cifar:resnet18", trusted=True, wm=0.125)
    _assert_same_outputs(src, loaded, size=32)

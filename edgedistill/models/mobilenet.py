"""A MobileNet-style student family (Howard et al., 2017, "MobileNets"): depthwise-separable blocks.

Each block is a 3x3 depthwise conv-BN-ReLU followed by a 1x1 pointwise conv-BN-ReLU, the layout
ONNX Runtime turns into two QLinearConv nodes after INT8 quantization. ``width_mult`` scales every
channel count (rounded to a multiple of 8, MobileNet's rule); ``depth`` stages with ``base`` x 2^s
channels, each after the first halving the resolution; ``blocks`` blocks per stage.
"""

from __future__ import annotations

import torch
from torch import nn

from ._convnet import ConvClassifier
from .core import MODELS


def _round8(c: float) -> int:
    return max(8, int(c + 4) // 8 * 8)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class DepthwiseSeparable(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.depthwise = _conv_bn_relu(c_in, c_in, 3, stride, groups=c_in)
        self.pointwise = _conv_bn_relu(c_in, c_out, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNet(ConvClassifier):
    def __init__(self, c_in: int, num_classes: int, channels: list[int], blocks: int, dropout: float,
                 augment: bool, stem_stride: int) -> None:
        super().__init__(augment)
        self.stem = _conv_bn_relu(c_in, channels[0], 3, stem_stride)
        layers, c = [], channels[0]
        for s, c_out in enumerate(channels):
            for b in range(blocks):
                layers.append(DepthwiseSeparable(c, c_out, 2 if (b == 0 and s > 0) else 1))
                c = c_out
        self.features = nn.Sequential(*layers)
        self._add_head(c, num_classes, dropout)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@MODELS.register("mobilenet", help="MobileNet-style student: depthwise-separable blocks with a width multiplier",
                 space={"width_mult": [0.25, 0.5, 0.75, 1.0, 1.5, 2.0], "depth": [2, 3, 4], "blocks": [1, 2]})
def mobilenet(input_shape, num_classes: int, width_mult: float = 1.0, base: int = 16, depth: int = 3,
              blocks: int = 1, dropout: float = 0.0, augment: bool = False, stem_stride: int = 1) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"mobilenet needs image inputs (C, H, W), got shape {tuple(input_shape)}")
    if width_mult <= 0 or base < 1 or depth < 1 or blocks < 1 or stem_stride not in (1, 2) or not 0.0 <= dropout < 1.0:
        raise ValueError("width_mult must be > 0, base/depth/blocks >= 1, stem_stride 1 or 2, dropout in [0, 1)")
    channels = [_round8(base * width_mult * 2 ** s) for s in range(depth)]
    return MobileNet(input_shape[0], num_classes, channels, blocks, dropout, augment, stem_stride)

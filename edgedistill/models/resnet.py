"""A ResNet-style teacher family (He et al., 2016, "Deep Residual Learning"), sized by width and depth.

``width`` channels in the first stage, doubling per stage; ``depth`` stages (each after the first
halves the resolution); ``blocks`` basic blocks (two 3x3 conv-BN, identity or 1x1 shortcut) per
stage. ``augment`` adds random shifts/flips that run only while training.
"""

from __future__ import annotations

import torch
from torch import nn

from ._convnet import ConvClassifier
from .core import MODELS


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(ConvClassifier):
    def __init__(self, c_in: int, num_classes: int, width: int, depth: int, blocks: int, dropout: float,
                 augment: bool, stem_stride: int) -> None:
        super().__init__(augment)
        self.stem = nn.Sequential(nn.Conv2d(c_in, width, 3, stride=stem_stride, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        stages, c = [], width
        for s in range(depth):
            c_out = width * 2 ** s
            stages.append(nn.Sequential(*[BasicBlock(c if b == 0 else c_out, c_out, 2 if (b == 0 and s > 0) else 1)
                                          for b in range(blocks)]))
            c = c_out
        self.stages = nn.Sequential(*stages)
        self._add_head(c, num_classes, dropout)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


@MODELS.register("resnet", help="ResNet-style teacher: basic residual blocks, width doubling per stage (width/depth/blocks)",
                 space={"width": [8, 16, 24, 32, 48, 64], "depth": [2, 3], "blocks": [1, 2]})
def resnet(input_shape, num_classes: int, width: int = 32, depth: int = 3, blocks: int = 2, dropout: float = 0.0,
           augment: bool = False, stem_stride: int = 1) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"resnet needs image inputs (C, H, W), got shape {tuple(input_shape)}")
    if width < 1 or depth < 1 or blocks < 1 or stem_stride not in (1, 2) or not 0.0 <= dropout < 1.0:
        raise ValueError("width, depth and blocks must be >= 1, stem_stride 1 or 2, dropout in [0, 1)")
    return ResNet(input_shape[0], num_classes, width, depth, blocks, dropout, augment, stem_stride)

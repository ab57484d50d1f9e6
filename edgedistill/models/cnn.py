"""A plain CNN family with width and depth knobs: conv-BN-ReLU blocks, pooling, a linear head."""

from __future__ import annotations

from torch import nn

from .core import MODELS


@MODELS.register("cnn", help="conv-BN-ReLU stages (width doubles per stage), global pooling, linear head",
                 space={"width": [4, 8, 12, 16, 24, 32, 48, 64], "depth": [1, 2, 3], "blocks_per_stage": [1, 2]})
def cnn(input_shape, num_classes: int, width: int = 16, depth: int = 2, blocks_per_stage: int = 1,
        dropout: float = 0.0) -> nn.Module:
    if width < 1 or depth < 1 or blocks_per_stage < 1:
        raise ValueError("width, depth and blocks_per_stage must be >= 1")
    c_in = input_shape[0]
    layers: list[nn.Module] = []
    c = c_in
    for stage in range(depth):
        c_out = width * (2 ** stage)
        for b in range(blocks_per_stage):
            stride = 2 if (b == 0 and stage > 0) else 1
            layers += [nn.Conv2d(c, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c = c_out
    return CNN(nn.Sequential(*layers), c, num_classes, dropout)


class CNN(nn.Module):
    def __init__(self, features: nn.Module, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))

"""A multilayer perceptron family: any input shape is flattened, then Linear-ReLU layers and a linear head.

The student for flat (tabular) inputs, and the smallest one for tiny images. Its layers sit in
``body`` (``body.1`` is the first hidden layer's ReLU output, ``body.3`` the second's, ...), which
is where feature and relation losses tap it.
"""

from __future__ import annotations

import math

from torch import nn

from .core import MODELS


@MODELS.register("mlp", help="multilayer perceptron: inputs flattened, Linear-ReLU hidden layers, linear head",
                 space={"hidden": [[32], [64], [128], [256], [512], [64, 32], [128, 64], [256, 128], [512, 256]]})
def mlp(input_shape, num_classes: int, hidden: list[int] | tuple[int, ...] = (128, 64), dropout: float = 0.0) -> nn.Module:
    sizes = [int(h) for h in hidden]
    if not sizes or any(h < 1 for h in sizes) or not 0.0 <= dropout < 1.0:
        raise ValueError("hidden must be a non-empty list of sizes >= 1 and dropout in [0, 1)")
    layers: list[nn.Module] = []
    c = math.prod(input_shape)
    for h in sizes:
        layers += [nn.Linear(c, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
        c = h
    return MLP(nn.Sequential(*layers), c, num_classes)


class MLP(nn.Module):
    def __init__(self, body: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.body = body
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(self.body(self.flatten(x)))

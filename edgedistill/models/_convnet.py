"""The part the convolutional families share: optional train-time augmentation in front, global
average pooling, dropout and a linear classifier behind. Subclasses build ``stem`` and the trunk."""

from __future__ import annotations

import torch
from torch import nn

from .augment import TrainAugment


class ConvClassifier(nn.Module):
    """``augment -> stem -> trunk -> pool -> dropout -> head``; a subclass sets ``stem``, its trunk, then calls ``_add_head``."""

    def __init__(self, augment: bool) -> None:
        super().__init__()
        self.augment = TrainAugment() if augment else nn.Identity()

    def _add_head(self, channels: int, num_classes: int, dropout: float) -> None:
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(channels, num_classes)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._trunk(self.stem(self.augment(x)))
        return self.head(self.dropout(self.pool(x).flatten(1)))

"""Train-time augmentation as a module: active only in ``train()`` mode, the identity in ``eval()``.

It lets a recipe's teacher train with random shifts and flips without the data pipeline knowing,
and it vanishes from exported graphs (export always runs in eval mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TrainAugment(nn.Module):
    """Random translation by up to ``shift`` pixels (edge pixels repeated) and optional horizontal flip."""

    def __init__(self, shift: int = 2, flip: bool = True) -> None:
        super().__init__()
        self.shift = int(shift)
        self.flip = bool(flip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.dim() != 4:
            return x
        n, _, h, w = x.shape
        if self.flip:
            mask = torch.rand(n, 1, 1, 1, device=x.device) < 0.5
            x = torch.where(mask, x.flip(-1), x)
        if self.shift > 0:
            # Per-sample integer shifts: pad by repeating the edge, then gather a shifted window per sample.
            k = self.shift
            padded = F.pad(x, (k, k, k, k), mode="replicate")
            dy = torch.randint(0, 2 * k + 1, (n, 1, 1), device=x.device)
            dx = torch.randint(0, 2 * k + 1, (n, 1, 1), device=x.device)
            rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy).expand(n, h, w)
            cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx).expand(n, h, w)
            batch = torch.arange(n, device=x.device).view(n, 1, 1).expand(n, h, w)
            x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
        return x

    def extra_repr(self) -> str:
        return f"shift={self.shift}, flip={self.flip}"

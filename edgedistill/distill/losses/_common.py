"""Helpers shared by the feature and relation losses: layer parameters, projection heads, warnings."""

from __future__ import annotations

import warnings
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

Layers = Union[str, Sequence[str]]


def as_layers(value: Layers, name: str) -> list[str]:
    """``"layer2"`` or ``["layer1", "layer2"]`` -> a non-empty list of module paths."""
    layers = [value] if isinstance(value, str) else list(value)
    if not layers or not all(isinstance(v, str) and v for v in layers):
        raise ValueError(f"{name} must be a module path or a non-empty list of module paths")
    return layers


def paired_layers(student_layer: Layers, teacher_layer: Layers) -> tuple[list[str], list[str]]:
    """The layer map: the i-th student path is taught by the i-th teacher path."""
    s, t = as_layers(student_layer, "student_layer"), as_layers(teacher_layer, "teacher_layer")
    if len(s) != len(t):
        raise ValueError(f"student_layer lists {len(s)} paths but teacher_layer lists {len(t)}; pair them one to one")
    return s, t


def make_projection(s_shape: torch.Size, t_shape: torch.Size) -> nn.Module:
    """A head mapping a student feature onto the teacher's width: 1x1 conv for maps, linear otherwise.

    Shapes include the batch dimension. Equal widths still get a head (FitNets' regressor) only when
    asked; callers use :func:`needs_projection` first.
    """
    if len(s_shape) == 4:
        return nn.Conv2d(s_shape[1], t_shape[1], kernel_size=1, bias=False)
    return nn.Linear(s_shape[-1], t_shape[-1], bias=False)


def width(shape: torch.Size) -> int:
    return int(shape[1] if len(shape) == 4 else shape[-1])


def match_spatial(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two [B, C, H, W] maps down to the smaller one's H x W."""
    if s.dim() != 4 or s.shape[-2:] == t.shape[-2:]:
        return s, t
    h, w = min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1])
    return F.adaptive_avg_pool2d(s, (h, w)), F.adaptive_avg_pool2d(t, (h, w))


def flat(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B, D] (maps are globally average-pooled first, sequences mean-pooled)."""
    if x.dim() == 4:
        x = x.mean(dim=(2, 3))
    elif x.dim() == 3:
        x = x.mean(dim=1)
    return x.reshape(x.shape[0], -1)


def check_features(d: dict, path: str, who: str) -> torch.Tensor:
    if path not in d:
        raise KeyError(f"the {who} outputs hold no tap {path!r} (taps: {', '.join(d)}); the loop must tap it")
    x = d[path]
    if isinstance(x, (tuple, list)):  # e.g. a transformer layer returning (hidden, attn)
        x = x[0]
    return x


class SmallBatchWarning(UserWarning):
    """A relation loss saw a batch too small to carry relations between samples."""


def warn_small_batch(loss: nn.Module, batch: int, minimum: int) -> None:
    """Warn once per loss instance when the batch has fewer than ``minimum`` samples."""
    if batch < minimum and not getattr(loss, "_warned_small_batch", False):
        loss._warned_small_batch = True
        warnings.warn(
            f"{type(loss).__name__}: batch of {batch} samples is too small to carry relations "
            f"(at least {minimum} recommended); raise data.batch_size.",
            SmallBatchWarning, stacklevel=3,
        )

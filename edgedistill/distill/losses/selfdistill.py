"""Self-distillation: the student's deepest output teaches auxiliary heads on its shallower layers."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ._common import Layers, as_layers, check_features
from .base import LOSSES, DistillLoss, LossContext, hard_label_ce
from .response import kl_div_temperature


def _aux_head(shape: torch.Size, num_classes: int) -> nn.Module:
    """Global-average-pool a map / mean-pool a sequence, then a linear classifier."""
    if len(shape) == 4:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(shape[1], num_classes))
    if len(shape) == 3:
        return nn.Sequential(_MeanTokens(), nn.Linear(shape[-1], num_classes))
    return nn.Linear(shape[-1], num_classes)


class _MeanTokens(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


@LOSSES.register("self_distill", help="self-distillation: auxiliary heads on shallower student layers learn from its deepest output")
class SelfDistillLoss(DistillLoss):
    """Self-distillation (Zhang et al., ICCV 2019, "Be Your Own Teacher: Improve the Performance of
    Convolutional Neural Networks via Self Distillation").

    Each tapped student layer ``l`` gets an auxiliary classifier ``h_l`` (pooling + linear, built from the
    dry-run shapes, trained with the student and never exported: it lives in the loss, not the model).
    With ``z`` the student's own final logits (detached: the deepest output is the teacher):
    ``loss = 1/L sum_l [alpha * CE(h_l, y) + (1 - alpha) * T^2 * KL(softmax(z/T) || softmax(h_l/T))]``.
    Unlabelled samples contribute only the KL term. Needs no external teacher.
    """

    needs_teacher = False

    def __init__(self, ctx: LossContext, student_layer: Layers = "features", alpha: Optional[float] = None,
                 temperature: Optional[float] = None) -> None:
        super().__init__(ctx)
        self.s_layers = as_layers(student_layer, "student_layer")
        if "logits" in self.s_layers:
            raise ValueError("student_layer must name shallower layers, not 'logits' (the output is the teacher)")
        self.alpha = ctx.alpha if alpha is None else float(alpha)
        self.temperature = ctx.temperature if temperature is None else float(temperature)
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0:
            raise ValueError("alpha must be in [0, 1] and temperature > 0")
        self.heads = nn.ModuleList()

    def student_layers(self) -> list[str]:
        return list(self.s_layers)

    def build(self, student_shapes, teacher_shapes) -> None:
        num_classes = int(student_shapes["logits"][-1])
        self.heads = nn.ModuleList(_aux_head(torch.Size(student_shapes[p]), num_classes) for p in self.s_layers)

    def forward(self, student, teacher, labels):
        if len(self.heads) != len(self.s_layers):
            raise RuntimeError("SelfDistillLoss.build(...) must run (after a dry-run forward) before the loss")
        deepest = student["logits"].detach()
        total = 0.0
        for head, path in zip(self.heads, self.s_layers):
            aux = head(check_features(student, path, "student"))
            soft = kl_div_temperature(aux, deepest, self.temperature)
            if labels is not None and bool((labels >= 0).any()):
                soft = self.alpha * hard_label_ce(aux, labels) + (1.0 - self.alpha) * soft
            total = total + soft
        return total / len(self.s_layers)

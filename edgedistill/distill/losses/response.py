"""Response-based losses: they read only the logits."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .base import LOSSES, DistillLoss, LossContext, hard_label_ce


def kl_div_temperature(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` with ``batchmean`` reduction."""
    log_p_s = F.log_softmax(s_logits / temperature, dim=1)
    log_p_t = F.log_softmax(t_logits / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


@LOSSES.register("kd", help="Hinton KD: alpha*CE(labels) + (1-alpha)*T^2*KL(teacher/T || student/T)")
class KDLoss(DistillLoss):
    """Response KD (Hinton, Vinyals & Dean, 2015, "Distilling the Knowledge in a Neural Network").

    ``loss = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``, KL with
    ``batchmean``. Unlabelled samples (label -1) contribute only the KL term. ``alpha`` and
    ``temperature`` default to the recipe's ``distill.alpha`` / ``distill.temperature``.
    """

    def __init__(self, ctx: LossContext, alpha: Optional[float] = None, temperature: Optional[float] = None) -> None:
        super().__init__(ctx)
        self.alpha = ctx.alpha if alpha is None else float(alpha)
        self.temperature = ctx.temperature if temperature is None else float(temperature)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError("alpha must be in [0, 1]")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")

    def forward(self, student, teacher, labels):
        s, t = student["logits"], teacher["logits"]
        soft = kl_div_temperature(s, t, self.temperature)
        if labels is None or not bool((labels >= 0).any()):
            return soft
        return self.alpha * hard_label_ce(s, labels) + (1.0 - self.alpha) * soft


@LOSSES.register("ce", help="plain cross-entropy on the hard labels (training without a teacher)")
class CELoss(DistillLoss):
    """Cross-entropy on the labels alone; the baseline a student trained from scratch uses."""

    def forward(self, student, teacher, labels):
        return hard_label_ce(student["logits"], labels)

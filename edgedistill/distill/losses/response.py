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
        s, t = student["logits"], teacher["logits"].detach()  # the teacher never learns
        if self.alpha == 1.0:  # labels only: the scratch-like end the auto search tries
            return hard_label_ce(s, labels)
        soft = kl_div_temperature(s, t, self.temperature)
        if labels is None or not bool((labels >= 0).any()):
            return soft
        return self.alpha * hard_label_ce(s, labels) + (1.0 - self.alpha) * soft


@LOSSES.register("ce", help="plain cross-entropy on the hard labels (training without a teacher)")
class CELoss(DistillLoss):
    """Cross-entropy on the labels alone; the baseline a student trained from scratch uses.

    ``loss = mean over labelled samples of -log softmax(s)_y``; 0 when no sample is labelled.
    """

    needs_teacher = False

    def forward(self, student, teacher, labels):
        return hard_label_ce(student["logits"], labels)


@LOSSES.register("dkd", help="Decoupled KD: target-class (TCKD) and non-target-class (NCKD) KL terms, weighted apart")
class DKDLoss(DistillLoss):
    """Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu & Liang, CVPR 2022, "Decoupled Knowledge Distillation").

    With ``p = softmax(z/T)`` and ``g`` the target class:
    ``TCKD = KL([p_t_g, 1 - p_t_g] || [p_s_g, 1 - p_s_g])`` (binary target vs rest) and
    ``NCKD = KL(p_t over classes != g || p_s over classes != g)`` (renormalised without ``g``), both times ``T^2``.
    ``loss = alpha * CE(s, y) + (1 - alpha) * (tckd_weight * TCKD + nckd_weight * NCKD)``; the paper's
    ``alpha = 1, beta = 8`` are ``tckd_weight`` / ``nckd_weight``. Unlabelled samples (label -1) take the
    teacher's top class as ``g`` and contribute no CE. The paper's warm-up is the recipe's ``warmup_epochs``.
    """

    def __init__(self, ctx: LossContext, alpha: Optional[float] = None, temperature: Optional[float] = None,
                 tckd_weight: float = 1.0, nckd_weight: float = 8.0) -> None:
        super().__init__(ctx)
        self.alpha = ctx.alpha if alpha is None else float(alpha)
        self.temperature = ctx.temperature if temperature is None else float(temperature)
        self.tckd_weight, self.nckd_weight = float(tckd_weight), float(nckd_weight)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError("alpha must be in [0, 1]")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.tckd_weight < 0 or self.nckd_weight < 0:
            raise ValueError("tckd_weight and nckd_weight must be >= 0")

    def forward(self, student, teacher, labels):
        s, t = student["logits"], teacher["logits"].detach()  # the teacher never learns
        T = self.temperature
        target = t.argmax(dim=1)
        if labels is not None:
            target = torch.where(labels >= 0, labels, target)
        gt = F.one_hot(target, s.shape[1]).to(s.dtype)
        p_s, p_t = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)
        # Target vs rest, as two-class distributions.
        b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], dim=1).clamp_min(1e-12)
        b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], dim=1).clamp_min(1e-12)
        tckd = F.kl_div(b_s.log(), b_t, reduction="batchmean") * T**2
        # Among the non-target classes only: mask the target logit out before the softmax.
        log_q_s = F.log_softmax(s / T - 1000.0 * gt, dim=1)
        log_q_t = F.log_softmax(t / T - 1000.0 * gt, dim=1)
        nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True) * T**2
        soft = self.tckd_weight * tckd + self.nckd_weight * nckd
        if labels is None or not bool((labels >= 0).any()):
            return soft
        return self.alpha * hard_label_ce(s, labels) + (1.0 - self.alpha) * soft

"""Relation-based losses: they compare how samples of a batch relate to each other.

All of them read a single student / teacher tap (``student_layer`` / ``teacher_layer``, default the
output ``"logits"``); features are pooled to [B, D] vectors, so student and teacher widths may differ.
They warn (once) when the batch is too small to carry relations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_features, flat, warn_small_batch, width
from .base import LOSSES, DistillLoss, LossContext


class _RelationLoss(DistillLoss):
    min_batch = 8

    def __init__(self, ctx: LossContext, student_layer: str = "logits", teacher_layer: str = "logits") -> None:
        super().__init__(ctx)
        if not isinstance(student_layer, str) or not isinstance(teacher_layer, str):
            raise ValueError("student_layer and teacher_layer must each be one module path")
        self.student_layer, self.teacher_layer = student_layer, teacher_layer

    def student_layers(self) -> list[str]:
        return [] if self.student_layer == "logits" else [self.student_layer]

    def teacher_layers(self) -> list[str]:
        return [] if self.teacher_layer == "logits" else [self.teacher_layer]

    def _vectors(self, student, teacher) -> tuple[torch.Tensor, torch.Tensor]:
        s = flat(check_features(student, self.student_layer, "student"))
        t = flat(check_features(teacher, self.teacher_layer, "teacher")).detach()
        warn_small_batch(self, s.shape[0], self.min_batch)
        return s, t


def _pdist(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise Euclidean distances with a zero (and gradient-safe) diagonal."""
    sq = e.pow(2).sum(1)
    d2 = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2.0 * e @ e.t()).clamp_min(eps)
    d = d2.sqrt()
    return d * (1.0 - torch.eye(len(e), device=e.device, dtype=e.dtype))


@LOSSES.register("rkd", help="relational KD: Huber on mean-normalised pairwise distances + triplet angles")
class RKDLoss(_RelationLoss):
    """Relational Knowledge Distillation (Park, Kim, Lu & Cho, CVPR 2019, "Relational Knowledge Distillation").

    Distance: ``psi_D(i, j) = ||f_i - f_j||_2 / mu`` with ``mu`` the mean off-diagonal distance of the batch;
    ``L_D = mean_ij huber(psi_D^s, psi_D^t)``. Angle: ``psi_A(i, j, k) = <e_ij, e_kj>`` with
    ``e_ij = (f_i - f_j) / ||f_i - f_j||``; ``L_A = mean_ijk huber(psi_A^s, psi_A^t)``.
    ``loss = distance_weight * L_D + angle_weight * L_A`` (the paper uses 25 and 50 as term weights;
    the defaults 1 and 2 keep their ratio). Huber is smooth-L1 with ``delta = 1``.
    """

    def __init__(self, ctx: LossContext, student_layer: str = "logits", teacher_layer: str = "logits",
                 distance_weight: float = 1.0, angle_weight: float = 2.0) -> None:
        super().__init__(ctx, student_layer, teacher_layer)
        if distance_weight < 0 or angle_weight < 0:
            raise ValueError("distance_weight and angle_weight must be >= 0")
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def forward(self, student, teacher, labels):
        s, t = self._vectors(student, teacher)
        loss = s.new_zeros(())
        if self.distance_weight:
            loss = loss + self.distance_weight * F.smooth_l1_loss(self._dist(s), self._dist(t))
        if self.angle_weight:
            loss = loss + self.angle_weight * F.smooth_l1_loss(self._angle(s), self._angle(t))
        return loss

    @staticmethod
    def _dist(e: torch.Tensor) -> torch.Tensor:
        d = _pdist(e)
        mu = d[d > 0].mean() if bool((d > 0).any()) else d.new_ones(())
        return d / mu

    @staticmethod
    def _angle(e: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [B, B, D]: e_ij
        return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


@LOSSES.register("sp", help="similarity-preserving KD: match row-normalised batch Gram matrices")
class SPLoss(_RelationLoss):
    """Similarity-Preserving KD (Tung & Mori, ICCV 2019, "Similarity-Preserving Knowledge Distillation").

    ``G = Q Q^T`` for the flattened activations ``Q`` [B, D], each row L2-normalised:
    ``loss = ||G_s - G_t||_F^2 / B^2``. Here maps are flattened (not pooled), as in the paper.
    """

    def _vectors(self, student, teacher):
        s = check_features(student, self.student_layer, "student").flatten(1)
        t = check_features(teacher, self.teacher_layer, "teacher").flatten(1).detach()
        warn_small_batch(self, s.shape[0], self.min_batch)
        return s, t

    def forward(self, student, teacher, labels):
        s, t = self._vectors(student, teacher)
        g_s = F.normalize(s @ s.t(), dim=1)
        g_t = F.normalize(t @ t.t(), dim=1)
        return (g_s - g_t).pow(2).sum() / (s.shape[0] ** 2)


@LOSSES.register("simmat", help="batch cosine-similarity matrix matching, squared Frobenius norm (embedding models)")
class SimilarityMatrixLoss(_RelationLoss):
    """Batch similarity-matrix matching (as used to distil sentence-embedding models, e.g. the cosine
    similarity matrices of Reimers & Gurevych 2020 and of SP, Tung & Mori 2019).

    ``S = norm(F) norm(F)^T`` is the [B, B] cosine-similarity matrix (64 x 64 for a batch of 64) of
    L2-normalised [B, D] outputs: ``loss = ||S_s - S_t||_F^2 / B^2``. Works on any [B, D] output
    (``"logits"`` of a sentence encoder is its embedding); widths may differ.
    """

    def forward(self, student, teacher, labels):
        s, t = self._vectors(student, teacher)
        s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        return (s @ s.t() - t @ t.t()).pow(2).sum() / (s.shape[0] ** 2)


@LOSSES.register("crd", help="contrastive representation distillation (InfoNCE) with a bounded negative queue")
class CRDLoss(_RelationLoss):
    """Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020, "Contrastive
    Representation Distillation"), with a bounded FIFO queue of negatives (as MoCo, He et al. 2020) in place
    of the paper's dataset-sized memory bank, so memory does not grow with the dataset.

    ``z_s = norm(W_s f_s)``, ``z_t = norm(W_t f_t)`` (linear heads to ``feat_dim``, trained, not exported).
    For each sample ``i``, with negatives ``N`` = the other samples of the batch plus the queue:
    ``L_s = -log(exp(z_s_i . z_t_i / tau) / sum_{j in {i} u N} exp(z_s_i . z_t_j / tau))``, ``L_t`` the same
    with student and teacher swapped; ``loss = (mean L_s + mean L_t) / 2``. The queues hold at most
    ``queue_size`` detached embeddings per side.
    """

    min_batch = 16

    def __init__(self, ctx: LossContext, student_layer: str = "logits", teacher_layer: str = "logits",
                 feat_dim: int = 128, queue_size: int = 4096, tau: float = 0.07) -> None:
        super().__init__(ctx, student_layer, teacher_layer)
        if feat_dim < 1 or queue_size < 0 or tau <= 0:
            raise ValueError("feat_dim must be >= 1, queue_size >= 0 and tau > 0")
        self.feat_dim, self.queue_size, self.tau = int(feat_dim), int(queue_size), float(tau)
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None
        self.register_buffer("queue_s", torch.zeros(self.queue_size, self.feat_dim))
        self.register_buffer("queue_t", torch.zeros(self.queue_size, self.feat_dim))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def build(self, student_shapes, teacher_shapes) -> None:
        self.embed_s = nn.Linear(width(torch.Size(student_shapes[self.student_layer])), self.feat_dim)
        self.embed_t = nn.Linear(width(torch.Size(teacher_shapes[self.teacher_layer])), self.feat_dim)

    def forward(self, student, teacher, labels):
        if self.embed_s is None:
            raise RuntimeError("CRDLoss.build(...) must run (after a dry-run forward) before the loss")
        s, t = self._vectors(student, teacher)
        z_s = F.normalize(self.embed_s(s), dim=1)
        z_t = F.normalize(self.embed_t(t), dim=1)
        n = int(self.queue_len)
        loss = 0.5 * (self._nce(z_s, z_t, self.queue_t[:n]) + self._nce(z_t, z_s, self.queue_s[:n]))
        if self.training:
            self._enqueue(z_s.detach(), z_t.detach())
        return loss

    def _nce(self, anchor, positive, queue):
        logits = anchor @ torch.cat([positive, queue], dim=0).t() / self.tau  # [B, B + Q]
        target = torch.arange(len(anchor), device=anchor.device)
        return F.cross_entropy(logits, target)

    @torch.no_grad()
    def _enqueue(self, z_s, z_t) -> None:
        if self.queue_size == 0:
            return
        z_s, z_t = z_s[-self.queue_size:], z_t[-self.queue_size:]
        idx = (int(self.queue_ptr) + torch.arange(len(z_s))) % self.queue_size
        self.queue_s[idx] = z_s.to(self.queue_s.dtype)
        self.queue_t[idx] = z_t.to(self.queue_t.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + len(z_s)) % self.queue_size)
        self.queue_len.fill_(min(self.queue_size, int(self.queue_len) + len(z_s)))

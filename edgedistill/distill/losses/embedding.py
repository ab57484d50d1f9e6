"""Losses for embedding models (sentence encoders): their ``"logits"`` tap is the [B, D] embedding.

Written for the text-embedding flagship (issue #8) while the distill-methods branch was not on main;
``simmat`` and ``embed_mse`` follow the same formulas as that branch so the two can be reconciled
by keeping one implementation.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .base import LOSSES, DistillLoss, LossContext


def _tap(d: dict, path: str, who: str) -> torch.Tensor:
    if path not in d:
        raise KeyError(f"the {who} outputs hold no tap {path!r} (taps: {', '.join(d)}); the loop must tap it")
    x = d[path]
    return x[0] if isinstance(x, (tuple, list)) else x


@LOSSES.register("simmat", help="batch cosine-similarity matrix matching, squared Frobenius norm / B^2 (embedding models)")
class SimMatLoss(DistillLoss):
    """Batch similarity-matrix distillation (relation-based KD for sentence encoders; cf. Tung & Mori 2019,
    "Similarity-Preserving Knowledge Distillation").

    ``S = norm(E) norm(E)^T`` is the [B, B] cosine-similarity matrix of the batch's embeddings (64 x 64 at
    batch 64): ``loss = ||S_s - S_t||_F^2 / B^2``. Student and teacher widths may differ (no projection).
    """

    def __init__(self, ctx: LossContext, min_batch: int = 16) -> None:
        super().__init__(ctx)
        self.min_batch = int(min_batch)
        self._warned = False

    def forward(self, student, teacher, labels):
        s = F.normalize(_tap(student, "logits", "student").flatten(1), dim=1)
        t = F.normalize(_tap(teacher, "logits", "teacher").flatten(1).detach(), dim=1)
        if s.shape[0] < self.min_batch and not self._warned:
            self._warned = True
            warnings.warn(f"simmat: batch of {s.shape[0]} is too small to carry relations (at least {self.min_batch}); raise the batch size.", stacklevel=2)
        return (s @ s.t() - t @ t.t()).pow(2).sum() / (s.shape[0] ** 2)


class _ProjectedEmbedding(DistillLoss):
    """Compare the student embedding with the teacher's through a linear projection built only when widths differ."""

    def __init__(self, ctx: LossContext) -> None:
        super().__init__(ctx)
        self.proj: Optional[nn.Module] = None

    def build(self, student_shapes, teacher_shapes) -> None:
        sd, td = int(student_shapes["logits"][-1]), int(teacher_shapes["logits"][-1])
        self.proj = nn.Linear(sd, td, bias=False) if sd != td else None

    def _pair(self, student, teacher) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = _tap(student, "logits", "student"), _tap(teacher, "logits", "teacher").detach()
        if self.proj is not None:
            s = self.proj(s)
        if s.shape != t.shape:
            raise ValueError(f"{type(self).__name__}: student embedding {tuple(s.shape)} does not match teacher {tuple(t.shape)}; call build() first")
        return s, t


@LOSSES.register("embed_cosine", help="embedding cosine: mean(1 - cos(W s, t)), W a projection when widths differ")
class EmbedCosineLoss(_ProjectedEmbedding):
    """Embedding distillation by cosine (DistilBERT's cosine term, Sanh et al. 2019): ``mean_b(1 - cos(W s_b, t_b))``."""

    def forward(self, student, teacher, labels):
        s, t = self._pair(student, teacher)
        return (1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)).mean()


@LOSSES.register("embed_mse", help="embedding MSE: mean((W s - t)^2), W a projection when widths differ")
class EmbedMSELoss(_ProjectedEmbedding):
    """Embedding distillation by MSE (Reimers & Gurevych 2020, "Making Monolingual Sentence Embeddings
    Multilingual using Knowledge Distillation"): ``mean((W s - t)^2)``."""

    def forward(self, student, teacher, labels):
        s, t = self._pair(student, teacher)
        return F.mse_loss(s, t)


Layers = Union[str, Sequence[str]]


@LOSSES.register("hidden_mse", help="hidden-state MSE over a layer map, each pair through a projection when widths differ")
class HiddenMSELoss(DistillLoss):
    """Hidden-state matching over a layer map (TinyBERT, Jiao et al. 2020):
    ``loss = 1/n sum_i mean((W_i h_s[i] - h_t[i])^2)`` for ``student_layer[i]`` taught by ``teacher_layer[i]``.
    Needs the teacher's internals (it cannot run from cached teacher embeddings)."""

    needs_teacher_features = True

    def __init__(self, ctx: LossContext, student_layer: Layers = "logits", teacher_layer: Layers = "logits") -> None:
        super().__init__(ctx)
        self.s_layers = [student_layer] if isinstance(student_layer, str) else list(student_layer)
        self.t_layers = [teacher_layer] if isinstance(teacher_layer, str) else list(teacher_layer)
        if not self.s_layers or len(self.s_layers) != len(self.t_layers):
            raise ValueError(f"student_layer lists {len(self.s_layers)} paths but teacher_layer lists {len(self.t_layers)}; pair them one to one")
        self.proj = nn.ModuleList()

    def student_layers(self) -> list[str]:
        return [p for p in self.s_layers if p != "logits"]

    def teacher_layers(self) -> list[str]:
        return [p for p in self.t_layers if p != "logits"]

    def build(self, student_shapes, teacher_shapes) -> None:
        self.proj = nn.ModuleList(
            nn.Linear(int(student_shapes[s][-1]), int(teacher_shapes[t][-1]), bias=False)
            if int(student_shapes[s][-1]) != int(teacher_shapes[t][-1]) else nn.Identity()
            for s, t in zip(self.s_layers, self.t_layers))

    def forward(self, student, teacher, labels):
        if len(self.proj) != len(self.s_layers):
            raise ValueError("hidden_mse: call build() with the dry-run shapes before the first forward")
        total = 0.0
        for head, sp, tp in zip(self.proj, self.s_layers, self.t_layers):
            total = total + F.mse_loss(head(_tap(student, sp, "student")), _tap(teacher, tp, "teacher").detach())
        return total / len(self.s_layers)

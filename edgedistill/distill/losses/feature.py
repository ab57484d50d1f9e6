"""Feature-based losses: they read intermediate activations tapped at module paths.

Every loss here names its layers ``student_layer`` / ``teacher_layer`` (a module path, or a list of
paths paired one to one: the layer map). ``"logits"`` names the model output itself, so the same
losses match embeddings of sentence encoders (see ``embed_cos`` / ``embed_mse``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import Layers, check_features, flat, make_projection, match_spatial, paired_layers, width
from .base import LOSSES, DistillLoss, LossContext


class _LayerMapLoss(DistillLoss):
    """Base for losses over a layer map: the i-th student path is taught by the i-th teacher path."""

    def __init__(self, ctx: LossContext, student_layer: Layers, teacher_layer: Layers) -> None:
        super().__init__(ctx)
        self.s_layers, self.t_layers = paired_layers(student_layer, teacher_layer)

    def student_layers(self) -> list[str]:
        return [p for p in self.s_layers if p != "logits"]

    def teacher_layers(self) -> list[str]:
        return [p for p in self.t_layers if p != "logits"]


class _MatchLoss(_LayerMapLoss):
    """Student features, projected onto the teacher's width when needed, compared with a metric."""

    always_project = False

    def __init__(self, ctx: LossContext, student_layer: Layers, teacher_layer: Layers, metric: str) -> None:
        super().__init__(ctx, student_layer, teacher_layer)
        if metric not in ("mse", "cosine", "l2"):
            raise ValueError("metric must be 'mse', 'cosine' or 'l2'")
        self.metric = metric
        self.heads = nn.ModuleList()

    def build(self, student_shapes, teacher_shapes) -> None:
        self.heads = nn.ModuleList()
        for s, t in zip(self.s_layers, self.t_layers):
            ss, ts = torch.Size(student_shapes[s]), torch.Size(teacher_shapes[t])
            if self.always_project or width(ss) != width(ts):
                self.heads.append(make_projection(ss, ts))
            else:
                self.heads.append(nn.Identity())

    def forward(self, student, teacher, labels):
        if len(self.heads) != len(self.s_layers):
            raise RuntimeError(f"{type(self).__name__}.build(...) must run (after a dry-run forward) before the loss")
        total = 0.0
        for head, sp, tp in zip(self.heads, self.s_layers, self.t_layers):
            s = head(check_features(student, sp, "student"))
            t = check_features(teacher, tp, "teacher").detach()
            s, t = match_spatial(s, t)
            total = total + self._compare(s, t)
        return total / len(self.s_layers)

    def _compare(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if s.shape != t.shape:
            raise ValueError(f"{type(self).__name__}: student feature {tuple(s.shape)} does not match teacher {tuple(t.shape)}")
        if self.metric == "mse":
            return F.mse_loss(s, t)
        dim = 1 if s.dim() == 4 else -1  # channels of a map, the last axis of vectors / sequences
        if self.metric == "cosine":
            return (1.0 - F.cosine_similarity(s, t, dim=dim, eps=1e-8)).mean()
        return (s - t).pow(2).sum(dim=dim).sqrt().mean()  # l2: mean Euclidean distance per position


@LOSSES.register("hint", help="FitNets hint: MSE between a projected student feature and the teacher's")
class HintLoss(_MatchLoss):
    """FitNets hint (Romero et al., ICLR 2015, "FitNets: Hints for Thin Deep Nets").

    ``loss = mean((r(F_s) - F_t)^2)`` where ``r`` is a trained regressor (1x1 conv for maps, linear for
    vectors) built from the dry-run shapes, always present as in the paper. Maps of different size are
    average-pooled to the smaller one. Set ``student_layer`` / ``teacher_layer`` to the guided / hint layers.
    """

    always_project = True

    def __init__(self, ctx: LossContext, student_layer: Layers = "logits", teacher_layer: Layers = "logits") -> None:
        super().__init__(ctx, student_layer, teacher_layer, "mse")


@LOSSES.register("hidden", help="hidden-state matching over a layer map (cosine or L2), projected when widths differ")
class HiddenStateLoss(_MatchLoss):
    """Hidden-state matching over a layer map (as in TinyBERT, Jiao et al. 2020, and DistilBERT's cosine loss,
    Sanh et al. 2019).

    With the layer map ``student_layer = [s_1..s_n]``, ``teacher_layer = [t_1..t_n]`` and ``W_i`` a linear /
    1x1-conv projection built only when widths differ:
    ``cosine: loss = 1/n sum_i mean_pos(1 - cos(W_i h_s_i, h_t_i))``; ``l2: loss = 1/n sum_i mean_pos ||W_i h_s_i - h_t_i||_2``;
    ``mse: loss = 1/n sum_i mean((W_i h_s_i - h_t_i)^2)``. Works on [B, D], [B, L, D] and [B, C, H, W] features.
    """

    def __init__(self, ctx: LossContext, student_layer: Layers = "logits", teacher_layer: Layers = "logits",
                 metric: str = "cosine") -> None:
        super().__init__(ctx, student_layer, teacher_layer, metric)


@LOSSES.register("embed_cos", help="embedding cosine: 1 - cos(student output [B,D] (projected), teacher output)")
class EmbedCosineLoss(_MatchLoss):
    """Embedding distillation by cosine (as in DistilBERT, Sanh et al. 2019; Reimers & Gurevych 2020,
    "Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation").

    ``loss = mean_b(1 - cos(W s_b, t_b))`` on any [B, D] output (default tap ``"logits"``, which for a
    sentence encoder is the embedding); ``W`` is a linear projection built only when widths differ.
    """

    def __init__(self, ctx: LossContext, student_layer: Layers = "logits", teacher_layer: Layers = "logits") -> None:
        super().__init__(ctx, student_layer, teacher_layer, "cosine")


@LOSSES.register("embed_mse", help="embedding MSE: mean squared error between student output [B,D] (projected) and teacher's")
class EmbedMSELoss(_MatchLoss):
    """Embedding distillation by MSE (Reimers & Gurevych 2020, "Making Monolingual Sentence Embeddings
    Multilingual using Knowledge Distillation").

    ``loss = mean((W s - t)^2)`` on any [B, D] output (default tap ``"logits"``); ``W`` is a linear
    projection built only when widths differ.
    """

    def __init__(self, ctx: LossContext, student_layer: Layers = "logits", teacher_layer: Layers = "logits") -> None:
        super().__init__(ctx, student_layer, teacher_layer, "mse")


class _PairedMapLoss(_LayerMapLoss):
    """Base for losses over feature pairs that need no projection (channels may differ)."""

    def forward(self, student, teacher, labels):
        total = 0.0
        for sp, tp in zip(self.s_layers, self.t_layers):
            s = check_features(student, sp, "student")
            t = check_features(teacher, tp, "teacher").detach()
            total = total + self._pair(s, t)
        return total / len(self.s_layers)

    def _pair(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _need_map(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} needs [B, C, H, W] feature maps, got shape {tuple(x.shape)}; tap a convolutional layer")


@LOSSES.register("at", help="attention transfer: match L2-normalised spatial attention maps (sum_c |F|^p)")
class AttentionTransferLoss(_PairedMapLoss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention").

    ``Q = vec(sum_c |F_c|^p)`` normalised to unit L2 norm per sample; ``loss = mean_b ||Q_s - Q_t||_2^2``
    averaged over the layer pairs (the paper's ``beta/2`` is the term weight; ``beta = 1000`` with its mean
    over positions). Maps of different size are average-pooled to the smaller one; channels may differ.
    """

    needs_teacher_features = True  # feature maps only: the logits never do

    def __init__(self, ctx: LossContext, student_layer: Layers = "features", teacher_layer: Layers = "features",
                 p: float = 2.0) -> None:
        super().__init__(ctx, student_layer, teacher_layer)
        if p <= 0:
            raise ValueError("p must be > 0")
        self.p = float(p)

    def _pair(self, s, t):
        _need_map(s, "at")
        _need_map(t, "at")
        s, t = match_spatial(s, t)
        q_s = F.normalize(s.abs().pow(self.p).mean(1).flatten(1), dim=1)
        q_t = F.normalize(t.abs().pow(self.p).mean(1).flatten(1), dim=1)
        return (q_s - q_t).pow(2).sum(1).mean()


@LOSSES.register("pkt", help="probabilistic knowledge transfer: KL between cosine-kernel conditional distributions")
class PKTLoss(_PairedMapLoss):
    """Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018, "Learning Deep Representations with
    Probabilistic Knowledge Transfer").

    With features pooled to vectors and L2-normalised, ``K_ij = (cos(f_i, f_j) + 1) / 2`` and
    ``P_ij = K_ij / sum_j K_ij`` for student and teacher: ``loss = sum_ij P^t_ij log(P^t_ij / P^s_ij)``
    (summed over ``j``, averaged over ``i``). Widths may differ: each model keeps its own space.
    """

    def __init__(self, ctx: LossContext, student_layer: Layers = "logits", teacher_layer: Layers = "logits",
                 eps: float = 1e-7) -> None:
        super().__init__(ctx, student_layer, teacher_layer)
        self.eps = float(eps)

    def _pair(self, s, t):
        p_s, p_t = self._cond(flat(s)), self._cond(flat(t))
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).sum(1).mean()

    def _cond(self, f: torch.Tensor) -> torch.Tensor:
        f = F.normalize(f, dim=1, eps=self.eps)
        k = (f @ f.t() + 1.0) / 2.0
        return k / k.sum(dim=1, keepdim=True)


@LOSSES.register("nst", help="neuron selectivity transfer: MMD (polynomial kernel) between channel activation patterns")
class NSTLoss(_PairedMapLoss):
    """Neuron Selectivity Transfer (Huang & Wang, 2017, "Like What You Like: Knowledge Distill via Neuron
    Selectivity Transfer").

    Each channel's map ``f_i`` (flattened over H x W) is L2-normalised; with the polynomial kernel
    ``k(x, y) = (x^T y)^2``: ``MMD^2 = mean_ij k(s_i, s_j) + mean_ij k(t_i, t_j) - 2 mean_ij k(s_i, t_j)``,
    averaged over the batch. Maps of different size are average-pooled to the smaller one; channels may differ.
    """

    needs_teacher_features = True  # feature maps only: the logits never do

    def __init__(self, ctx: LossContext, student_layer: Layers = "features", teacher_layer: Layers = "features") -> None:
        super().__init__(ctx, student_layer, teacher_layer)

    def _pair(self, s, t):
        _need_map(s, "nst")
        _need_map(t, "nst")
        s, t = match_spatial(s, t)
        fs = F.normalize(s.flatten(2), dim=2)  # [B, Cs, HW]
        ft = F.normalize(t.flatten(2), dim=2)  # [B, Ct, HW]

        def k(a, b):
            return torch.bmm(a, b.transpose(1, 2)).pow(2).mean(dim=(1, 2))

        return (k(fs, fs) + k(ft, ft) - 2.0 * k(fs, ft)).mean()

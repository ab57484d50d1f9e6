"""The loss base class, the context a loss is built with, and the registry."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ...errors import ConfigError
from ...registry import Registry

LOSSES: Registry[type] = Registry("loss")


@dataclass
class LossContext:
    """Recipe-wide settings a loss may default to."""

    alpha: float = 0.3
    temperature: float = 4.0
    num_classes: int = 0
    batch_size: int = 64


class DistillLoss(nn.Module):
    """Base class: ``forward(student, teacher, labels) -> scalar tensor``."""

    #: False when the loss never reads the teacher's outputs (the loop then skips the teacher's forward).
    needs_teacher: bool = True

    def __init__(self, ctx: LossContext) -> None:
        super().__init__()
        self.ctx = ctx

    def student_layers(self) -> list[str]:
        return []

    def teacher_layers(self) -> list[str]:
        return []

    @property
    def needs_teacher_features(self) -> bool:
        """True when the loss reads teacher internals (refused for black-box teachers)."""
        return bool(self.teacher_layers())

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """Create projection heads from the dry-run shapes (default: nothing to build)."""

    def forward(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                labels: Optional[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def loss_params(cls: type) -> dict:
    """A loss class's recipe parameters and their defaults (None where there is no default)."""
    return {n: None if p.default is inspect.Parameter.empty else p.default
            for n, p in inspect.signature(cls.__init__).parameters.items() if n not in ("self", "ctx")}


def check_loss(name: str, params: dict, key: str) -> type:
    """The registered loss class ``name``, its ``params`` checked against what it accepts (nothing is built)."""
    cls = LOSSES.get(name, f"{key}.name")
    accepted = list(loss_params(cls))
    for p in params:
        if p not in accepted:
            raise ConfigError(f"{key}.params.{p}: unknown parameter of loss {name!r}; valid ones are: {', '.join(accepted) or 'none'}.")
    return cls


def build_loss(name: str, params: dict, ctx: LossContext, key: str) -> DistillLoss:
    """Instantiate a registered loss, rejecting unknown parameters with the key's path."""
    cls = check_loss(name, params, key)
    try:
        return cls(ctx, **params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}.params: loss {name!r} cannot be built with {params} ({e}).") from None


def hard_label_ce(logits: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy over the labelled samples only (label -1 = unlabelled); 0 when none are labelled (still part
    of the graph, so a batch without labels steps like any other)."""
    if labels is None:
        return logits.sum() * 0.0
    mask = labels >= 0
    labelled = int(mask.sum())  # one host sync; selecting the labelled samples would take two more
    if labelled == 0:
        return logits.sum() * 0.0
    if labelled == len(labels):  # every sample: the same numbers as selecting them all, without the copies
        return nn.functional.cross_entropy(logits, labels)
    return nn.functional.cross_entropy(logits[mask], labels[mask])

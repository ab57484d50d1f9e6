"""Distillation losses, one registry, one signature.

Every loss is an ``nn.Module`` built as ``cls(ctx, **params)`` from a recipe term
(``[[distill.losses]] name = "kd", weight = 1.0, params = {...}``) and called as
``loss(student, teacher, labels)`` where ``student`` and ``teacher`` map tap names to tensors
(``"logits"`` is always present; intermediate features appear under their module path) and
``labels`` holds class indices with -1 for unlabelled samples (or is None).

A loss that reads intermediate features lists them in ``student_layers()`` / ``teacher_layers()``
(recipe params ``student_layer`` / ``teacher_layer``); the loop taps those modules with forward
hooks, runs one dry-run forward, and calls ``build(student_shapes, teacher_shapes)`` so the loss
can create projection heads. Heads are parameters of the loss, trained with the student and never
exported with it.
"""

from __future__ import annotations

from .base import LOSSES, DistillLoss, LossContext, build_loss

from . import feature as _feature  # noqa: F401  (registers the built-in losses)
from . import relation as _relation  # noqa: F401
from . import response as _response  # noqa: F401
from . import selfdistill as _selfdistill  # noqa: F401

__all__ = ["LOSSES", "DistillLoss", "LossContext", "build_loss"]

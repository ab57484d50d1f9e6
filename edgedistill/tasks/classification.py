"""``classification``: images (C x H x W) or flat features (D) in, class logits out; top-1 accuracy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..data.core import SampleSet, Splits
from .core import TASKS, Task

if TYPE_CHECKING:  # torch only where a model is trained: evaluate and quantize run without it
    from torch import nn


@TASKS.register("classification", help="images or flat features -> class logits; metric: top-1 accuracy")
class Classification(Task):
    name = "classification"

    def preflight(self, recipe, splits: Splits) -> None:
        from ..distill.stage import check_taps
        from ..errors import ConfigError

        if splits.input_shape == ():
            raise ConfigError(f"data.dataset: {recipe.data.dataset!r} holds texts; the classification task reads arrays "
                              "or images: set task = \"text-classification\" (labelled texts) or \"embedding\".")
        for role, cfg in (("teacher", recipe.teacher), ("student", recipe.student)):
            if cfg.arch in ("sentence-transformer", "transformer-layers"):
                raise ConfigError(f"{role}.arch: {cfg.arch!r} reads texts, which the classification task does not give; "
                                  "set task = \"text-classification\" or \"embedding\".")
        check_taps(recipe, splits.input_shape, splits.num_classes)

    def prepare_teacher(self, recipe, splits: Splits, out_dir: Path, trust_checkpoint: bool, log) -> nn.Module:
        from ..teacher import prepare_teacher

        return prepare_teacher(recipe, splits, out_dir, trust_checkpoint=trust_checkpoint, log=log)

    def load_teacher(self, recipe, splits: Splits, teacher_dir: Path) -> nn.Module:
        from ..teacher import load_teacher

        return load_teacher(recipe, splits, teacher_dir)

    def build_student(self, recipe, splits: Splits, out_dir: Path, teacher_path: Optional[Path] = None) -> nn.Module:
        from ..student import build_student

        return build_student(recipe, splits, out_dir, teacher_path)

    def load_student(self, recipe, splits: Splits, path: Path) -> nn.Module:
        from ..student import load_student

        return load_student(recipe, splits, path)

    def untrained_student(self, recipe, splits: Splits, params: dict) -> nn.Module:
        from ..models import build_model

        return build_model(recipe.student.arch, params, splits.input_shape, splits.num_classes, "student")

    def val_metric(self, model: nn.Module, split: SampleSet, workers: Optional[int] = None) -> tuple[str, float]:
        from ..distill.train import evaluate_accuracy

        return "acc", evaluate_accuracy(model, split, workers=workers)

    def export_inputs(self, model: nn.Module, split: SampleSet, n: int) -> np.ndarray:
        return split.read(np.arange(min(n, len(split))))

    def metric(self, onnx_path: str | os.PathLike, split: SampleSet, role: str = "student") -> dict:
        from ..verify import accuracy

        return {"name": "accuracy", "value": accuracy(onnx_path, split)}

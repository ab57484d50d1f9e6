"""The Task interface and its registry.

A task is built per run (``get_task(name, run_dir)``) and answers every "how" a stage asks:

- data: ``load_data`` (splits read a batch at a time);
- models: ``prepare_teacher`` / ``load_teacher``, ``build_student`` / ``load_student`` (what a
  checkpoint alone does not say, e.g. a text model's tokenizer, the task keeps in the stage folder);
- a batch through a model: the training loop calls models through ``models.core.model_forward``, so
  tensors go in as they are and texts are tokenised by the model itself;
- ``val_metric``: the metric of a PyTorch model on a split (curves, the choice between checkpoints);
- export: ``export_inputs`` (real samples as named arrays) and ``exporter``;
- PTQ: ``ptq_mode`` (static QDQ or dynamic) and ``fusion_args`` (ONNX Runtime's transformer fusion);
- ``metric``: the metric of an exported file through ONNX Runtime, streamed;
- bundle: ``bundle_metadata`` and ``bundle_files`` (labels, preprocessing, a tokenizer).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..data.core import SampleSet, Splits
from ..registry import Registry

if TYPE_CHECKING:  # torch only where a model is trained: evaluate and quantize run without it
    from torch import nn


class Task:
    """What a stage needs to know about a kind of model."""

    name: str = "task"
    #: the exporter its models need (see :mod:`edgedistill.export`)
    exporter: str = "dynamo"
    #: PTQ when ``ptq.mode = "auto"``
    ptq_mode: str = "static"
    #: the ONNX opset when the recipe leaves ``export.opset`` unset
    opset: int = 18
    #: whether the QAT stage can train this kind of model
    supports_qat: bool = True
    #: whether the litert stage converts its students (one float input: image or feature models)
    supports_litert: bool = True

    def __init__(self, run_dir: str | os.PathLike | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None

    def load_data(self, cfg, seed: int) -> Splits:
        from ..data import load_data

        return load_data(cfg, seed)

    def preflight(self, recipe, splits: Splits) -> None:
        """Build what the recipe names (models, losses, layer paths) before any stage runs."""
        raise NotImplementedError

    def prepare_teacher(self, recipe, splits: Splits, out_dir: Path, trust_checkpoint: bool, log) -> nn.Module:
        raise NotImplementedError

    def load_teacher(self, recipe, splits: Splits, teacher_dir: Path) -> nn.Module:
        raise NotImplementedError

    def build_student(self, recipe, splits: Splits, out_dir: Path, teacher_path: Optional[Path] = None) -> nn.Module:
        """The untrained student in ``out_dir`` (``teacher_path``: the teacher stage's weights, for a student
        that starts from the teacher)."""
        raise NotImplementedError

    def load_student(self, recipe, splits: Splits, path: Path) -> nn.Module:
        raise NotImplementedError

    def untrained_student(self, recipe, splits: Splits, params: dict) -> nn.Module:
        """The recipe's student family built untrained with ``params`` (the size stage's candidates)."""
        raise NotImplementedError

    def val_metric(self, model: nn.Module, split: SampleSet, workers: Optional[int] = None) -> tuple[str, float]:
        """``(short name, value)`` of a PyTorch model on ``split`` (the curves' ``val_<name>`` column)."""
        raise NotImplementedError

    def export_inputs(self, model: nn.Module, split: SampleSet, n: int) -> np.ndarray | dict[str, np.ndarray]:
        """Up to ``n`` real samples as the model's inputs (export parity, the bench's shapes)."""
        raise NotImplementedError

    def fusion_args(self, model: Optional[nn.Module] = None) -> Optional[dict]:
        """ONNX Runtime transformer-optimizer arguments (``model_type``, ``num_heads``, ``hidden_size``) for
        the student (the student stage's, or ``model``) before dynamic quantization, or None for no fusion."""
        return None

    def metric(self, onnx_path: str | os.PathLike, split: SampleSet, role: str) -> dict:
        """``{"name": ..., "value": ...}`` of an exported file on ``split``, through ONNX Runtime, streamed."""
        raise NotImplementedError

    def metric_samples(self, split: SampleSet) -> int:
        return int((split.y >= 0).sum())

    def bundle_metadata(self, splits: Splits) -> dict:
        """What an app needs besides the model: the task, labels and preprocessing."""
        return {"task": self.name, "labels": list(splits.labels),
                "preprocessing": {"input_shape": list(splits.input_shape), **splits.normalization, "dataset": splits.name}}

    def bundle_files(self, role: str) -> list[Path]:
        """Files the delivered model needs beside it (a tokenizer)."""
        return []


TASKS: Registry[type[Task]] = Registry("task")


def get_task(name: str, run_dir: str | os.PathLike | None = None, key: str = "task") -> Task:
    return TASKS.get(name, key)(run_dir)

"""Tasks: the adapter through which a kind of model meets every stage.

The stages never ask "is this an image model or a text model?"; they ask the recipe's task
(``task = "classification"``), looked up in the :data:`TASKS` registry like models, datasets and
losses. A task says how its data is read, what the model's inputs are (export, calibration, bench),
the metric and how it is computed through ONNX Runtime, and what the bundle carries besides the
model. A new kind of model is a new task, never a second pipeline.
"""

from __future__ import annotations

from .core import TASKS, Task, get_task

from . import classification as _classification, text as _text  # noqa: F401  (registers the built-in tasks)

__all__ = ["TASKS", "Task", "get_task"]

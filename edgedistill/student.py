"""Student stage: build the student from the recipe's spec (seeded), and record its size. ``student.arch =
"teacher"`` makes the student the teacher itself (its architecture and trained weights): the run then
compresses the user's own model (PTQ / QAT, bench, report, bundle) with no smaller network."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from . import _io
from .data import Splits
from .errors import ConfigError
from .models import build_model, count_params, load_checkpoint, save_checkpoint
from .recipe import Recipe, StudentConfig


TEACHER = "teacher"  # student.arch naming the teacher itself


def student_spec(recipe: Recipe) -> tuple[str, dict, str]:
    """``(arch, params, recipe key)`` the student is built from: the teacher's for ``student.arch = "teacher"``."""
    cfg = recipe.student
    if cfg.arch != TEACHER:
        return cfg.arch, cfg.params, "student"
    if cfg.params and cfg.params != StudentConfig().params:  # the default table is not the user's
        raise ConfigError("student.params: the student is the teacher itself (student.arch = \"teacher\"); remove "
                          "the params or name an architecture.")
    return recipe.teacher.arch, recipe.teacher.params, "teacher"


def build_student(recipe: Recipe, splits: Splits, out_dir: str | os.PathLike,
                  teacher_path: str | os.PathLike | None = None) -> nn.Module:
    """Build the untrained student (or, for ``student.arch = "teacher"``, load the teacher stage's
    ``teacher_path``), write ``model.pt`` + ``meta.json`` and return it."""
    torch.manual_seed(recipe.seed)
    arch, params, key = student_spec(recipe)
    model = build_model(arch, params, splits.input_shape, splits.num_classes, key)
    if recipe.student.arch == TEACHER:
        load_checkpoint(teacher_path, model)
    out_dir = Path(out_dir)
    save_checkpoint(out_dir / "model.pt", model, arch=arch)
    _io.write_json(out_dir / "meta.json", {"arch": recipe.student.arch, "params": params, "parameters": count_params(model)})
    return model


def load_student(recipe: Recipe, splits: Splits, path: str | os.PathLike) -> nn.Module:
    arch, params, key = student_spec(recipe)
    model = build_model(arch, params, splits.input_shape, splits.num_classes, key)
    load_checkpoint(path, model)
    return model

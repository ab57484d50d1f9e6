"""Student stage: build the student from the recipe's spec (seeded), and record its size."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from . import _io
from .data import Splits
from .models import build_model, count_params, load_checkpoint, save_checkpoint
from .recipe import Recipe


def build_student(recipe: Recipe, splits: Splits, out_dir: str | os.PathLike) -> nn.Module:
    """Build the untrained student, write ``model.pt`` + ``meta.json`` and return it."""
    torch.manual_seed(recipe.seed)
    cfg = recipe.student
    model = build_model(cfg.arch, cfg.params, splits.input_shape, splits.num_classes, "student")
    out_dir = Path(out_dir)
    save_checkpoint(out_dir / "model.pt", model, arch=cfg.arch)
    _io.write_json(out_dir / "meta.json", {"arch": cfg.arch, "params": cfg.params, "parameters": count_params(model)})
    return model


def load_student(recipe: Recipe, splits: Splits, path: str | os.PathLike) -> nn.Module:
    model = build_model(recipe.student.arch, recipe.student.params, splits.input_shape, splits.num_classes, "student")
    load_checkpoint(path, model)
    return model

"""Teacher stage: load a user's checkpoint safely, or train the teacher from the recipe."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from . import _io
from .data import Splits
from .distill.losses import LossContext, build_loss
from .distill.train import FitConfig, Term, evaluate_accuracy, fit
from .models import build_model, count_params, load_checkpoint, save_checkpoint
from .recipe import Recipe


def prepare_teacher(recipe: Recipe, splits: Splits, out_dir: str | os.PathLike, trust_checkpoint: bool = False,
                    log=None) -> nn.Module:
    """Return the teacher (trained or loaded) and write ``model.pt`` + ``meta.json`` to ``out_dir``.

    ``trust_checkpoint`` allows full unpickling of ``teacher.checkpoint`` (with a warning through ``log``).
    """
    cfg = recipe.teacher
    out_dir = Path(out_dir)
    torch.manual_seed(recipe.seed)  # the initial weights depend on the seed only, not on what ran before
    model = build_model(cfg.arch, cfg.params, splits.input_shape, splits.num_classes, "teacher")
    if cfg.checkpoint:
        load_checkpoint(cfg.checkpoint, model, key="teacher.checkpoint", trust=trust_checkpoint, warn=log)
        source, history = f"checkpoint {cfg.checkpoint}" + (" (--trust-checkpoint)" if trust_checkpoint else ""), []
    else:
        ce = build_loss("ce", {}, LossContext(num_classes=splits.num_classes), "teacher")
        fit_cfg = FitConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, optimizer=cfg.optimizer,
                            scheduler=cfg.scheduler, batch_size=recipe.data.batch_size, seed=recipe.seed,
                            device=recipe.distill.device, amp=recipe.distill.amp, desc="teacher",
                            workers=recipe.data.workers)
        result = fit(model, splits.train, fit_cfg, [Term("ce", ce)], out_dir, val=splits.val)
        source, history = "trained from scratch", result.history
    model.eval()
    accuracy = evaluate_accuracy(model, splits.test)  # before anything is written: a bad test sample leaves no model.pt
    save_checkpoint(out_dir / "model.pt", model, arch=cfg.arch)
    _io.write_json(out_dir / "meta.json", {
        "arch": cfg.arch, "params": cfg.params, "source": source, "parameters": count_params(model),
        "test_accuracy_torch": accuracy, "epochs": len(history),
    })
    return model


def load_teacher(recipe: Recipe, splits: Splits, out_dir: str | os.PathLike) -> nn.Module:
    """The teacher a finished teacher stage wrote."""
    model = build_model(recipe.teacher.arch, recipe.teacher.params, splits.input_shape, splits.num_classes, "teacher")
    load_checkpoint(Path(out_dir) / "model.pt", model)
    return model.eval()

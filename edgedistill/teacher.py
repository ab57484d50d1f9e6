"""Teacher stage: load a user's checkpoint safely, or train the teacher from the recipe."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from . import _io, distributed as dist
from .data import Splits
from .distill.losses import LossContext, build_loss
from .distill.train import FitConfig, Term, evaluate_accuracy, fit
from .models import build_model, count_params, load_checkpoint, save_checkpoint
from .models.core import mark_trained, trained_weights
from .recipe import Recipe


DEFAULT_EPOCHS = 15  # a teacher without trained weights


def teacher_weights(cfg, model: nn.Module, trust_checkpoint: bool = False, log=None) -> tuple[str | None, int]:
    """Load ``teacher.checkpoint`` into ``model``; return where its trained weights come from (None: nowhere)
    and the epochs to train it (``teacher.epochs``, default 0 with trained weights, else 15). The stage's
    first line says which: used as given (and with which preprocessing), fine-tuned, or trained."""
    if cfg.checkpoint:
        load_checkpoint(cfg.checkpoint, model, key="teacher.checkpoint", trust=trust_checkpoint, warn=log)
        mark_trained(model, f"teacher.checkpoint {cfg.checkpoint}" + (" (--trust-checkpoint)" if trust_checkpoint else ""))
    weights = trained_weights(model)
    epochs = cfg.epochs if cfg.epochs is not None else (0 if weights else DEFAULT_EPOCHS)
    if log:
        if weights and epochs:
            log(f"[teacher] fine-tuning {weights} for {epochs} epoch(s), as teacher.epochs = {epochs} asks")
        elif weights:
            log(f"[teacher] {weights}, used as given (not trained; teacher.epochs > 0 would fine-tune it)")
        else:
            log(f"[teacher] training {cfg.arch} for {epochs} epoch(s) (teacher.epochs)")
    return weights, epochs


def prepare_teacher(recipe: Recipe, splits: Splits, out_dir: str | os.PathLike, trust_checkpoint: bool = False,
                    log=None) -> nn.Module:
    """Return the teacher (trained or loaded) and write ``model.pt`` + ``meta.json`` to ``out_dir``.

    ``trust_checkpoint`` allows full unpickling of ``teacher.checkpoint`` (with a warning through ``log``).
    """
    cfg = recipe.teacher
    out_dir = Path(out_dir)
    torch.manual_seed(recipe.seed)  # the initial weights depend on the seed only, not on what ran before
    model = build_model(cfg.arch, cfg.params, splits.input_shape, splits.num_classes, "teacher")
    weights, epochs = teacher_weights(cfg, model, trust_checkpoint, log)
    if weights and log:
        log(f"[teacher] it must have been trained on inputs preprocessed as [data.preprocess] says: "
            f"{_preprocessing(splits.normalization)}")
    history = []
    if epochs:
        ce = build_loss("ce", {}, LossContext(num_classes=splits.num_classes), "teacher")
        # [teacher] has no device or AMP switch of its own: the distill section's apply
        fit_cfg = FitConfig.from_section(cfg, desc="teacher", batch_size=recipe.data.batch_size, seed=recipe.seed,
                                         workers=recipe.data.workers, epochs=epochs, device=recipe.distill.device,
                                         amp=recipe.distill.amp)
        history = fit(model, splits.train, fit_cfg, [Term("ce", ce)], out_dir, val=splits.val).history
    if not dist.is_main():  # under torchrun rank 0 alone writes the stage's files
        return model
    source = (f"{weights}, fine-tuned {epochs} epochs" if weights and epochs else weights) or "trained from scratch"
    model.eval()
    accuracy = evaluate_accuracy(model, splits.test)  # before anything is written: a bad test sample leaves no model.pt
    save_checkpoint(out_dir / "model.pt", model, arch=cfg.arch)
    _io.write_json(out_dir / "meta.json", {
        "arch": cfg.arch, "params": cfg.params, "source": source, "parameters": count_params(model),
        "test_accuracy_torch": accuracy, "epochs": len(history),
    })
    return model


def _preprocessing(record: dict) -> str:
    """``(x * scale - mean) / std`` in words, with the resize and channel order when there are some."""
    parts = [f"{k} {record[k]}" for k in ("size", "channels") if record.get(k) is not None]
    parts.append(f"x * {record.get('scale', 1.0):g}")
    if record.get("mean") is not None:
        parts.append(f"minus mean {record['mean']}, divided by std {record['std']}")
    return ", ".join(parts)


def load_teacher(recipe: Recipe, splits: Splits, out_dir: str | os.PathLike) -> nn.Module:
    """The teacher a finished teacher stage wrote."""
    model = build_model(recipe.teacher.arch, recipe.teacher.params, splits.input_shape, splits.num_classes, "teacher")
    load_checkpoint(Path(out_dir) / "model.pt", model)
    return model.eval()

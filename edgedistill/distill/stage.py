"""Distill stage: train the student against the frozen teacher with the recipe's loss terms."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .. import _io
from ..data import Splits
from ..models import count_params, save_checkpoint
from ..recipe import Recipe
from .losses import LossContext, build_loss
from .train import FitConfig, Term, evaluate_accuracy, fit


def build_terms(recipe: Recipe, num_classes: int) -> list[Term]:
    """The recipe's ``[[distill.losses]]`` as built loss modules (unknown names/params rejected)."""
    cfg = recipe.distill
    ctx = LossContext(alpha=cfg.alpha, temperature=cfg.temperature, num_classes=num_classes,
                      batch_size=recipe.data.batch_size)
    terms = []
    for i, term in enumerate(cfg.losses):
        loss = build_loss(term.name, term.params, ctx, f"distill.losses[{i}]")
        name = term.name if sum(t.name == term.name for t in cfg.losses) == 1 else f"{term.name}{i}"
        terms.append(Term(name, loss, term.weight, term.warmup_epochs))
    return terms


def distill(student: nn.Module, teacher: nn.Module, splits: Splits, recipe: Recipe,
            out_dir: str | os.PathLike) -> dict:
    """Distill ``teacher`` into ``student`` in place; write ``model.pt``, ``curves.csv``, ``meta.json``."""
    cfg = recipe.distill
    out_dir = Path(out_dir)
    terms = build_terms(recipe, splits.num_classes)
    fit_cfg = FitConfig(epochs=cfg.epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, optimizer=cfg.optimizer,
                        scheduler=cfg.scheduler, batch_size=recipe.data.batch_size, seed=recipe.seed,
                        device=cfg.device, amp=cfg.amp, checkpoint_every=cfg.checkpoint_every, desc="distill")
    result = fit(student, splits.train, fit_cfg, terms, out_dir, teacher=teacher, val=splits.val)
    save_checkpoint(out_dir / "model.pt", student)
    meta = {
        "losses": [{"name": t.name, "weight": t.weight, "warmup_epochs": t.warmup_epochs} for t in terms],
        "epochs": cfg.epochs, "seconds": round(result.seconds, 2), "samples_per_s": round(result.samples_per_s, 1),
        "parameters": count_params(student), "test_accuracy_torch": evaluate_accuracy(student, splits.test),
        "resumed_from": result.resumed_from, "final": result.history[-1] if result.history else {},
    }
    _io.write_json(out_dir / "meta.json", meta)
    return meta

"""Distill stage: train the student against the frozen teacher with the recipe's loss terms."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from .. import _io, _schema, distributed as dist
from ..data import Splits
from ..models import count_params, save_checkpoint
from ..recipe import Recipe
from . import auto
from .losses import LossContext, build_loss
from .teachers import cache_teacher, recipe_teacher
from .train import FitConfig, Term, check_term_paths, evaluate_accuracy, fit, resolve_device


def build_terms(recipe: Recipe, num_classes: int, alpha: float | None = None,
                temperature: float | None = None) -> list[Term]:
    """The recipe's ``[[distill.losses]]`` as built loss modules (unknown names/params rejected), with ``alpha``
    and ``temperature`` as given, else the recipe's (a placeholder for "auto", for checks)."""
    cfg = recipe.distill
    values = auto.fixed(cfg)
    ctx = LossContext(alpha=values["alpha"] if alpha is None else alpha,
                      temperature=values["temperature"] if temperature is None else temperature,
                      num_classes=num_classes, batch_size=recipe.data.batch_size)
    terms = []
    for i, term in enumerate(cfg.losses):
        loss = build_loss(term.name, term.params, ctx, f"distill.losses[{i}]")
        name = term.name if sum(t.name == term.name for t in cfg.losses) == 1 else f"{term.name}{i}"
        terms.append(Term(name, loss, term.weight, term.warmup_epochs))
    return terms


def check_taps(recipe: Recipe, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Reject, before any stage runs, loss terms whose module paths are not in the recipe's student or
    teacher (ConfigError listing the valid paths), and teacher taps a black-box teacher cannot supply."""
    from ..models import build_model
    from ..student import student_spec

    student = build_model(*student_spec(recipe)[:2], input_shape, num_classes, "student")
    teacher = build_model(recipe.teacher.arch, recipe.teacher.params, input_shape, num_classes, "teacher")
    teacher = recipe_teacher(recipe.distill, teacher, input_shape, num_classes)  # extra teachers: outputs only
    check_term_paths(build_terms(recipe, num_classes), student, teacher, cached=recipe.distill.cache)


def distill(student: nn.Module, teacher: nn.Module, splits: Splits, recipe: Recipe,
            out_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None, task=None, log=None) -> dict:
    """Distill ``teacher`` into ``student`` in place; write ``model.pt``, ``curves.csv``, ``meta.json``.

    With ``distill.cache`` the teacher's soft labels are kept in ``cache_dir`` (default: ``teacher_cache``
    next to ``out_dir``, so a re-run of this stage or another student finds them), one sharded folder per
    teacher (an ensemble's members each have theirs); a teacher without classes (a sentence encoder) has its
    whole outputs kept. Under torchrun every rank builds its share of the shards on its own device, so
    ``cache_dir`` must be one folder every rank sees. ``meta.json``'s ``teacher_cache`` says its size, shards
    and whether it was a hit.
    ``task`` (see :mod:`edgedistill.tasks`) gives the validation metric of the curves; without one, top-1
    accuracy.
    """
    val_metric = task.val_metric if task is not None else _accuracy
    cfg = recipe.distill
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir.parent / "teacher_cache"
    fit_cfg = FitConfig.from_section(cfg, desc="distill", batch_size=recipe.data.batch_size, seed=recipe.seed,
                                     workers=recipe.data.workers)
    teacher = recipe_teacher(cfg, teacher, splits.input_shape, splits.num_classes)
    cache, cache_hit = None, None
    if cfg.cache:  # teacher outputs once (per member of an ensemble), as top-k fp16 soft labels in shards on disk,
        # reused every epoch and by later students
        device = resolve_device(cfg.device)
        cache, cache_hit = cache_teacher(cache_dir, teacher.to(device), splits.train, _schema.to_dict(recipe.data),
                                         temperature=_cache_temperature(cfg), k=cfg.cache_top_k, augmented=cfg.augment,
                                         dense=splits.num_classes == 0, log=log, device=device,
                                         shard_size=cfg.cache_shard_size, rank=dist.rank(), world=dist.world(),
                                         barrier=dist.barrier)
    # "auto" alpha / temperature: short runs from the untrained student, chosen on the validation split
    choice = auto.choose(student, splits.train, splits.val, cfg, fit_cfg,
                         lambda a, t: build_terms(recipe, splits.num_classes, a, t), out_dir / "auto",
                         teacher=teacher, teacher_cache=cache, evaluate=val_metric, log=log)
    terms = build_terms(recipe, splits.num_classes, choice.alpha, choice.temperature)
    result = fit(student, splits.train, fit_cfg, terms, out_dir, teacher=teacher, val=splits.val,
                 teacher_cache=cache, evaluate=val_metric)
    if choice.record.get("searched"):
        choice.record["share_of_stage_seconds"] = round(choice.record["seconds"] / (choice.record["seconds"]
                                                                                   + result.seconds), 4)
    if not dist.is_main():  # under torchrun rank 0 alone writes the stage's files
        return {}
    save_checkpoint(out_dir / "model.pt", student)
    meta = {
        "losses": [{"name": t.name, "weight": t.weight, "warmup_epochs": t.warmup_epochs} for t in terms],
        "settings": choice.record,
        "epochs": cfg.epochs, "seconds": round(result.seconds, 2), "samples_per_s": round(result.samples_per_s, 1),
        "processes": result.processes,
        "parameters": count_params(student), "test_metric_torch": dict(zip(("name", "value"), val_metric(student, splits.test))),
        "resumed_from": result.resumed_from, "final": result.history[-1] if result.history else {},
        "teacher_cache": None if cache is None else {**cache.report(), "hit": cache_hit},
    }
    _io.write_json(out_dir / "meta.json", meta)
    return meta


def _cache_temperature(cfg) -> float:
    """The temperature the cache stores soft labels at: the recipe's, or the grid's highest for "auto" (the cache
    gives the teacher's logits back up to a constant, and fp16 probabilities are most exact at the highest T)."""
    return max(auto.TEMPERATURES) if cfg.temperature == "auto" else cfg.temperature


def _accuracy(model: nn.Module, split, workers=None) -> tuple[str, float]:
    return "acc", evaluate_accuracy(model, split, workers=workers)

"""``distill.temperature = "auto"`` and ``distill.alpha = "auto"``: a short search on the validation split.

Distillation at the literature's ``T = 4`` lowers a small student's accuracy when every label is there
(``docs/distillation.md``), and helps a great deal when the teacher knows what the labels do not. Which case a
run is in is found by trying: every candidate of :func:`candidates` (the scratch-like end ``alpha = 1`` among
them) is trained briefly from the same untrained student with the recipe's own losses and optimiser, and the
one with the best validation metric is kept. The test split is never read.

The search costs ``distill.auto_budget`` of the distill stage's training samples (epochs x training set), shared
equally by the candidates: each trains whole epochs of the training set when its share allows, else one epoch
of a random subset of that size (the same subset for all). ``choose`` returns the chosen values and a record for
``meta.json`` and the report: every candidate's validation metric and seconds, the share actually spent.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import distributed as dist
from .losses import LOSSES
from .teachers import CachedTeacher
from .train import FitConfig, Term, fit

#: The grid: alpha is the hard-label weight (1 = labels only, the teacher ignored), T the softmax temperature.
ALPHAS = (1.0, 0.5, 0.1)
#: T = 4, the literature's default, is left out: it lowered small students' accuracy here (docs/distillation.md)
#: and came last in every search of benchmarks/results/distill_pays.json's first run.
TEMPERATURES = (1.0, 2.0)
#: Distillation is kept only when it beats labels only by this many standard errors of the difference of two
#: validation accuracies: a short run favours the dense soft labels early on, and a tie must not turn KD on.
MARGIN_SE = 2.0
#: What a loss reads while the values are still unknown (checks before any training build the losses once), and
#: what it reads when there is no validation split to choose on (KD at T = 2 was neutral for small students here).
PLACEHOLDER = {"alpha": 0.5, "temperature": 2.0}
#: Fewest samples a candidate trains on, whatever the budget (a run shorter than this chooses nothing).
MIN_SAMPLES = 512


@dataclass
class Choice:
    """What the search chose and the record of it (``meta.json``'s ``settings``)."""

    alpha: float
    temperature: float
    record: dict = field(default_factory=dict)


def reads(losses) -> set[str]:
    """Which of ``alpha`` / ``temperature`` the recipe's loss terms take from ``[distill]`` (a loss whose
    constructor has the parameter and whose term does not set it)."""
    found = set()
    for term in losses:
        params = inspect.signature(LOSSES.get(term.name)).parameters
        found |= {k for k in ("alpha", "temperature") if k in params and k not in term.params}
    return found


def fixed(cfg) -> dict[str, float]:
    """The recipe's values, with the placeholder for an "auto" one (for checks that build the losses)."""
    return {k: PLACEHOLDER[k] if getattr(cfg, k) == "auto" else float(getattr(cfg, k)) for k in PLACEHOLDER}


def to_search(cfg) -> list[str]:
    """The settings the search must choose: those set to "auto" that some loss term reads."""
    return [k for k in ("alpha", "temperature") if getattr(cfg, k) == "auto" and k in reads(cfg.losses)]


def candidates(cfg, searched: list[str]) -> list[dict[str, float]]:
    """The (alpha, temperature) pairs to try: the grid over the searched settings, the recipe's value for the
    other; ``alpha = 1`` ignores the teacher, so it is tried once, whatever the temperature."""
    base = fixed(cfg)
    alphas = ALPHAS if "alpha" in searched else (base["alpha"],)
    temps = TEMPERATURES if "temperature" in searched else (base["temperature"],)
    out = []
    for a in alphas:
        for t in (temps[:1] if a == 1.0 else temps):
            out.append({"alpha": a, "temperature": t})
    return out


def choose(student: nn.Module, train, val, cfg, fit_cfg: FitConfig, make_terms: Callable[[float, float], list[Term]],
           out_dir: Path, teacher=None, teacher_cache=None, evaluate=None, log=None) -> Choice:
    """Train each candidate briefly from a copy of the untrained ``student``, keep the best on ``val``.

    ``make_terms(alpha, temperature)`` builds the recipe's loss terms with those values; ``fit_cfg`` is the distill
    stage's (its epochs are replaced by the candidates'); ``evaluate`` is the task's validation metric (higher is
    better). With nothing to search (no loss reads an "auto" value, or ``distill.epochs`` is 0) the placeholders stand
    and nothing trains.
    """
    searched = to_search(cfg) if fit_cfg.epochs > 0 else []  # distill.epochs = 0: nothing trains, nothing to choose
    values = fixed(cfg)
    if not searched:  # "auto" stays "auto" in the record when no loss reads it
        return Choice(values["alpha"], values["temperature"], {"searched": [], "alpha": cfg.alpha,
                                                                "temperature": cfg.temperature})
    if val is None or len(val) == 0:  # nothing to choose on (the test split is never read): the placeholders
        why = ("no validation split to choose on (data.val_fraction = 0?): alpha {alpha:g}, T {temperature:g} used "
               "unchosen; give a validation split or set them as numbers").format(**values)
        if log is not None:
            log(f"[distill] auto: {why}")
        return Choice(values["alpha"], values["temperature"], {"searched": [], **values, "note": why})
    grid = candidates(cfg, searched)
    budget = cfg.auto_budget * max(1, fit_cfg.epochs) * len(train)  # training samples, all candidates together
    per = max(MIN_SAMPLES, int(budget / len(grid)))
    if per >= len(train):
        epochs, subset = max(1, min(fit_cfg.epochs, per // len(train))), None
        search_train = train
    else:  # one epoch of a random subset, the same for every candidate
        epochs = 1
        subset = np.sort(np.random.default_rng(fit_cfg.seed).choice(len(train), per, replace=False))
        search_train = train.subset(subset)
    search_teacher, search_cache = teacher, teacher_cache
    if teacher_cache is not None and subset is not None:  # the cache is looked up by position in the whole split
        search_teacher, search_cache = _AtPositions(teacher_cache, subset), None

    t0 = time.perf_counter()
    rows = []
    for i, c in enumerate(grid):
        model = copy.deepcopy(student)
        cfg_c = FitConfig(**{**fit_cfg.__dict__, "epochs": epochs, "checkpoint_every": 0,
                             "desc": f"auto {i + 1}/{len(grid)} alpha={c['alpha']:g} T={c['temperature']:g}"})
        t = time.perf_counter()
        result = fit(model, search_train, cfg_c, make_terms(c["alpha"], c["temperature"]), out_dir / f"candidate_{i}",
                     teacher=search_teacher, val=val, teacher_cache=search_cache, evaluate=evaluate)
        # rank 0 validates; a candidate resumed already finished has its curves on rank 0 alone (torchrun)
        name, value = _val_metric(dist.broadcast(result.history[-1] if dist.is_main() else None))
        rows.append({**c, f"val_{name}": value, "seconds": round(time.perf_counter() - t, 2)})
        if log is not None:
            log(f"[distill] auto: alpha {c['alpha']:g}, T {c['temperature']:g}: val {name} {value:.4f}")
    key = next(k for k in rows[0] if k.startswith("val_"))
    margin = _margin(rows, key, len(val))
    best = pick(rows, key, margin)
    chosen = {k: rows[best][k] for k in ("alpha", "temperature")}
    record = {"searched": searched, **chosen, "candidates": rows, "metric": key, "margin": margin,
              "epochs_per_candidate": epochs, "samples_per_epoch": len(search_train),
              "budget": cfg.auto_budget, "samples_share": round(len(grid) * epochs * len(search_train)
                                                                / (max(1, fit_cfg.epochs) * len(train)), 4),
              "seconds": round(time.perf_counter() - t0, 2)}
    if log is not None:
        log(f"[distill] auto: chose alpha {chosen['alpha']:g}, T {chosen['temperature']:g} "
            f"({key} {rows[best][key]:.4f}) in {record['seconds']:.0f} s")
    return Choice(chosen["alpha"], chosen["temperature"], record)


def pick(rows: list[dict], key: str, margin: float | None) -> int:
    """The chosen candidate: the best ``key`` (ties: the earlier), unless it distils and beats the labels-only
    candidate (``rows[0]``) by no more than ``margin``: then the labels alone."""
    best = max(range(len(rows)), key=lambda i: (rows[i][key], -i))
    if margin is not None and rows[best]["alpha"] < 1.0 and rows[best][key] - rows[0][key] <= margin:
        return 0
    return best


def _margin(rows: list[dict], key: str, n_val: int) -> float | None:
    """How much a distilled candidate must beat the labels-only one (``rows[0]``) by: ``MARGIN_SE`` standard errors
    of the difference of two accuracies on ``n_val`` samples. None when there is no labels-only candidate (alpha
    was given) or the metric is not an accuracy."""
    if rows[0]["alpha"] != 1.0 or key != "val_acc":
        return None
    p = min(max(rows[0][key], 1.0 / n_val), 1.0 - 1.0 / n_val)
    return round(MARGIN_SE * math.sqrt(2.0 * p * (1.0 - p) / n_val), 4)


def _val_metric(row: dict) -> tuple[str, float]:
    for k, v in row.items():
        if k.startswith("val_"):
            if not math.isfinite(v):
                break
            return k[4:], float(v)
    return "acc", float("-inf")  # a candidate that diverged or had no validation row loses


class _AtPositions(CachedTeacher):
    """The teacher cache read through a subset of the training split: position ``i`` of the subset is position
    ``positions[i]`` of the split the cache was built on."""

    def __init__(self, cache, positions: np.ndarray) -> None:
        super().__init__(cache)
        self.positions = torch.from_numpy(positions.astype(np.int64))

    def outputs(self, x, layers=(), index=None):
        return super().outputs(x, layers, self.positions[index.cpu()])


"""The training loop: one plain function for the teacher, a scratch student and distillation.

Read ``fit`` top to bottom: ``_setup`` turns whatever teacher was passed into one :class:`Teacher`,
checks every module path the losses read, builds the loss heads from a dry run, the optimiser and the
schedule; ``_resume`` restores the last checkpoint if there is one; then per epoch a fixed seeded
permutation of the training set and, per batch, ``_train_step``: the frozen teacher's outputs (eval +
no_grad, or the teacher cache's), every loss term weighted (with its warm-up ramp), a finite-loss
check, backward, clipping and a step. Each epoch ends with its ``curves.csv`` row (``_epoch_row``) and
an atomic checkpoint; mid-epoch checkpoints (``checkpoint_every``, Ctrl-C) keep the epoch's running
sums, so a resumed run ends with the same weights and curves as an uninterrupted one.

Under ``torchrun`` (see :mod:`edgedistill.distributed`) the same loop runs on every rank: each reads its share
of every global batch (``data.batch_size``) of the same seeded order, padded so every rank takes the same
number of steps; gradients are summed over samples and averaged over all of them across ranks after
``backward`` (``accumulate`` batches at a time), buffers are averaged, and the epoch's sums are reduced before
rank 0 alone validates, logs, writes the curves and the checkpoints.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from .. import _io, _signals, distributed as dist
from ..data import SampleSet
from ..data.loader import batches
from ..errors import ConfigError, StageError
from ..models.augment import TrainAugment
from .cache import SoftLabelCache, refuse_if_augmented
from .losses import DistillLoss
from .progress import Progress
from .teachers import CachedTeacher, NoTeacher, Teacher, as_teacher
from .taps import Taps, check_paths, dry_run_shapes
from ..models.core import model_forward, torch_save as _torch_save


@dataclass
class Term:
    """One weighted loss of the recipe, built and ready."""

    name: str
    loss: DistillLoss
    weight: float = 1.0
    warmup_epochs: int = 0

    def scale(self, epoch: int, progress: float) -> float:
        """Linear warm-up ramp from 0 to ``weight`` over ``warmup_epochs``."""
        if self.warmup_epochs <= 0:
            return self.weight
        return self.weight * min(1.0, (epoch + progress) / self.warmup_epochs)


@dataclass
class FitConfig:
    epochs: int
    lr: float
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    #: Mixed precision: "bf16" (CPU or GPU) or "fp16" (GPU, with loss scaling); "off" keeps fp32.
    amp: str = "off"
    #: Batches whose gradients add up before each optimiser step.
    accumulate: int = 1
    checkpoint_every: int = 0
    desc: str = "train"
    #: Random shifts and flips applied to each batch before the teacher and the student see it, so both
    #: read the same view (consistent teaching); images [N, C, H, W] only.
    augment: bool = False
    #: DataLoader worker processes (None: the data source decides, see ``data.loader.auto_workers``).
    workers: Optional[int] = None
    #: Share of the steps over which the learning rate ramps up linearly from 0 (transformers need it).
    warmup: float = 0.0
    #: Gradients are clipped to this total norm when set.
    clip_grad_norm: Optional[float] = None

    @classmethod
    def from_section(cls, section, *, desc: str, batch_size: int, seed: int, workers: Optional[int],
                     **overrides) -> "FitConfig":
        """The config of a fit from a recipe section (``[teacher]``, ``[distill]``, ``[qat]``): each of
        :data:`SECTION_FIELDS` the section has, then ``overrides`` (what the section lacks or the caller
        decides, e.g. ``epochs`` or ``device``); the run's ``batch_size``, ``seed`` and ``workers`` and the
        progress label ``desc`` always come from the caller."""
        fields = {k: getattr(section, k) for k in SECTION_FIELDS if hasattr(section, k)}
        return cls(**{**fields, **overrides}, desc=desc, batch_size=batch_size, seed=seed, workers=workers)


#: The FitConfig fields a recipe section may set under the same name.
SECTION_FIELDS = ("epochs", "lr", "weight_decay", "optimizer", "scheduler", "device", "amp", "accumulate",
                  "checkpoint_every", "augment", "warmup", "clip_grad_norm")


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_s: float = 0.0
    resumed_from: Optional[dict] = None
    processes: int = 1  # how many ranks trained together (torchrun)


def resolve_device(name: str) -> torch.device:
    """``distill.device`` for this process: ``auto`` is CUDA when there (``cuda:LOCAL_RANK`` under torchrun)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("distill.device: 'cuda' was asked for but no CUDA device is available; use 'auto' or 'cpu'.")
    return dist.device(name)


def fit(model: nn.Module, train: SampleSet, cfg: FitConfig, terms: list[Term], out_dir: str | os.PathLike,
        teacher: Optional[nn.Module | Teacher | Callable] = None, val: Optional[SampleSet] = None,
        teacher_cache: Optional[SoftLabelCache] = None,
        evaluate: Optional[Callable[..., tuple[str, float]]] = None) -> FitResult:
    """Train ``model`` on ``train`` with the weighted ``terms``; checkpoints and curves go to ``out_dir``.

    ``teacher`` is an ``nn.Module`` or a TorchTeacher (white box: its layers can be tapped), another
    :class:`Teacher` (ONNX, callable, ensemble: outputs only) or any callable ``x -> logits``; None for a
    scratch run or for self-distillation; it becomes one :class:`Teacher` here (``as_teacher``).
    ``teacher_cache`` (see :mod:`.cache`), when given, replaces the teacher's forward by a lookup of its
    stored top-k soft labels, indexed by the sample's position in ``train``.
    ``evaluate(model, val, workers) -> (name, value)`` gives the curves' ``val_<name>`` column (default:
    top-1 accuracy, ``val_acc``).
    """
    out_dir = Path(out_dir)
    ckpt_path, curves_path = out_dir / "checkpoints" / "last.pt", out_dir / "curves.csv"
    run = _setup(model, train, cfg, terms, teacher, teacher_cache)
    result = FitResult(processes=dist.world())
    # Resume (rank 0 reads the checkpoint, every rank gets it): model, loss heads, optimiser, schedule, RNG and
    # the position in the epoch.
    start_epoch, start_step, partial = _resume(run, ckpt_path)
    if (start_epoch, start_step) != (0, 0):
        result.history = _read_curves(curves_path) if dist.is_main() else []
        result.resumed_from = {"epoch": start_epoch, "step": start_step}

    t_start, seen = time.perf_counter(), 0
    progress = Progress(cfg.desc, cfg.epochs, run.steps_per_epoch, quiet=not dist.is_main())
    with _Files() as files:  # every checkpoint and curves file is in place when this block is left
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            order = _epoch_order(len(train), cfg, epoch)
            tally = _Tally.start(terms, start_step, cfg.batch_size, partial)
            # Batches are read from the source as the epoch goes (worker processes decode ahead of the step);
            # under torchrun each rank reads its share of every batch.
            loader = batches(train, cfg.batch_size, order, start_step, cfg.workers,
                             pin_memory=run.device.type == "cuda",
                             part=(dist.rank(), dist.world()) if dist.active() else (0, 1))
            progress.epoch(epoch, start_step)
            for step, (xb, yb, idx) in zip(range(start_step, run.steps_per_epoch), loader):
                xb, yb = _to_device(run, xb, yb)
                losses, logits, stop = _train_step(run, xb, yb, idx, epoch, step)
                tally.add(losses, logits, yb)
                seen += len(idx)
                progress.step(step, len(idx) * dist.world(), tally.running_loss)
                if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                        and step + 1 < run.steps_per_epoch and run.at_boundary(step):
                    _save(files, ckpt_path, run, epoch, step + 1, tally)
                if stop:  # Ctrl-C (on any rank): a clean point, after a whole optimiser step
                    _save(files, ckpt_path, run, epoch, step + 1, tally)
                    raise _signals.Interrupted(f"epoch {epoch + 1}, step {step + 1}", str(ckpt_path))
            result.history.append(_epoch_row(run, tally, epoch, len(order), val, evaluate, cfg))
            start_step, partial = 0, None
            if dist.is_main():
                _write_curves(files, curves_path, result.history)
            _save(files, ckpt_path, run, epoch + 1, 0)
        progress.close()
        if not result.history and dist.is_main():  # no epoch to run (epochs = 0): the curves file still says so
            _write_curves(files, curves_path, [])
    if not (dist.same_weights(model) and dist.same_weights(run.losses)):
        raise StageError(f"{cfg.desc}: the {dist.world()} processes ended with different weights; please report it "
                         "with the recipe (set distill.device and the data identically on every machine).")
    result.seconds = time.perf_counter() - t_start
    result.samples_per_s = seen * dist.world() / result.seconds if result.seconds > 0 else 0.0
    model.to("cpu").eval()
    return result


def _epoch_order(n: int, cfg: FitConfig, epoch: int) -> np.ndarray:
    """The epoch's order: a permutation that depends only on (seed, epoch), so a resumed run sees the same
    batches. Under torchrun it is padded (with its own first samples, as ``DistributedSampler`` pads) until the
    last batch has a sample for every rank, so every rank takes the same number of steps."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch)).numpy()
    pad = 0
    while 0 < (n + pad) % cfg.batch_size < dist.world():
        pad += 1
    return np.concatenate([order, np.resize(order, pad)]) if pad else order


@dataclass
class _Run:
    """What ``fit`` sets up once and every step reads."""

    model: nn.Module
    teacher: Teacher
    terms: list[Term]
    losses: nn.ModuleList  # the terms as modules: their heads train and are checkpointed with the model
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    s_paths: list[str]  # the student's and the teacher's tapped module paths
    t_paths: list[str]
    shares: Optional[list[float]]  # teacher_mix = "losses": each loss that reads the teacher runs per teacher
    device: torch.device
    use_amp: bool
    amp_dtype: torch.dtype
    scaler: torch.amp.GradScaler
    augment: Optional[TrainAugment]
    clip_grad_norm: Optional[float]
    accumulate: int = 1
    weighted: bool = False  # gradients summed over samples, then divided by all samples (several ranks, accumulate)
    window: float = 0.0     # samples in the current accumulation window, on this rank

    def at_boundary(self, step: int) -> bool:
        """Whether an optimiser step follows this batch (every ``accumulate`` batches, and at the epoch's end)."""
        return (step + 1) % self.accumulate == 0 or step + 1 == self.steps_per_epoch


def _setup(model: nn.Module, train: SampleSet, cfg: FitConfig, terms: list[Term], teacher,
           teacher_cache: Optional[SoftLabelCache]) -> _Run:
    """The teacher as one :class:`Teacher`, every tap checked before any training, the loss heads built
    from a dry run, the models on the device, the optimiser and the learning-rate schedule."""
    device = resolve_device(cfg.device)
    if cfg.batch_size < dist.world():
        raise ConfigError(f"data.batch_size: {cfg.batch_size} is smaller than the {dist.world()} processes that share "
                          "each batch; make it at least the process count.")
    torch.manual_seed(cfg.seed)
    teacher = as_teacher(teacher)
    if not any(t.loss.needs_teacher for t in terms):  # scratch / self-distillation: the teacher never runs
        teacher, teacher_cache = NoTeacher(), None
    check_term_paths(terms, model, teacher, cached=teacher_cache is not None)
    if teacher_cache is not None:  # stored soft labels stand in for the teacher's forward
        refuse_if_augmented(cfg.augment)
        if len(teacher_cache) != len(train):
            raise StageError(f"teacher cache: it holds {len(teacher_cache)} samples but the training split has "
                             f"{len(train)}; rebuild the cache for this data.")
        teacher = CachedTeacher(teacher_cache)
    teacher.to(device)
    s_paths = sorted({p for t in terms for p in t.loss.student_layers()})
    t_paths = sorted({p for t in terms for p in t.loss.teacher_layers()})

    # A dry run on two real samples tells the tapped shapes the loss heads are built for.
    example = _as_batch(train.read(np.arange(min(len(train), 2))))
    s_shapes = dry_run_shapes(model, s_paths, example)
    t_shapes = teacher.output_shapes(example.to(device) if isinstance(example, torch.Tensor) else example, t_paths)
    for t in terms:
        t.loss.build(s_shapes, t_shapes)
    model.to(device)
    losses = nn.ModuleList([t.loss for t in terms]).to(device)
    dist.sync_module_(model, losses)  # every rank starts from rank 0's weights

    params = list(model.parameters()) + list(losses.parameters())
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(_epoch_order(len(train), cfg, 0)) / cfg.batch_size))
    optimiser_steps = -(-steps_per_epoch // cfg.accumulate)  # the schedule counts optimiser steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg.scheduler, max(1, optimiser_steps * cfg.epochs),
                                                                cfg.warmup))
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ConfigError("distill.amp: 'fp16' needs a CUDA device (its loss scaling is CUDA's); use 'bf16' on the CPU.")
    use_amp = cfg.amp in ("bf16", "fp16")
    return _Run(model, teacher, terms, losses, params, opt, sched, steps_per_epoch, s_paths, t_paths,
                teacher.shares(), device, use_amp, torch.float16 if cfg.amp == "fp16" else torch.bfloat16,
                torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16"),
                TrainAugment().to(device) if cfg.augment else None, cfg.clip_grad_norm, cfg.accumulate,
                weighted=dist.active() or cfg.accumulate > 1)


def _resume(run: _Run, ckpt_path: Path) -> tuple[int, int, Optional[dict]]:
    """Restore the model, loss heads, optimiser, schedule and RNG from ``ckpt_path`` when it exists (rank 0 reads
    it; every rank gets it); return the epoch and step to go on from and the interrupted epoch's running sums
    (None at an epoch's end). (0, 0, None) when there is nothing to resume."""
    state = dist.broadcast(_load_resume_state(ckpt_path) if dist.is_main() and ckpt_path.exists() else None)
    if state is None:
        return 0, 0, None
    run.model.load_state_dict(state["model"])
    run.losses.load_state_dict(state["losses"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    rng = state["rng"]  # one state per rank (a single one: a checkpoint of one process)
    torch.set_rng_state(rng[dist.rank() % len(rng)] if isinstance(rng, list) else rng)
    return int(state["epoch"]), int(state["step"]), state.get("partial")


def _to_device(run: _Run, xb, yb: torch.Tensor):
    """The batch on the device, augmented when asked: one view, read by the teacher and the student alike."""
    yb = yb.to(run.device, non_blocking=True)
    if isinstance(xb, torch.Tensor):  # texts stay texts: each model tokenises them its own way
        xb = xb.to(run.device, non_blocking=True)
    if run.augment is not None:
        xb = run.augment(xb)
    return xb, yb


def _train_step(run: _Run, xb, yb: torch.Tensor, idx: torch.Tensor, epoch: int,
                step: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One batch: forward, backward and, at the end of an accumulation window, the optimiser step; returns each
    term's value and the weighted total in one detached vector (the order of the tally's sums), the student's
    logits and whether to stop here (Ctrl-C on any rank, asked at an optimiser step)."""
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.use_amp):
        with torch.no_grad():  # the teacher is frozen (or the cache answers for it)
            teacher_out = run.teacher.outputs(xb, run.t_paths, idx)
        with Taps(run.model, run.s_paths) as taps:
            student_out = taps.collect(model_forward(run.model, xb))
        total = student_out["logits"].new_zeros(())
        values = {}
        for t in run.terms:
            value = _term_value(t, student_out, teacher_out, yb, run.shares)
            values[t.name] = value.detach()
            total = total + t.scale(epoch, step / run.steps_per_epoch) * value
    losses = torch.cat([v.reshape(1) for v in values.values()] + [total.detach().reshape(1)])
    # One host sync checks every term (a check per term was a sync each); only a failed step is looked at term by term.
    if not bool(torch.isfinite(losses[:-1]).all()):
        name, value = next((k, v) for k, v in values.items() if not torch.isfinite(v))
        raise StageError(f"distill: loss {name!r} became {value.item()} at epoch {epoch + 1}, step {step + 1}; "
                         "lower the learning rate or this term's weight.")
    if step % run.accumulate == 0:
        run.opt.zero_grad(set_to_none=True)
        run.window = 0.0
    n = len(yb)
    run.window += n
    # Weighted: the gradient of the batch's summed loss, divided below by every sample of the window on every rank.
    run.scaler.scale(total * n if run.weighted else total).backward()
    if not run.at_boundary(step):
        return losses, student_out["logits"].detach(), False
    stops = float(_signals.stop_requested())
    if run.weighted:  # one all-reduce: gradients, BatchNorm statistics (QAT observers), samples, Ctrl-C
        _, [stops] = dist.reduce_step_(run.params, (run.model, run.losses), run.window, [stops])
    if run.clip_grad_norm is not None:
        run.scaler.unscale_(run.opt)
        torch.nn.utils.clip_grad_norm_(run.params, run.clip_grad_norm)
    run.scaler.step(run.opt)
    run.scaler.update()
    run.sched.step()
    return losses, student_out["logits"].detach(), stops > 0


#: Steps whose numbers a tally keeps on the device before it adds them up (one host sync for that many steps).
FOLD_STEPS = 64


@dataclass
class _Tally:
    """An epoch's running sums (per-sample weighted); a mid-epoch checkpoint keeps them, so the row of a
    resumed epoch is exact. A step adds its numbers without a host sync: they wait on the device and are added
    to the sums (in order, as Python floats: the same sums as one step at a time) when read, or every
    ``FOLD_STEPS`` steps."""

    sums: dict[str, float]
    correct: int = 0
    count: int = 0
    skipped: int = 0  # samples of a resumed epoch whose sums were not kept (a checkpoint without them)
    pending: list = field(default_factory=list)  # (losses, predicted classes, labels) of the steps not added yet
    added: int = 0  # samples added by this process (the progress line's running loss)
    total_before: float = 0.0  # the total the resumed checkpoint carried

    @classmethod
    def start(cls, terms: list[Term], start_step: int, batch_size: int, partial: Optional[dict]) -> "_Tally":
        if start_step and partial:  # the sums over every rank: rank 0 carries them on, the others start at 0
            if dist.is_main():
                return cls(dict(partial["sums"]), int(partial["correct"]), int(partial["count"]),
                           total_before=partial["sums"]["total"])
            return cls({k: 0.0 for k in partial["sums"]})
        return cls({**{t.name: 0.0 for t in terms}, "total": 0.0}, skipped=start_step * batch_size)

    def add(self, losses: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one step: ``losses`` holds each term's value and the total, in the order of ``sums``."""
        self.pending.append((losses, logits.argmax(1), labels))
        if len(self.pending) >= FOLD_STEPS:
            self.fold()

    def fold(self) -> None:
        """Add the waiting steps to the sums: one transfer from the device."""
        if not self.pending:
            return
        losses, predicted, labels = zip(*self.pending)
        self.pending = []
        for row, n in zip(torch.stack(losses).tolist(), map(len, labels)):
            for k, v in zip(self.sums, row):
                self.sums[k] += v * n
        predicted, labels = torch.cat(predicted), torch.cat(labels)
        # Unlabelled samples (-1) count in no accuracy: no class matches them, and the count leaves them out.
        correct, count = torch.stack([(predicted == labels).sum(), (labels >= 0).sum()]).tolist()
        self.correct, self.count, self.added = self.correct + correct, self.count + count, self.added + len(labels)

    def running_loss(self) -> float:
        """The mean loss per sample of the steps this process has taken in the epoch (read by a progress line)."""
        self.fold()
        return (self.sums["total"] - self.total_before) / max(self.added, 1)

    def state(self) -> dict:
        self.fold()
        return {"sums": dict(self.sums), "correct": self.correct, "count": self.count}

    def reduced(self) -> "_Tally":
        """The sums over every rank (the same tally on one process)."""
        self.fold()
        keys = list(self.sums)
        *sums, correct, count = dist.sum_([self.sums[k] for k in keys] + [self.correct, self.count])
        return _Tally(dict(zip(keys, sums)), int(correct), int(count), self.skipped)


def _epoch_row(run: _Run, tally: _Tally, epoch: int, n_train: int, val: Optional[SampleSet],
               evaluate: Optional[Callable[..., tuple[str, float]]], cfg: FitConfig) -> dict:
    """The epoch's ``curves.csv`` row: mean losses per sample, train accuracy, learning rate, validation; over
    every rank, validated by rank 0 alone and given to the others."""
    tally = tally.reduced()
    if not dist.is_main():
        return dist.broadcast(None)
    n_epoch = max(1, n_train - tally.skipped)
    row = {"epoch": epoch + 1, **{f"loss_{k}": v / n_epoch for k, v in tally.sums.items()},
           "train_acc": tally.correct / tally.count if tally.count else float("nan"),
           "lr": run.opt.param_groups[0]["lr"]}
    if val is not None and len(val) > 0:
        if evaluate is None:
            row["val_acc"] = evaluate_accuracy(run.model, val, cfg.batch_size * 4, run.device, cfg.workers)
        else:
            name, value = evaluate(run.model, val, cfg.workers)
            row[f"val_{name}"] = value
    return dist.broadcast(row)


def lr_schedule(kind: str, total_steps: int, warmup: float = 0.0) -> Callable[[int], float]:
    """The learning-rate factor at step ``s``: a linear warm-up over ``warmup`` of the steps, then
    cosine or linear decay to 0, or constant."""
    warm = int(round(warmup * total_steps))

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        done = min(max(s - warm, 0), total_steps - warm) / max(1, total_steps - warm)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * done))
        return 1.0 - done if kind == "linear" else 1.0

    return factor


def _as_batch(x):
    """A batch read from a SampleSet as the loader gives it: arrays as tensors, texts as they are."""
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


def check_term_paths(terms: list[Term], model: nn.Module, teacher, cached: bool = False) -> None:
    """Reject, before any training, module paths that do not exist, teacher taps nobody can supply, and
    per-teacher losses (``teacher_mix = "losses"``) that cannot be had. ``cached``: the teacher cache will
    stand in for ``teacher`` (any teacher :func:`as_teacher` takes)."""
    teacher = as_teacher(teacher)
    if teacher.shares() is not None:
        if cached:
            raise ConfigError("distill.teacher_mix: 'losses' needs each teacher's own outputs, but the teacher cache "
                              "stores the averaged ones; set cache = false or teacher_mix = \"logits\".")
        for i, t in enumerate(terms):
            if t.loss.needs_teacher and next(t.loss.buffers(), None) is not None:
                raise ConfigError(f"distill.losses[{i}]: loss {t.name!r} keeps state between steps (e.g. CRD's "
                                  "queue), so it cannot run once per teacher; set distill.teacher_mix = \"logits\".")
    for i, t in enumerate(terms):
        check_paths(model, t.loss.student_layers(), f"distill.losses[{i}].params.student_layer")
    for i, t in enumerate(terms):
        layers = t.loss.teacher_layers()
        if not layers:
            continue
        if teacher.tappable and not cached:
            check_paths(teacher.model, layers, f"distill.losses[{i}].params.teacher_layer")
            continue
        what = CachedTeacher.described if cached else teacher.described
        raise ConfigError(
            f"distill.losses[{i}]: loss {t.name!r} reads teacher layer(s) {', '.join(layers)}, but there is {what}; "
            "use an output loss (kd, dkd, or teacher_layer = \"logits\") or a PyTorch teacher."
        )


def _term_value(term: Term, student_out: dict, teacher_out: dict, labels: torch.Tensor,
                shares: Optional[list[float]]) -> torch.Tensor:
    """One term's loss; with per-teacher ``shares`` a loss that reads the teacher is computed against each
    teacher's own logits and the results are averaged, ``sum_i share_i * L(s, t_i)``."""
    if shares is None or not term.loss.needs_teacher:
        return term.loss(student_out, teacher_out, labels)
    return sum(w * term.loss(student_out, {"logits": teacher_out[f"logits@{i}"]}, labels)
               for i, w in enumerate(shares))


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, split: SampleSet, batch_size: int = 256, device: torch.device | str = "cpu",
                      workers: Optional[int] = None) -> float:
    """Top-1 accuracy in PyTorch (for curves; the verify stage measures artifacts through ONNX Runtime)."""
    was_training = model.training
    model.eval()
    correct = 0
    for xb, yb, _ in batches(split, batch_size, workers=workers):
        xb = xb.to(device) if isinstance(xb, torch.Tensor) else xb
        correct += int((model_forward(model, xb).argmax(1).cpu() == yb).sum())
    model.train(was_training)
    return correct / max(1, len(split))


def _load_resume_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, corrupted or not a checkpoint at all
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise StageError(f"{path}: the checkpoint to resume from is unreadable ({detail}); delete it to restart "
                         "this stage from its beginning, or run without --resume.") from None


class _Files:
    """Where fit writes its checkpoints and curves: each file is written at once, and its commit (fsync, then rename
    into place: ~6 ms a file on this machine's disk, an eighth of a tiny model's step) runs on one background thread,
    in order, while training goes on. Leaving the ``with`` block waits for every commit and raises the first that
    failed."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="edgedistill-commit")
        self.commits: list[Future] = []

    def write(self, path: Path, write: Callable[[str], None]) -> None:
        for done in self.commits:  # an earlier commit's failure stops the run here, not at the end
            if done.done() and done.exception() is not None:
                raise done.exception()
        _io.atomic_write(path, write, defer=lambda commit: self.commits.append(self.pool.submit(commit)))

    def __enter__(self) -> "_Files":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)
        for done in self.commits:
            done.result()


def _save(files: _Files, path: Path, run: _Run, epoch: int, step: int, tally: Optional[_Tally] = None) -> None:
    """An atomic checkpoint at (epoch, step), written by rank 0 with every rank's RNG state; mid-epoch, with the
    epoch's running sums over every rank. Every rank calls it (the sums and RNG states are gathered)."""
    partial = tally.reduced().state() if tally is not None else None
    rngs = dist.gather(torch.get_rng_state())
    if not dist.is_main():
        return
    state = {"model": run.model.state_dict(), "losses": run.losses.state_dict(), "optimizer": run.opt.state_dict(),
             "scheduler": run.sched.state_dict(), "rng": rngs if dist.active() else rngs[0], "epoch": epoch,
             "step": step}
    if partial is not None:
        state["partial"] = partial
    files.write(path, lambda tmp: _torch_save(state, tmp))


def _write_curves(files: _Files, path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    files.write(path, lambda tmp: Path(tmp).write_bytes(data))


def _read_curves(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: (float(v) if k != "epoch" else int(v)) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]

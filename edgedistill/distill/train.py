"""The training loop: one plain function for the teacher, a scratch student and distillation.

Read top to bottom: build the optimiser and schedule, resume from the last checkpoint if there is
one, then per epoch a fixed seeded permutation of the training set, the frozen teacher's outputs
(eval + no_grad), every loss term weighted (with its warm-up ramp), a finite-loss check, a step,
and an atomic checkpoint. Per-term losses and accuracies go to ``curves.csv``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from .. import _io, _signals
from ..data import SampleSet
from ..data.loader import batches
from ..errors import ConfigError, StageError
from ..models.augment import TrainAugment
from .cache import SoftLabelCache, refuse_if_augmented
from .losses import DistillLoss
from .progress import Progress
from .teachers import CallableTeacher, EnsembleTeacher, Teacher, TorchTeacher
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
    amp: bool = False
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


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_s: float = 0.0
    resumed_from: Optional[dict] = None


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("distill.device: 'cuda' was asked for but no CUDA device is available; use 'auto' or 'cpu'.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fit(model: nn.Module, train: SampleSet, cfg: FitConfig, terms: list[Term], out_dir: str | os.PathLike,
        teacher: Optional[nn.Module | Teacher | Callable] = None, val: Optional[SampleSet] = None,
        teacher_cache: Optional[SoftLabelCache] = None,
        evaluate: Optional[Callable[..., tuple[str, float]]] = None) -> FitResult:
    """Train ``model`` on ``train`` with the weighted ``terms``; checkpoints and curves go to ``out_dir``.

    ``teacher`` is an ``nn.Module`` (white box: its layers can be tapped), a :class:`Teacher` wrapper
    (ONNX, callable, ensemble: outputs only) or any callable ``x -> logits``; None for a scratch run or
    for self-distillation. ``teacher_cache`` (see :mod:`.cache`), when given, replaces the teacher's
    forward by a lookup of its stored top-k soft labels, indexed by the sample's position in ``train``.
    ``evaluate(model, val, workers) -> (name, value)`` gives the curves' ``val_<name>`` column (default:
    top-1 accuracy, ``val_acc``).
    """
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    teacher = as_teacher(teacher)
    if not any(t.loss.needs_teacher for t in terms):  # scratch / self-distillation: the teacher never runs
        teacher, teacher_cache = None, None

    # Taps: every module path a loss reads, checked against the models before any training.
    check_term_paths(terms, model, teacher, cached=teacher_cache is not None)
    s_paths = sorted({p for t in terms for p in t.loss.student_layers()})
    t_paths = sorted({p for t in terms for p in t.loss.teacher_layers()})
    if teacher_cache is not None:
        refuse_if_augmented(cfg.augment)
    # teacher_mix = "losses": each loss that reads the teacher runs once per teacher (see _term_value)
    shares = teacher.shares() if isinstance(teacher, EnsembleTeacher) and teacher.mix == "losses" else None
    if teacher_cache is not None and len(teacher_cache) != len(train):
        raise StageError(f"teacher cache: it holds {len(teacher_cache)} samples but the training split has "
                         f"{len(train)}; rebuild the cache for this data.")

    example = _as_batch(train.read(np.arange(min(len(train), 2))))
    s_shapes = dry_run_shapes(model, s_paths, example)
    if teacher_cache is not None:
        t_shapes = {k: v.shape for k, v in teacher_cache.teacher_outputs(torch.arange(len(example))).items()}
    elif isinstance(teacher, nn.Module):
        t_shapes = dry_run_shapes(teacher, t_paths, example)
    else:  # a black box: one call tells the output shapes; None: nothing to read
        t_shapes = {k: v.shape for k, v in _teacher_forward(teacher, [], example).items()}
    for t in terms:
        t.loss.build(s_shapes, t_shapes)

    model.to(device)
    loss_modules = nn.ModuleList([t.loss for t in terms]).to(device)
    if isinstance(teacher, nn.Module):
        teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    params = list(model.parameters()) + list(loss_modules.parameters())
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train) / cfg.batch_size))
    total_steps = max(1, steps_per_epoch * cfg.epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(cfg.scheduler, total_steps, cfg.warmup))

    result = FitResult()
    start_epoch, start_step, partial = 0, 0, None
    if ckpt_path.exists():  # resume: model, loss heads, optimiser, schedule, RNG and the position in the epoch
        state = _load_resume_state(ckpt_path)
        model.load_state_dict(state["model"])
        loss_modules.load_state_dict(state["losses"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, start_step = int(state["epoch"]), int(state["step"])
        partial = state.get("partial")  # the interrupted epoch's running sums, so its curves row is exact
        result.history = _read_curves(out_dir / "curves.csv")
        result.resumed_from = {"epoch": start_epoch, "step": start_step}

    augment = TrainAugment().to(device) if cfg.augment else None
    amp_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    t_start, seen = time.perf_counter(), 0
    progress = Progress(cfg.desc, cfg.epochs, steps_per_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        # The epoch's order depends only on (seed, epoch): a resumed run sees the same batches.
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch)).numpy()
        sums: dict[str, float] = {t.name: 0.0 for t in terms}
        sums["total"], correct, count = 0.0, 0, 0
        skipped = start_step * cfg.batch_size
        if start_step and partial:
            sums, correct, count, skipped = dict(partial["sums"]), int(partial["correct"]), int(partial["count"]), 0
        # Batches are read from the source as the epoch goes (worker processes decode ahead of the step).
        loader = batches(train, cfg.batch_size, order, start_step, cfg.workers, pin_memory=device.type == "cuda")
        progress.epoch(epoch, start_step)
        for step, (xb, yb, idx) in zip(range(start_step, steps_per_epoch), loader):
            yb = yb.to(device, non_blocking=True)
            if isinstance(xb, torch.Tensor):  # texts stay texts: each model tokenises them its own way
                xb = xb.to(device, non_blocking=True)
            if augment is not None:  # one view, read by the teacher and the student alike
                xb = augment(xb)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                if teacher_cache is not None:  # stored soft labels: the teacher does not run
                    teacher_out = teacher_cache.teacher_outputs(idx, xb, device)
                else:
                    teacher_out = _teacher_forward(teacher, t_paths, xb)
                with Taps(model, s_paths) as taps:
                    student_out = taps.collect(model_forward(model, xb))
                total = student_out["logits"].new_zeros(())
                values = {}
                for t in terms:
                    value = _term_value(t, student_out, teacher_out, yb, shares)
                    if not torch.isfinite(value):
                        raise StageError(f"distill: loss {t.name!r} became {value.item()} at epoch {epoch + 1}, step "
                                         f"{step + 1}; lower the learning rate or this term's weight.")
                    values[t.name] = value.detach()
                    total = total + t.scale(epoch, step / steps_per_epoch) * value
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if cfg.clip_grad_norm is not None:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
            scaler.step(opt)
            scaler.update()
            sched.step()
            n = len(idx)
            for k, v in values.items():
                sums[k] += float(v) * n
            step_loss = float(total.detach())
            sums["total"] += step_loss * n
            mask = yb >= 0
            correct += int((student_out["logits"].detach().argmax(1)[mask] == yb[mask]).sum())
            count += int(mask.sum())
            seen += n
            progress.step(step, n, step_loss)
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                _save(ckpt_path, model, loss_modules, opt, sched, epoch, step + 1, (sums, correct, count))
            if _signals.stop_requested():  # Ctrl-C: a clean point, after a whole step
                _save(ckpt_path, model, loss_modules, opt, sched, epoch, step + 1, (sums, correct, count))
                raise _signals.Interrupted(f"epoch {epoch + 1}, step {step + 1}", str(ckpt_path))
        n_epoch = max(1, len(train) - skipped)
        row = {"epoch": epoch + 1, **{f"loss_{k}": v / n_epoch for k, v in sums.items()},
               "train_acc": correct / count if count else float("nan"), "lr": opt.param_groups[0]["lr"]}
        if val is not None and len(val) > 0:
            if evaluate is None:
                row["val_acc"] = evaluate_accuracy(model, val, cfg.batch_size * 4, device, cfg.workers)
            else:
                name, value = evaluate(model, val, cfg.workers)
                row[f"val_{name}"] = value
        result.history.append(row)
        start_step = 0
        _write_curves(out_dir / "curves.csv", result.history)
        _save(ckpt_path, model, loss_modules, opt, sched, epoch + 1, 0)
    progress.close()
    if not result.history:  # no epoch to run (epochs = 0): the curves file still says so
        _write_curves(out_dir / "curves.csv", [])
    result.seconds = time.perf_counter() - t_start
    result.samples_per_s = seen / result.seconds if result.seconds > 0 else 0.0
    model.to("cpu").eval()
    return result


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


def as_teacher(teacher) -> Optional[nn.Module | Teacher]:
    """An ``nn.Module`` stays as it is (white box); a TorchTeacher gives its module; a plain callable is wrapped."""
    if teacher is None or isinstance(teacher, nn.Module):
        return teacher
    if isinstance(teacher, TorchTeacher):
        return teacher.model
    if isinstance(teacher, Teacher):
        return teacher
    return CallableTeacher(teacher)


def check_term_paths(terms: list[Term], model: nn.Module, teacher, cached: bool = False) -> None:
    """Reject, before any training, module paths that do not exist, teacher taps nobody can supply, and
    per-teacher losses (``teacher_mix = "losses"``) that cannot be had."""
    if isinstance(teacher, EnsembleTeacher) and teacher.mix == "losses":
        if cached:
            raise ConfigError("distill.teacher_mix: 'losses' needs each teacher's own outputs, but the teacher cache "
                              "stores the averaged ones; set cache = false or teacher_mix = \"logits\".")
        for i, t in enumerate(terms):
            if t.loss.needs_teacher and next(t.loss.buffers(), None) is not None:
                raise ConfigError(f"distill.losses[{i}]: loss {t.name!r} keeps state between steps (e.g. CRD's "
                                  "queue), so it cannot run once per teacher; set distill.teacher_mix = \"logits\".")
    for i, t in enumerate(terms):
        check_paths(model, t.loss.student_layers(), f"distill.losses[{i}].params.student_layer")
    if isinstance(teacher, nn.Module) and not cached:
        for i, t in enumerate(terms):
            check_paths(teacher, t.loss.teacher_layers(), f"distill.losses[{i}].params.teacher_layer")
        return
    for i, t in enumerate(terms):
        if not t.loss.teacher_layers():
            continue
        if cached:
            what = "the teacher cache, which stores outputs only"
        elif teacher is None:
            what = "no teacher (a scratch or self-distillation run)"
        else:
            what = f"{'an' if teacher.kind[0] in 'AEIOU' else 'a'} {teacher.kind} teacher, which supplies outputs only"
        raise ConfigError(
            f"distill.losses[{i}]: loss {t.name!r} reads teacher layer(s) {', '.join(t.loss.teacher_layers())}, but "
            f"there is {what}; use an output loss (kd, dkd, or teacher_layer = \"logits\") or a PyTorch teacher."
        )


def _term_value(term: Term, student_out: dict, teacher_out: dict, labels: torch.Tensor,
                shares: Optional[list[float]]) -> torch.Tensor:
    """One term's loss; with per-teacher ``shares`` a loss that reads the teacher is computed against each
    teacher's own logits and the results are averaged, ``sum_i share_i * L(s, t_i)``."""
    if shares is None or not term.loss.needs_teacher:
        return term.loss(student_out, teacher_out, labels)
    return sum(w * term.loss(student_out, {"logits": teacher_out[f"logits@{i}"]}, labels)
               for i, w in enumerate(shares))


def _teacher_forward(teacher, t_paths: list[str], xb: torch.Tensor) -> dict[str, torch.Tensor]:
    if teacher is None:
        return {}
    with torch.no_grad():
        if isinstance(teacher, nn.Module):
            with Taps(teacher, t_paths) as taps:
                return taps.collect(model_forward(teacher, xb))
        return teacher(xb)


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


def _save(path: Path, model, loss_modules, opt, sched, epoch: int, step: int, partial: tuple | None = None) -> None:
    state = {"model": model.state_dict(), "losses": loss_modules.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "epoch": epoch, "step": step}
    if partial is not None:
        state["partial"] = {"sums": dict(partial[0]), "correct": partial[1], "count": partial[2]}
    _io.atomic_write(path, lambda tmp: _torch_save(state, tmp))


def _write_curves(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    _io.write_text(path, buf.getvalue())


def _read_curves(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: (float(v) if k != "epoch" else int(v)) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]

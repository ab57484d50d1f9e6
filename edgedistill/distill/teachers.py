"""Teachers behind one interface, frozen: whatever a caller passes as the teacher becomes one
:class:`Teacher` (:func:`as_teacher`), and the training loop asks it, never its type.

* :class:`TorchTeacher` wraps an ``nn.Module`` (white box: ``tappable``, the loop may read its layers).
* :class:`OnnxTeacher` runs an ONNX file through ONNX Runtime (black box: outputs only).
* :class:`CallableTeacher` wraps any Python function of a batch (black box).
* :class:`EnsembleTeacher` holds several teachers with weights (multi-teacher KD): their logits are
  averaged (``mix = "logits"``), or each output loss is computed once per teacher and the losses are
  averaged (``mix = "losses"``: ``shares()`` gives the weights, the training loop does the rest).
* :class:`CachedTeacher` stands in for a teacher with its stored soft labels (:mod:`.cache`);
  :func:`cache_teacher` builds or opens them, an ensemble's once per member (:class:`EnsembleCache`).
* :class:`NoTeacher`: a scratch or self-distillation run.

The interface: ``teacher(x) -> {"logits": tensor, ...}``; ``outputs(x, layers, index)`` adds the tapped
``layers`` (white box only); ``output_shapes(example, layers)``; ``to(device)``; ``shares()`` (None
unless per-teacher losses); ``described`` names it in error messages. Black-box teachers supply
outputs only; ``train.check_term_paths`` refuses the losses that would need their internals.
``fingerprint()`` identifies a teacher for the soft-label cache key.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .._io import sha256_file
from ..ort_session import PRECISE_INT8, session_options
from ..models.core import model_forward
from ..errors import ConfigError, StageError
from .taps import Taps, dry_run_shapes

if TYPE_CHECKING:
    from .cache import SoftLabelCache


class Teacher:
    """Base: frozen, called on a batch, returns a dict of outputs with ``"logits"``; a black box."""

    kind: str = "teacher"
    #: A white box whose layers can be read by forward hooks (``outputs(x, layers)``); its module is ``model``.
    tappable: bool = False

    def __call__(self, x) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def outputs(self, x, layers: Sequence[str] = (), index: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """The outputs for batch ``x`` (at positions ``index`` of the training split), with the tapped
        ``layers``; a black box has none to give (``check_term_paths`` refused them before)."""
        return self(x)

    def output_shapes(self, example, layers: Sequence[str] = ()) -> dict[str, torch.Size]:
        """One call on a real input tells the shapes (the loss heads are built from them)."""
        return {k: v.shape for k, v in self.outputs(example, layers).items()}

    def to(self, device: torch.device | str) -> "Teacher":
        return self

    def shares(self) -> Optional[list[float]]:
        """Per-teacher loss coefficients (an ensemble with ``mix = "losses"``); None: one teacher output."""
        return None

    @property
    def described(self) -> str:
        return f"{'an' if self.kind[0] in 'AEIOU' else 'a'} {self.kind} teacher, which supplies outputs only"

    def fingerprint(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class NoTeacher(Teacher):
    """No teacher: a scratch run, self-distillation, or losses that never read the teacher."""

    kind = "no teacher"
    described = "no teacher (a scratch or self-distillation run)"

    def __call__(self, x):
        return {}

    def fingerprint(self) -> str:
        return "none"


class TorchTeacher(Teacher):
    """A PyTorch module, put in ``eval()`` with every parameter frozen and run under ``no_grad``; its
    layers can be tapped."""

    kind = "PyTorch model"
    tappable = True

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def __call__(self, x):
        return self.outputs(x)

    @torch.no_grad()
    def outputs(self, x, layers: Sequence[str] = (), index=None):
        self.model.eval()  # stays in eval even if someone called .train() on a parent
        if not layers:
            return {"logits": model_forward(self.model, x)}
        with Taps(self.model, layers) as taps:
            return taps.collect(model_forward(self.model, x))

    def output_shapes(self, example, layers: Sequence[str] = ()):
        return dry_run_shapes(self.model, layers, example)  # follows the model to its device

    def to(self, device):
        self.model.to(device)
        return self

    def fingerprint(self) -> str:
        h = hashlib.sha256(type(self.model).__name__.encode())
        for name, t in self.model.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


class OnnxTeacher(Teacher):
    """An ONNX model run by ONNX Runtime on CPU; the first output is taken as the logits."""

    kind = "ONNX model"

    def __init__(self, path: str | Path, output: Optional[str] = None, threads: int = 0,
                 key: str = "teacher.checkpoint") -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"{key}: {self.path} does not exist; give the path of an .onnx file.")
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(threads, config=PRECISE_INT8),
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises several unrelated types for a bad file
            raise ConfigError(f"{key}: {self.path} is not a loadable ONNX model ({str(e)[:160]}).") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ConfigError(f"{key}: {self.path} has {len(inputs)} inputs; a teacher takes exactly one.")
        self.input_name = inputs[0].name
        names = [o.name for o in self.session.get_outputs()]
        if output is not None and output not in names:
            raise ConfigError(f"{key}: output {output!r} is not in {self.path}; choose one of: {', '.join(names)}.")
        self.output_name = output or names[0]

    def __call__(self, x):
        arr = x.detach().cpu().numpy().astype(np.float32, copy=False)
        (out,) = self.session.run([self.output_name], {self.input_name: arr})
        return {"logits": torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)}

    def fingerprint(self) -> str:
        return "onnx:" + sha256_file(self.path) + ":" + self.output_name


class CallableTeacher(Teacher):
    """Any Python function of a batch returning logits (a tensor or an array), e.g. a remote model's client."""

    kind = "Python callable"

    def __init__(self, fn: Callable, name: Optional[str] = None) -> None:
        if not callable(fn):
            raise ConfigError("teacher: the black-box teacher must be callable as fn(batch) -> logits.")
        self.fn, self.name = fn, name

    @torch.no_grad()
    def __call__(self, x):
        out = self.fn(x)
        if isinstance(out, dict):
            out = out["logits"]
        out = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out, dtype=torch.float32)
        return {"logits": out.detach().to(x.device)}

    def fingerprint(self) -> str:
        if self.name:
            return "callable:" + self.name
        try:
            src = inspect.getsource(self.fn)
        except (OSError, TypeError):
            src = repr(self.fn)
        return "callable:" + hashlib.sha256(src.encode()).hexdigest()


class EnsembleTeacher(Teacher):
    """Multi-teacher KD; outputs only (features of several teachers do not line up), so feature losses
    are refused as for a black box.

    The call returns ``logits = sum_i w_i * logits_i / sum_i w_i`` and each teacher's own ``logits@i``.
    With ``mix = "logits"`` the losses read the averaged logits (an ensemble teacher, as in Hinton et al.
    2015); with ``mix = "losses"`` the loop computes each output loss against every teacher and averages
    the losses with the same weights, ``sum_i w_i * L(s, t_i) / sum_i w_i`` (You et al., KDD 2017,
    "Learning from Multiple Teacher Networks"). The two differ as soon as the loss is not linear in the
    teacher's logits, which KD at any temperature is not.
    """

    kind = "teacher ensemble"
    MIXES = ("logits", "losses")

    def __init__(self, teachers: Sequence[Teacher], weights: Optional[Sequence[float]] = None,
                 mix: str = "logits") -> None:
        if len(teachers) < 1:
            raise ConfigError("teachers: give at least one teacher.")
        weights = [1.0] * len(teachers) if weights is None else [float(w) for w in weights]
        if len(weights) != len(teachers) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(
                f"teacher weights: {weights} must be {len(teachers)} non-negative numbers with a positive sum."
            )
        if mix not in self.MIXES:
            raise ConfigError(f"teacher mix: {mix!r} is not one of {', '.join(self.MIXES)}.")
        self.teachers, self.weights, self.mix = list(teachers), weights, mix

    def shares(self) -> Optional[list[float]]:
        """With ``mix = "losses"``, each teacher's weight over the weights' sum (the coefficients of the
        per-teacher losses); None with ``mix = "logits"``, where the losses read the averaged logits."""
        if self.mix != "losses":
            return None
        total = sum(self.weights)
        return [w / total for w in self.weights]

    def to(self, device):
        for t in self.teachers:
            t.to(device)
        return self

    def __call__(self, x):
        total = sum(self.weights)
        outs = [t(x)["logits"] for t in self.teachers]
        return {"logits": sum(w * o for w, o in zip(self.weights, outs)) / total,
                **{f"logits@{i}": o for i, o in enumerate(outs)}}

    def fingerprint(self) -> str:
        parts = [f"{w}:{t.fingerprint()}" for w, t in zip(self.weights, self.teachers)]
        return "ensemble:" + hashlib.sha256("|".join(parts).encode()).hexdigest()


class EnsembleCache:
    """An ensemble's cache: each member teacher's own cache (keyed by its own fingerprint), mixed as
    :class:`EnsembleTeacher` mixes the live outputs: ``logits`` is the weighted mean of the members' (rebuilt)
    logits, ``logits@i`` each member's; ``shares()`` the per-teacher loss coefficients with ``mix = "losses"``.
    Rebuilt top-k logits are the teacher's log-probabilities (times ``T``), i.e. its logits shifted by one
    constant per sample, so the mix has the same softmax as the live mix wherever the members' top-k hold."""

    def __init__(self, members: Sequence["SoftLabelCache"], weights: Sequence[float], mix: str = "logits") -> None:
        if len({len(m) for m in members}) != 1:
            raise StageError("teacher cache: the ensemble members' caches hold different numbers of samples.")
        self.members, self.weights, self.mix = list(members), [float(w) for w in weights], mix
        blob = json.dumps([[m.key for m in self.members], self.weights, mix])
        self.key = "ensemble:" + hashlib.sha256(blob.encode()).hexdigest()[:32]

    def __len__(self) -> int:
        return len(self.members[0])

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.members)

    def shares(self) -> Optional[list[float]]:
        total = sum(self.weights)
        return [w / total for w in self.weights] if self.mix == "losses" else None

    def report(self) -> dict:
        members = [{"key": m.key, **m.report()} for m in self.members]
        return {"num_samples": len(self), "teachers": len(self.members), "weights": self.weights, "mix": self.mix,
                "cache_bytes": self.nbytes, "shards": sum(r["shards"] for r in members), "members": members}

    def teacher_outputs(self, index: torch.Tensor, x=None, device=None, check: bool = True) -> dict[str, torch.Tensor]:
        """Each member's logits at ``index`` (the inputs checked once, against the first member's fingerprints)."""
        logits = [m.teacher_outputs(index, x, device, check=check and i == 0)["logits"]
                  for i, m in enumerate(self.members)]
        mixed = sum(w * o for w, o in zip(self.weights, logits)) / sum(self.weights)
        return {"logits": mixed, **{f"logits@{i}": o for i, o in enumerate(logits)}}


class CachedTeacher(Teacher):
    """The teacher cache standing in for the teacher: its stored top-k soft labels (or an ensemble's members'
    ones, mixed: :class:`EnsembleCache`), looked up by each sample's position in the training split (outputs
    only; the teacher does not run)."""

    kind = "teacher cache"
    described = "the teacher cache, which stores outputs only"

    def __init__(self, cache: "SoftLabelCache | EnsembleCache") -> None:
        self.cache, self.device = cache, None

    def __call__(self, x):
        raise TypeError("a cached teacher needs the samples' positions: call outputs(x, index=...)")

    def outputs(self, x, layers: Sequence[str] = (), index=None):
        return self.cache.teacher_outputs(index, x, self.device)

    def output_shapes(self, example, layers: Sequence[str] = ()):
        return {k: v.shape for k, v in self.cache.teacher_outputs(torch.arange(len(example))).items()}

    def to(self, device):
        self.device = torch.device(device)
        return self

    def shares(self) -> Optional[list[float]]:
        """An ensemble's per-teacher loss coefficients (``mix = "losses"``: ``outputs`` gives each ``logits@i``)."""
        shares = getattr(self.cache, "shares", None)
        return shares() if callable(shares) else None

    def fingerprint(self) -> str:
        return "cache:" + self.cache.key


def cache_teacher(cache_dir: str | Path, teacher: Teacher, split, preprocessing: dict, *, temperature: float, k: int,
                  augmented: bool = False, dense: bool = False, batch_size: int = 256, device="cpu", log=None,
                  shard_size: Optional[int] = None, rank: int = 0, world: int = 1,
                  barrier: Optional[Callable[[], None]] = None) -> tuple["SoftLabelCache | EnsembleCache", bool]:
    """The cache standing in for ``teacher`` (see :func:`.cache.load_or_build`): an :class:`EnsembleTeacher`
    is cached once per member, each keyed by its own fingerprint (new weights, or one more teacher, reuse the
    members already cached), and mixed at lookup (:class:`EnsembleCache`). Returns ``(cache, hit)``, ``hit``
    True when no teacher ran in this process."""
    from .cache import SHARD_SIZE, load_or_build

    members = teacher.teachers if isinstance(teacher, EnsembleTeacher) else [teacher]
    caches, hits = [], []
    for member in members:
        cache, hit = load_or_build(cache_dir, member, member.fingerprint(), split, preprocessing,
                                   temperature=temperature, k=k, augmented=augmented, batch_size=batch_size,
                                   device=device, dense=dense, log=log, shard_size=shard_size or SHARD_SIZE,
                                   rank=rank, world=world, barrier=barrier)
        caches.append(cache)
        hits.append(hit)
    if not isinstance(teacher, EnsembleTeacher):
        return caches[0], hits[0]
    return EnsembleCache(caches, teacher.weights, teacher.mix), all(hits)


def as_teacher(teacher) -> Teacher:
    """Any teacher a caller may pass, as a :class:`Teacher`: None is :class:`NoTeacher`, an ``nn.Module`` a
    (frozen) :class:`TorchTeacher`, a plain callable ``x -> logits`` a :class:`CallableTeacher`."""
    if teacher is None:
        return NoTeacher()
    if isinstance(teacher, Teacher):
        return teacher
    if isinstance(teacher, nn.Module):
        return TorchTeacher(teacher)
    return CallableTeacher(teacher)


def recipe_teacher(cfg, main: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> Teacher:
    """The teacher a recipe's ``[distill]`` section asks for.

    No ``[[distill.teachers]]``: the ``[teacher]`` model itself, as a :class:`TorchTeacher` (a white box
    whose layers can be tapped).
    Otherwise an :class:`EnsembleTeacher` (``distill.teacher_mix``) of ``main`` (weight
    ``distill.teacher_weight``, left out at 0) and each extra teacher (ONNX through ONNX Runtime, a
    Python callable, or a PyTorch checkpoint); a single remaining teacher is used alone, so one ONNX
    teacher with ``teacher_weight = 0`` is a plain black-box teacher.
    """
    from ..models import build_model, load_checkpoint

    if not cfg.teachers:
        return as_teacher(main)  # None: no teacher (a scratch run)
    members: list[Teacher] = []
    weights: list[float] = []
    if cfg.teacher_weight > 0:
        members.append(TorchTeacher(main))
        weights.append(cfg.teacher_weight)
    for i, t in enumerate(cfg.teachers):
        key = f"distill.teachers[{i}]"
        if t.kind == "onnx":
            members.append(OnnxTeacher(t.path, t.output, key=f"{key}.path"))
        elif t.kind == "python":  # a black box: fn(batch) -> logits, e.g. a client of a served model
            from ..user_code import import_object

            members.append(CallableTeacher(import_object(t.path, f"{key}.path")))
        else:
            model = build_model(t.arch, t.params, input_shape, num_classes, f"{key}.arch")
            load_checkpoint(t.path, model, key=f"{key}.path")
            members.append(TorchTeacher(model))
        weights.append(t.weight)
    if len(members) == 1:
        return members[0]
    return EnsembleTeacher(members, weights, mix=cfg.teacher_mix)

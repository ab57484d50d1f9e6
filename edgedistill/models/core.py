"""The model registry, spec validation and safe (``weights_only``) checkpoints."""

from __future__ import annotations

import inspect
import pickle
import sys
import warnings
from typing import Callable

import torch
from torch import nn

from .. import _io
from ..errors import ConfigError, EdgeDistillError
from ..registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture")


def check_params(arch: str, params: dict, key: str) -> Callable[..., nn.Module]:
    """The registered factory of ``arch``, after refusing parameters it does not take (naming ``key``)."""
    factory = MODELS.get(arch, f"{key}.arch")
    sig = inspect.signature(factory)
    accepted = [n for n, p in sig.parameters.items() if n not in ("input_shape", "num_classes")
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for name in params:
        if name not in accepted:
            raise ConfigError(f"{key}.params.{name}: unknown parameter of {arch!r}; valid ones are: {', '.join(accepted)}.")
    return factory


def build_model(arch: str, params: dict, input_shape: tuple[int, ...], num_classes: int, key: str) -> nn.Module:
    """Build ``arch`` with ``params``; unknown or wrong parameters are rejected naming ``key``."""
    factory = check_params(arch, params, key)
    try:
        return factory(input_shape=tuple(input_shape), num_classes=num_classes, **params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}.params: {arch!r} cannot be built with {params} ({e}).") from None


_TRAINED = "_edgedistill_trained_weights"


def mark_trained(model: nn.Module, source: str) -> nn.Module:
    """Say that ``model`` came with all of its weights trained (a checkpoint, a pretrained model with its own
    head), from ``source``: a teacher stage then uses it as it is unless ``teacher.epochs`` asks otherwise."""
    setattr(model, _TRAINED, source)
    return model


def trained_weights(model: nn.Module) -> str | None:
    """Where ``model``'s trained weights came from (:func:`mark_trained`), or None."""
    return getattr(model, _TRAINED, None)


def model_forward(model: nn.Module, x):
    """The model's output on a batch: a tensor goes in as it is; texts go through the model's own
    ``encode_inputs`` (its tokenizer, on its device), whose tensors are passed by name."""
    if isinstance(x, torch.Tensor):
        return model(x)
    return model(**model.encode_inputs(x))


def save_checkpoint(path, model: nn.Module, **extra) -> None:
    """Atomically save a state dict (plus plain-data extras) that ``weights_only=True`` can read."""
    state = {"state_dict": model.state_dict(), **extra}
    _io.atomic_write(path, lambda tmp: torch_save(state, tmp))


def torch_save(obj, tmp: str) -> None:
    """``torch.save`` streamed into the file at ``tmp`` (no in-memory copy of the tensors). Through an open file,
    not the path: from a path torch names the zip's top folder after the (random) temporary file, and the
    same weights would give different bytes."""
    with open(tmp, "wb") as f:
        torch.save(obj, f)


def load_checkpoint(path, model: nn.Module | None = None, key: str = "checkpoint", trust: bool = False,
                    warn: Callable[[str], None] | None = None) -> dict:
    """Load a checkpoint without unpickling arbitrary objects; optionally load it into ``model``.

    ``trust=True`` (the CLI's ``--trust-checkpoint``) falls back to full unpickling, which runs any
    code the file carries, for a file ``weights_only`` refuses, and says so through ``warn``.
    """
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: the error says enough
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} does not exist; check the path.") from None
    except pickle.UnpicklingError as e:
        if not trust:
            raise EdgeDistillError(
                f"{path}: refused to load, it holds objects other than tensors ({_unpickler_reason(e)}); "
                "save a state_dict with torch.save(model.state_dict(), ...), or pass --trust-checkpoint if you made this file."
            ) from None
        obj = _load_trusted(path, warn or (lambda msg: print(msg, file=sys.stderr)))
    except Exception as e:  # noqa: BLE001 - RuntimeError, EOFError, BadZipFile, OSError, KeyError (a text file)...
        detail = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise EdgeDistillError(f"{path}: not a readable PyTorch checkpoint ({detail}); re-save it.") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        state = obj["state_dict"]
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, obj = obj, {"state_dict": obj}
    else:
        raise EdgeDistillError(f"{path}: holds no state_dict; save one with torch.save(model.state_dict(), ...).")
    if model is not None:
        own = model.state_dict()
        problems = []
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                      if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
        if missing:
            problems.append(f"missing keys {missing[:3]}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected[:3]}")
        if mismatched:
            problems.append(f"shape mismatch {mismatched[:2]}")
        if problems:
            raise EdgeDistillError(
                f"{path}: does not match the recipe's architecture ({'; '.join(problems)}); "
                "check the arch and params it was trained with."
            )
        model.load_state_dict(state)
    return obj


def _unpickler_reason(e: Exception) -> str:
    """The line of torch's long weights_only message that says what was refused."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    hit = next((ln for ln in lines if ln.startswith("WeightsUnpickler error:")), lines[0] if lines else type(e).__name__)
    return hit.removeprefix("WeightsUnpickler error:").strip()[:160]


def _load_trusted(path, warn: Callable[[str], None]) -> dict:
    warn(f"Warning: {path}: fully unpickling it because of --trust-checkpoint; this runs any code the file holds.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a pickle may fail in any way (missing class, bad module...)
        raise EdgeDistillError(f"{path}: cannot be unpickled ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                               "re-save it with torch.save(model.state_dict(), ...).") from None
    return {"state_dict": obj.state_dict()} if isinstance(obj, nn.Module) else obj


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

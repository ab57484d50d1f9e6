"""Teacher and student architectures in one registry, and safe checkpoint loading."""

from __future__ import annotations

from .core import MODELS, build_model, count_params, load_checkpoint, save_checkpoint

from . import cnn as _cnn, efficientnet as _efficientnet, mlp as _mlp, mobilenet as _mobilenet, resnet as _resnet, text as _text, user as _user  # noqa: F401

__all__ = ["MODELS", "build_model", "count_params", "load_checkpoint", "save_checkpoint"]

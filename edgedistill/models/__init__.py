"""Teacher and student architectures in one registry, and safe checkpoint loading."""

from __future__ import annotations

from .core import MODELS, build_model, count_params, load_checkpoint, save_checkpoint

from . import cnn as _cnn  # noqa: F401  (registers the built-in architectures)

__all__ = ["MODELS", "build_model", "count_params", "load_checkpoint", "save_checkpoint"]
